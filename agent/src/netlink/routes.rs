//! Routes through a gateway (the overlay's routes to other hosts' instances), the host's own
//! routes (what an instance subnet must not collide with) and its addresses (which link holds
//! `--address`, what the default route leaves from).
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::LinkAttribute,
        route::{
            RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
        },
    },
    RouteMessageBuilder,
};

use super::{req, Netlink, Result, PROTO_VIKING};

/// A route of Viking's to `dest/prefix` through `gateway`. With `oif` it leaves through that
/// link with the gateway taken as on-link (the overlay: the gateway is a peer's address,
/// resolved on the VXLAN device by a static neighbour entry); without, the kernel picks the
/// link (host-gw: the peer is on a shared segment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayRoute {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub oif: Option<u32>,
}

/// Any route of the main table, as `ip route` shows it (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub dest: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub protocol: RouteProtocol,
    pub prefsrc: Option<Ipv4Addr>,
}

impl std::fmt::Display for HostRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dest, self.prefix)?;
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(i) = self.oif {
            write!(f, " dev #{i}")?;
        }
        Ok(())
    }
}

fn main_table(msg: &RouteMessage) -> bool {
    let table = msg.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    });
    table.unwrap_or(u32::from(msg.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

fn host_route(msg: &RouteMessage) -> HostRoute {
    let mut r = HostRoute {
        dest: Ipv4Addr::UNSPECIFIED,
        prefix: msg.header.destination_prefix_length,
        gateway: None,
        oif: None,
        protocol: msg.header.protocol,
        prefsrc: None,
    };
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => r.dest = *a,
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => r.gateway = Some(*a),
            RouteAttribute::PrefSource(RouteAddress::Inet(a)) => r.prefsrc = Some(*a),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            _ => {}
        }
    }
    r
}

impl Netlink {
    /// Every IPv4 route of the main table.
    pub async fn main_routes(&self) -> Result<Vec<HostRoute>> {
        let mut out = Vec::new();
        let mut routes =
            self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.map_err(req("listing routes"))? {
            if main_table(&msg) {
                out.push(host_route(&msg));
            }
        }
        Ok(out)
    }

    /// Viking's routes through a gateway (its link routes to local instances have none).
    pub async fn gateway_routes(&self) -> Result<Vec<GatewayRoute>> {
        let mut out = Vec::new();
        let mut routes =
            self.handle.route().get(RouteMessageBuilder::<Ipv4Addr>::new().build()).execute();
        while let Some(msg) = routes.try_next().await.map_err(req("listing routes"))? {
            if msg.header.protocol != RouteProtocol::Other(PROTO_VIKING) || !main_table(&msg) {
                continue;
            }
            let r = host_route(&msg);
            let onlink = msg.header.flags.contains(RouteFlags::Onlink);
            if let Some(gateway) = r.gateway {
                out.push(GatewayRoute {
                    dest: r.dest,
                    prefix: r.prefix,
                    gateway,
                    oif: if onlink { r.oif } else { None },
                });
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) one of Viking's gateway routes.
    pub async fn add_gateway_route(&self, r: &GatewayRoute) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dest, r.prefix)
            .gateway(r.gateway)
            .protocol(RouteProtocol::Other(PROTO_VIKING));
        if let Some(oif) = r.oif {
            b = b.output_interface(oif).onlink();
        }
        self.handle
            .route()
            .add(b.build())
            .replace()
            .execute()
            .await
            .map_err(req(format!("adding route {}/{} via {}", r.dest, r.prefix, r.gateway)))
    }

    /// Deletes one of Viking's gateway routes (the gateway named, so that a link route to a
    /// local instance with the same destination is never the one deleted).
    pub async fn del_gateway_route(&self, r: &GatewayRoute) -> Result<()> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(r.dest, r.prefix)
            .gateway(r.gateway)
            .protocol(RouteProtocol::Other(PROTO_VIKING));
        if let Some(oif) = r.oif {
            b = b.output_interface(oif);
        }
        self.handle
            .route()
            .del(b.build())
            .execute()
            .await
            .map_err(req(format!("deleting route {}/{} via {}", r.dest, r.prefix, r.gateway)))
    }

    /// Every IPv4 address of this namespace: (link index, address, prefix length).
    pub async fn ipv4_addresses(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut out = Vec::new();
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("listing addresses"))? {
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(IpAddr::V4(a)) => Some(*a),
                _ => None,
            });
            let addr = local.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(IpAddr::V4(a)) => Some(*a),
                    _ => None,
                })
            });
            if let Some(a) = addr {
                out.push((msg.header.index, a, msg.header.prefix_len));
            }
        }
        Ok(out)
    }

    /// Deletes `addr/prefix` from link `index`.
    pub async fn del_address(&self, index: u32, addr: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut msg = rtnetlink::packet_route::address::AddressMessage::default();
        msg.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        msg.header.index = index;
        msg.header.prefix_len = prefix;
        msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
        msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr)));
        self.handle
            .address()
            .del(msg)
            .execute()
            .await
            .map_err(req(format!("deleting {addr}/{prefix} from link {index}")))
    }

    /// A link's name and MTU.
    pub async fn link_name_mtu(&self, index: u32) -> Result<(String, u32)> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let msg = links
            .try_next()
            .await
            .map_err(req(format!("looking up link {index}")))?
            .ok_or_else(|| super::NetlinkError::NoLink(format!("#{index}")))?;
        let (mut name, mut mtu) = (format!("#{index}"), 0);
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Mtu(m) => mtu = *m,
                _ => {}
            }
        }
        Ok((name, mtu))
    }

    /// The address the IPv4 default route leaves from: its preferred source, else the first
    /// address of its link. `None` without a default route.
    pub async fn default_route_source(&self) -> Result<Option<Ipv4Addr>> {
        let routes = self.main_routes().await?;
        let Some(default) = routes.iter().find(|r| r.prefix == 0) else { return Ok(None) };
        if let Some(src) = default.prefsrc {
            return Ok(Some(src));
        }
        let Some(oif) = default.oif else { return Ok(None) };
        let addrs = self.ipv4_addresses().await?;
        Ok(addrs.iter().find(|(i, a, _)| *i == oif && !a.is_loopback()).map(|(_, a, _)| *a))
    }
}
