//! The overlay's state as the kernel holds it, and the changes applied to it.
use std::collections::BTreeMap;

use super::{
    desired::{Route, State},
    diff::Op,
    DEVICE,
};
use crate::netlink::{routes::GatewayRoute, Netlink, NetlinkError};

/// What the kernel holds of the overlay: the VXLAN device (if there is one and it is a VXLAN
/// device), its FDB entries and permanent neighbours, and Viking's gateway routes.
pub async fn dump(nl: &Netlink) -> Result<(State, Option<u32>), NetlinkError> {
    let mut s = State::default();
    let found = nl.vxlan(DEVICE).await?;
    let index = match found {
        Some((index, Some(v))) => {
            s.device = Some(v);
            Some(index)
        }
        Some((index, None)) => {
            // NB: a link of our name that is not a VXLAN device: it goes, ours takes its place.
            tracing::warn!(
                link = DEVICE,
                "a link of the overlay's name is not a VXLAN device; replacing it"
            );
            nl.delete_link(DEVICE).await?;
            let _ = index;
            None
        }
        None => None,
    };
    if let Some(i) = index {
        s.address = nl
            .ipv4_addresses()
            .await?
            .into_iter()
            .find(|(l, _, p)| *l == i && *p == 32)
            .map(|(_, a, _)| a);
        s.fdb = nl.fdb(i).await?.into_iter().collect();
        s.neighbours = nl.permanent_neighbours(i).await?.into_iter().collect();
    }
    let mut routes = BTreeMap::new();
    for r in nl.gateway_routes().await? {
        if r.prefix != 32 {
            continue;
        }
        let on_device = match r.oif {
            None => false,
            Some(oif) if Some(oif) == index => true,
            // On-link through another link (a device since replaced): not ours as it stands.
            Some(_) => false,
        };
        routes.insert(r.dest, Route { gateway: r.gateway, on_device });
    }
    s.routes = routes;
    Ok((s, index))
}

fn gateway_route(ip: std::net::Ipv4Addr, r: &Route, index: Option<u32>) -> GatewayRoute {
    GatewayRoute {
        dest: ip,
        prefix: 32,
        gateway: r.gateway,
        oif: r.on_device.then_some(index).flatten(),
    }
}

/// What one apply did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub added: usize,
    pub removed: usize,
}

/// Applies `ops` in order; `index` is the device's index as dumped. Stops at the first error
/// (the next pass dumps again and carries on from what is there).
pub async fn apply(
    nl: &Netlink,
    ops: Vec<Op>,
    mut index: Option<u32>,
) -> Result<Applied, NetlinkError> {
    let mut done = Applied::default();
    for op in ops {
        let need = || index.ok_or_else(|| NetlinkError::NoLink(DEVICE.to_owned()));
        match op {
            Op::DelRoute(ip, r) => {
                nl.del_gateway_route(&gateway_route(ip, &r, index)).await?;
                done.removed += 1;
            }
            Op::DelAddress(ip) => {
                nl.del_address(need()?, ip, 32).await?;
                done.removed += 1;
            }
            Op::AddAddress(ip) => {
                need()?;
                nl.add_address(DEVICE, std::net::IpAddr::V4(ip), 32).await?;
                done.added += 1;
            }
            Op::DelNeighbour(ip) => {
                nl.del_neighbour(need()?, ip).await?;
                done.removed += 1;
            }
            Op::DelFdb(f) => {
                nl.del_fdb(need()?, &f).await?;
                done.removed += 1;
            }
            Op::DelDevice => {
                nl.delete_link(DEVICE).await?;
                index = None;
                done.removed += 1;
            }
            Op::AddDevice(v) => {
                let i = nl.create_vxlan(&v).await?;
                super::device_sysctls(&v.name)?;
                nl.set_link(i, v.mtu, v.mac, v.up).await?;
                index = Some(i);
                done.added += 1;
            }
            Op::SetDevice(v) => {
                nl.set_link(need()?, v.mtu, v.mac, v.up).await?;
                done.added += 1;
            }
            Op::AddFdb(f) => {
                nl.add_fdb(need()?, &f).await?;
                done.added += 1;
            }
            Op::AddNeighbour(ip, mac) => {
                nl.add_neighbour(need()?, ip, mac).await?;
                done.added += 1;
            }
            Op::AddRoute(ip, r) => {
                if r.on_device {
                    need()?;
                }
                nl.add_gateway_route(&gateway_route(ip, &r, index)).await?;
                done.added += 1;
            }
        }
    }
    Ok(done)
}
