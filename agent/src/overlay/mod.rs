//! The overlay (weave-like, docs/overlay.md): every instance, on any host, reachable at its
//! allocated address from every other host, over hosts that are only routed to each other.
//!
//! Per host one VXLAN device (`vk-vxlan`: learning off, no default destination, so nothing is
//! flooded), its underlay the host's `--address`. Per other member one FDB entry (its VTEP MAC
//! -> its underlay address) and one static neighbour entry (its underlay address -> its VTEP
//! MAC); per instance on it a `/32` route through its underlay address, on-link on the device.
//! `--overlay host-gw` routes each remote instance through its host's address instead (hosts on
//! one L2 segment; no encapsulation).
//!
//! The loop (`run.rs`) is read -> pure decision -> diff and apply: it reads membership and the
//! leader's intent (where each instance address lives) through mirrors, decides what the
//! kernel should hold (`desired.rs`, pure), dumps what it holds (`kernel.rs`), and applies only
//! the difference (`diff.rs`). It publishes what it routes (`reach.rs`) for the reconciler.
use std::path::PathBuf;

use ipnetwork::Ipv4Network;

pub mod desired;
pub mod diff;
pub mod kernel;
pub mod peers;
pub mod reach;
pub mod run;
pub mod setup;

pub use crate::cluster::membership::{DEFAULT_VNI, DEFAULT_VXLAN_PORT};
pub use reach::{Paths, Reach};
pub use setup::{prepare, Prepared};

/// The VXLAN device's name.
pub const DEVICE: &str = "vk-vxlan";
/// The allocator's pseudo-stack that hosts' overlay addresses come from (`_` is in no stack
/// name, so no deployment can own it).
pub const HOST_ADDRESSES: &str = "_hosts";
/// How many hosts its subnet is sized for.
pub const HOST_ADDRESSES_SIZE: u64 = 4093;
/// Bytes VXLAN adds to each packet over IPv4: outer IP 20, UDP 8, VXLAN 8, inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;

/// How instances on different hosts reach each other (`--overlay`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// A VXLAN device per host; hosts need only reach each other over UDP.
    Vxlan,
    /// A route per remote instance through its host: hosts on one L2 segment.
    HostGw,
}

/// The overlay's settings (`viking agent --overlay ...`).
#[derive(Debug, Clone)]
pub struct Config {
    pub node: String,
    pub mode: Mode,
    pub vni: u32,
    /// The UDP port this host's VXLAN device listens on.
    pub port: u16,
    /// The host's underlay address (`--address`).
    pub address: std::net::IpAddr,
    /// Where instance addresses come from (`--overlay-pool`): what the overlay routes.
    pub pool: Ipv4Network,
    /// The host's network namespace when the agent runs outside it.
    pub host_netns: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("overlay: {0}")]
    Setup(String),
    #[error("overlay: {0}")]
    Netlink(#[from] crate::netlink::NetlinkError),
}

/// Forwarding on, in the calling thread's network namespace.
fn netns_sysctls() -> Result<(), crate::netlink::NetlinkError> {
    crate::netlink::sysctl("net/ipv4/ip_forward", "1")
}

/// On the VXLAN device, before it goes up: loose reverse-path filtering (the host's own
/// traffic to a remote instance leaves through it with another link's source address and its
/// replies come back on the underlay), and no IPv6 (the overlay is IPv4; a link-local address
/// would only make it chatty).
fn device_sysctls(device: &str) -> Result<(), crate::netlink::NetlinkError> {
    crate::netlink::sysctl(&format!("net/ipv4/conf/{device}/rp_filter"), "2")?;
    let v6 = format!("net/ipv6/conf/{device}/disable_ipv6");
    if std::path::Path::new("/proc/sys").join(&v6).exists() {
        crate::netlink::sysctl(&v6, "1")?;
    }
    Ok(())
}
