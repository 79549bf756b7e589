//! Test 4: port rules from anywhere on hosts with a tag (the edge host opens 80/tcp, the other
//! stays closed), a deny inside an allow wins, and IPv6 the same.
use std::net::SocketAddr;

use viking_tests::{
    backend::Backend,
    vpc::{reach, Reach, VpcNet},
};

use super::rule;

const POLICY: &str = "\
default: deny
allow:
  - from: cluster
  - name: web
    from: [0.0.0.0/0, '::/0']
    ports: [80/tcp]
    hosts: [edge]
  - name: private
    from: [10.97.0.0/24, 'fd97::/64']
    ports: [8080/tcp]
deny:
  - name: banned
    from: [10.97.0.100/32, 'fd97::100/128']
    ports: [8080/tcp]
";

#[tokio::test]
async fn port_rules_host_tags_and_deny_inside_allow_v4_and_v6() {
    let mut net = VpcNet::new(2, 2).await;
    net.start(0, POLICY, &["--tag", "edge"]).await;
    net.start(1, POLICY, &[]).await;
    let mut servers = Vec::new();
    for i in 0..2 {
        for port in [80, 8080] {
            servers.push(Backend::tcp(&net.hosts[i].ns, "s", net.addr(i, port)));
            servers.push(Backend::tcp(&net.hosts[i].ns, "s", net.addr6(i, port)));
        }
    }
    let (banned, other) = (&net.outsiders[0].ns, &net.outsiders[1].ns);
    type Addr = fn(&VpcNet, usize, u16) -> SocketAddr;
    for (family, at) in [("v4", VpcNet::addr as Addr), ("v6", VpcNet::addr6 as Addr)] {
        // 80/tcp from anywhere, on the edge host only.
        assert_eq!(reach(banned, at(&net, 0, 80)), Reach::Connected, "{family} edge:80");
        assert_eq!(reach(other, at(&net, 0, 80)), Reach::Connected, "{family} edge:80");
        assert_eq!(reach(other, at(&net, 1, 80)), Reach::Silent, "{family} other:80");
        // 8080/tcp from the private network, except the banned address.
        for i in 0..2 {
            assert_eq!(reach(other, at(&net, i, 8080)), Reach::Connected, "{family} {i}:8080");
            assert_eq!(reach(banned, at(&net, i, 8080)), Reach::Silent, "{family} banned {i}:8080");
        }
    }
    let edge = net.status(0).await;
    let plain = net.status(1).await;
    assert!(rule(&edge, "web").pass_packets >= 4, "{edge:#?}");
    assert!(!plain.rules.iter().any(|r| r.name.as_deref() == Some("web")), "{plain:#?}");
    assert_eq!(plain.policy.as_ref().map(|p| p.elsewhere), Some(1), "{plain:#?}");
    for s in [&edge, &plain] {
        assert!(rule(s, "banned").drop_packets >= 2, "{s:#?}");
        assert!(rule(s, "private").pass_packets >= 2, "{s:#?}");
    }
    assert!(super::default_rule(&plain).drop_packets >= 2, "{plain:#?}");
    drop(servers);
}
