//! How new connections spread over backends: random, round robin, least connections.
use std::collections::HashMap;

use viking::datapath::{Algo, Proto};
use viking_tests::{
    probe::{Conn, Summary},
    topo::{finish, read_until_ready, Topo},
};

fn spread(conns: &[Conn]) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for c in conns {
        *by.entry(c.backend().unwrap_or("none").to_owned()).or_default() += 1;
    }
    by
}

fn assert_even(algo: Algo) {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    t.service("127.0.0.1:7100", Proto::Tcp, algo, &addrs);
    let conns = t.probe(&["tcp", "127.0.0.1:7100", "1000"]);
    let by = spread(&conns);
    assert_eq!(by.get("none"), None, "every connection reached a backend: {by:?}");
    for name in ["b1", "b2", "b3"] {
        let n = by.get(name).copied().unwrap_or(0) as f64;
        let even = 1000.0 / 3.0;
        assert!((n - even).abs() <= 0.15 * even, "{algo}: {name} got {n} of 1000 ({by:?})");
    }
    // The kernel's own counters agree with what the client saw.
    let status = &t.table().list().expect("list")[0];
    assert_eq!(status.conns, 1000);
    for bs in &status.backends {
        let name =
            b.iter().find(|x| x.addr == bs.addr).map(|x| x.name.clone()).expect("known backend");
        assert_eq!(bs.total as usize, by[&name], "{algo}: kernel count for {name}");
    }
}

#[test]
fn random_spreads_evenly() {
    assert_even(Algo::Random);
}

#[test]
fn round_robin_spreads_evenly() {
    assert_even(Algo::RoundRobin);
}

#[test]
fn least_connections_avoids_a_busy_backend() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    // Ten long-lived connections land on b1 while it is the only backend.
    t.service("127.0.0.1:7101", Proto::Tcp, Algo::LeastConn, &[b[0].addr]);
    let mut holder = t.probe_spawn(&["hold", "127.0.0.1:7101", "10"]);
    let held = read_until_ready(&mut holder);
    assert!(held.iter().all(|c| c.backend() == Some("b1")), "{held:?}");
    let active = t.table().list().unwrap()[0].backends[0].active;
    assert_eq!(active, 10, "open connections are counted");

    // Now three backends: new connections go to the idle ones.
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    t.service("127.0.0.1:7101", Proto::Tcp, Algo::LeastConn, &addrs);
    let by = spread(&t.probe(&["tcp", "127.0.0.1:7101", "300"]));
    assert_eq!(by.get("b1"), None, "b1 holds 10, the others at most 1: {by:?}");
    assert!(
        by.get("b2").copied().unwrap_or(0) > 50 && by.get("b3").copied().unwrap_or(0) > 50,
        "{by:?}"
    );

    let summary: Summary = finish(holder);
    assert_eq!(summary.ok, 10, "the held connections still work");
    // Closed connections are uncounted.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let status = &t.table().list().unwrap()[0];
    assert!(status.backends.iter().all(|b| b.active == 0), "{status:?}");
}
