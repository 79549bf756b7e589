//! Changing a service's backends while traffic flows.
use std::collections::HashSet;

use viking::datapath::{Algo, Proto};
use viking_tests::{
    probe::Summary,
    topo::{finish, read_until_ready, Topo},
};

fn backends_seen(t: &Topo, addr: &str, n: usize) -> HashSet<String> {
    t.probe(&["tcp", addr, &n.to_string()])
        .iter()
        .map(|c| c.backend().unwrap_or("none").to_owned())
        .collect()
}

#[test]
fn removed_backend_gets_no_new_connections_but_keeps_its_old_ones() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7200", Proto::Tcp, Algo::RoundRobin, &[b[0].addr]);
    let mut holder = t.probe_spawn(&["hold", "127.0.0.1:7200", "3"]);
    let held = read_until_ready(&mut holder);
    assert!(held.iter().all(|c| c.backend() == Some("b1")));

    t.service("127.0.0.1:7200", Proto::Tcp, Algo::RoundRobin, &[b[1].addr, b[2].addr]);
    let seen = backends_seen(&t, "127.0.0.1:7200", 60);
    assert_eq!(seen, HashSet::from(["b2".to_owned(), "b3".to_owned()]), "no new connection to b1");
    let summary: Summary = finish(holder);
    assert_eq!(summary.ok, 3, "connections made before the change still work");
}

#[test]
fn added_backend_gets_new_connections() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7201", Proto::Tcp, Algo::RoundRobin, &[b[0].addr]);
    assert_eq!(backends_seen(&t, "127.0.0.1:7201", 10), HashSet::from(["b1".to_owned()]));
    t.service("127.0.0.1:7201", Proto::Tcp, Algo::RoundRobin, &[b[0].addr, b[1].addr]);
    assert_eq!(
        backends_seen(&t, "127.0.0.1:7201", 30),
        HashSet::from(["b1".to_owned(), "b2".to_owned()])
    );
}

#[test]
fn connects_never_fail_while_the_backend_set_is_replaced() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let addrs: Vec<_> = b.iter().map(|b| b.addr).collect();
    t.service("127.0.0.1:7202", Proto::Tcp, Algo::Random, &addrs);
    let looper = t.probe_spawn(&["loop", "127.0.0.1:7202"]);
    // Flip between two non-empty sets as fast as the table allows.
    for i in 0..300 {
        let set = if i % 2 == 0 { &addrs[..2] } else { &addrs[1..] };
        t.service("127.0.0.1:7202", Proto::Tcp, Algo::Random, set);
    }
    let summary: Summary = finish(looper);
    assert!(summary.ok > 0);
    assert_eq!(summary.failed, 0, "a connect saw a half-written set: {:?}", summary.errors);
}
