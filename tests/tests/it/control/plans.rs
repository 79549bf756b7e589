//! Deploy is the one place that plans: reads never write, cross-stack cycles are refused, and
//! ports live exactly as long as the plans that use them.
use viking::{
    api::DeployRequest,
    stack::plan::Plan,
    store::{keys, EtcdOptions, EtcdStore, Store},
};
use viking_tests::{agent::AgentProc, etcd::Etcd};

fn request(name: &str, text: &str) -> DeployRequest {
    DeployRequest {
        name: name.into(),
        file: format!("{name}.yml"),
        text: text.into(),
        dry_run: false,
        contexts: Default::default(),
    }
}

#[tokio::test]
async fn reads_on_a_follower_write_nothing_and_cycles_across_stacks_are_refused() {
    let etcd = Etcd::start().await;
    let a = AgentProc::start(Some(&etcd.spec())).await;
    let b = AgentProc::start(Some(&etcd.spec())).await;
    let follower = if a.is_leader().await { &b } else { &a };
    let api = follower.client();
    let _: Plan = api
        .post("/v1/deploy", &request("shared", "db:\n  ports: [5432]\n"))
        .await
        .unwrap()
        .unwrap();
    let _: Plan = api
        .post("/v1/deploy", &request("web", "app:\n  command: x\n  links: [shared/db]\n"))
        .await
        .unwrap()
        .unwrap();
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();
    // Let the leader's adoption and placement settle, then read on the follower.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let plans_before = store.list(keys::PLANS).await.unwrap();
    let ports_before = store.list(keys::PORTS).await.unwrap();
    for _ in 0..5 {
        let env: std::collections::BTreeMap<String, String> =
            api.get("/v1/env/web/app").await.unwrap().unwrap();
        assert!(env.contains_key("SHARED_DB_PORT_5432_TCP_PORT"), "{env:?}");
        let _: serde_json::Value = api.get("/v1/jobs/web/app").await.unwrap().unwrap();
    }
    let plans_after = store.list(keys::PLANS).await.unwrap();
    let ports_after = store.list(keys::PORTS).await.unwrap();
    let revs = |l: &viking::store::Listing| {
        l.kvs.iter().map(|kv| (kv.key.clone(), kv.mod_revision)).collect::<Vec<_>>()
    };
    assert_eq!(revs(&plans_before), revs(&plans_after), "a read wrote a plan");
    assert_eq!(revs(&ports_before), revs(&ports_after), "a read wrote an allocation");

    // shared/db linking back to web/app would close a cycle across the two stacks.
    let err = api
        .post::<_, Plan>(
            "/v1/deploy",
            &request("shared", "db:\n  ports: [5432]\n  links: [web/app]\n"),
        )
        .await
        .expect_err("a cycle")
        .to_string();
    assert!(
        err.contains("link cycle across stacks")
            && err.contains("web/app")
            && err.contains("shared/db"),
        "{err}"
    );
}

/// 20 deploys of one stack at once, then `viking rm`: no ambassador port of it remains (the
/// losers of the races leaked theirs before).
#[tokio::test]
async fn parallel_deploys_then_rm_leave_no_allocation() {
    let etcd = Etcd::start().await;
    let agent = AgentProc::start(Some(&etcd.spec())).await;
    let api = agent.client();
    let _: Plan = api
        .post(
            "/v1/deploy",
            &request("shared", "db:\n  ports: [5432, 6379]\ncache:\n  ports: [11211]\n"),
        )
        .await
        .unwrap()
        .unwrap();
    let web = "a:\n  command: x\n  links: [shared/db, shared/cache]\nb:\n  command: x\n  links: [shared/db]\n";
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let api = agent.client();
        tasks.push(tokio::spawn(async move {
            api.post::<_, Plan>("/v1/deploy", &request("web", web)).await
        }));
    }
    let mut plans = Vec::new();
    for t in tasks {
        plans.push(t.await.unwrap().expect("every deploy lands").expect("a plan"));
    }
    let ports = |p: &Plan| {
        p.ports.iter().map(|a| (a.service.clone(), a.port, a.ambassador_port)).collect::<Vec<_>>()
    };
    assert!(plans.iter().all(|p| ports(p) == ports(&plans[0])), "every deploy saw the same ports");
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();
    let allocated = |l: viking::store::Listing| {
        l.kvs.into_iter().map(|kv| kv.key).filter(|k| k != keys::PORTS_NEXT).collect::<Vec<_>>()
    };
    assert_eq!(
        allocated(store.list(keys::PORTS).await.unwrap()).len(),
        3,
        "db 5432, db 6379, cache 11211"
    );
    api.delete("/v1/stacks/web").await.unwrap();
    let left = allocated(store.list(keys::PORTS).await.unwrap());
    assert!(left.is_empty(), "allocations left after rm: {left:?}");
    assert!(store.list("/viking/plan/web/").await.unwrap().kvs.is_empty());
}
