//! The redirected sockets' state, kept by socket cookie in a slot (CONN_SLOTS), else in a
//! preallocated hash (CONNS): each socket's entry goes with the socket, whichever way its
//! connect ended; a socket whose slot is taken goes to the hash, and past the hash's capacity
//! to its socket storage, with nothing lost.
use std::{
    io::Write as _,
    time::{Duration, Instant},
};

use viking::datapath::{Algo, Proto};
use viking_common::{ConnSlot, SockState, MAX_CONNS, MAX_CONN_SLOTS};
use viking_tests::{
    probe::{Conn, Summary},
    topo::{finish, read_until_ready, Topo, SERVER_IPS},
};

/// Cookies no socket has (the kernel counts them up from 1).
fn fake(i: u64) -> u64 {
    u64::MAX - i
}

/// Takes every slot with a cookie no socket has (`on`), or frees them all.
fn take_every_slot(t: &Topo, on: bool) {
    let mut slots = t.conn_slots();
    for i in 0..MAX_CONN_SLOTS {
        let cookie = if on { fake(u64::from(i)) } else { 0 };
        slots.set(i, ConnSlot { cookie, state: SockState::default() }, 0).expect("CONN_SLOTS");
    }
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
fn sockets_whose_slot_is_taken_go_to_the_hash_and_past_it_to_their_storage() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7502", Proto::Tcp, Algo::LeastConn, &[b[0].addr]);
    take_every_slot(&t, true);

    let mut in_hash = t.probe_spawn(&["hold", "127.0.0.1:7502", "5"]);
    let held = read_until_ready(&mut in_hash);
    assert!(
        held.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7502")),
        "getpeername reports the ambassador from the hash: {held:?}"
    );
    let mut table = t.conns();
    assert_eq!(table.keys().filter(Result::is_ok).count(), 5, "in CONNS, their slots taken");
    assert_eq!(t.table().sockets().unwrap().tracked, 5, "as viking status shows");

    // Fill the rest of the hash with entries no socket has.
    let filler = SockState::default();
    let rest = u64::from(MAX_CONNS) - 5;
    for i in 0..rest {
        table.insert(fake(i), filler, 0).expect("filling CONNS");
    }
    let mut in_storage = t.probe_spawn(&["hold", "127.0.0.1:7502", "5"]);
    let held = read_until_ready(&mut in_storage);
    assert!(
        held.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7502")),
        "getpeername reports the ambassador from the socket storage: {held:?}"
    );
    assert_eq!(t.table().list().unwrap()[0].backends[0].active, 10, "all counted");
    let past = t.table().sockets().unwrap().past_table;
    assert_eq!(past, 5, "the metrics show the sockets that found the table full");
    for holder in [in_hash, in_storage] {
        let summary: Summary = finish(holder);
        assert_eq!(summary.ok, 5);
    }

    for i in 0..rest {
        table.remove(&fake(i)).expect("emptying CONNS");
    }
    take_every_slot(&t, false);
    // Room again: new sockets go to their slots, and leave them.
    let ok = t.probe(&["tcp", "127.0.0.1:7502", "10"]);
    assert!(ok.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7502")), "{ok:?}");
    assert_all_gone(&mut t, "after sockets in the hash, in storage and in slots closed");
}

#[test]
fn a_socket_connected_again_after_a_failed_connect_leaves_nothing_behind() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7503", Proto::Tcp, Algo::LeastConn, &[b[0].addr]);
    let closed = format!("{}:8999", SERVER_IPS[1]).parse().unwrap();
    t.service("127.0.0.1:7504", Proto::Tcp, Algo::LeastConn, &[closed]);
    take_every_slot(&t, true);

    let mut probe = t.probe_spawn(&["reconnect", "127.0.0.1:7504", "127.0.0.1:7503"]);
    let first = read_until_ready(&mut probe);
    assert_eq!(first[0].errno, Some(libc::ECONNREFUSED), "{first:?}");
    assert_eq!(
        t.conns().keys().filter(Result::is_ok).count(),
        1,
        "its first connect went to the hash: its slot was taken"
    );
    // Its slot is free for the second connect: the socket has a slot and a hash entry.
    take_every_slot(&t, false);
    probe.stdin.as_mut().expect("stdin piped").write_all(b"again\n").expect("probe stdin");
    let second: Conn = finish(probe);
    assert_eq!(second.peer.as_deref(), Some("127.0.0.1:7503"), "{second:?}");
    assert!(second.reply.is_some(), "the backend greeted: {second:?}");
    assert_all_gone(&mut t, "after a socket connected twice closed");
}
