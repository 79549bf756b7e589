//! Work done inside the host's network namespace (`--host-netns`, or the agent's own): a
//! namespace is per thread, so each call runs on a thread of its own.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use super::{
    error::VpcError,
    sockets::{self, Conn},
};
use crate::{
    netlink::{links::LinkInfo, Netlink},
    netns::NetnsError,
};

/// Runs `f` on a new thread inside `netns` (or the agent's own namespace) and waits for it.
pub async fn on_host<T, F>(netns: Option<&Path>, f: F) -> Result<T, VpcError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, VpcError> + Send + 'static,
{
    crate::netns::run_in(netns, f).await.map_err(|e| match e {
        NetnsError::Enter { path, source } => VpcError::Netns { path, source },
        NetnsError::Died => VpcError::Stopped,
    })?
}

/// What the filter needs to know of the host's network.
#[derive(Debug, Clone, Default)]
pub struct HostNet {
    pub links: Vec<LinkInfo>,
    pub conns: Vec<Conn>,
}

impl HostNet {
    /// The link that holds `addr`.
    pub fn link_with(&self, addr: IpAddr) -> Option<&LinkInfo> {
        self.links.iter().find(|l| l.addrs.iter().any(|(a, _)| *a == addr))
    }

    /// Whether `addr` is one of the host's own.
    pub fn is_local(&self, addr: IpAddr) -> bool {
        addr.is_loopback() || self.link_with(addr).is_some()
    }
}

/// Reads the host's links, addresses and connected sockets.
pub async fn probe(netns: Option<PathBuf>) -> Result<HostNet, VpcError> {
    on_host(netns.as_deref(), || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(VpcError::io("starting a runtime for", "netlink"))?;
        let links = rt.block_on(async { Netlink::connect()?.links().await })?;
        let conns =
            sockets::read_own().map_err(VpcError::io("reading", "/proc/thread-self/net"))?;
        Ok(HostNet { links, conns })
    })
    .await
}
