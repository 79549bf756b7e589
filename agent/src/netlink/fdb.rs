//! Forwarding entries of a VXLAN device (`bridge fdb ... dev vxlan self`): which underlay
//! address (and UDP port, VNI) a VTEP's MAC is reached at.
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
    },
    route::RouteType,
    AddressFamily,
};

use super::{req, Mac, Netlink, Result};

/// One entry: frames for `mac` go to `dst:port` with `vni`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fdb {
    pub mac: Mac,
    pub dst: Ipv4Addr,
    /// 0: the device's own port.
    pub port: u16,
    /// 0: the device's own VNI.
    pub vni: u32,
}

impl Netlink {
    /// The entries of device `index` that carry a destination (the kernel also lists the
    /// device's own multicast addresses there, without one; those are not Viking's).
    pub async fn fdb(&self, index: u32) -> Result<Vec<Fdb>> {
        let mut out = Vec::new();
        let mut dump =
            self.handle.neighbours().get().set_address_family(AddressFamily::Bridge).execute();
        while let Some(msg) = dump.try_next().await.map_err(req("listing fdb entries"))? {
            if msg.header.ifindex != index {
                continue;
            }
            let (mut mac, mut dst, mut port, mut vni) = (None, None, 0, 0);
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(a) => mac = Mac::from_slice(a),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    // NB: in an AF_BRIDGE message the destination is not parsed as IPv4.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from)
                    }
                    NeighbourAttribute::Port(p) => port = *p,
                    NeighbourAttribute::Vni(v) => vni = *v,
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst) {
                out.push(Fdb { mac, dst, port, vni });
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a permanent entry on device `index`.
    pub async fn add_fdb(&self, index: u32, e: &Fdb) -> Result<()> {
        let mut r = self
            .handle
            .neighbours()
            .add_bridge(index, &e.mac.0)
            .flags(NeighbourFlags::Own)
            .state(NeighbourState::Permanent)
            .destination(IpAddr::V4(e.dst))
            .replace();
        let attrs = &mut r.message_mut().attributes;
        if e.port != 0 {
            attrs.push(NeighbourAttribute::Port(e.port));
        }
        if e.vni != 0 {
            attrs.push(NeighbourAttribute::Vni(e.vni));
        }
        r.execute().await.map_err(req(format!("adding fdb {} dst {}", e.mac, e.dst)))
    }

    /// Deletes one entry of device `index`.
    pub async fn del_fdb(&self, index: u32, e: &Fdb) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.header.kind = RouteType::Unspec;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(e.mac.0.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(e.dst)));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(req(format!("deleting fdb {} dst {}", e.mac, e.dst)))
    }
}
