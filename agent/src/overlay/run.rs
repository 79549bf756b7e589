//! The overlay's loop: read (membership and intent, through mirrors) -> decide (`desired`) ->
//! dump the kernel -> apply the difference -> publish what is routed. It wakes on every change
//! of either prefix (a join, a leave, a lapsed lease, an address change, an instance placed or
//! moved) and every `RESYNC` to repair what someone else changed.
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::sync::watch;

use super::{
    desired::{desired, Desired, Me},
    diff::diff,
    kernel, Prepared, Reach,
};
use crate::{
    cluster::membership::{self, HostInfo},
    netlink::{in_netns_or_here, NetlinkError},
    store::{keys, KeyValue, Mirror, Store},
};

/// How often the loop compares the kernel with what it wants when nothing changed.
pub const RESYNC: Duration = Duration::from_secs(10);
/// After a failed pass, the next one comes this much later (or with the next change).
const RETRY: Duration = Duration::from_secs(1);

/// The part of an intent record the overlay reads: the instance's address.
#[derive(Deserialize)]
struct IntentAddress {
    spec: SpecAddress,
}

#[derive(Deserialize)]
struct SpecAddress {
    #[serde(default)]
    address: Option<IpAddr>,
}

/// Every instance address in the intent records, with the host it is placed on.
pub fn instance_addresses(kvs: &[KeyValue]) -> Vec<(String, Ipv4Addr)> {
    kvs.iter()
        .filter_map(|kv| {
            let (host, ..) = keys::parse_instance(keys::PROC, &kv.key)?;
            match serde_json::from_slice::<IntentAddress>(&kv.value).ok()?.spec.address? {
                IpAddr::V4(ip) => Some((host, ip)),
                IpAddr::V6(_) => None,
            }
        })
        .collect()
}

/// The members in the membership records; one that does not parse is left out (and said once).
fn members(kvs: &[KeyValue], warned: &mut BTreeSet<String>) -> Vec<HostInfo> {
    kvs.iter()
        .filter_map(|kv| match membership::parse(kv) {
            Ok(h) => Some(h),
            Err(e) => {
                if warned.insert(format!("{}@{}", kv.key, kv.mod_revision)) {
                    tracing::warn!(error = %e, "overlay: ignoring a host record");
                }
                None
            }
        })
        .collect()
}

/// The overlay's loop.
pub struct Overlay<S: Store> {
    store: S,
    prepared: Prepared,
    reach: watch::Sender<Reach>,
    /// Peer problems already logged (so a bad record is warned about once per change).
    warned: BTreeSet<String>,
}

impl<S: Store> Overlay<S> {
    pub fn new(store: S, prepared: Prepared) -> (Self, watch::Receiver<Reach>) {
        let (reach, rx) =
            watch::channel(Reach { pool: Some(prepared.cfg.pool), ..Reach::default() });
        (Self { store, prepared, reach, warned: BTreeSet::new() }, rx)
    }

    fn me(&self) -> Me {
        Me {
            name: self.prepared.cfg.node.clone(),
            mode: self.prepared.cfg.mode,
            device: self.prepared.device.clone(),
            address: self.prepared.address,
        }
    }

    /// One pass over what the mirrors hold.
    async fn pass(&mut self, hosts: &Mirror, intents: &Mirror) -> Result<(), NetlinkError> {
        let started = Instant::now();
        let members = members(&hosts.kvs(), &mut self.warned);
        let instances = instance_addresses(&intents.kvs());
        let d: Desired = desired(&self.me(), &members, &instances);
        for p in &d.peers {
            if let Some(why) = &p.problem {
                if self.warned.insert(format!("{}: {why}", p.name)) {
                    tracing::warn!(peer = %p.name, problem = %why, "overlay: peer left out; its instances are unreachable from here");
                }
            }
        }
        let want = d.state.clone();
        let result =
            in_netns_or_here(self.prepared.cfg.host_netns.as_deref(), move |nl| async move {
                let (have, index) = kernel::dump(&nl).await?;
                let ops = diff(&want, &have);
                let applied = kernel::apply(&nl, ops, index).await;
                Ok::<_, NetlinkError>((have, applied))
            })
            .await;
        let (have, applied) = result?;
        let routed: BTreeSet<Ipv4Addr> = match &applied {
            Ok(_) => d.state.routes.keys().copied().collect(),
            // Only what was right before this pass.
            Err(_) => d
                .state
                .routes
                .iter()
                .filter(|(ip, r)| have.routes.get(ip) == Some(r))
                .map(|(ip, _)| *ip)
                .collect(),
        };
        let reach = Reach {
            ready: true,
            pool: Some(self.prepared.cfg.pool),
            local: d.local.clone(),
            routed,
            unrouted: d.unrouted.clone(),
        };
        self.reach.send_if_modified(|r| {
            let changed = *r != reach;
            *r = reach;
            changed
        });
        let done = applied?;
        if done.added + done.removed > 0 {
            tracing::info!(
                added = done.added,
                removed = done.removed,
                peers = d.peers.iter().filter(|p| p.problem.is_none()).count(),
                routes = d.state.routes.len(),
                took = ?started.elapsed(),
                "overlay synced"
            );
        }
        Ok(())
    }

    /// Runs until `stop`; then, if `drain` (the host leaves for good), removes what it made.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, drain: bool) {
        let mut mirrors: Option<(Mirror, Mirror)> = None;
        let mut retry_at: Option<Instant> = None;
        loop {
            let live = mirrors.as_ref().is_some_and(|(h, i)| h.is_live() && i.is_live());
            if !live {
                mirrors = match (
                    Mirror::start(&self.store, keys::HOSTS).await,
                    Mirror::start(&self.store, keys::PROC).await,
                ) {
                    (Ok(h), Ok(i)) => Some((h, i)),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::warn!(error = %e, "overlay: reading membership and intent; retrying");
                        None
                    }
                };
            }
            let mut subs = mirrors.as_ref().map(|(h, i)| (h.subscribe(), i.subscribe()));
            if let Some((h, i)) = &mirrors {
                retry_at = match self.pass(h, i).await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "overlay: programming the kernel; retrying");
                        Some(Instant::now() + RETRY)
                    }
                };
            }
            let wait = match (&mirrors, retry_at) {
                (None, _) => RETRY,
                (_, Some(at)) => at.saturating_duration_since(Instant::now()),
                _ => RESYNC,
            };
            let changed = async {
                match subs.as_mut() {
                    Some((h, i)) => tokio::select! {
                        Ok(()) = h.changed() => {}
                        Ok(()) = i.changed() => {}
                        else => std::future::pending().await,
                    },
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
        }
        if drain {
            let want = super::desired::State::default();
            let removed =
                in_netns_or_here(self.prepared.cfg.host_netns.as_deref(), move |nl| async move {
                    let (have, index) = kernel::dump(&nl).await?;
                    kernel::apply(&nl, diff(&want, &have), index).await
                })
                .await;
            match removed {
                Ok(done) => tracing::info!(removed = done.removed, "overlay removed"),
                Err(e) => tracing::warn!(error = %e, "overlay: removing it"),
            }
        }
    }
}
