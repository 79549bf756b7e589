//! etcd's limits (128 operations per transaction, 1.5 MiB per request) stop nothing: a job of
//! scale 300 and a deploy of 500 jobs are stored and placed on a real etcd, and a stack
//! deployed meanwhile is placed too.
use std::{sync::Arc, time::Duration};

use viking::{
    cluster::{self, membership, Addresses, HostInfo, DEFAULT_PORT_RANGE},
    control::placement::Placer,
    deploy::{Deployer, JobRecord},
    stack::{Job, Stack},
    store::{keys, Store},
};
use viking_tests::etcd::Etcd;

fn host(name: &str, ip: &str) -> HostInfo {
    HostInfo::new(name, ip.parse().expect("an address"))
}

fn stack(name: &str, text: &str) -> Stack {
    Stack::from_text(std::path::Path::new(&format!("{name}.yml")), text, name).expect("a stack")
}

async fn intents<S: Store>(store: &S, stack: &str) -> usize {
    store
        .list(keys::PROC)
        .await
        .expect("list the intent")
        .kvs
        .iter()
        .filter(|kv| {
            keys::parse_instance(keys::PROC, &kv.key).is_some_and(|(_, s, _, _)| s == stack)
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_jobs_and_big_deploys_are_placed_on_etcd() {
    let etcd = Etcd::start().await;
    let store = etcd.store().await;
    let mut members = Vec::new();
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let info = host(name, &format!("10.0.0.{}", i + 1));
        members.push(membership::join(&store, info, membership::DEFAULT_TTL).await.unwrap());
    }
    let leadership =
        cluster::campaign(&store, "placer", cluster::leader::DEFAULT_TTL).await.unwrap();
    let (_tx, leader) = tokio::sync::watch::channel(Some(leadership.key().clone()));
    let deployer =
        Arc::new(Deployer::new(store.clone(), DEFAULT_PORT_RANGE, "127.0.0.1".parse().unwrap()));

    // One job of scale 300.
    deployer
        .deploy(&stack("big", "w:\n  command: x\n  scale: 300\n"), &Default::default(), false)
        .await
        .unwrap();
    // 500 jobs, 499 of them linking to the first: 1,000 records and plans in one deploy.
    let mut text = String::from("hub:\n  command: x\n  ports: [80]\n");
    for i in 1..500 {
        text.push_str(&format!("j{i}:\n  command: x\n  links: [hub]\n"));
    }
    let plan = deployer.deploy(&stack("many", &text), &Default::default(), false).await.unwrap();
    assert_eq!(plan.jobs.len(), 500);
    assert_eq!(store.list("/viking/deploy/many/").await.unwrap().kvs.len(), 500);
    assert_eq!(store.list("/viking/plan/many/").await.unwrap().kvs.len(), 500);

    let placer = Placer::new(
        store.clone(),
        deployer.clone(),
        Addresses::new(store.clone(), cluster::addresses::default_pool()),
        leader,
    );
    // A small stack deployed while the big pass runs is placed too.
    let d2 = deployer.clone();
    let small = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        d2.deploy(&stack("small", "s:\n  command: x\n"), &Default::default(), false).await
    });
    let pass = placer.place().await.unwrap();
    assert!(pass.placed >= 800, "{pass:?}");
    small.await.unwrap().unwrap();
    let again = placer.place().await.unwrap();
    assert_eq!(intents(&store, "big").await, 300);
    assert_eq!(intents(&store, "many").await, 500);
    assert_eq!(intents(&store, "small").await, 1, "the stack deployed meanwhile is placed");
    let last = placer.place().await.unwrap();
    assert_eq!((last.written, last.removed), (0, 0), "converged: {again:?} then {last:?}");

    // `config apply` of 300 records: all or nothing, within the limits.
    let records: Vec<JobRecord> = (0..300)
        .map(|i| {
            let mut job = Job::new(format!("r{i}"));
            job.command = vec!["x".into()];
            JobRecord { stack: "applied".into(), key: format!("/viking/deploy/applied/r{i}"), job }
        })
        .collect();
    assert_eq!(deployer.apply(&records).await.unwrap(), 300);
    assert_eq!(store.list("/viking/deploy/applied/").await.unwrap().kvs.len(), 300);
    assert_eq!(store.list("/viking/plan/applied/").await.unwrap().kvs.len(), 300);
    drop(members);
}
