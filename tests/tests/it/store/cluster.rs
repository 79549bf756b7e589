//! A 3-member etcd cluster loses a member (its raft leader) mid-run: allocations carry on,
//! every one unique, and watches keep delivering.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use viking::{
    cluster::{Addresses, AmbassadorPorts, DEFAULT_PORT_RANGE},
    store::{keys, Store, WatchEvent},
};
use viking_tests::etcd::Etcd;

const CLIENTS: usize = 4;
const PER_CLIENT: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allocations_survive_a_member_kill() {
    let mut etcd = Etcd::cluster(3).await;
    let done = Arc::new(AtomicUsize::new(0));
    let watcher = etcd.store().await;
    let mut watch = watcher.watch(keys::PORTS, None).await.unwrap();
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let store = etcd.store().await;
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let ports = AmbassadorPorts::new(store.clone(), DEFAULT_PORT_RANGE);
            let ips = Addresses::new(store, viking::cluster::DEFAULT_POOL.parse().unwrap());
            ips.subnet("cluster", 1000).await.unwrap();
            let mut got = Vec::new();
            for i in 0..PER_CLIENT {
                let service = format!("c{c}_j{i}");
                let port =
                    ports.allocate(&service, 80).await.unwrap_or_else(|e| panic!("{service}: {e}"));
                let ip = ips
                    .address("cluster", &service)
                    .await
                    .unwrap_or_else(|e| panic!("{service}: {e}"));
                got.push((port, ip));
                done.fetch_add(1, Ordering::Relaxed);
            }
            got
        }));
    }
    // Kill the raft leader once a third of the work is done.
    while done.load(Ordering::Relaxed) < CLIENTS * PER_CLIENT / 3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let leader = etcd.raft_leader().await.expect("a raft leader");
    let before = done.load(Ordering::Relaxed);
    etcd.kill(leader);
    let killed_at = Instant::now();
    eprintln!("killed member {leader} (raft leader) after {before} allocations");
    let (mut ports, mut ips) = (HashSet::new(), HashSet::new());
    for task in tasks {
        for (port, ip) in task.await.unwrap() {
            assert!(ports.insert(port), "port {port} given twice");
            assert!(ips.insert(ip), "address {ip} given twice");
        }
    }
    assert_eq!(ports.len(), CLIENTS * PER_CLIENT);
    assert_eq!(ips.len(), CLIENTS * PER_CLIENT);
    eprintln!(
        "{} allocations in {:?} ({:?} after the kill)",
        CLIENTS * PER_CLIENT,
        t.elapsed(),
        killed_at.elapsed()
    );
    // The watch saw every port record, across the kill, exactly once.
    let mut seen = HashSet::new();
    while seen.len() < CLIENTS * PER_CLIENT {
        match watch.next_within(Duration::from_secs(10)).await {
            Some(WatchEvent::Put(kv)) if kv.key != keys::PORTS_NEXT => {
                assert!(seen.insert(kv.key.clone()), "{} seen twice", kv.key);
            }
            Some(WatchEvent::Resync { kvs, .. }) => {
                seen.extend(
                    kvs.into_iter().filter(|kv| kv.key != keys::PORTS_NEXT).map(|kv| kv.key),
                );
            }
            Some(_) => {}
            None => panic!("watch stalled with {} of {} records", seen.len(), CLIENTS * PER_CLIENT),
        }
    }
}
