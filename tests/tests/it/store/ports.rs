//! The ambassador port allocator under concurrency, against a real etcd and the embedded store.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{
    collections::{HashMap, HashSet},
    time::Instant,
};

use viking::{
    cluster::{AmbassadorPorts, ClusterError, PortRange, DEFAULT_PORT_RANGE},
    store::{keys, Store},
};
use viking_tests::{etcd::Backend, store_tests};

const CLIENTS: usize = 8;
const PER_CLIENT: usize = 500;

/// 8 clients x 500 services at once: every port unique and in range; asking again gives the
/// first answer.
async fn concurrent_ports<B: Backend>(b: &B) {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let ports = AmbassadorPorts::new(b.client().await, DEFAULT_PORT_RANGE);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(PER_CLIENT);
            for i in 0..PER_CLIENT {
                let service = format!("s{c}_job{i}");
                got.push((service.clone(), ports.allocate(&service, 80).await.unwrap()));
            }
            got
        }));
    }
    let mut all: HashMap<String, u16> = HashMap::new();
    let mut seen = HashSet::new();
    for t in tasks {
        for (service, port) in t.await.unwrap() {
            assert!(DEFAULT_PORT_RANGE.contains(port), "{service}: {port} out of range");
            assert!(seen.insert(port), "port {port} given twice (again to {service})");
            all.insert(service, port);
        }
    }
    assert_eq!(all.len(), CLIENTS * PER_CLIENT);
    eprintln!("{}: {} allocations by {CLIENTS} clients in {:?}", b.name(), all.len(), t.elapsed());

    // Asking again, from other clients and concurrently, gives the same ports.
    let mut again = Vec::new();
    for c in 0..CLIENTS {
        let ports = AmbassadorPorts::new(b.client().await, DEFAULT_PORT_RANGE);
        let expect: Vec<(String, u16)> = (0..PER_CLIENT)
            .step_by(7)
            .map(|i| {
                let s = format!("s{}_job{i}", (c + 1) % CLIENTS);
                let p = all[&s];
                (s, p)
            })
            .collect();
        again.push(tokio::spawn(async move {
            for (service, port) in expect {
                assert_eq!(ports.allocate(&service, 80).await.unwrap(), port, "{service}");
            }
        }));
    }
    for t in again {
        t.await.unwrap();
    }
    let table = AmbassadorPorts::new(b.client().await, DEFAULT_PORT_RANGE).list().await.unwrap();
    assert_eq!(table.ports.len(), CLIENTS * PER_CLIENT);
    assert_eq!(
        table.next,
        Some(u32::from(DEFAULT_PORT_RANGE.first) + (CLIENTS * PER_CLIENT) as u32)
    );
}

/// A small range runs out with a clear error; a released port comes back only after its
/// release; the same service and port keeps its port across "redeploys".
async fn exhaustion_and_reuse<B: Backend>(b: &B) {
    let range = PortRange { first: 30000, last: 30009 };
    let ports = AmbassadorPorts::new(b.client().await, range);
    let mut given = Vec::new();
    for i in 0..10 {
        given.push(ports.allocate(&format!("web_j{i}"), 8080).await.unwrap());
    }
    assert_eq!(given, (30000..=30009).collect::<Vec<u16>>());
    // Two ports of one service are two allocations; tcp and udp of one port share one.
    let e = ports.allocate("web_more", 53).await.unwrap_err();
    assert!(matches!(e, ClusterError::PortsExhausted { .. }), "{e}");
    assert!(e.to_string().contains("30000-30009"), "{e}");
    // Redeploy: same answers, nothing new.
    for (i, port) in given.iter().enumerate() {
        assert_eq!(ports.allocate(&format!("web_j{i}"), 8080).await.unwrap(), *port);
    }
    // Released: reusable, and given to exactly one of two racing services.
    assert_eq!(ports.release_service("web_j3").await.unwrap(), 1);
    assert_eq!(ports.get("web_j3", 8080).await.unwrap(), None);
    let (a, b2) = tokio::join!(ports.allocate("web_x", 1), ports.allocate("web_y", 1));
    let (ok, err): (Vec<_>, Vec<_>) = [a, b2].into_iter().partition(Result::is_ok);
    assert_eq!(ok.len(), 1, "exactly one of two racing services gets the one free port");
    assert_eq!(*ok[0].as_ref().unwrap(), 30003);
    assert!(matches!(err[0], Err(ClusterError::PortsExhausted { .. })));
    // The store holds exactly the records we expect.
    let store = b.client().await;
    let listing = store.list(keys::PORTS).await.unwrap();
    assert_eq!(listing.kvs.len(), 11, "10 records + the counter");
}

store_tests!(concurrent_ports, exhaustion_and_reuse);
