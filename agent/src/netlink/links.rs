//! The host's links and their addresses: what the VPC filter attaches to, and which link
//! holds an address.
use std::net::IpAddr;

use futures::TryStreamExt as _;
use rtnetlink::packet_route::{
    address::AddressAttribute,
    link::{LinkAttribute, LinkLayerType},
};

use super::{req, Netlink, Result};

/// One link of this namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// An Ethernet-type link (physical, veth, bridge, bond, vlan).
    pub ether: bool,
    pub addrs: Vec<(IpAddr, u8)>,
}

impl Netlink {
    /// Every link with its addresses.
    pub async fn links(&self) -> Result<Vec<LinkInfo>> {
        let mut out = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(msg) = links.try_next().await.map_err(req("listing links"))? {
            let name = msg.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            });
            if let Some(name) = name {
                out.push(LinkInfo {
                    name,
                    index: msg.header.index,
                    ether: msg.header.link_layer_type == LinkLayerType::Ether,
                    addrs: Vec::new(),
                });
            }
        }
        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("listing addresses"))? {
            let addr = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = addr.or_else(|| {
                msg.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let (Some(addr), Some(link)) =
                (addr, out.iter_mut().find(|l| l.index == msg.header.index))
            {
                link.addrs.push((addr, msg.header.prefix_len));
            }
        }
        Ok(out)
    }
}
