//! A change in one stack never silently stops another: `viking rm --force` of a stack that is
//! linked to, and a bad record added by hand.
use std::time::{Duration, Instant};

use viking::{control::instances::PsRow, deploy::StackSummary, store::Store as _};
use viking_tests::{
    cluster::{bin, rows, Cluster},
    probe::Conn,
};

const ECONNREFUSED: i32 = 111;

fn shared_stack() -> String {
    format!(
        "db:\n  type: job\n  command: {} serve 0.0.0.0:80\n  ports:\n    - 80\n",
        bin("vk-probe")
    )
}

fn web_stack() -> String {
    format!(
        "web:\n  type: job\n  daemonize: true\n  command: while true; do {} tcp $SHARED_DB_PORT_80 1; sleep 0.2; done\n  link:\n    - shared/db\n",
        bin("vk-probe")
    )
}

/// The connection results in an instance's log since `from` bytes.
fn conns(log: &str, from: usize) -> Vec<Conn> {
    log.get(from..)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn web_row(ps: &[PsRow]) -> PsRow {
    rows(ps, "web", "web")[0].clone()
}

#[tokio::test]
async fn removing_a_linked_stack_by_force_stops_nothing_and_its_return_restores_the_link() {
    let c = Cluster::start(2).await;
    c.deploy("shared", &shared_stack()).await;
    c.deploy("web", &web_stack()).await;
    let ps = c
        .wait_ps("shared and web running", |r| {
            r.len() == 2 && r.iter().all(|r| r.state == "running")
        })
        .await;
    let before = web_row(&ps);
    let host = c.host(&before.host);
    let log = || host.agent.instance_log("web_web_0");
    until("web reaches shared/db", || {
        conns(&log(), 0).iter().any(|c| c.backend() == Some("shared_db_0"))
    })
    .await;
    let env1: std::collections::BTreeMap<String, String> =
        host.agent.client().get("/v1/env/web/web").await.unwrap().unwrap();

    // Without --force: refused, naming who links to it; nothing changes.
    let api = c.hosts[0].agent.client();
    let err = api.delete("/v1/stacks/shared").await.expect_err("refused").to_string();
    assert!(err.contains("web/web") && err.contains("--force"), "{err}");
    let stacks: Vec<StackSummary> = api.get("/v1/stacks").await.unwrap().unwrap();
    assert!(stacks.iter().any(|s| s.name == "shared"));

    // With --force: shared goes; web keeps running (same process, no restart) and its link
    // refuses at once.
    api.delete("/v1/stacks/shared?force=true").await.unwrap();
    let mark = log().len();
    until("web's link refuses", || {
        conns(&log(), mark).iter().any(|c| c.errno == Some(ECONNREFUSED))
    })
    .await;
    let refused: Vec<Conn> =
        conns(&log(), mark).into_iter().skip_while(|c| c.errno != Some(ECONNREFUSED)).collect();
    assert!(
        refused.iter().all(|c| c.errno == Some(ECONNREFUSED)),
        "refused, not timed out: {refused:?}"
    );
    let ps = c
        .wait_ps("shared gone, web told why", |r| {
            r.len() == 1 && web_row(r).detail.contains("stack shared is not deployed")
        })
        .await;
    let now = web_row(&ps);
    assert_eq!(
        (now.state.as_str(), now.restarts, &now.handle),
        ("running", 0, &before.handle),
        "{now:?}"
    );
    let stacks: Vec<StackSummary> = api.get("/v1/stacks").await.unwrap().unwrap();
    let web = stacks.iter().find(|s| s.name == "web").unwrap();
    assert!(
        web.problems.iter().any(|p| p.contains("shared/db") && p.contains("not deployed")),
        "{web:?}"
    );

    // shared is back: the same ambassador port, the link answers again, web was never
    // restarted.
    c.deploy("shared", &shared_stack()).await;
    let mark = log().len();
    until("web reaches shared/db again", || {
        conns(&log(), mark).iter().any(|c| c.backend() == Some("shared_db_0"))
    })
    .await;
    let env2: std::collections::BTreeMap<String, String> =
        host.agent.client().get("/v1/env/web/web").await.unwrap().unwrap();
    assert_eq!(env1, env2);
    let ps =
        c.wait_ps("web without problems", |r| r.len() == 2 && web_row(r).detail.is_empty()).await;
    let after = web_row(&ps);
    assert_eq!((after.restarts, &after.handle), (0, &before.handle));
}

#[tokio::test]
async fn a_bad_record_added_by_hand_is_shown_and_the_rest_of_its_stack_runs() {
    let c = Cluster::start(1).await;
    let probe = bin("vk-probe");
    c.deploy(
        "app",
        &format!("ok:\n  type: job\n  command: {probe} serve 0.0.0.0:80\n  ports:\n    - 80\n"),
    )
    .await;
    let ps = c.wait_ps("app/ok running", |r| r.len() == 1 && r[0].state == "running").await;
    let handle = ps[0].handle.clone();
    let store = viking::store::EtcdStore::connect(
        &c.etcd.as_ref().unwrap().endpoints(),
        &viking::store::EtcdOptions::default(),
    )
    .await
    .unwrap();
    // An operator adds one good and one bad job by hand.
    let good = format!("command: {probe} serve 0.0.0.0:81\nports: [81]\nlinks: [ok]\n");
    store.put("/viking/deploy/app/extra", good.into_bytes(), None).await.unwrap();
    store
        .put("/viking/deploy/app/bad", b"command: x\nports: [banana]\n".to_vec(), None)
        .await
        .unwrap();
    let ps = c
        .wait_ps("the good record adopted and running", |r| {
            rows(r, "app", "extra").first().is_some_and(|r| r.state == "running")
        })
        .await;
    let ok = &rows(&ps, "app", "ok")[0];
    assert_eq!((ok.state.as_str(), &ok.handle, ok.restarts), ("running", &handle, 0));
    let stacks: Vec<StackSummary> =
        c.hosts[0].agent.client().get("/v1/stacks").await.unwrap().unwrap();
    let app = stacks.iter().find(|s| s.name == "app").unwrap();
    let problem = app
        .problems
        .iter()
        .find(|p| p.contains("/viking/deploy/app/bad"))
        .unwrap_or_else(|| panic!("{app:?}"));
    assert!(problem.contains("ports[0]") && problem.contains("banana"), "{problem}");
}
