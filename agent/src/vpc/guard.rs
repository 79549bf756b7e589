//! The lockout guard: a policy that would refuse a new connection like one that is
//! established to this host right now (the operator's SSH session, an API client, a peer
//! agent) is refused unless forced. The policy was applied over one of those connections;
//! which one, the agent cannot tell, so it protects them all. Established connections
//! themselves never break on a reload (the connection table keeps them); the guard is about
//! the next login.
use std::{collections::BTreeSet, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    compile::Compiled,
    host::HostNet,
    policy::Action,
    sockets::{Conn, SockProto},
};

/// A connection the new policy would not let in again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offender {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub iface: String,
    /// The rule that would drop it (`None`: the interface's default).
    pub rule: Option<String>,
}

impl std::fmt::Display for Offender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}/tcp on {}", self.remote, self.local, self.iface)?;
        match &self.rule {
            Some(r) => write!(f, " ({r})"),
            None => write!(f, " (the default)"),
        }
    }
}

/// The established inbound TCP connections that `new` would drop as new connections while
/// `running` (the policy in force, `None` for no filter) lets them in.
pub fn check(
    running: Option<&Compiled>,
    new: &Compiled,
    conns: &[Conn],
    net: &HostNet,
    members: &BTreeSet<IpAddr>,
) -> Vec<Offender> {
    let mut out = Vec::new();
    for c in conns {
        if c.proto != SockProto::Tcp || !c.inbound || net.is_local(c.remote.ip()) {
            continue;
        }
        // The connection came in on the interface that holds its local address.
        let Some(link) = net.link_with(c.local.ip()) else { continue };
        let Some(slot) = new.slot(&link.name) else { continue };
        let member = members.contains(&c.remote.ip());
        let port = c.local.port();
        let now = new.evaluate(slot.slot, 6, port, c.remote.ip(), member);
        if now.action == Action::Allow {
            continue;
        }
        let before = running.and_then(|r| {
            r.slot(&link.name).map(|s| r.evaluate(s.slot, 6, port, c.remote.ip(), member))
        });
        if before.is_some_and(|b| b.action == Action::Deny) {
            continue;
        }
        out.push(Offender {
            remote: c.remote,
            local: c.local,
            iface: link.name.clone(),
            rule: now.rule.map(|i| {
                let r = &new.rules[i];
                format!("{}:{} {}", r.file, r.line, r.description)
            }),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, path::Path};

    use super::*;
    use crate::{
        netlink::links::LinkInfo,
        vpc::{
            compile::{compile, HostView},
            policy::parse_policy,
        },
    };

    fn compiled(text: &str) -> Compiled {
        let f = parse_policy(Path::new("p.yml"), text).unwrap();
        let view = HostView {
            tags: vec![],
            cluster_iface: Some("eth0".into()),
            ifaces: [("eth0".to_owned(), 2)].into(),
        };
        compile(&[f], &view, &BTreeMap::new()).unwrap()
    }

    #[test]
    fn refuses_a_policy_that_would_shut_out_an_established_session() {
        let net = HostNet {
            links: vec![LinkInfo {
                name: "eth0".into(),
                index: 2,
                ether: true,
                addrs: vec![("10.0.0.2".parse().unwrap(), 24)],
            }],
            conns: vec![],
        };
        let ssh = Conn {
            proto: SockProto::Tcp,
            local: "10.0.0.2:22".parse().unwrap(),
            remote: "192.168.50.10:50000".parse().unwrap(),
            inbound: true,
        };
        let out = Conn { inbound: false, ..ssh };
        let open = compiled("allow:\n  - from: 192.168.50.0/24\n    ports: [22/tcp]\n");
        let shut = compiled("allow:\n  - from: cluster\n");
        let none = BTreeSet::new();
        let o = check(Some(&open), &shut, &[ssh, out], &net, &none);
        assert_eq!(o.len(), 1);
        assert_eq!(
            o[0].to_string(),
            "192.168.50.10:50000 -> 10.0.0.2:22/tcp on eth0 (the default)"
        );
        // No filter yet: the same.
        assert_eq!(check(None, &shut, &[ssh], &net, &none).len(), 1);
        // Already shut out before: not this policy's doing.
        assert!(check(Some(&shut), &shut, &[ssh], &net, &none).is_empty());
        // A member is let in by `from: cluster`.
        let members: BTreeSet<IpAddr> = ["192.168.50.10".parse().unwrap()].into();
        assert!(check(Some(&open), &shut, &[ssh], &net, &members).is_empty());
        assert!(check(Some(&shut), &open, &[ssh], &net, &none).is_empty());
    }
}
