//! The pure decision: from this host, the members and where every instance address lives,
//! what the kernel should hold.
//!
//! - vxlan: per peer one FDB entry (its VTEP MAC -> its underlay address) and one static
//!   neighbour (its underlay address -> its VTEP MAC, on the VXLAN device); per instance of
//!   that peer a `/32` route through the peer's underlay address, on-link on the VXLAN device.
//!   The neighbour resolves every route's gateway, so nothing is ever ARPed across the overlay.
//! - host-gw: per instance of a peer a `/32` route through the peer's address on the shared
//!   segment; no device, FDB or neighbours.
//!
//! This host's own instances are routed by their veths (`netlink::instance`), not here.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use super::Mode;
use crate::{
    cluster::membership::HostInfo,
    netlink::{fdb::Fdb, vxlan::Vxlan, Mac},
};

/// One of Viking's routes to a remote instance: through `gateway` (the peer's underlay
/// address), on-link on the VXLAN device when `on_device`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub gateway: Ipv4Addr,
    pub on_device: bool,
}

/// What the overlay holds in the kernel (desired or dumped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub device: Option<Vxlan>,
    /// The host's overlay address, on the device (a /32).
    pub address: Option<Ipv4Addr>,
    pub fdb: BTreeSet<Fdb>,
    /// On the VXLAN device: peer underlay address -> its VTEP MAC.
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
    /// Instance address (a /32) -> route.
    pub routes: BTreeMap<Ipv4Addr, Route>,
}

/// This host, as the decision needs it.
#[derive(Debug, Clone)]
pub struct Me {
    pub name: String,
    pub mode: Mode,
    /// The VXLAN device it wants (vxlan mode with a usable address; `None` otherwise).
    pub device: Option<Vxlan>,
    /// Its own address on the overlay (vxlan mode).
    pub address: Option<Ipv4Addr>,
}

/// Another member, as this host sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Peer {
    pub name: String,
    pub address: IpAddr,
    /// Its VTEP MAC (vxlan mode, when its record has a usable one).
    pub mac: Option<String>,
    pub port: Option<u16>,
    /// Its instances this host routes.
    pub instances: usize,
    /// Why it is left out (its instances get no routes), if it is.
    pub problem: Option<String>,
}

/// The decision: the kernel state, the peers, and the remote instances without a route (and
/// why).
#[derive(Debug, Clone, Default)]
pub struct Desired {
    pub state: State,
    pub peers: Vec<Peer>,
    /// Addresses of this host's own instances.
    pub local: BTreeSet<Ipv4Addr>,
    pub unrouted: BTreeMap<Ipv4Addr, String>,
}

/// A peer's usable VTEP, or why it has none.
fn vtep_of(h: &HostInfo, me: &Vxlan) -> Result<(Ipv4Addr, Mac, u16, Option<Ipv4Addr>), String> {
    let IpAddr::V4(addr) = h.address else {
        return Err(format!("its address {} is IPv6; the overlay runs on IPv4", h.address));
    };
    let vtep = h.vtep()?;
    let mac: Mac = vtep.mac.parse().map_err(|e| format!("its VTEP MAC: {e}"))?;
    if vtep.vni != me.vni {
        return Err(format!("its VNI {} is not this host's {}", vtep.vni, me.vni));
    }
    if addr == me.local {
        return Err(format!("its address {addr} is this host's own"));
    }
    if vtep.port == 0 {
        return Err("its VXLAN port is 0".into());
    }
    Ok((addr, mac, vtep.port, vtep.address))
}

