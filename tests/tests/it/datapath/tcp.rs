//! TCP through the ambassador address: reaches backends, reports the ambassador back,
//! refuses at once with no backend, leaves everything else alone.
use viking::datapath::{Algo, Proto};
use viking_tests::topo::{Topo, CLIENT_IP, CLIENT_IP6, SERVER_IP6};

#[test]
fn tcp_reaches_a_backend_in_another_namespace() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7000", Proto::Tcp, Algo::Random, &[b[0].addr]);

    let conns = t.probe(&["tcp", "127.0.0.1:7000"]);
    let c = &conns[0];
    assert_eq!(c.backend(), Some("b1"), "{c:?}");
    assert_eq!(c.peer.as_deref(), Some("127.0.0.1:7000"), "client's getpeername is the ambassador");
    let seen = c.seen_as().unwrap_or_default();
    assert!(
        seen.starts_with(&format!("{CLIENT_IP}:")),
        "backend sees the client's real address, got {seen}"
    );
}

#[test]
fn tcp_over_ipv6_reaches_a_v6_backend() {
    let mut t = Topo::new();
    let backend = viking_tests::backend::Backend::tcp(
        &t.server,
        "v6",
        format!("[{SERVER_IP6}]:8000").parse().unwrap(),
    );
    t.service("[::1]:7000", Proto::Tcp, Algo::Random, &[backend.addr]);
    let c = &t.probe(&["tcp", "[::1]:7000"])[0];
    assert_eq!(c.backend(), Some("v6"), "{c:?}");
    assert_eq!(c.peer.as_deref(), Some("[::1]:7000"));
    assert!(c.seen_as().unwrap_or_default().contains(CLIENT_IP6), "{c:?}");
}

#[test]
fn zero_backends_refuse_at_once() {
    let mut t = Topo::new();
    t.service("127.0.0.1:7001", Proto::Tcp, Algo::Random, &[]);
    let c = &t.probe(&["tcp", "127.0.0.1:7001"])[0];
    // The probe gives up after 5 s with ETIMEDOUT/EAGAIN; a refusal is the kernel's answer.
    assert_eq!(c.errno, Some(libc::ECONNREFUSED), "{c:?}");
    let status = t.table().list().unwrap();
    assert_eq!(status[0].rejects, 1, "the refusal is counted");
}

#[test]
fn other_addresses_and_ports_are_untouched() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7002", Proto::Tcp, Algo::Random, &[b[0].addr]);
    // A loopback listener in the client namespace on another port.
    let local =
        viking_tests::backend::Backend::tcp(&t.client, "local", "127.0.0.1:7003".parse().unwrap());
    let c = &t.probe(&["tcp", "127.0.0.1:7003"])[0];
    assert_eq!(c.backend(), Some("local"));
    assert_eq!(c.peer.as_deref(), Some("127.0.0.1:7003"));
    // A backend reached by its own address goes straight there.
    let c = &t.probe(&["tcp", &b[1].addr.to_string()])[0];
    assert_eq!(c.backend(), Some("b2"));
    assert_eq!(c.peer.as_deref(), Some(b[1].addr.to_string().as_str()));
    // The same port over UDP is not the TCP service: nothing answers, nothing is counted.
    let c = &t.probe(&["udp", "127.0.0.1:7002"])[0];
    assert!(c.reply.is_none(), "{c:?}");
    assert_eq!(t.table().list().unwrap()[0].conns, 0);
    drop(local);
}

#[test]
fn a_closed_connection_leaves_no_reverse_translation_behind() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    t.service("127.0.0.1:7004", Proto::Tcp, Algo::Random, &[b[0].addr]);
    let conns = t.probe(&["tcp", "127.0.0.1:7004", "50"]);
    assert!(conns.iter().all(|c| c.peer.as_deref() == Some("127.0.0.1:7004")), "{conns:?}");
    // Every socket closed (the probe closes each): their REVNAT entries went at TCP_CLOSE,
    // so closed sockets never push live ones out of the LRU.
    let mut left = usize::MAX;
    for _ in 0..50 {
        left = viking_tests::bench::hooks::revnat_entries(&t.bpf.path).unwrap();
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(left, 0, "REVNAT entries left after 50 closed connections");
}
