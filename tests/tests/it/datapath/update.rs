//! Changing a service's backends while traffic flows.
use std::{collections::HashSet, net::SocketAddr};

use viking::datapath::{Algo, DatapathError, Frontend, Proto, ServiceSpec};
use viking_common::{MAX_BACKENDS, MAX_BACKENDS_PER_SERVICE};
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

/// `n` made-up backends (never connected to): <a>.<b>.<i/256>.<i%256>:9000.
fn fake_backends(a: u8, b: u8, n: usize) -> Vec<SocketAddr> {
    (0..n).map(|i| SocketAddr::from(([a, b, (i / 256) as u8, (i % 256) as u8], 9000))).collect()
}

fn spec(name: &str, frontend: &str, backends: Vec<SocketAddr>) -> ServiceSpec {
    ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
        name: name.to_owned(),
        frontend: Frontend {
            addr: frontend.parse().expect("frontend"),
            proto: Proto::Tcp,
            netns: 0,
        },
        algo: Algo::RoundRobin,
        backends,
    }
}

#[test]
fn a_failed_update_leaves_the_service_and_the_id_space_as_they_were() {
    const PER: usize = MAX_BACKENDS_PER_SERVICE as usize;
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7203", Proto::Tcp, Algo::RoundRobin, &[b[0].addr]);
    // Ids 1..MAX_BACKENDS, one of them taken above: fill all but fewer than PER of the rest.
    let left = MAX_BACKENDS as usize - 2;
    let (fillers, free) = (left / PER, left % PER);
    for k in 0..fillers {
        let (hi, lo) = ((k / 256) as u8, (k % 256) as u8);
        let filler = spec(
            &format!("filler-{k}"),
            &format!("127.1.{hi}.{lo}:80"),
            fake_backends(10 + hi, lo, PER),
        );
        t.table().upsert(&filler).expect("filler");
    }

    // An update that needs PER new backend ids fails part way...
    let update = spec("svc-127.0.0.1:7203", "127.0.0.1:7203", fake_backends(11, 0, PER));
    match t.table().upsert(&update) {
        Err(DatapathError::IdsExhausted("backend")) => {}
        other => panic!("expected the backend id space to run out, got {other:?}"),
    }
    // ...and the service still has its old backend, for listing and for connects.
    let list = t.table().list().expect("list");
    let svc = list.iter().find(|s| s.name == "svc-127.0.0.1:7203").expect("service kept");
    assert_eq!(svc.backends.iter().map(|b| b.addr).collect::<Vec<_>>(), vec![b[0].addr]);
    assert_eq!(backends_seen(&t, "127.0.0.1:7203", 5), HashSet::from(["b1".to_owned()]));

    // Nothing it took is lost: every id that was free is still there.
    let last = spec("last", "127.0.2.1:80", fake_backends(11, 1, free));
    t.table().upsert(&last).expect("ids leaked");
    assert_eq!(t.table().list().expect("list").len(), fillers + 2);
}
