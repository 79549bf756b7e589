//! The datapath outlives its agent, and agents on one kernel keep apart.
use std::{process::Command, thread::sleep, time::Duration};

use viking::datapath::{maps_dir, Algo, Frontend, Proto, ServiceSpec, ServiceTable};
use viking_tests::{
    backend::Backend,
    guards::{BpfDir, Cgroup, ChildGuard},
    probe::Summary,
    topo::{finish, run_probe, Topo},
    viking_bin,
};

fn agent_cmd(t: &Topo, dir: &std::path::Path, api: u16) -> Command {
    let mut cmd = Command::new(viking_bin());
    cmd.args(["agent", "--node", "test"])
        .arg(format!("--store=embedded:{}", dir.join("store").display()))
        .arg(format!("--api=127.0.0.1:{api}"))
        .arg("--token-file")
        .arg(dir.join("token"))
        .arg("--cgroup")
        .arg(&t.cgroup.path)
        .arg("--bpffs")
        .arg(&t.bpf.path)
        .env("RUST_LOG", "warn");
    cmd
}

fn wait_for_pins(t: &Topo) {
    for _ in 0..200 {
        if t.bpf.path.join("links").join(viking_common::programs::SYN_RETRANSMIT).exists() {
            return;
        }
        sleep(Duration::from_millis(25));
    }
    panic!("agent did not attach");
}

#[test]
fn agent_restart_keeps_transfers_and_connects_going() {
    let t = Topo::without_agent();
    let b = t.tcp_backends(8000);
    let dir = std::env::temp_dir().join(viking_tests::unique("vk-restart-"));
    let api = viking_tests::agent::free_port();
    let mut agent = ChildGuard::spawn(agent_cmd(&t, &dir, api));
    wait_for_pins(&t);
    let mut table = ServiceTable::open(&maps_dir(&t.bpf.path)).unwrap();
    let spec = ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
        name: "restart".into(),
        frontend: Frontend { addr: "127.0.0.1:7300".parse().unwrap(), proto: Proto::Tcp, netns: 0 },
        algo: Algo::RoundRobin,
        backends: b.iter().map(|b| b.addr).collect(),
    };
    table.upsert(&spec).unwrap();

    // ~40 MB at the backend's pace takes a few seconds: long enough to kill and restart.
    let stream = t.probe_spawn(&["stream", "127.0.0.1:7300", "40000000"]);
    let looper = t.probe_spawn(&["loop", "127.0.0.1:7300"]);
    sleep(Duration::from_millis(300));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid()), nix::sys::signal::SIGKILL)
        .unwrap();
    let _ = agent.0.wait();
    sleep(Duration::from_millis(300)); // connects keep being made with no agent at all
    let second = ChildGuard::spawn(agent_cmd(&t, &dir, api));
    sleep(Duration::from_millis(500));

    let looped: Summary = finish(looper);
    let streamed: Summary = finish(stream);
    assert_eq!(streamed.ok, 1, "transfer completed across the restart: {streamed:?}");
    assert!(looped.ok > 10, "{looped:?}");
    assert_eq!(looped.failed, 0, "connects during the restart: {:?}", looped.errors);
    // The restarted agent kept the service table (reconciled, not wiped).
    let table = ServiceTable::open(&maps_dir(&t.bpf.path)).unwrap();
    let status = table.get(&spec.frontend).unwrap().expect("service survived");
    assert_eq!(status.backends.len(), 3);
    assert!(status.conns >= looped.ok);
    // Exactly one set of links stays pinned: 9 cgroup programs, the tracepoint of unanswered
    // SYNs and the 2 socket iterators.
    let links: Vec<_> = std::fs::read_dir(t.bpf.path.join("links")).unwrap().collect();
    assert_eq!(links.len(), 12);
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_agents_on_one_kernel_do_not_see_each_other() {
    let t = Topo::without_agent();
    let (cg2, bpf2) = (Cgroup::new(), BpfDir::new());
    let one = Backend::tcp(&t.server, "one", "10.200.0.2:8000".parse().unwrap());
    let two = Backend::tcp(&t.server, "two", "10.200.0.3:8000".parse().unwrap());
    let mut dp1 = viking::datapath::Datapath::start(&t.config()).unwrap();
    let mut dp2 = viking::datapath::Datapath::start(&viking::datapath::DatapathConfig {
        cgroup: cg2.path.clone(),
        bpffs: bpf2.path.clone(),
    })
    .unwrap();
    // The same ambassador address means different services to the two agents.
    for (dp, backend) in [(&mut dp1, &one), (&mut dp2, &two)] {
        dp.table
            .upsert(&ServiceSpec {
                ejection: Default::default(),
                end_tcp: false,
                name: backend.name.clone(),
                frontend: Frontend {
                    addr: "127.0.0.1:7400".parse().unwrap(),
                    proto: Proto::Tcp,
                    netns: 0,
                },
                algo: Algo::Random,
                backends: vec![backend.addr],
            })
            .unwrap();
    }
    let c1 = t.probe(&["tcp", "127.0.0.1:7400", "20"]);
    assert!(c1.iter().all(|c| c.backend() == Some("one")), "{c1:?}");
    let mut cmd = t.client.command(viking_tests::probe_bin(), Some(&cg2));
    cmd.args(["tcp", "127.0.0.1:7400", "20"]);
    let c2 = run_probe(cmd);
    assert!(c2.iter().all(|c| c.backend() == Some("two")), "{c2:?}");
    assert_eq!(dp1.table.list().unwrap()[0].conns, 20);
    assert_eq!(dp2.table.list().unwrap()[0].conns, 20);
    drop((dp2, bpf2, cg2));
}

#[test]
fn pins_of_an_agent_without_the_newer_maps_keep_serving_after_an_upgrade() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7310", Proto::Tcp, Algo::Random, &[b[0].addr]);
    // What an agent from before socket storage, per-port counts and health left pinned.
    drop(t.datapath.take());
    let maps = maps_dir(&t.bpf.path);
    use viking_common::maps::*;
    // NB: PINNED lists the maps in the order they came; from SOCKS on, they came after.
    let newer = PINNED.iter().position(|m| *m == SOCKS).unwrap();
    for name in &PINNED[newer..] {
        std::fs::remove_file(maps.join(name)).unwrap();
    }
    for link in ["end_udp", "end_tcp"] {
        std::fs::remove_file(t.bpf.path.join("links").join(link)).unwrap();
    }
    // The upgraded agent recounts what the new programs read before they attach: the
    // service's port is known, its connects are redirected at once.
    t.datapath = Some(viking::datapath::Datapath::start(&t.config()).unwrap());
    let conns = t.probe(&["tcp", "127.0.0.1:7310", "20"]);
    assert!(conns.iter().all(|c| c.backend() == Some("b1")), "{conns:?}");
    let status = t.table().list().unwrap();
    assert_eq!(status[0].conns, 20);
    // NB: a connection is uncounted when its socket reaches TCP_CLOSE, which for the side that
    // closed first comes after the peer's FIN: the last one may still be on its way.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let active = t.table().list().unwrap()[0].backends[0].active;
        if active == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "closed connections are uncounted: {active}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
