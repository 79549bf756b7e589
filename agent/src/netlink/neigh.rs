//! Static neighbour (ARP) entries: the overlay resolves each peer's gateway address on its
//! VXLAN device to that peer's VTEP MAC without asking the network.
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::packet_route::{
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::RouteType,
    AddressFamily,
};

use super::{req, Mac, Netlink, Result};

impl Netlink {
    /// The permanent IPv4 neighbours of device `index` (address -> MAC). Entries the kernel
    /// made itself (incomplete, stale, ...) are not listed: they are not Viking's.
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<(Ipv4Addr, Mac)>> {
        let mut out = Vec::new();
        let mut dump =
            self.handle.neighbours().get().set_address_family(AddressFamily::Inet).execute();
        while let Some(msg) = dump.try_next().await.map_err(req("listing neighbours"))? {
            if msg.header.ifindex != index || msg.header.state != NeighbourState::Permanent {
                continue;
            }
            let (mut ip, mut mac) = (None, None);
            for attr in &msg.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => ip = Some(*a),
                    NeighbourAttribute::LinkLayerAddress(a) => mac = Mac::from_slice(a),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a permanent neighbour `ip -> mac` on device `index`.
    pub async fn add_neighbour(&self, index: u32, ip: Ipv4Addr, mac: Mac) -> Result<()> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac.0)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding neighbour {ip} lladdr {mac}")))
    }

    /// Deletes the neighbour `ip` of device `index`.
    pub async fn del_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.header.kind = RouteType::Unspec;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        self.handle
            .neighbours()
            .del(msg)
            .execute()
            .await
            .map_err(req(format!("deleting neighbour {ip}")))
    }
}
