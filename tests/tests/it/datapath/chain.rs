//! The build chain end to end: the object embedded in `viking` loads, attaches to a cgroup
//! this test created, and changes what a real socket in this test's namespace connects to.
use viking::datapath::{Algo, Datapath, DatapathConfig, Frontend, Proto, ServiceSpec};
use viking_tests::{
    backend::Backend,
    guards::{BpfDir, Cgroup, NetNs},
    probe_bin, require_root,
    topo::run_probe,
};

#[test]
fn embedded_object_redirects_a_connect_in_its_cgroup_only() {
    require_root();
    let ns = NetNs::new("vkchain");
    let cgroup = Cgroup::new();
    let bpf = BpfDir::new();
    let _backend = Backend::tcp(&ns, "loopback-backend", "127.0.0.1:8000".parse().unwrap());
    let mut dp =
        Datapath::start(&DatapathConfig { cgroup: cgroup.path.clone(), bpffs: bpf.path.clone() })
            .expect("the embedded object loads and attaches");
    dp.table
        .upsert(&ServiceSpec {
            ejection: Default::default(),
            end_tcp: false,
            name: "chain".into(),
            frontend: Frontend {
                addr: "127.0.0.1:9999".parse().unwrap(),
                proto: Proto::Tcp,
                netns: 0,
            },
            algo: Algo::Random,
            backends: vec!["127.0.0.1:8000".parse().unwrap()],
        })
        .unwrap();

    // Inside the cgroup: 127.0.0.1:9999 (where nothing listens) reaches the backend.
    let mut cmd = ns.command(probe_bin(), Some(&cgroup));
    cmd.args(["tcp", "127.0.0.1:9999"]);
    let inside = run_probe(cmd);
    assert_eq!(inside[0].backend(), Some("loopback-backend"), "{inside:?}");
    assert_eq!(
        inside[0].peer.as_deref(),
        Some("127.0.0.1:9999"),
        "getpeername shows the ambassador"
    );

    // Same namespace, outside the cgroup: untouched, so refused by the kernel as usual.
    let mut cmd = ns.command(probe_bin(), None);
    cmd.args(["tcp", "127.0.0.1:9999"]);
    let outside = run_probe(cmd);
    assert_eq!(outside[0].errno, Some(libc::ECONNREFUSED), "{outside:?}");
    assert_eq!(dp.table.list().unwrap()[0].conns, 1, "only the in-cgroup connect was balanced");
}
