//! The benchmark's no-op programs (`Datapath::floor`): while attached they run on every
//! connection of the datapath's cgroup, beside its own programs, and they go when dropped.
use viking::datapath::{Algo, Proto};
use viking_tests::{
    bench::hooks::{by_id, StatsOn},
    topo::Topo,
};

fn runs(ids: [u32; 2]) -> [u64; 2] {
    ids.map(|id| by_id(id).expect("the no-op program is loaded").runs)
}

#[test]
fn the_no_op_programs_run_once_per_connection_while_attached() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7700", Proto::Tcp, Algo::Random, &[b[0].addr]);
    // NB: run counts are kept only while BPF_ENABLE_STATS is held.
    let _on = StatsOn::new().expect("BPF_ENABLE_STATS");
    let cgroup = t.cgroup.path.clone();
    let floor = t.datapath.as_mut().expect("agent started").floor(&cgroup).expect("floor");
    let ids = floor.ids;
    let before = runs(ids);
    let ok = t.probe(&["tcp", "127.0.0.1:7700", "20"]);
    assert!(ok.iter().all(|c| c.reply.is_some()), "the service works beside them: {ok:?}");
    let after = runs(ids);
    // The probe's own sockets only: 20 connects, 20 closes (its process may open others).
    assert!(after[0] - before[0] >= 20, "connect4 ran {} times", after[0] - before[0]);
    assert!(after[1] - before[1] >= 20, "the release ran {} times", after[1] - before[1]);

    drop(floor);
    let detached = runs(ids);
    let ok = t.probe(&["tcp", "127.0.0.1:7700", "5"]);
    assert!(ok.iter().all(|c| c.reply.is_some()), "{ok:?}");
    assert_eq!(runs(ids), detached, "detached when dropped");
}
