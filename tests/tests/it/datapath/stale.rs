//! Sockets pinned to a backend that left its service are ended, so that the application
//! reconnects to a live one: connected UDP always, TCP when the service asks for it.
use std::{
    io::{BufRead as _, BufReader, Write as _},
    process::{Child, ChildStdout},
};

use viking::datapath::{Algo, Proto};
use viking_tests::{
    backend::Backend,
    probe::{Conn, Summary},
    topo::{finish, read_until_ready, spec, Topo, SERVER_IPS},
};

/// A `udp-pinned` probe after its first exchange.
struct Pinned {
    child: Child,
    out: BufReader<ChildStdout>,
    first: Conn,
}

impl Pinned {
    fn start(t: &Topo, addr: &str) -> Self {
        let mut child = t.probe_spawn(&["udp-pinned", addr]);
        let mut out = BufReader::new(child.stdout.take().expect("stdout"));
        let first = read_conn(&mut out);
        let mut ready = String::new();
        out.read_line(&mut ready).expect("ready");
        assert_eq!(ready.trim(), "ready");
        Self { child, out, first }
    }

    /// The same socket again, then a new one.
    fn again(mut self) -> (Conn, Conn) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write");
        let same = read_conn(&mut self.out);
        let new = read_conn(&mut self.out);
        let _ = self.child.wait();
        (same, new)
    }
}

fn read_conn(out: &mut BufReader<ChildStdout>) -> Conn {
    let mut line = String::new();
    out.read_line(&mut line).expect("probe line");
    serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("probe line {line:?}: {e}"))
}

#[test]
fn a_connected_udp_socket_pinned_to_a_removed_backend_is_ended_and_reconnects() {
    let mut t = Topo::new();
    let u: Vec<Backend> = SERVER_IPS[..2]
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            Backend::udp(&t.server, &format!("u{}", i + 1), format!("{ip}:5300").parse().unwrap())
        })
        .collect();
    let addrs = [u[0].addr, u[1].addr];
    t.table().upsert(&spec("127.0.0.1:5360", Proto::Udp, Algo::Random, &addrs)).unwrap();

    // One client pinned to each backend.
    let (mut on_u1, mut on_u2) = (None, None);
    for _ in 0..40 {
        let p = Pinned::start(&t, "127.0.0.1:5360");
        match p.first.backend() {
            Some("u1") if on_u1.is_none() => on_u1 = Some(p),
            Some("u2") if on_u2.is_none() => on_u2 = Some(p),
            _ => drop(p.again()),
        }
        if on_u1.is_some() && on_u2.is_some() {
            break;
        }
    }
    let (on_u1, on_u2) = (on_u1.expect("a client on u1"), on_u2.expect("a client on u2"));

    // u1 leaves the service.
    t.table().upsert(&spec("127.0.0.1:5360", Proto::Udp, Algo::Random, &[u[1].addr])).unwrap();
    let ended = t.table().ended().unwrap();
    assert!(ended.available, "this kernel has bpf_sock_destroy");
    assert_eq!(ended.udp, 1, "exactly the socket on u1 was ended");

    let (same, new) = on_u1.again();
    assert!(same.reply.is_none() && same.errno.is_some(), "the ended socket errs: {same:?}");
    assert_eq!(new.backend(), Some("u2"), "its next socket reaches a live backend: {new:?}");
    let (same, _) = on_u2.again();
    assert_eq!(same.backend(), Some("u2"), "a socket on a backend that stayed is untouched");
    assert_eq!(same.peer.as_deref(), Some("127.0.0.1:5360"));
    // Every probe has exited: no socket is tracked any more, the ended one (disconnected by
    // its ending, so its release could not find it) included.
    assert_eq!(t.tracked_sockets(), (0, 0));
}

#[test]
fn tcp_connections_to_a_departed_backend_are_ended_only_when_the_service_asks() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let mut keep = spec("127.0.0.1:7700", Proto::Tcp, Algo::Random, &[b[0].addr]);
    let mut end = spec("127.0.0.1:7701", Proto::Tcp, Algo::Random, &[b[0].addr]);
    end.end_tcp = true;
    t.table().upsert(&keep).unwrap();
    t.table().upsert(&end).unwrap();
    let mut kept = t.probe_spawn(&["hold", "127.0.0.1:7700", "2"]);
    let mut ended = t.probe_spawn(&["hold", "127.0.0.1:7701", "2"]);
    assert!(read_until_ready(&mut kept).iter().all(|c| c.backend() == Some("b1")));
    assert!(read_until_ready(&mut ended).iter().all(|c| c.backend() == Some("b1")));

    // b1 leaves both services.
    keep.backends = vec![b[1].addr];
    end.backends = vec![b[1].addr];
    t.table().upsert(&keep).unwrap();
    t.table().upsert(&end).unwrap();
    assert_eq!(t.table().ended().unwrap().tcp, 2);

    let kept: Summary = finish(kept);
    assert_eq!(kept.ok, 2, "connections of the default service stay: {kept:?}");
    let ended: Summary = finish(ended);
    assert_eq!(ended.failed, 2, "connections of the end_tcp service were ended: {ended:?}");
    // New connections go to the backend that is there.
    let c = &t.probe(&["tcp", "127.0.0.1:7701"])[0];
    assert_eq!(c.backend(), Some("b2"));
}
