//! A service with more registrations than the datapath holds for one (1,024): the newest are
//! programmed, the count left out is shown, and a deleted registration always leaves, also
//! the live one among 2,000.
use std::{collections::BTreeMap, net::SocketAddr, process::Command, time::Duration};

use viking::{
    api::DeployRequest,
    datapath::{maps_dir, Frontend, Proto, ServiceStatus, ServiceTable},
    stack::plan::Plan,
    store::{EtcdStore, Store},
};
use viking_common::MAX_BACKENDS_PER_SERVICE;
use viking_tests::{agent::AgentProc, etcd::Etcd, viking_bin};

const FAKES: usize = 1999;
const MAX: usize = MAX_BACKENDS_PER_SERVICE as usize;

fn fake(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 50, (i >> 8) as u8, i as u8], 80))
}

fn key(i: usize) -> String {
    format!("/services/prod/lim_web/80/{}/f{i}", 30000 + i)
}

fn record(addr: SocketAddr) -> Vec<u8> {
    serde_json::json!({"ipaddress": addr.ip().to_string(), "host_port": addr.port()})
        .to_string()
        .into_bytes()
}

/// Puts registrations `range` of the fakes, 50 at a time.
async fn put_fakes(store: &EtcdStore, range: std::ops::Range<usize>) {
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(50) {
        let tasks: Vec<_> = chunk
            .iter()
            .map(|&i| {
                let s = store.clone();
                tokio::spawn(async move { s.put(&key(i), record(fake(i)), None).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("the task").expect("the store");
        }
    }
}

async fn delete_all(store: &EtcdStore, keys: impl IntoIterator<Item = String>) {
    let keys: Vec<String> = keys.into_iter().collect();
    for chunk in keys.chunks(50) {
        let tasks: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|k| {
                let s = store.clone();
                tokio::spawn(async move { s.delete(&k).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("the task").expect("the store");
        }
    }
}

/// Polls the kernel's service table until `ok` holds for the service at ambassador `port`
/// (30 s at most).
async fn until(
    agent: &AgentProc,
    port: u16,
    what: &str,
    ok: impl Fn(&ServiceStatus) -> bool,
) -> ServiceStatus {
    let frontend =
        Frontend { addr: SocketAddr::from(([127, 0, 0, 1], port)), proto: Proto::Tcp, netns: 0 };
    let table = ServiceTable::open(&maps_dir(&agent.bpf.path)).expect("the agent's pinned maps");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = table.get(&frontend).expect("reading the service table");
        if let Some(s) = got.as_ref().filter(|s| ok(s)) {
            return s.clone();
        }
        if std::time::Instant::now() > deadline {
            let summary = got.map(|s| (s.backends.len(), s.unprogrammed));
            panic!("{what}: the service is {summary:?} (backends, unprogrammed)\n{}", agent.log());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn has(s: &ServiceStatus, addr: SocketAddr) -> bool {
    s.backends.iter().any(|b| b.addr == addr)
}

#[tokio::test]
async fn two_thousand_backends_keep_the_newest_and_a_deleted_one_leaves() {
    let etcd = Etcd::start().await;
    let agent = AgentProc::start(Some(&etcd.spec())).await;
    let store = etcd.store().await;
    // A stack whose client links to web: web's port 80 gets an ambassador port. Nothing runs
    // (scale 0): the backends are the registrations this test writes.
    let text = "web:\n  type: job\n  command: sleep 1\n  ports:\n    - 80\n  scale: 0\n\
                client:\n  type: job\n  command: sleep 1\n  scale: 0\n  link:\n    - web\n";
    let req = DeployRequest {
        name: "lim".into(),
        file: "lim.yml".into(),
        text: text.into(),
        dry_run: false,
        contexts: Default::default(),
    };
    let api = agent.client();
    let _: Option<Plan> = api.post("/v1/deploy", &req).await.unwrap();
    let env: BTreeMap<String, String> = api.get("/v1/env/lim/client").await.unwrap().unwrap();
    let port: u16 = env["WEB_PORT_80_TCP_PORT"].parse().unwrap();
    let wait = |what: &'static str, ok: fn(&ServiceStatus) -> bool| until(&agent, port, what, ok);
    wait("the service, with no backend", |s| s.backends.is_empty()).await;

    // 1,000 older, the live one, 999 newer.
    let live: SocketAddr = "10.60.0.1:80".parse().unwrap();
    put_fakes(&store, 0..1000).await;
    store.put("/services/prod/lim_web/80/40000/live", record(live), None).await.unwrap();
    put_fakes(&store, 1000..FAKES).await;
    let s = wait("the newest 1,024 programmed", |s| {
        s.backends.len() == MAX && s.unprogrammed as usize == FAKES + 1 - MAX
    })
    .await;
    assert!(has(&s, live), "the live one is among the newest");
    assert!((1000..FAKES).all(|i| has(&s, fake(i))), "every newer one is programmed");
    assert!((0..900).all(|i| !has(&s, fake(i))), "the oldest are left out");
    let out = Command::new(viking_bin())
        .args(["services", "--bpffs"])
        .arg(&agent.bpf.path)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains(&format!("{MAX} (+{} over the limit)", FAKES + 1 - MAX)), "{table}");

    // The live one's registration goes: so does its backend; an older one takes its slot.
    store.delete("/services/prod/lim_web/80/40000/live").await.unwrap();
    let s = wait("the deleted one gone", |s| !has(s, "10.60.0.1:80".parse().unwrap())).await;
    assert_eq!((s.backends.len(), s.unprogrammed as usize), (MAX, FAKES - MAX));

    // Stale ones always go: without the 999 newest, the 1,000 oldest are all programmed.
    delete_all(&store, (1000..FAKES).map(key)).await;
    let s = wait("the 1,000 oldest", |s| s.backends.len() == 1000).await;
    assert_eq!(s.unprogrammed, 0);
    assert!((0..1000).all(|i| has(&s, fake(i))));
    delete_all(&store, (0..1000).map(key)).await;
    wait("no backend left", |s| s.backends.is_empty()).await;
}
