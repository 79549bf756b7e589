//! What to change so the kernel holds the desired state: only what is missing is added and only
//! what is stale is removed; an entry that is right is never touched (an agent restart on a
//! kernel that is already right changes nothing).
use std::net::Ipv4Addr;

use super::desired::{Route, State};
use crate::netlink::{fdb::Fdb, vxlan::Vxlan, Mac};

/// One change, in the order `diff` lists them: removals (routes, neighbours, FDB, device)
/// before additions (device, FDB, neighbours, routes), so nothing is added pointing at what is
/// about to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    DelRoute(Ipv4Addr, Route),
    /// The host's overlay address goes from the device.
    DelAddress(Ipv4Addr),
    DelNeighbour(Ipv4Addr),
    DelFdb(Fdb),
    /// The device goes (with everything on it).
    DelDevice,
    /// Created again: another VNI, port, underlay address or link.
    AddDevice(Vxlan),
    /// MTU, MAC or up state brought in line, in place.
    SetDevice(Vxlan),
    /// The host's overlay address, on the device.
    AddAddress(Ipv4Addr),
    AddFdb(Fdb),
    AddNeighbour(Ipv4Addr, Mac),
    AddRoute(Ipv4Addr, Route),
}

/// The changes from `have` to `want`.
pub fn diff(want: &State, have: &State) -> Vec<Op> {
    let mut out = Vec::new();
    let recreate = match (&want.device, &have.device) {
        (Some(w), Some(h)) => !w.same_identity(h),
        _ => false,
    };
    // Whatever is on a device that goes is gone with it.
    let device_goes = recreate || (want.device.is_none() && have.device.is_some());
    let empty = State::default();
    let on_device = if device_goes { &empty } else { have };
    for (ip, r) in &have.routes {
        if r.on_device && device_goes {
            continue;
        }
        // NB: a route or neighbour that changed is replaced by its add, never removed first.
        if !want.routes.contains_key(ip) {
            out.push(Op::DelRoute(*ip, *r));
        }
    }
    if let Some(a) = on_device.address.filter(|a| want.address != Some(*a)) {
        out.push(Op::DelAddress(a));
    }
    for ip in on_device.neighbours.keys() {
        if !want.neighbours.contains_key(ip) {
            out.push(Op::DelNeighbour(*ip));
        }
    }
    for f in &on_device.fdb {
        // NB: one entry per (MAC, destination): a changed port or VNI is replaced by its add.
        if !want.fdb.iter().any(|w| w.mac == f.mac && w.dst == f.dst) {
            out.push(Op::DelFdb(*f));
        }
    }
    if device_goes {
        out.push(Op::DelDevice);
    }
    match (&want.device, &have.device) {
        (Some(w), Some(_)) if recreate => out.push(Op::AddDevice(w.clone())),
        (Some(w), None) => out.push(Op::AddDevice(w.clone())),
        (Some(w), Some(h)) if w.mtu != h.mtu || w.mac != h.mac || w.up != h.up => {
            out.push(Op::SetDevice(w.clone()))
        }
        _ => {}
    }
    if let Some(a) = want.address.filter(|a| on_device.address != Some(*a)) {
        out.push(Op::AddAddress(a));
    }
    for f in &want.fdb {
        if !on_device.fdb.contains(f) {
            out.push(Op::AddFdb(*f));
        }
    }
    for (ip, mac) in &want.neighbours {
        if on_device.neighbours.get(ip) != Some(mac) {
            out.push(Op::AddNeighbour(*ip, *mac));
        }
    }
    for (ip, r) in &want.routes {
        let kept = have.routes.get(ip) == Some(r) && !(r.on_device && device_goes);
        if !kept {
            out.push(Op::AddRoute(*ip, *r));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn device(vni: u32) -> Vxlan {
        Vxlan {
            name: "vk-vxlan".into(),
            vni,
            port: 4789,
            local: ip("10.0.1.1"),
            dev: 2,
            mtu: 1450,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            learning: false,
            up: true,
        }
    }

    fn state(peers: &[(&str, u8)], routes: &[(&str, &str)]) -> State {
        let fdb: BTreeSet<Fdb> = peers
            .iter()
            .map(|(a, m)| Fdb { mac: Mac([2, 0, 0, 0, 0, *m]), dst: ip(a), port: 0, vni: 0 })
            .collect();
        let neighbours = peers.iter().map(|(a, m)| (ip(a), Mac([2, 0, 0, 0, 0, *m]))).collect();
        let routes: BTreeMap<Ipv4Addr, Route> = routes
            .iter()
            .map(|(d, g)| (ip(d), Route { gateway: ip(g), on_device: true }))
            .collect();
        State { device: Some(device(42)), address: Some(ip("10.32.16.2")), fdb, neighbours, routes }
    }

    #[test]
    fn a_kernel_that_is_right_is_left_alone() {
        let s = state(&[("10.0.2.1", 2), ("10.0.3.1", 3)], &[("10.32.0.3", "10.0.2.1")]);
        assert_eq!(diff(&s, &s.clone()), []);
    }

    #[test]
    fn only_what_changed_is_added_or_removed() {
        let have = state(
            &[("10.0.2.1", 2), ("10.0.3.1", 3)],
            &[("10.32.0.3", "10.0.2.1"), ("10.32.0.4", "10.0.3.1")],
        );
        // Peer 3 left; an instance moved from 2 to 4; 4 joined.
        let want = state(&[("10.0.2.1", 2), ("10.0.4.1", 4)], &[("10.32.0.3", "10.0.4.1")]);
        let ops = diff(&want, &have);
        let via = |g: &str| Route { gateway: ip(g), on_device: true };
        assert_eq!(
            ops,
            [
                Op::DelRoute(ip("10.32.0.4"), via("10.0.3.1")),
                Op::DelNeighbour(ip("10.0.3.1")),
                Op::DelFdb(Fdb {
                    mac: Mac([2, 0, 0, 0, 0, 3]),
                    dst: ip("10.0.3.1"),
                    port: 0,
                    vni: 0
                }),
                Op::AddFdb(Fdb {
                    mac: Mac([2, 0, 0, 0, 0, 4]),
                    dst: ip("10.0.4.1"),
                    port: 0,
                    vni: 0
                }),
                Op::AddNeighbour(ip("10.0.4.1"), Mac([2, 0, 0, 0, 0, 4])),
                Op::AddRoute(ip("10.32.0.3"), via("10.0.4.1")),
            ]
        );
    }

    #[test]
    fn a_device_of_another_vni_is_made_again_with_everything_on_it() {
        let mut have = state(&[("10.0.2.1", 2)], &[("10.32.0.3", "10.0.2.1")]);
        have.device = Some(device(7));
        let want = state(&[("10.0.2.1", 2)], &[("10.32.0.3", "10.0.2.1")]);
        let ops = diff(&want, &have);
        assert_eq!(ops[0], Op::DelDevice);
        assert_eq!(ops[1], Op::AddDevice(device(42)));
        assert_eq!(ops.len(), 6, "{ops:?}");
    }

    #[test]
    fn a_changed_mtu_is_set_in_place() {
        let have = state(&[("10.0.2.1", 2)], &[]);
        let mut want = have.clone();
        if let Some(d) = want.device.as_mut() {
            d.mtu = 1400;
        }
        assert!(matches!(diff(&want, &have)[..], [Op::SetDevice(ref d)] if d.mtu == 1400));
    }

    #[test]
    fn no_device_wanted_removes_it_and_host_gw_routes_stay_apart() {
        let have = state(&[("10.0.2.1", 2)], &[("10.32.0.3", "10.0.2.1")]);
        let mut want = State::default();
        want.routes.insert(ip("10.32.0.3"), Route { gateway: ip("10.0.2.1"), on_device: false });
        let ops = diff(&want, &have);
        assert_eq!(
            ops,
            [
                Op::DelDevice,
                Op::AddRoute(ip("10.32.0.3"), Route { gateway: ip("10.0.2.1"), on_device: false })
            ]
        );
    }
}
