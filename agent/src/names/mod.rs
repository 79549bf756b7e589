//! Names (seed 001 "dns-search", docs/names.md): a DNS responder in every agent answering
//! for Viking's domains from the store, forwarding everything else.
//!
//! - `zone`: the names and their answers (pure)
//! - `answer`: a packet -> reply, forward or drop (pure; never panics on any bytes)
//! - `forward`: the bounded table of forwarded queries (pure)
//! - `follow`: the store -> the zone (VIP records, instances' status)
//! - `server`: the sockets (in the host's namespace) and the loop
//! - `resolv`: what instances get as resolver settings
pub mod answer;
pub mod follow;
pub mod forward;
pub mod resolv;
pub mod server;
pub mod zone;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
};

use tokio::sync::watch;

pub use server::NamesError;
pub use zone::Zone;

use crate::store::Store;

/// Where the responder listens by default: the gateway every instance routes through
/// (`netlink::instance::GATEWAY`, held by the host end of each instance's veth).
pub const DEFAULT_LISTEN: &str = "169.254.1.1:53";
pub const DEFAULT_DOMAIN: &str = "viking";

/// `viking agent`'s names flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NamesArgs {
    /// Where the DNS responder listens, in the host's network namespace (`off`: no
    /// responder, and instances keep the host's resolver settings).
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub dns_listen: String,
    /// Resolvers names outside Viking's domains go to (repeatable; default: the
    /// nameservers of /etc/resolv.conf).
    #[arg(long = "dns-upstream")]
    pub dns_upstreams: Vec<SocketAddr>,
    /// Viking's own domain: `<job>.<stack>.<domain>`.
    #[arg(long, default_value = DEFAULT_DOMAIN)]
    pub dns_domain: String,
}

impl Default for NamesArgs {
    fn default() -> Self {
        Self {
            dns_listen: DEFAULT_LISTEN.into(),
            dns_upstreams: Vec::new(),
            dns_domain: DEFAULT_DOMAIN.into(),
        }
    }
}

impl NamesArgs {
    /// The listen address, `None` when off; a bad one is an error naming the flag.
    pub fn listen(&self) -> Result<Option<SocketAddr>, String> {
        if self.dns_listen == "off" {
            return Ok(None);
        }
        match self.dns_listen.parse::<SocketAddr>() {
            Ok(a @ SocketAddr::V4(_)) => Ok(Some(a)),
            _ => Err(format!(
                "--dns-listen {:?}: not an IPv4 address and port (like {DEFAULT_LISTEN}) or off",
                self.dns_listen
            )),
        }
    }
}

/// The nameservers of a resolv.conf text (IPv4, port 53), but `not` (the responder itself).
pub fn nameservers(text: &str, not: Option<SocketAddr>) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<IpAddr>().ok())
        .filter(IpAddr::is_ipv4)
        .map(|ip| SocketAddr::new(ip, 53))
        .filter(|a| Some(*a) != not)
        .collect()
}

/// A running responder.
pub struct Names {
    pub listen: SocketAddr,
    pub domain: String,
    pub zone: watch::Receiver<Arc<Zone>>,
}

/// Starts the responder (and the loop that keeps its zone) when `--dns-listen` is not off.
pub async fn start<S: Store>(
    args: &NamesArgs,
    store: S,
    host_netns: Option<PathBuf>,
    stop: watch::Receiver<bool>,
) -> Result<Option<Names>, String> {
    let Some(listen) = args.listen()? else { return Ok(None) };
    let base = Zone::new(&args.dns_domain).map_err(|e| format!("--dns-domain: {e}"))?;
    let upstreams = if args.dns_upstreams.is_empty() {
        nameservers(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(), Some(listen))
    } else {
        args.dns_upstreams.clone()
    };
    let (sock, up) =
        server::bind(listen, host_netns.as_deref()).await.map_err(|e| e.to_string())?;
    let (tx, zone) = watch::channel(Arc::new(base.clone()));
    let follow_stop = stop.clone();
    let shown = &crate::metrics::global().names;
    tokio::spawn(async move {
        if let Err(e) = follow::run(store, base, tx, follow_stop).await {
            tracing::error!(error = %e, "names: following the store stopped");
            crate::metrics::global().names.failed(format!("following the store stopped: {e}"));
        }
    });
    let z = zone.clone();
    tracing::info!(%listen, upstreams = ?upstreams, domain = %args.dns_domain, "names: DNS responder listening");
    shown.serving(listen);
    let stopping = stop.clone();
    tokio::spawn(async move {
        let served = server::serve(sock, up, upstreams, z, stop).await;
        tracing::info!(?served, "names: responder stopped");
        if !*stopping.borrow() {
            crate::metrics::global().names.failed(format!("the responder stopped: {served:?}"));
        }
    });
    Ok(Some(Names { listen, domain: args.dns_domain.clone(), zone }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_come_from_resolv_conf_without_the_responder() {
        let text = "# x\nnameserver 10.0.0.2\nnameserver ::1\nsearch lan\nnameserver 169.254.1.1\n";
        let got = nameservers(text, Some("169.254.1.1:53".parse().unwrap()));
        assert_eq!(got, ["10.0.0.2:53".parse().unwrap()]);
        let bad = NamesArgs { dns_listen: "[::1]:53".into(), ..NamesArgs::default() };
        assert!(bad.listen().unwrap_err().contains("--dns-listen"));
        let off = NamesArgs { dns_listen: "off".into(), ..NamesArgs::default() };
        assert_eq!(off.listen(), Ok(None));
    }
}
