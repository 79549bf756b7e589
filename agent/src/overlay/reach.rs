//! Whether the path from this host to a backend exists: the overlay has a route to its address
//! (`Reach`, published by the overlay loop after each pass) and the datapath has programmed
//! its registration (the store revision discovery has applied). The reconciler asks before it
//! starts an instance that links to the backend, so the instance's first connect works.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use ipnetwork::Ipv4Network;
use tokio::sync::watch;

use crate::store::Revision;

/// What the overlay routes, as of its last pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reach {
    /// It has made at least one pass (before that it knows nothing).
    pub ready: bool,
    /// The instance address pool: addresses outside it are not the overlay's to route.
    pub pool: Option<Ipv4Network>,
    /// This host's own instances (routed by their veths).
    pub local: BTreeSet<Ipv4Addr>,
    /// Other hosts' instances with a route in the kernel.
    pub routed: BTreeSet<Ipv4Addr>,
    /// Other hosts' instances without one, and why.
    pub unrouted: BTreeMap<Ipv4Addr, String>,
}

impl Reach {
    /// Why `ip` cannot be reached from this host yet; `None` when it can (or is not an
    /// instance address).
    pub fn problem(&self, ip: IpAddr) -> Option<String> {
        let IpAddr::V4(v4) = ip else { return None };
        if !self.pool.is_some_and(|p| p.contains(v4)) {
            return None;
        }
        if !self.ready {
            return Some(format!("no route to {ip} yet (the overlay has not synced)"));
        }
        if self.local.contains(&v4) || self.routed.contains(&v4) {
            return None;
        }
        Some(match self.unrouted.get(&v4) {
            Some(why) => format!("no route to {ip}: {why}"),
            None => format!("no route to {ip} yet"),
        })
    }
}

/// The reconciler's view of both halves of a path.
#[derive(Clone)]
pub struct Paths {
    pub reach: watch::Receiver<Reach>,
    /// The `/services/` revision the datapath has programmed.
    pub datapath: watch::Receiver<Revision>,
}

impl Paths {
    /// Why the path to one of `backends` (address, and the revision its registration was
    /// written at) is not complete yet; `None` when every one is.
    pub fn problem(
        &self,
        backends: impl IntoIterator<Item = (IpAddr, Revision)>,
    ) -> Option<String> {
        let reach = self.reach.borrow();
        let programmed = *self.datapath.borrow();
        for (ip, revision) in backends {
            if let Some(p) = reach.problem(ip) {
                return Some(p);
            }
            if revision > programmed {
                return Some(format!("the datapath has not programmed {ip} yet"));
            }
        }
        None
    }

    /// Wakes when either half changed; never, once both senders are gone.
    pub async fn changed(&mut self) {
        tokio::select! {
            Ok(()) = self.reach.changed() => {}
            Ok(()) = self.datapath.changed() => {}
            else => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_pool_addresses_need_a_route() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut r = Reach { pool: "10.32.0.0/12".parse().ok(), ..Reach::default() };
        assert!(r.problem(ip("192.168.1.5")).is_none(), "not an instance address");
        assert!(r.problem(ip("10.32.0.5")).unwrap().contains("not synced"));
        r.ready = true;
        r.local.insert("10.32.0.5".parse().unwrap());
        r.routed.insert("10.32.0.6".parse().unwrap());
        r.unrouted.insert("10.32.0.7".parse().unwrap(), "host c is left out".into());
        assert_eq!(r.problem(ip("10.32.0.5")), None);
        assert_eq!(r.problem(ip("10.32.0.6")), None);
        assert!(r.problem(ip("10.32.0.7")).unwrap().contains("host c is left out"));
        assert!(r.problem(ip("10.32.0.8")).is_some());
    }

    #[test]
    fn a_registration_newer_than_the_datapath_waits() {
        let (_rt, reach) = watch::channel(Reach::default());
        let (dt, datapath) = watch::channel(5);
        let p = Paths { reach, datapath };
        let b = ("192.168.0.1".parse().unwrap(), 7);
        assert!(p.problem([b]).unwrap().contains("datapath"));
        dt.send_replace(7);
        assert_eq!(p.problem([b]), None);
    }
}
