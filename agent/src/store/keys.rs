//! The key layout (design.md "Store layout"; docs/store.md). Every key Viking reads or writes
//! is built here, so the layout is in one place.
//!
//! ```text
//! /viking/hosts/<host>                          membership (leased)
//! /viking/deploy/<stack>/<job>                  job definitions
//! /viking/plan/<stack>/<job>                    what a deploy resolved: links, ports, env
//! /viking/proc/<host>/<stack>/<job>/<index>     intent, written by the leader
//! /viking/ps/<host>/<stack>/<job>/<index>       actual state (leased)
//! /viking/alloc/ports/next                      port counter
//! /viking/alloc/ports/<stack>_<job>/<port>      the ambassador port of that service port
//! /viking/alloc/subnets/<stack>                 a stack's subnet
//! /viking/alloc/ips/<stack>/<ip>                a container's address
//! /viking/history/<stack>/<job>                 where it ran
//! /viking/waiting/<stack>/<job>/<index>         why an instance is not placed
//! /viking/leader                                election
//! /viking/journal/...                           bulk writes in progress (store::bulk)
//! /services/<env>/<service>/<port>/<host_port>/<id>   registrations (seed 002)
//! ```

pub const ROOT: &str = "/viking/";
pub const HOSTS: &str = "/viking/hosts/";
pub const DEPLOY: &str = "/viking/deploy/";
pub const PLANS: &str = "/viking/plan/";
pub const PROC: &str = "/viking/proc/";
pub const PS: &str = "/viking/ps/";
pub const PORTS: &str = "/viking/alloc/ports/";
pub const PORTS_NEXT: &str = "/viking/alloc/ports/next";
pub const SUBNETS: &str = "/viking/alloc/subnets/";
pub const IPS: &str = "/viking/alloc/ips/";
pub const HISTORY: &str = "/viking/history/";
pub const WAITING: &str = "/viking/waiting/";
pub const LEADER: &str = "/viking/leader";
/// Bulk writes in progress (`store::bulk`).
pub const JOURNAL: &str = "/viking/journal/";
pub const SERVICES: &str = "/services/";

/// Why a name cannot be one segment of a key, if it cannot.
pub fn segment_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("it contains whitespace or control characters")
    } else if name.len() > 253 {
        Some("it is longer than 253 bytes")
    } else {
        None
    }
}

/// `/viking/proc/<host>/<stack>/<job>/<index>`.
pub fn proc(host: &str, stack: &str, job: &str, index: u32) -> String {
    format!("{PROC}{host}/{stack}/{job}/{index}")
}

/// `/viking/ps/<host>/<stack>/<job>/<index>`.
pub fn ps(host: &str, stack: &str, job: &str, index: u32) -> String {
    format!("{PS}{host}/{stack}/{job}/{index}")
}

pub fn waiting(stack: &str, job: &str, index: u32) -> String {
    format!("{WAITING}{stack}/{job}/{index}")
}

pub fn history(stack: &str, job: &str) -> String {
    format!("{HISTORY}{stack}/{job}")
}

/// `(host, stack, job, index)` of a `proc` or `ps` key under `prefix`.
pub fn parse_instance(prefix: &str, key: &str) -> Option<(String, String, String, u32)> {
    let mut it = key.strip_prefix(prefix)?.split('/');
    let (host, stack, job, index) = (it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() {
        return None;
    }
    Some((host.to_owned(), stack.to_owned(), job.to_owned(), index.parse().ok()?))
}

pub fn host(host: &str) -> String {
    format!("{HOSTS}{host}")
}

/// `/viking/alloc/ports/<service>/` where service is `<stack>_<job>`.
pub fn service_ports(service: &str) -> String {
    format!("{PORTS}{service}/")
}

pub fn service_port(service: &str, port: u16) -> String {
    format!("{PORTS}{service}/{port}")
}

pub fn subnet(stack: &str) -> String {
    format!("{SUBNETS}{stack}")
}

pub fn stack_ips(stack: &str) -> String {
    format!("{IPS}{stack}/")
}

pub fn ip(stack: &str, ip: std::net::Ipv4Addr) -> String {
    format!("{IPS}{stack}/{ip}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_design() {
        assert_eq!(service_port("shared_mongo", 27017), "/viking/alloc/ports/shared_mongo/27017");
        assert_eq!(subnet("web"), "/viking/alloc/subnets/web");
        assert_eq!(ip("web", "10.32.0.2".parse().unwrap()), "/viking/alloc/ips/web/10.32.0.2");
        assert_eq!(host("one"), "/viking/hosts/one");
        let k = proc("alpha", "web", "app", 2);
        assert_eq!(k, "/viking/proc/alpha/web/app/2");
        assert_eq!(parse_instance(PROC, &k), Some(("alpha".into(), "web".into(), "app".into(), 2)));
        assert_eq!(parse_instance(PROC, "/viking/proc/alpha/web/app"), None);
        assert!(segment_problem("a/b").is_some());
        assert!(segment_problem("").is_some());
        assert!(segment_problem("a b").is_some());
        assert!(segment_problem("shared_mongo").is_none());
    }
}
