//! Embassy mode (seeds 002 and 004): `BACKEND_*` variables of a running container become
//! services at `127.0.0.1:<port>` and `[::1]:<port>` scoped to that container's network
//! namespace.
//!
//! `BACKEND_REDIS=redis.master[prod];6379/tcp` in container C gives C (and only the sockets
//! of C's network namespace) `127.0.0.1:6379/tcp`, balanced over the registrations of
//! `redis.master` that carry the tag `prod`. The kernel looks a connect up by
//! (address, port, protocol, netns cookie) first and by netns 0 second, so a container's own
//! descriptor wins over a global service on the same address and port.
//!
//! "localhost:6379" resolves to `127.0.0.1` or `::1` depending on the client, so both are
//! served, with the same backends. Backends are the IPv4 registrations only: a v6 socket
//! reaches them at their v4-mapped address, a v4 socket could not reach a v6 one.
use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{descriptor::Descriptor, endpoints::Endpoints};
use crate::datapath::{Algo, Frontend, ServiceSpec};

/// The address a container's descriptors are served on, inside its own network namespace.
pub const EMBASSY_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The same, for clients that resolve localhost to IPv6.
pub const EMBASSY_ADDR6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Whether `ip` is one of the addresses embassy serves on.
pub fn is_embassy_addr(ip: IpAddr) -> bool {
    ip == EMBASSY_ADDR || ip == EMBASSY_ADDR6
}

/// A running container (docker or exec instance) as embassy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The instance name (`<stack>_<job>_<index>`) or container id.
    pub id: String,
    /// The cookie of its network namespace (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    pub env: BTreeMap<String, String>,
}

/// The running containers of this host, by id. The reconciler publishes it.
pub type Containers = BTreeMap<String, Container>;

/// A descriptor that cannot be served: it does not parse, or another one already holds its
/// address in the same network namespace. The container's other descriptors still work.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub container: String,
    pub var: String,
    pub value: String,
    pub reason: String,
}

