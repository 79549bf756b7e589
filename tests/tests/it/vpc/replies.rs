//! Test 3: replies to connections the host opened pass (TCP, UDP, ping) though nothing
//! allows their source, and the ICMP that path MTU discovery needs passes: a transfer to a
//! host behind a narrower link completes because "fragmentation needed" from the router (not
//! a member) reaches the sender.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use viking_tests::{
    backend::Backend,
    guards::{veth, NetNs},
    vpc::{reach, udp_answers, Reach, VpcNet},
};

use super::{rule, CLUSTER_ONLY};

const FAR: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 2);
const MIB: usize = 1 << 20;

/// A sink in `ns`: reads each connection to its end, answers with the byte count.
fn sink(ns: &NetNs, addr: SocketAddr) -> std::thread::JoinHandle<()> {
    let listener = ns.enter(move || TcpListener::bind(addr).expect("bind sink"));
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            let mut buf = vec![0u8; 64 * 1024];
            let mut n = 0;
            while let Ok(k) = c.read(&mut buf) {
                if k == 0 {
                    break;
                }
                n += k;
            }
            let _ = c.write_all(n.to_string().as_bytes());
        }
    })
}

#[tokio::test]
async fn replies_and_path_mtu_icmp_pass() {
    let mut net = VpcNet::new(1, 1).await;
    net.start(0, CLUSTER_ONLY, &[]).await;
    // The outsider is a router to a far namespace over a link of MTU 1280 (its side only:
    // the far side offers a 1460-byte MSS, so the sender learns the path MTU from ICMP).
    let router = &net.outsiders[0];
    let far = NetNs::new("vkvf");
    veth(&router.ns, &["10.96.1.1/24"], &far, &[&format!("{FAR}/24")]);
    let router_side = router_iface(&router.ns);
    router.ns.ip(&["link", "set", &router_side, "mtu", "1280"]);
    let fwd = router.ns.command("sysctl", None).args(["-qw", "net.ipv4.ip_forward=1"]).status();
    assert!(fwd.expect("sysctl").success());
    far.ip(&["route", "add", "default", "via", "10.96.1.1"]);
    let host = &net.hosts[0];
    host.ns.ip(&["route", "add", "10.96.1.0/24", "via", &router.ip.to_string()]);

    let _tcp = Backend::tcp(&far, "far", SocketAddr::from((FAR, 7000)));
    let _udp = Backend::udp(&far, "far", SocketAddr::from((FAR, 7053)));
    let _own = Backend::tcp(&host.ns, "host", net.addr(0, 7000));
    let before = net.status(0).await;

    // Nothing allows the far side or the router in: they cannot open a connection here.
    assert_eq!(reach(&far, net.addr(0, 7000)), Reach::Silent);
    assert_eq!(reach(&router.ns, net.addr(0, 7000)), Reach::Silent);
    // But the host's own connections out get their replies.
    assert_eq!(reach(&host.ns, SocketAddr::from((FAR, 7000))), Reach::Connected);
    assert!(udp_answers(&host.ns, SocketAddr::from((FAR, 7053))), "UDP reply");
    let ping = host
        .ns
        .command("busybox", None)
        .args(["ping", "-c", "1", "-W", "2", &FAR.to_string()])
        .output()
        .expect("ping");
    assert!(ping.status.success(), "ping reply: {}", String::from_utf8_lossy(&ping.stdout));

    // 4 MiB with DF set across the narrower link.
    let done = sink(&far, SocketAddr::from((FAR, 7100)));
    let sent = host.ns.enter(|| {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((FAR, 7100)), Duration::from_secs(2))
                .expect("connect");
        s.set_write_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        s.write_all(&vec![7u8; 4 * MIB]).expect("the transfer crosses the narrow link");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("the far side's count");
        answer
    });
    done.join().expect("sink");
    assert_eq!(sent, (4 * MIB).to_string());
    let route = host
        .ns
        .command("ip", None)
        .args(["route", "get", &FAR.to_string()])
        .output()
        .expect("ip route get");
    let route = String::from_utf8_lossy(&route.stdout);
    assert!(route.contains("mtu 1280"), "the host learned the path MTU: {route}");

    let after = net.status(0).await;
    let icmp = |s| rule(s, "path MTU").pass_packets;
    assert!(icmp(&after) > icmp(&before), "fragmentation-needed counted as passed: {after:#?}");
    let replies = |s| rule(s, "connections opened from here").pass_packets;
    assert!(replies(&after) > replies(&before), "{after:#?}");
}

/// The router's end of the link to the far namespace (the one that is not on the bridge).
fn router_iface(ns: &NetNs) -> String {
    let out = ns
        .command("ip", None)
        .args(["-o", "addr", "show", "to", "10.96.1.1/24"])
        .output()
        .expect("ip addr");
    let text = String::from_utf8_lossy(&out.stdout);
    let name = text.split_whitespace().nth(1).expect("the router's far link");
    name.split('@').next().unwrap_or(name).trim_end_matches(':').to_owned()
}
