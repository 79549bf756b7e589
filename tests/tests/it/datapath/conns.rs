//! The redirected sockets' state, kept by socket cookie in a preallocated table (CONNS): each
//! socket's entry goes with the socket, whichever way its connect ended, and past the table's
//! capacity sockets are tracked in their socket storage instead, with nothing lost.
use std::time::{Duration, Instant};

use aya::maps::{HashMap, Map, MapData};
use viking::datapath::{maps_dir, Algo, Proto};
use viking_common::{maps, SockState, MAX_CONNS};
use viking_tests::{
    probe::Summary,
    topo::{finish, read_until_ready, Topo, SERVER_IPS},
};

fn conns(t: &Topo) -> HashMap<MapData, u64, SockState> {
    let data = MapData::from_pin(maps_dir(&t.bpf.path).join(maps::CONNS)).expect("CONNS pinned");
    Map::HashMap(data).try_into().expect("CONNS is a hash")
}

/// Waits (5 s at most) until no socket is tracked and no backend counts an open connection.
/// NB: a socket is released when the client closes it, which the probe has done when it
/// exits; the counts are read from another process, so they are polled.
fn assert_all_gone(t: &mut Topo, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (entries, per_port) = t.tracked_sockets();
        let active: u64 = t
            .table()
            .list()
            .expect("list")
            .iter()
            .flat_map(|s| &s.backends)
            .map(|b| b.active)
            .sum();
        let counted = t.table().sockets().expect("sockets").tracked;
        if (entries, per_port, active, counted) == (0, 0, 0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {entries} entries, {per_port} counted per port, {active} open connections, \
             {counted} counted tracked"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_socket_leaves_the_table_however_its_connect_ended() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7500", Proto::Tcp, Algo::LeastConn, &[b[0].addr]);
    // Nothing listens on this backend's port: each connect is answered with a RST.
    let closed = format!("{}:8999", SERVER_IPS[1]).parse().unwrap();
    t.service("127.0.0.1:7501", Proto::Tcp, Algo::LeastConn, &[closed]);

    let mut holder = t.probe_spawn(&["hold", "127.0.0.1:7500", "5"]);
    let held = read_until_ready(&mut holder);
    assert!(held.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7500")), "{held:?}");
    assert_eq!(
        t.tracked_sockets(),
        (5, 5),
        "held sockets are tracked, each under its backend's port"
    );
    assert_eq!(t.table().sockets().unwrap().tracked, 5, "as viking status and the metrics show");
    assert_eq!(t.table().list().unwrap()[0].backends[0].active, 5);

    let ok = t.probe(&["tcp", "127.0.0.1:7500", "20"]);
    assert!(ok.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7500")), "{ok:?}");
    let refused = t.probe(&["tcp", "127.0.0.1:7501", "5"]);
    assert!(refused.iter().all(|c| c.errno == Some(libc::ECONNREFUSED)), "{refused:?}");

    let summary: Summary = finish(holder);
    assert_eq!(summary.ok, 5, "the held connections still worked");
    assert_all_gone(&mut t, "after established, closed and refused connections");
}

#[test]
fn past_the_tables_capacity_sockets_are_tracked_in_their_storage() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7502", Proto::Tcp, Algo::LeastConn, &[b[0].addr]);
    // Fill the table with entries no socket has (cookies are counted up from 1).
    let mut table = conns(&t);
    let filler = SockState::default();
    for i in 0..u64::from(MAX_CONNS) {
        table.insert(u64::MAX - i, filler, 0).expect("filling CONNS");
    }

    let mut holder = t.probe_spawn(&["hold", "127.0.0.1:7502", "5"]);
    let held = read_until_ready(&mut holder);
    assert!(
        held.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7502")),
        "getpeername reports the ambassador from the socket storage: {held:?}"
    );
    assert_eq!(t.table().list().unwrap()[0].backends[0].active, 5, "counted without CONNS");
    let past = t.table().sockets().unwrap().past_table;
    assert_eq!(past, 5, "the metrics show the sockets that found the table full");
    let summary: Summary = finish(holder);
    assert_eq!(summary.ok, 5);

    for i in 0..u64::from(MAX_CONNS) {
        table.remove(&(u64::MAX - i)).expect("emptying CONNS");
    }
    // Room again: new sockets go to the table, and leave it.
    let ok = t.probe(&["tcp", "127.0.0.1:7502", "10"]);
    assert!(ok.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7502")), "{ok:?}");
    assert_all_gone(&mut t, "after sockets in storage and in the table closed");
}
