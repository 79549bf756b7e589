//! The environment a linked-from job gets: Docker link variables pointing at the ambassador,
//! plus Kubernetes' `_SERVICE_HOST`/`_SERVICE_PORT`.
use std::{collections::BTreeMap, net::IpAddr};

use super::job::Port;
use crate::datapath::Proto;

/// One link as the env sees it: its prefix and, per container port, the ambassador port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPorts {
    pub prefix: String,
    pub ports: Vec<(Port, u16)>,
}

/// For a link X to container port P, ambassador A, allocated port Q:
/// `X_PORT_P=A:Q`, `X_PORT_P_TCP=tcp://A:Q`, `X_PORT_P_TCP_PROTO=tcp`, `X_PORT_P_TCP_PORT=Q`,
/// `X_PORT_P_TCP_ADDR=A` (udp likewise), and for the link's first port (TCP first, lowest
/// number first, as Docker picks it) `X_PORT=tcp://A:Q`,
/// `X_SERVICE_HOST=A`, `X_SERVICE_PORT=Q`.
pub fn link_env(ambassador: IpAddr, links: &[LinkPorts]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let host = match ambassador {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    for link in links {
        let x = &link.prefix;
        let mut ports = link.ports.clone();
        // TCP before UDP, so a bare `X_PORT_P` means TCP when both exist (Docker's choice).
        ports.sort_by_key(|(p, _)| (p.proto != Proto::Tcp, p.port));
        for (i, (p, q)) in ports.iter().enumerate() {
            let (proto, n) = (p.proto.to_string(), p.port);
            let up = proto.to_uppercase();
            env.entry(format!("{x}_PORT_{n}")).or_insert_with(|| format!("{host}:{q}"));
            env.insert(format!("{x}_PORT_{n}_{up}"), format!("{proto}://{host}:{q}"));
            env.insert(format!("{x}_PORT_{n}_{up}_PROTO"), proto.clone());
            env.insert(format!("{x}_PORT_{n}_{up}_PORT"), q.to_string());
            env.insert(format!("{x}_PORT_{n}_{up}_ADDR"), ambassador.to_string());
            if i == 0 {
                env.insert(format!("{x}_PORT"), format!("{proto}://{host}:{q}"));
                env.insert(format!("{x}_SERVICE_HOST"), ambassador.to_string());
                env.insert(format!("{x}_SERVICE_PORT"), q.to_string());
            }
        }
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_seed_example() {
        let env = link_env(
            "127.0.0.1".parse().unwrap(),
            &[LinkPorts {
                prefix: "SHARED_MONGO".into(),
                ports: vec![("27017".parse().unwrap(), 8934)],
            }],
        );
        assert_eq!(env["SHARED_MONGO_PORT_27017"], "127.0.0.1:8934");
        assert_eq!(env["SHARED_MONGO_PORT_27017_TCP"], "tcp://127.0.0.1:8934");
        assert_eq!(env["SHARED_MONGO_PORT_27017_TCP_PROTO"], "tcp");
        assert_eq!(env["SHARED_MONGO_PORT_27017_TCP_PORT"], "8934");
        assert_eq!(env["SHARED_MONGO_PORT_27017_TCP_ADDR"], "127.0.0.1");
        assert_eq!(env["SHARED_MONGO_SERVICE_HOST"], "127.0.0.1");
        assert_eq!(env["SHARED_MONGO_SERVICE_PORT"], "8934");
        assert_eq!(env["SHARED_MONGO_PORT"], "tcp://127.0.0.1:8934");
    }
}
