//! Membership: each host registers itself under `/viking/hosts/<host>` (JSON) under a lease
//! it keeps alive. A host that stops (or is cut off) disappears one TTL later; watchers see
//! joins, updates and leaves.
use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{sync::watch, task::JoinHandle};

use super::{error::check_name, ClusterError};
use crate::store::{keys, KeyValue, Lease, LeaseId, Store, Watch, WatchEvent};

/// How long a host stays listed after its agent stops refreshing.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// What a host says about itself. The value at `/viking/hosts/<host>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name; the key's last segment (it wins over the JSON's).
    #[serde(default)]
    pub name: String,
    /// The address other hosts reach it on (overlay peer, VPC "cluster" member).
    pub address: IpAddr,
    /// Scheduling tags (seed 003 `--viking-filter`).
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub capacity: Capacity,
    /// Its overlay subnet, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_subnet: Option<ipnetwork::IpNetwork>,
    /// When the agent started (Unix seconds).
    #[serde(default)]
    pub started: u64,
    /// The load it reports: its 1-minute load average, rounded; the scheduler counts it as
    /// that many instances (`report_load`).
    #[serde(default)]
    pub load: u32,
    /// Where its API answers (`HOST:PORT`): where `viking run` streams a job placed on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// How it runs instances: `docker` or `exec` (jobs with only an image or a `build:`
    /// need docker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

impl HostInfo {
    /// A host with nothing said but its name and address (fill the rest with `..`).
    pub fn new(name: impl Into<String>, address: IpAddr) -> Self {
        Self {
            name: name.into(),
            address,
            tags: Vec::new(),
            capacity: Capacity::default(),
            overlay_subnet: None,
            started: 0,
            load: 0,
            api: None,
            runtime: None,
        }
    }
}

/// What a host offers the scheduler; 0 means not said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mb: u64,
    /// Most instances it takes.
    #[serde(default)]
    pub instances: u32,
}

/// A host as listed: what it says, and the lease that keeps it there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Host {
    #[serde(flatten)]
    pub info: HostInfo,
    pub lease: Option<LeaseId>,
}

fn parse(kv: &KeyValue) -> Result<HostInfo, ClusterError> {
    let name = match kv.key.strip_prefix(keys::HOSTS) {
        Some(n) if keys::segment_problem(n).is_none() => n.to_string(),
        _ => {
            return Err(ClusterError::Invalid(format!(
                "key {} is not a host record (/viking/hosts/<host>)",
                kv.key
            )))
        }
    };
    let mut info: HostInfo = serde_json::from_slice(&kv.value)
        .map_err(|e| ClusterError::bad_value(&kv.key, &kv.value, format!("not host JSON: {e}")))?;
    info.name = name;
    Ok(info)
}

/// Every registered host, sorted by name. A record that does not parse is an error naming it.
pub async fn hosts<S: Store>(store: &S) -> Result<Vec<Host>, ClusterError> {
    let listing = store.list(keys::HOSTS).await?;
    listing.kvs.iter().map(|kv| Ok(Host { info: parse(kv)?, lease: kv.lease })).collect()
}

/// This host's registration, kept alive until `leave` (or until dropped: then it lapses one
/// TTL later, as when the agent dies). If the lease is lost (the store was unreachable for a
/// whole TTL) the host registers again as soon as it can.
pub struct Member<S: Store> {
    store: S,
    name: String,
    lease: watch::Receiver<Option<LeaseId>>,
    task: JoinHandle<()>,
}

async fn register<S: Store>(
    store: &S,
    info: &HostInfo,
    ttl: Duration,
) -> Result<Lease<S>, ClusterError> {
    let value = serde_json::to_vec(info)
        .map_err(|e| ClusterError::Invalid(format!("host {}: {e}", info.name)))?;
    let lease = Lease::grant(store, ttl).await?;
    store.put(&keys::host(&info.name), value, Some(lease.id())).await?;
    Ok(lease)
}

/// Registers `info` under a lease of `ttl` and keeps it registered.
pub async fn join<S: Store>(
    store: &S,
    info: HostInfo,
    ttl: Duration,
) -> Result<Member<S>, ClusterError> {
    check_name("host", &info.name)?;
    let lease = register(store, &info, ttl).await?;
    tracing::info!(host = %info.name, address = %info.address, lease = %lease.id(), "joined the cluster");
    let (tx, rx) = watch::channel(Some(lease.id()));
    let s = store.clone();
    let name = info.name.clone();
    let task = tokio::spawn(async move {
        let mut lease = lease;
        loop {
            lease.lost().await;
            let _ = tx.send(None);
            tracing::warn!(host = %info.name, "membership lease lost; registering again");
            let mut backoff = Duration::from_millis(100);
            lease = loop {
                match register(&s, &info, ttl).await {
                    Ok(l) => break l,
                    Err(e) => {
                        tracing::warn!(host = %info.name, error = %e, "registering again failed");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(ttl / 2);
                    }
                }
            };
            let _ = tx.send(Some(lease.id()));
        }
    });
    Ok(Member { store: store.clone(), name, lease: rx, task })
}

