//! Services that exist only inside one network namespace (what embassy mode installs): they
//! win over a global service at the same address there, and nowhere else.
use viking::datapath::{netns::netns_cookie, Algo, Datapath, Frontend, Proto, ServiceSpec};
use viking_common::maps;
use viking_tests::{
    probe_bin,
    topo::{run_probe, Topo},
};

const AMBASSADOR: &str = "127.0.0.1:7300";

/// The backend a connect to the ambassador reaches from the client namespace.
fn from_client(t: &Topo) -> String {
    let conns = t.probe(&["tcp", AMBASSADOR]);
    conns[0].backend().unwrap_or("none").to_owned()
}

/// The same from the server namespace, in the same cgroup (so the programs run there too).
fn from_elsewhere(t: &Topo) -> String {
    let mut cmd = t.server.command(probe_bin(), Some(&t.cgroup));
    cmd.args(["tcp", AMBASSADOR]);
    run_probe(cmd)[0].backend().unwrap_or("none").to_owned()
}

#[test]
fn a_netns_scoped_service_wins_in_its_namespace_only_and_survives_a_restart() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let cookie = netns_cookie(&t.client.path()).expect("netns cookie");
    let scoped = ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
        name: "scoped".into(),
        frontend: Frontend { addr: AMBASSADOR.parse().unwrap(), proto: Proto::Tcp, netns: cookie },
        algo: Algo::Random,
        backends: vec![b[0].addr],
    };
    t.service(AMBASSADOR, Proto::Tcp, Algo::Random, &[b[1].addr]);
    assert_eq!(from_client(&t), "b2", "only the global service so far");

    t.table().upsert(&scoped).expect("scoped upsert");
    assert_eq!(from_client(&t), "b1", "the scoped service wins in its namespace");
    assert_eq!(from_elsewhere(&t), "b2", "and nowhere else");

    assert!(t.table().remove(&scoped.frontend).expect("remove"));
    assert_eq!(from_client(&t), "b2", "removed: the global one again");

    // An agent whose pins predate the scoped-service count: the next agent recounts.
    t.table().upsert(&scoped).expect("scoped upsert");
    drop(t.datapath.take());
    let count_pin = t.config().maps_dir().join(maps::SCOPED);
    std::fs::remove_file(&count_pin).expect("unpin the count");
    t.datapath = Some(Datapath::start(&t.config()).expect("datapath restarts"));
    assert_eq!(from_client(&t), "b1", "the scoped service still wins after the restart");
    assert_eq!(from_elsewhere(&t), "b2");
}
