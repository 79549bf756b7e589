//! An instance's network, the same for every runtime (Calico's routed model): a veth pair,
//! `eth0` inside the instance's namespace with `<ip>/32` and a default route through
//! `169.254.1.1` on-link; the host end holds `169.254.1.1/32` (every instance's gateway) and
//! a `/32` link route to the instance. Both ends get the overlay's MTU, so what an instance
//! sends fits the VXLAN encapsulation. The host forwards.
use std::{
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
};

use super::{in_netns, in_netns_or_here, sysctl, NetlinkError, Result};

/// The gateway address instances route through: the host end of each instance's veth.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// A short, stable name for the host side of an instance's veth (15 bytes at most).
pub fn veth_name(node: &str, name: &str) -> String {
    let h = format!("{node}/{name}")
        .bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    format!("vk{h:08x}")
}

/// Where and how one instance is plumbed.
#[derive(Debug, Clone)]
pub struct Plumbing {
    /// The host's network namespace (`None`: the caller's own).
    pub host_netns: Option<PathBuf>,
    /// The instance's network namespace (a bind mount or `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
    /// The host end's name (`veth_name`).
    pub veth: String,
    pub address: Option<IpAddr>,
    /// The MTU of both ends (`None`: the kernel's default).
    pub mtu: Option<u32>,
}

/// Plumbs an instance; returns the host end's name when it made a veth (an instance with an
/// IPv4 address), `None` when the instance only has loopback.
pub async fn plumb(p: &Plumbing) -> Result<Option<String>> {
    let Some(IpAddr::V4(ip)) = p.address else {
        in_netns(&p.netns, |nl| async move { nl.set_up("lo").await }).await?;
        return Ok(None);
    };
    let host = p.veth.clone();
    let peer = format!("{host}p");
    let (h, pe, ns, mtu) = (host.clone(), peer.clone(), p.netns.clone(), p.mtu);
    in_netns_or_here(p.host_netns.as_deref(), move |nl| async move {
        nl.delete_link(&h).await?;
        nl.create_veth(&h, &pe).await?;
        if let Some(mtu) = mtu {
            nl.set_mtu(&h, mtu).await?;
            nl.set_mtu(&pe, mtu).await?;
        }
        nl.set_link_ns(&pe, &ns).await
    })
    .await?;
    in_netns(&p.netns, move |nl| async move {
        nl.set_up("lo").await?;
        nl.rename_link(&peer, "eth0").await?;
        nl.add_address("eth0", IpAddr::V4(ip), 32).await?;
        nl.set_up("eth0").await?;
        nl.add_route(Ipv4Addr::UNSPECIFIED, 0, GATEWAY, Some("eth0")).await
    })
    .await?;
    let h = host.clone();
    in_netns_or_here(p.host_netns.as_deref(), move |nl| async move {
        // NB: sysctls under /proc/sys/net are those of the calling thread's namespace.
        sysctl("net/ipv4/ip_forward", "1")?;
        nl.add_address(&h, IpAddr::V4(GATEWAY), 32).await?;
        nl.set_up(&h).await?;
        nl.add_link_route(ip, 32, &h).await
    })
    .await?;
    Ok(Some(host))
}

/// Deletes an instance's host end (its peer goes with it); one that is gone is not an error.
pub async fn unplumb(host_netns: Option<&Path>, veth: &str) -> Result<(), NetlinkError> {
    let veth = veth.to_owned();
    in_netns_or_here(host_netns, |nl| async move { nl.delete_link(&veth).await }).await
}