/// What the kernel should hold. `instances` is every instance address with the host it is
/// placed on (the leader's intent).
pub fn desired(me: &Me, members: &[HostInfo], instances: &[(String, Ipv4Addr)]) -> Desired {
    let mut out = Desired {
        state: State {
            device: me.device.clone(),
            address: me.device.as_ref().and(me.address),
            ..State::default()
        },
        ..Desired::default()
    };
    out.local.extend(out.state.address);
    let mut by_host: BTreeMap<&str, Vec<Ipv4Addr>> = BTreeMap::new();
    for (host, ip) in instances {
        if *host == me.name {
            out.local.insert(*ip);
        } else {
            by_host.entry(host.as_str()).or_default().push(*ip);
        }
    }
    let mut members: Vec<&HostInfo> = members.iter().filter(|h| h.name != me.name).collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    // NB: a gateway per peer; two members claiming one address would share routes, so the
    // second one (by name) is left out rather than stealing the first one's traffic.
    let mut gateways: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
    for h in members {
        let ips = by_host.remove(h.name.as_str()).unwrap_or_default();
        let mut peer = Peer {
            name: h.name.clone(),
            address: h.address,
            mac: None,
            port: None,
            instances: 0,
            problem: None,
        };
        let mut host_address = None;
        let gateway: Result<(Ipv4Addr, bool), String> = match (me.mode, &me.device) {
            (Mode::Vxlan, None) => {
                Err("this host has no VXLAN device (its address is loopback)".into())
            }
            (Mode::Vxlan, Some(dev)) => vtep_of(h, dev).map(|(addr, mac, port, overlay)| {
                peer.mac = Some(mac.to_string());
                peer.port = Some(port);
                host_address = overlay;
                (addr, true)
            }),
            (Mode::HostGw, _) => match h.address {
                IpAddr::V4(a) => Ok((a, false)),
                IpAddr::V6(a) => Err(format!("its address {a} is IPv6; host-gw routes IPv4")),
            },
        };
        let gateway = gateway.and_then(|(addr, on_device)| match gateways.get(&addr) {
            Some(other) => Err(format!("its address {addr} is also {other}'s")),
            None => Ok((addr, on_device)),
        });
        match gateway {
            Ok((addr, on_device)) => {
                gateways.insert(addr, &h.name);
                if let (true, Some(dev), Some(mac)) =
                    (on_device, &me.device, peer.mac.as_deref().and_then(|m| m.parse::<Mac>().ok()))
                {
                    let port = peer.port.filter(|p| *p != dev.port).unwrap_or(0);
                    out.state.fdb.insert(Fdb { mac, dst: addr, port, vni: 0 });
                    out.state.neighbours.insert(addr, mac);
                }
                for ip in ips {
                    if out.local.contains(&ip) {
                        continue;
                    }
                    out.state.routes.insert(ip, Route { gateway: addr, on_device });
                    peer.instances += 1;
                }
                // Its own overlay address, which what it sends itself comes from.
                if let Some(ip) = host_address.filter(|ip| !out.local.contains(ip)) {
                    out.state.routes.insert(ip, Route { gateway: addr, on_device });
                }
            }
            Err(why) => {
                for ip in ips {
                    out.unrouted
                        .insert(ip, format!("host {} is left out of the overlay: {why}", h.name));
                }
                peer.problem = Some(why);
            }
        }
        out.peers.push(peer);
    }
    for (host, ips) in by_host {
        for ip in ips {
            out.unrouted.entry(ip).or_insert_with(|| format!("its host {host} is not a member"));
        }
    }
    for ip in out.state.routes.keys() {
        out.unrouted.remove(ip);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::membership::Vtep;

    fn device() -> Vxlan {
        Vxlan {
            name: "vk-vxlan".into(),
            vni: 42,
            port: 4789,
            local: Ipv4Addr::new(10, 0, 1, 1),
            dev: 2,
            mtu: 1450,
            mac: Mac::derived("a"),
            learning: false,
            up: true,
        }
    }

    fn me(mode: Mode) -> Me {
        Me { name: "a".into(), mode, device: (mode == Mode::Vxlan).then(device), address: None }
    }

    fn host(name: &str, addr: &str, mac: Option<&str>) -> HostInfo {
        let mut h = HostInfo::new(name, addr.parse().unwrap());
        if let Some(mac) = mac {
            h.set_vtep(&Vtep { mac: mac.into(), vni: 42, port: 4789, address: None });
        }
        h
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn a_peer_gets_one_fdb_entry_one_neighbour_and_a_route_per_instance() {
        let members = [
            host("a", "10.0.1.1", Some("02:00:00:00:00:0a")),
            host("b", "10.0.2.1", Some("02:00:00:00:00:0b")),
        ];
        let instances = [
            ("a".to_string(), ip("10.32.0.2")),
            ("b".to_string(), ip("10.32.0.3")),
            ("b".to_string(), ip("10.32.1.7")),
        ];
        let d = desired(&me(Mode::Vxlan), &members, &instances);
        let mac: Mac = "02:00:00:00:00:0b".parse().unwrap();
        assert_eq!(
            d.state.fdb.iter().collect::<Vec<_>>(),
            [&Fdb { mac, dst: ip("10.0.2.1"), port: 0, vni: 0 }]
        );
        assert_eq!(d.state.neighbours, BTreeMap::from([(ip("10.0.2.1"), mac)]));
        let via_b = Route { gateway: ip("10.0.2.1"), on_device: true };
        assert_eq!(
            d.state.routes,
            BTreeMap::from([(ip("10.32.0.3"), via_b), (ip("10.32.1.7"), via_b)])
        );
        assert_eq!(d.local, BTreeSet::from([ip("10.32.0.2")]));
        assert!(d.unrouted.is_empty());
        assert_eq!(d.peers.len(), 1);
        assert_eq!(d.peers[0].instances, 2);
        assert_eq!(d.state.device, Some(device()));
    }

    #[test]
    fn a_bad_vtep_leaves_out_that_peer_only_and_says_why() {
        let members = [
            host("b", "10.0.2.1", Some("not-a-mac")),
            host("c", "10.0.3.1", None),
            host("d", "10.0.4.1", Some("02:00:00:00:00:0d")),
            host("e", "10.0.5.1", Some("01:00:5e:00:00:01")),
        ];
        let mut wrong_type = host("f", "10.0.6.1", None);
        wrong_type.vtep = Some(serde_json::json!("02:00:00:00:00:0f"));
        let mut members = members.to_vec();
        members.push(wrong_type);
        let instances: Vec<(String, Ipv4Addr)> = ["b", "c", "d", "e", "f"]
            .iter()
            .enumerate()
            .map(|(i, h)| (h.to_string(), Ipv4Addr::new(10, 32, 0, 10 + i as u8)))
            .collect();
        let d = desired(&me(Mode::Vxlan), &members, &instances);
        assert_eq!(d.state.routes.keys().copied().collect::<Vec<_>>(), [ip("10.32.0.12")]);
        assert_eq!(d.state.fdb.len(), 1);
        assert_eq!(d.unrouted.len(), 4);
        let problem = |n: &str| d.peers.iter().find(|p| p.name == n).unwrap().problem.clone();
        assert!(problem("b").unwrap().contains("not-a-mac"), "{:?}", problem("b"));
        assert!(problem("c").unwrap().contains("no VTEP"), "{:?}", problem("c"));
        assert_eq!(problem("d"), None);
        assert!(problem("e").unwrap().contains("not a unicast"), "{:?}", problem("e"));
        assert!(problem("f").unwrap().contains("malformed"), "{:?}", problem("f"));
        assert!(d.unrouted[&ip("10.32.0.10")].contains("host b"));
    }

    #[test]
    fn a_vni_mismatch_or_a_shared_address_is_left_out() {
        let mut other_vni = host("b", "10.0.2.1", None);
        other_vni.set_vtep(&Vtep {
            mac: "02:00:00:00:00:0b".into(),
            vni: 7,
            port: 4789,
            address: None,
        });
        let members = [
            other_vni,
            host("c", "10.0.3.1", Some("02:00:00:00:00:0c")),
            host("d", "10.0.3.1", Some("02:00:00:00:00:0d")),
            host("e", "10.0.1.1", Some("02:00:00:00:00:0e")),
        ];
        let d = desired(&me(Mode::Vxlan), &members, &[]);
        let problem = |n: &str| d.peers.iter().find(|p| p.name == n).unwrap().problem.clone();
        assert!(problem("b").unwrap().contains("VNI 7"));
        assert_eq!(problem("c"), None);
        assert!(problem("d").unwrap().contains("also c's"));
        assert!(problem("e").unwrap().contains("this host's own"));
    }

    #[test]
    fn a_peer_s_own_overlay_address_is_routed_and_mine_is_local() {
        let mut b = host("b", "10.0.2.1", None);
        b.set_vtep(&Vtep {
            mac: "02:00:00:00:00:0b".into(),
            vni: 42,
            port: 4789,
            address: Some(ip("10.32.16.3")),
        });
        let mut m = me(Mode::Vxlan);
        m.address = Some(ip("10.32.16.2"));
        let d = desired(&m, &[b], &[]);
        assert_eq!(d.state.address, Some(ip("10.32.16.2")));
        assert!(d.local.contains(&ip("10.32.16.2")));
        assert_eq!(
            d.state.routes.get(&ip("10.32.16.3")),
            Some(&Route { gateway: ip("10.0.2.1"), on_device: true })
        );
        assert_eq!(d.peers[0].instances, 0, "a host address is not an instance");
    }

    #[test]
    fn another_port_goes_into_the_fdb_entry() {
        let mut b = host("b", "10.0.2.1", None);
        b.set_vtep(&Vtep { mac: "02:00:00:00:00:0b".into(), vni: 42, port: 8472, address: None });
        let d = desired(&me(Mode::Vxlan), &[b], &[]);
        assert_eq!(d.state.fdb.iter().next().map(|f| f.port), Some(8472));
    }

    #[test]
    fn instances_of_hosts_that_are_not_members_get_no_route() {
        let d = desired(&me(Mode::Vxlan), &[], &[("gone".into(), ip("10.32.0.9"))]);
        assert!(d.state.routes.is_empty());
        assert!(d.unrouted[&ip("10.32.0.9")].contains("not a member"));
    }

    #[test]
    fn host_gw_routes_through_the_peer_address_without_a_device() {
        let members = [host("b", "10.0.1.2", None)];
        let d = desired(&me(Mode::HostGw), &members, &[("b".into(), ip("10.32.0.3"))]);
        assert_eq!(d.state.device, None);
        assert!(d.state.fdb.is_empty() && d.state.neighbours.is_empty());
        assert_eq!(
            d.state.routes,
            BTreeMap::from([(
                ip("10.32.0.3"),
                Route { gateway: ip("10.0.1.2"), on_device: false }
            )])
        );
    }

    /// The figure docs/overlay.md gives: 1,000 instances spread over 10 hosts.
    #[test]
    fn thousand_instances_on_ten_hosts() {
        let members: Vec<HostInfo> = (0..10)
            .map(|i| {
                let name = if i == 0 { "a".to_string() } else { format!("h{i}") };
                host(&name, &format!("10.0.{}.1", i + 1), Some(&Mac::derived(&name).to_string()))
            })
            .collect();
        let instances: Vec<(String, Ipv4Addr)> = (0..1000u32)
            .map(|i| (members[(i % 10) as usize].name.clone(), Ipv4Addr::from(0x0a20_0000 + i + 2)))
            .collect();
        let d = desired(&me(Mode::Vxlan), &members, &instances);
        assert_eq!(d.state.routes.len(), 900);
        assert_eq!(d.state.fdb.len(), 9);
        assert_eq!(d.state.neighbours.len(), 9);
        assert_eq!(d.local.len(), 100);
    }
}
