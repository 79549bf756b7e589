//! UDP through the ambassador address, unconnected (sendto) and connected.
use viking::datapath::{Algo, Proto};
use viking_tests::{
    backend::Backend,
    topo::{Topo, CLIENT_IP, SERVER_IPS},
};

#[test]
fn udp_sendto_and_connected_reach_a_backend_and_replies_come_from_the_ambassador() {
    let mut t = Topo::new();
    let b = Backend::udp(&t.server, "u1", format!("{}:5300", SERVER_IPS[0]).parse().unwrap());
    t.service("127.0.0.1:5353", Proto::Udp, Algo::Random, &[b.addr]);

    let c = &t.probe(&["udp", "127.0.0.1:5353"])[0];
    assert_eq!(c.backend(), Some("u1"), "{c:?}");
    assert_eq!(c.peer.as_deref(), Some("127.0.0.1:5353"), "recvfrom reports the ambassador");
    assert!(c.seen_as().unwrap_or_default().starts_with(CLIENT_IP), "{c:?}");

    let c = &t.probe(&["udp", "127.0.0.1:5353", "connected"])[0];
    assert_eq!(c.backend(), Some("u1"), "{c:?}");
    assert_eq!(c.peer.as_deref(), Some("127.0.0.1:5353"), "getpeername reports the ambassador");
}

#[test]
fn udp_to_a_service_without_backends_is_dropped_and_counted() {
    let mut t = Topo::new();
    t.service("127.0.0.1:5354", Proto::Udp, Algo::Random, &[]);
    let c = &t.probe(&["udp", "127.0.0.1:5354"])[0];
    assert!(c.reply.is_none(), "{c:?}");
    assert_eq!(t.table().list().unwrap()[0].drops, 1);
}
