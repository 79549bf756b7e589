//! The VXLAN device of the overlay (one per host): created with learning off and no default
//! destination, so it sends only where its FDB says and floods nothing.
use std::net::Ipv4Addr;

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo},
    LinkUnspec, LinkVxlan,
};

use super::{req, Mac, Netlink, Result};

/// What the overlay wants of its VXLAN device, and what one holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub name: String,
    pub vni: u32,
    /// The UDP port it listens on and sends to (unless an FDB entry names another).
    pub port: u16,
    /// The underlay address it sends from.
    pub local: Ipv4Addr,
    /// The underlay link it sends through.
    pub dev: u32,
    pub mtu: u32,
    pub mac: Mac,
    pub learning: bool,
    pub up: bool,
}

impl Vxlan {
    /// Whether a device as `have` can be made this one without being created again (only
    /// the MTU, MAC and up state change in place).
    pub fn same_identity(&self, have: &Vxlan) -> bool {
        self.vni == have.vni
            && self.port == have.port
            && self.local == have.local
            && self.dev == have.dev
            && self.learning == have.learning
    }
}

impl Netlink {
    /// Creates the device (down); `set_link` brings MTU, MAC and state in line after.
    pub async fn create_vxlan(&self, v: &Vxlan) -> Result<u32> {
        let msg = LinkVxlan::new(&v.name, v.vni)
            .dev(v.dev)
            .local(v.local)
            .port(v.port)
            .learning(v.learning)
            .mtu(v.mtu)
            .address(v.mac.0.to_vec())
            .build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(req(format!("creating vxlan {} (vni {}, port {})", v.name, v.vni, v.port)))?;
        self.index(&v.name).await
    }

    /// The VXLAN device named `name` as the kernel holds it, with its index; `None` when there
    /// is none, `Some(None)` when a link of that name is not a VXLAN device.
    pub async fn vxlan(&self, name: &str) -> Result<Option<(u32, Option<Vxlan>)>> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        let msg = match links.try_next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => return Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                return Ok(None)
            }
            Err(e) => return Err(req(format!("looking up link {name}"))(e)),
        };
        let mut v = Vxlan {
            name: name.to_owned(),
            vni: 0,
            port: 0,
            local: Ipv4Addr::UNSPECIFIED,
            dev: 0,
            mtu: 0,
            mac: Mac([0; 6]),
            learning: true,
            up: msg.header.flags.contains(LinkFlags::Up),
        };
        let mut is_vxlan = false;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::Mtu(m) => v.mtu = *m,
                LinkAttribute::Address(a) => v.mac = Mac::from_slice(a).unwrap_or(Mac([0; 6])),
                LinkAttribute::LinkInfo(infos) => {
                    for info in infos {
                        match info {
                            LinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                            LinkInfo::Data(InfoData::Vxlan(data)) => {
                                for d in data {
                                    match d {
                                        InfoVxlan::Id(id) => v.vni = *id,
                                        InfoVxlan::Port(p) => v.port = *p,
                                        InfoVxlan::Local(a) => v.local = *a,
                                        InfoVxlan::Link(l) => v.dev = *l,
                                        InfoVxlan::Learning(l) => v.learning = *l,
                                        _ => {}
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(Some((msg.header.index, is_vxlan.then_some(v))))
    }

    /// Sets a link's MTU, MAC address and up state.
    pub async fn set_link(&self, index: u32, mtu: u32, mac: Mac, up: bool) -> Result<()> {
        let b = LinkUnspec::new_with_index(index).mtu(mtu).address(mac.0.to_vec());
        let b = if up { b.up() } else { b.down() };
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(req(format!("setting link {index}: mtu {mtu}, address {mac}")))
    }
}