/// The netns-scoped services every container's descriptors ask for, and the descriptors that
/// cannot be served. Containers are taken in id order and their variables in name order: when
/// two descriptors of one network namespace (two containers sharing it, as with docker's
/// `--net=container:`) want the same port and protocol, the first one wins; the same
/// descriptor twice is one service.
pub fn desired(
    containers: &Containers,
    endpoints: &Endpoints,
    algo: Algo,
) -> (Vec<ServiceSpec>, Vec<Problem>) {
    let mut problems = Vec::new();
    // frontend -> (the descriptor that holds it, its spec)
    let mut held: BTreeMap<Frontend, (Descriptor, String, ServiceSpec)> = BTreeMap::new();
    for c in containers.values() {
        let (good, bad) = Descriptor::from_env(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        for e in bad {
            problems.push(Problem {
                container: c.id.clone(),
                var: e.var,
                value: e.value,
                reason: e.reason,
            });
        }
        for d in good {
            let value = c.env.get(&d.var).cloned().unwrap_or_default();
            if c.netns_cookie == 0 {
                problems.push(Problem {
                    container: c.id.clone(),
                    var: d.var.clone(),
                    value,
                    reason: "the container's network namespace is not known (cookie 0)".into(),
                });
                continue;
            }
            let frontend = Frontend {
                addr: SocketAddr::new(EMBASSY_ADDR, d.port),
                proto: d.proto,
                netns: c.netns_cookie,
            };
            match held.entry(frontend) {
                Entry::Occupied(o) => {
                    let (first, owner, _) = o.get();
                    let same = first.service == d.service && first.tags == d.tags;
                    if !same {
                        problems.push(Problem {
                            container: c.id.clone(),
                            var: d.var.clone(),
                            value,
                            reason: format!(
                                "{} in this network namespace is already {} of {owner}",
                                frontend.addr, first.var
                            ),
                        });
                    }
                }
                Entry::Vacant(v) => {
                    let backends: BTreeSet<SocketAddr> = endpoints
                        .for_descriptor(&d)
                        .map(|e| e.addr())
                        .filter(SocketAddr::is_ipv4)
                        .collect();
                    let spec = ServiceSpec {
                        ejection: Default::default(),
                        end_tcp: false,
                        name: super::endpoints::fit_name(&format!("{}:{}", c.id, d.var)),
                        frontend,
                        algo: d.balance.unwrap_or(algo),
                        backends: backends.into_iter().collect(),
                    };
                    v.insert((d, c.id.clone(), spec));
                }
            }
        }
    }
    let v4: Vec<ServiceSpec> = held.into_values().map(|(_, _, s)| s).collect();
    let v6: Vec<ServiceSpec> = v4
        .iter()
        .map(|s| {
            let mut s6 = s.clone();
            s6.frontend.addr = SocketAddr::new(EMBASSY_ADDR6, s.frontend.addr.port());
            s6
        })
        .collect();
    (v4.into_iter().chain(v6).collect(), problems)
}

/// Says each problem once: when it first appears (again), not on every pass.
#[derive(Debug, Default)]
pub struct Reported {
    seen: BTreeSet<Problem>,
}

impl Reported {
    /// Logs the problems not reported in the last pass; returns them.
    pub fn report(&mut self, problems: Vec<Problem>) -> Vec<Problem> {
        let now: BTreeSet<Problem> = problems.into_iter().collect();
        let fresh: Vec<Problem> = now.difference(&self.seen).cloned().collect();
        for p in &fresh {
            tracing::warn!(
                container = %p.container,
                var = %p.var,
                value = %p.value,
                reason = %p.reason,
                "BACKEND_ descriptor not served"
            );
        }
        self.seen = now;
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        datapath::Proto,
        discovery::registration::{Endpoint, Registration, RegistrationKey},
    };

    fn endpoint(env: &str, service: &str, ip: &str, tags: &[&str]) -> Endpoint {
        let key = RegistrationKey {
            env: env.into(),
            service: service.into(),
            port: 6379,
            host_port: 6379,
            id: ip.into(),
        };
        let record = Registration {
            id: ip.into(),
            host: "h".into(),
            ipaddress: ip.parse().unwrap(),
            host_port: 6379,
            port: Some(6379),
            proto: None,
            name: String::new(),
            image: String::new(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            env: BTreeMap::new(),
            hostname: None,
            path: None,
        };
        Endpoint { key, record }
    }

    fn container(id: &str, cookie: u64, env: &[(&str, &str)]) -> Container {
        Container {
            id: id.into(),
            netns_cookie: cookie,
            env: env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    fn world() -> Endpoints {
        let mut e = Endpoints::default();
        e.insert(endpoint("prod", "redis.master", "10.0.0.1", &["prod"]));
        e.insert(endpoint("prod", "redis.master", "10.0.0.2", &["prod", "stats"]));
        e.insert(endpoint("dev", "redis.master", "10.0.0.3", &[]));
        e.insert(endpoint("prod", "redis.slave", "10.0.0.4", &["prod"]));
        e
    }

    #[test]
    fn descriptors_become_netns_scoped_services() {
        let cs: Containers = [container(
            "web",
            7,
            &[
                ("BACKEND_REDIS", "redis.master[prod];6379/tcp"),
                ("BACKEND_STATS", "/services/prod/redis.master[stats];6380"),
                ("PATH", "/bin"),
            ],
        )]
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
        let (specs, problems) = desired(&cs, &world(), Algo::Random);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(specs.len(), 4, "two descriptors, each on 127.0.0.1 and ::1");
        let redis = &specs[0];
        assert_eq!(redis.frontend.addr, "127.0.0.1:6379".parse().unwrap());
        assert_eq!((redis.frontend.netns, redis.frontend.proto), (7, Proto::Tcp));
        assert_eq!(
            redis.backends,
            ["10.0.0.1:6379".parse().unwrap(), "10.0.0.2:6379".parse().unwrap()]
        );
        assert_eq!(specs[1].backends, ["10.0.0.2:6379".parse().unwrap()]);
        let redis6 = &specs[2];
        assert_eq!(redis6.frontend.addr, "[::1]:6379".parse().unwrap());
        assert_eq!((redis6.frontend.netns, &redis6.backends), (7, &redis.backends));
    }

    #[test]
    fn bad_and_clashing_descriptors_are_problems_the_rest_still_work() {
        let cs: Containers = [
            container(
                "a",
                7,
                &[("BACKEND_BAD", "redis.master[prod;6379"), ("BACKEND_R", "redis.master;6379")],
            ),
            // Shares a's namespace: the same descriptor is fine, another one on 6379 is not.
            container(
                "b",
                7,
                &[("BACKEND_R", "redis.master;6379"), ("BACKEND_S", "redis.slave;6379/tcp")],
            ),
            container("c", 9, &[("BACKEND_S", "redis.slave;6379/tcp")]),
        ]
        .into_iter()
        .map(|c| (c.id.clone(), c))
        .collect();
        let (specs, problems) = desired(&cs, &world(), Algo::Random);
        assert_eq!(specs.len(), 4, "{specs:?}");
        assert_eq!(specs[0].backends.len(), 3);
        assert_eq!(specs[1].frontend.netns, 9);
        let who: Vec<(&str, &str)> =
            problems.iter().map(|p| (p.container.as_str(), p.var.as_str())).collect();
        assert_eq!(who, [("a", "BACKEND_BAD"), ("b", "BACKEND_S")]);
        assert!(problems[1].reason.contains("BACKEND_R of a"), "{}", problems[1].reason);
    }

    #[test]
    fn problems_are_reported_once() {
        let p = Problem {
            container: "a".into(),
            var: "BACKEND_X".into(),
            value: "x".into(),
            reason: "no ';'".into(),
        };
        let mut r = Reported::default();
        assert_eq!(r.report(vec![p.clone()]).len(), 1);
        assert!(r.report(vec![p.clone()]).is_empty());
        assert!(r.report(vec![]).is_empty());
        assert_eq!(r.report(vec![p]).len(), 1, "a problem that comes back is said again");
    }
}