impl<S: Store> Member<S> {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The lease currently holding the registration (`None` while registering again).
    pub fn lease(&self) -> Option<LeaseId> {
        *self.lease.borrow()
    }

    /// The lease as it changes (None while registering again).
    pub fn lease_watch(&self) -> watch::Receiver<Option<LeaseId>> {
        self.lease.clone()
    }

    /// Leaves now: the registration goes at once.
    pub async fn leave(self) -> Result<(), ClusterError> {
        self.task.abort();
        if let Some(lease) = *self.lease.borrow() {
            self.store.revoke(lease).await?;
        }
        tracing::info!(host = %self.name, "left the cluster");
        Ok(())
    }
}

impl<S: Store> Drop for Member<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A change of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    Joined(HostInfo),
    Updated(HostInfo),
    Left(String),
}

/// Follows membership: the current hosts, then every join, update and leave, also across
/// reconnects and compactions (a resync is turned into the joins and leaves it implies).
/// A record that does not parse is logged and treated as absent.
pub struct HostWatcher {
    watch: Watch,
    known: BTreeMap<String, HostInfo>,
    pending: VecDeque<HostEvent>,
}

fn lenient(kv: &KeyValue) -> Option<HostInfo> {
    match parse(kv) {
        Ok(info) => Some(info),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a bad host record");
            None
        }
    }
}

impl HostWatcher {
    pub async fn start<S: Store>(store: &S) -> Result<Self, ClusterError> {
        let listing = store.list(keys::HOSTS).await?;
        let known = listing.kvs.iter().filter_map(lenient).map(|h| (h.name.clone(), h)).collect();
        let watch = store.watch(keys::HOSTS, Some(listing.revision + 1)).await?;
        Ok(Self { watch, known, pending: VecDeque::new() })
    }

    /// The hosts known now.
    pub fn hosts(&self) -> impl Iterator<Item = &HostInfo> {
        self.known.values()
    }

    fn set(&mut self, info: HostInfo) {
        let event = match self.known.get(&info.name) {
            Some(old) if *old == info => return,
            Some(_) => HostEvent::Updated(info.clone()),
            None => HostEvent::Joined(info.clone()),
        };
        self.known.insert(info.name.clone(), info);
        self.pending.push_back(event);
    }

    fn remove(&mut self, name: &str) {
        if self.known.remove(name).is_some() {
            self.pending.push_back(HostEvent::Left(name.to_string()));
        }
    }

    /// The next change; `None` when the store is gone.
    pub async fn next(&mut self) -> Option<HostEvent> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            match self.watch.next().await? {
                WatchEvent::Put(kv) => match lenient(&kv) {
                    Some(info) => self.set(info),
                    None => {
                        if let Some(name) = kv.key.strip_prefix(keys::HOSTS) {
                            let name = name.to_string();
                            self.remove(&name);
                        }
                    }
                },
                WatchEvent::Delete { key, .. } => {
                    if let Some(name) = key.strip_prefix(keys::HOSTS) {
                        let name = name.to_string();
                        self.remove(&name);
                    }
                }
                WatchEvent::Resync { kvs, .. } => {
                    let now: BTreeMap<String, HostInfo> =
                        kvs.iter().filter_map(lenient).map(|h| (h.name.clone(), h)).collect();
                    let gone: Vec<String> =
                        self.known.keys().filter(|k| !now.contains_key(*k)).cloned().collect();
                    for name in gone {
                        self.remove(&name);
                    }
                    for (_, info) in now {
                        self.set(info);
                    }
                }
            }
        }
    }

    /// The next change if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<HostEvent> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }
}

/// The 1-minute load average, rounded (`/proc/loadavg`).
pub fn loadavg() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let one: f64 = text.split_whitespace().next()?.parse().ok()?;
    Some(one.round().clamp(0.0, f64::from(u32::MAX)) as u32)
}

/// How often a host refreshes the load it reports.
pub const LOAD_PERIOD: Duration = Duration::from_secs(10);

/// Keeps this host's record carrying its current load (under its membership lease) until
/// `stop`. Written only when the rounded load changes.
pub async fn report_load<S: Store>(
    store: S,
    mut info: HostInfo,
    lease: watch::Receiver<Option<LeaseId>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let id = *lease.borrow();
        if let (Some(load), Some(id)) = (loadavg(), id) {
            if load != info.load {
                info.load = load;
                if let Ok(value) = serde_json::to_vec(&info) {
                    if let Err(e) = store.put(&keys::host(&info.name), value, Some(id)).await {
                        tracing::warn!(error = %e, "reporting load");
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(LOAD_PERIOD) => {}
            _ = stop.changed() => return,
        }
    }
}
