//! The per-host reconciler: makes what runs on this host match its intent
//! (`/viking/proc/<host>/`). It starts missing instances once the jobs they link to are
//! registered, stops unwanted ones, restarts crashed daemons with backoff, runs
//! non-daemonized jobs to their end, registers services (`discovery::registrator`), reports
//! status under `/viking/ps/<host>/` and publishes the running containers to embassy.
//!
//! It reads the store through mirrors (a listing, then a watch): a pass costs the store
//! nothing, and a change to this host's intent starts a pass at once.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::instances::{Intent, Phase, Status};
use crate::{
    cluster::membership,
    discovery::{
        embassy::{Container, Containers},
        registration::Endpoint,
        registrator,
    },
    netlink::{self, routes},
    runtime::{spec_hash, Instance, InstanceState, Runtime},
    stack::service_name,
    store::{keys, KeyValue, LeaseId, Mirror, Revision, Store, StoreError},
};

/// How often the reconciler looks when nothing wakes it sooner.
pub const PERIOD: Duration = Duration::from_secs(1);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Running this long resets an instance's backoff.
const STABLE: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
struct Backoff {
    restarts: u32,
    delay: Duration,
    not_before: Option<Instant>,
    up_since: Option<Instant>,
}

impl Backoff {
    fn ready(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|t| now >= t)
    }

    fn bump(&mut self, now: Instant) {
        self.delay =
            if self.delay.is_zero() { FIRST_BACKOFF } else { (self.delay * 2).min(MAX_BACKOFF) };
        self.not_before = Some(now + self.delay);
        self.up_since = None;
    }

    fn wait(&self, now: Instant) -> Duration {
        self.not_before.map_or(Duration::ZERO, |t| t.saturating_duration_since(now))
    }
}

pub struct Reconciler<S: Store, R: Runtime> {
    store: S,
    runtime: R,
    node: String,
    lease: watch::Receiver<Option<LeaseId>>,
    containers: watch::Sender<Containers>,
    /// Keep routes to other hosts' instance addresses (the exec runtime's instances).
    pub host_routes: bool,
    /// The namespace those routes go in (None: the agent's own).
    pub host_netns: Option<std::path::PathBuf>,
    backoff: BTreeMap<String, Backoff>,
    /// Non-daemonized instances that ran to their end: intent revision, exit code.
    done: BTreeMap<String, (i64, i32)>,
    mirrors: Option<Mirrors>,
}

/// The prefixes a pass reads, kept in memory.
struct Mirrors {
    /// `/viking/proc/<this host>/`
    intents: Mirror,
    /// `/services/`: every registration (which jobs are up; this host's own records).
    services: Mirror,
    /// `/viking/ps/`: every host's statuses (which jobs run somewhere; this host's own).
    ps: Mirror,
}

/// What the reconciler read of the store in one pass.
struct View {
    intents: BTreeMap<String, (Intent, i64)>,
    registered: BTreeSet<String>,
    running_jobs: BTreeSet<(String, String)>,
    services: Vec<KeyValue>,
    ps: Vec<KeyValue>,
}

impl<S: Store, R: Runtime> Reconciler<S, R> {
    pub fn new(
        store: S,
        runtime: R,
        node: String,
        lease: watch::Receiver<Option<LeaseId>>,
        containers: watch::Sender<Containers>,
    ) -> Self {
        Self {
            store,
            runtime,
            node,
            lease,
            containers,
            host_routes: false,
            host_netns: None,
            backoff: BTreeMap::new(),
            done: BTreeMap::new(),
            mirrors: None,
        }
    }

    /// The mirrors, started on first use and again if a watch behind them ended.
    async fn mirrors(&mut self) -> Result<&Mirrors, StoreError> {
        let live = self
            .mirrors
            .as_ref()
            .is_some_and(|m| m.intents.is_live() && m.services.is_live() && m.ps.is_live());
        if !live {
            let mine = format!("{}{}/", keys::PROC, self.node);
            self.mirrors = Some(Mirrors {
                intents: Mirror::start(&self.store, &mine).await?,
                services: Mirror::start(&self.store, crate::discovery::registration::PREFIX)
                    .await?,
                ps: Mirror::start(&self.store, keys::PS).await?,
            });
        }
        match &self.mirrors {
            Some(m) => Ok(m),
            None => Err(StoreError::Closed { store: self.store.describe() }),
        }
    }

    /// Wakes when this host's intent changes (after the first pass has started the mirrors).
    fn intent_changes(&self) -> Option<watch::Receiver<Revision>> {
        self.mirrors.as_ref().map(|m| m.intents.subscribe())
    }

    async fn view(&mut self) -> Result<View, StoreError> {
        let m = self.mirrors().await?;
        let (intent_kvs, services, ps) = (m.intents.kvs(), m.services.kvs(), m.ps.kvs());
        let mut intents = BTreeMap::new();
        for kv in intent_kvs {
            match serde_json::from_slice::<Intent>(&kv.value) {
                Ok(i) => {
                    intents.insert(i.spec.name(), (i, kv.mod_revision));
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "ignoring an intent record"),
            }
        }
        let registered = services
            .iter()
            .filter_map(|kv| Endpoint::parse(&kv.key, &kv.value).ok())
            .map(|e| e.key.service)
            .collect();
        let running_jobs = ps
            .iter()
            .filter_map(|kv| {
                let (_, stack, job, _) = keys::parse_instance(keys::PS, &kv.key)?;
                let st: Status = serde_json::from_slice(&kv.value).ok()?;
                matches!(st.phase, Phase::Running | Phase::Completed).then_some((stack, job))
            })
            .collect();
        Ok(View { intents, registered, running_jobs, services, ps })
    }

    /// The first job `intent` waits for, if any. Start order matters for a job's first
    /// start: once an instance of the job runs somewhere (a replica moved, a rolling
    /// replacement), the others start without waiting.
    fn blocked_on(intent: &Intent, view: &View) -> Option<String> {
        if view.running_jobs.contains(&(intent.spec.stack.clone(), intent.spec.job.clone())) {
            return None;
        }
        intent.after.iter().find_map(|a| {
            let ready = if a.ports {
                view.registered.contains(&service_name(&a.stack, &a.job))
            } else {
                view.running_jobs.contains(&(a.stack.clone(), a.job.clone()))
            };
            (!ready).then(|| {
                format!(
                    "waiting for {}/{} to {}",
                    a.stack,
                    a.job,
                    if a.ports { "register" } else { "run" }
                )
            })
        })
    }

    fn status(&self, name: &str, phase: Phase, detail: String, inst: Option<&Instance>) -> Status {
        Status {
            name: name.to_owned(),
            phase,
            detail,
            address: inst.and_then(|i| i.address),
            ports: inst.map(|i| i.ports.clone()).unwrap_or_default(),
            restarts: self.backoff.get(name).map_or(0, |b| b.restarts),
            handle: inst.map(|i| i.handle.clone()).unwrap_or_default(),
            runtime: self.runtime.describe(),
        }
    }

    /// One pass: intent -> runtime, then registrations, status, embassy and routes.
    pub async fn pass(&mut self) -> Result<(), StoreError> {
        let view = self.view().await?;
        let now = Instant::now();
        let mut instances: BTreeMap<String, Instance> = match self.runtime.list().await {
            Ok(list) => list.into_iter().map(|i| (i.name.clone(), i)).collect(),
            Err(e) => {
                // NB: the runtime is down (dockerd restarting): nothing of ours can be trusted
                // to run, so every instance is reported failed and unregistered until it is
                // back, rather than left registered as a dead backend.
                tracing::warn!(runtime = %self.runtime.describe(), error = %e, "listing instances");
                let statuses = view
                    .intents
                    .keys()
                    .map(|n| {
                        (n.clone(), self.status(n, Phase::Failed, format!("runtime: {e}"), None))
                    })
                    .collect();
                return self.publish(&view, &BTreeMap::new(), &statuses).await;
            }
        };
        for name in
            instances.keys().filter(|n| !view.intents.contains_key(*n)).cloned().collect::<Vec<_>>()
        {
            tracing::info!(instance = %name, "not wanted here any more; stopping it");
            if let Err(e) = self.runtime.remove(&name).await {
                tracing::warn!(instance = %name, error = %e, "stopping");
            }
            instances.remove(&name);
            self.backoff.remove(&name);
        }
        self.done.retain(|n, _| view.intents.contains_key(n));

        let mut statuses: BTreeMap<String, Status> = BTreeMap::new();
        for (name, (intent, revision)) in &view.intents {
            let spec = &intent.spec;
            let want_hash = spec_hash(spec);
            let current = instances.get(name);
            let backoff = self.backoff.entry(name.clone()).or_default();
            let (phase, detail) = match current.map(|i| (i.state, i.spec_hash == want_hash)) {
                Some((InstanceState::Running, true)) => {
                    let since = *backoff.up_since.get_or_insert(now);
                    if now.duration_since(since) > STABLE {
                        backoff.delay = Duration::ZERO;
                    }
                    (Phase::Running, String::new())
                }
                Some((InstanceState::Exited(code), _)) if !spec.daemonize => {
                    self.done.insert(name.clone(), (*revision, code));
                    if let Err(e) = self.runtime.remove(name).await {
                        tracing::warn!(instance = %name, error = %e, "removing a completed job");
                    }
                    instances.remove(name);
                    (Phase::Completed, format!("exit {code}"))
                }
                None if !spec.daemonize
                    && self.done.get(name).is_some_and(|(r, _)| r == revision) =>
                {
                    let code = self.done.get(name).map_or(0, |(_, c)| *c);
                    (Phase::Completed, format!("exit {code}"))
                }
                state => {
                    // Missing, exited, or running an older spec.
                    let crashed = matches!(state, Some((InstanceState::Exited(_), _)));
                    if crashed && backoff.not_before.is_none() {
                        backoff.bump(now);
                        backoff.restarts += 1;
                    }
                    if let Some(why) = Self::blocked_on(intent, &view) {
                        (Phase::Pending, why)
                    } else if !backoff.ready(now) {
                        let phase = if crashed { Phase::Restarting } else { Phase::Failed };
                        (phase, format!("next try in {:.0?}", backoff.wait(now)))
                    } else {
                        match self.runtime.start(spec).await {
                            Ok(inst) => {
                                backoff.not_before = None;
                                backoff.up_since = Some(now);
                                instances.insert(name.clone(), inst);
                                (Phase::Running, String::new())
                            }
                            Err(e) => {
                                tracing::warn!(instance = %name, error = %e, "start failed");
                                backoff.bump(now);
                                (Phase::Failed, e.to_string())
                            }
                        }
                    }
                }
            };
            if phase == Phase::Running {
                if let Some(b) = self.backoff.get_mut(name) {
                    b.not_before = None;
                }
            }
            let inst = instances.get(name).filter(|i| i.state == InstanceState::Running);
            statuses.insert(name.clone(), self.status(name, phase, detail, inst));
        }
        self.publish(&view, &instances, &statuses).await
    }

    async fn publish(
        &mut self,
        view: &View,
        instances: &BTreeMap<String, Instance>,
        statuses: &BTreeMap<String, Status>,
    ) -> Result<(), StoreError> {
        crate::metrics::global().control.instances(statuses.values().map(|s| s.phase.to_string()));
        let running: Vec<Instance> =
            instances.values().filter(|i| i.state == InstanceState::Running).cloned().collect();
        let containers: Containers = running
            .iter()
            .filter_map(|i| {
                Some((
                    i.name.clone(),
                    Container {
                        id: i.name.clone(),
                        netns_cookie: i.netns_cookie?,
                        env: i.env.clone(),
                    },
                ))
            })
            .collect();
        self.containers.send_if_modified(|c| {
            let changed = *c != containers;
            *c = containers;
            changed
        });

        let lease = *self.lease.borrow();
        if lease.is_none() {
            // NB: membership is registering again; what we write would outlive us.
            return Ok(());
        }
        let tags: BTreeMap<String, Vec<String>> =
            view.intents.iter().map(|(n, (i, _))| (n.clone(), i.tags.clone())).collect();
        let images: BTreeMap<String, String> = view
            .intents
            .iter()
            .filter_map(|(n, (i, _))| Some((n.clone(), i.spec.image.clone()?)))
            .collect();
        let want = registrator::wanted(&self.node, &running, &tags, &images);
        let have = registrator::mine(&self.node, &view.services);
        let (w, r) = registrator::sync(&self.store, lease, &want, &have).await?;
        if w + r > 0 {
            tracing::info!(written = w, removed = r, "registrations");
        }

        let prefix = format!("{}{}/", keys::PS, self.node);
        let have: BTreeMap<&str, &KeyValue> = view
            .ps
            .iter()
            .filter(|kv| kv.key.starts_with(&prefix))
            .map(|kv| (kv.key.as_str(), kv))
            .collect();
        let mut want = BTreeMap::new();
        for (name, (intent, _)) in &view.intents {
            let Some(st) = statuses.get(name) else { continue };
            let s = &intent.spec;
            let key = keys::ps(&self.node, &s.stack, &s.job, s.index);
            if let Ok(v) = serde_json::to_vec(st) {
                want.insert(key, v);
            }
        }
        for key in have.keys().filter(|k| !want.contains_key(**k)) {
            self.store.delete(key).await?;
        }
        for (key, value) in &want {
            if !have.get(key.as_str()).is_some_and(|kv| &kv.value == value && kv.lease == lease) {
                self.store.put(key, value.clone(), lease).await?;
            }
        }
        if self.host_routes {
            self.sync_routes(view).await;
        }
        Ok(())
    }

    /// Routes every other host's instance addresses through that host.
    async fn sync_routes(&mut self, view: &View) {
        let hosts: BTreeMap<String, IpAddr> = match membership::hosts(&self.store).await {
            Ok(h) => h.into_iter().map(|h| (h.info.name.clone(), h.info.address)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "listing hosts for routes");
                return;
            }
        };
        let mut want = BTreeMap::new();
        for kv in &view.ps {
            let Some((host, ..)) = keys::parse_instance(keys::PS, &kv.key) else { continue };
            if host == self.node {
                continue;
            }
            let Ok(st) = serde_json::from_slice::<Status>(&kv.value) else { continue };
            if let (Some(IpAddr::V4(ip)), Some(IpAddr::V4(via))) = (st.address, hosts.get(&host)) {
                if ip != *via {
                    want.insert(ip, *via);
                }
            }
        }
        let synced = netlink::in_netns_or_here(self.host_netns.as_deref(), move |nl| async move {
            routes::sync(&nl, &want).await
        })
        .await;
        match synced {
            Ok((0, 0)) => {}
            Ok((added, removed)) => {
                tracing::info!(added, removed, "routes to other hosts' instances")
            }
            Err(e) => tracing::warn!(error = %e, "routes to other hosts' instances"),
        }
    }

    /// Reconciles until `stop`; then, if `drain`, stops every instance of this host.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, drain: bool) {
        let changed = self.runtime.changed();
        let mut intents: Option<watch::Receiver<Revision>> = None;
        loop {
            let started = Instant::now();
            let passed = self.pass().await;
            crate::metrics::global().control.reconciled(started, passed.is_ok());
            if let Err(e) = passed {
                tracing::warn!(error = %e, "reconcile pass failed");
            }
            if intents.is_none() {
                intents = self.intent_changes();
            }
            let intent_changed = async {
                // No mirror yet, or it was replaced: the period does it.
                let Some(rx) = intents.as_mut() else { return std::future::pending().await };
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(PERIOD) => {}
                _ = changed.notified() => {}
                _ = intent_changed => {}
                _ = stop.changed() => break,
            }
            if intents.as_ref().is_some_and(|rx| rx.has_changed().is_err()) {
                intents = None;
            }
        }
        if drain {
            if let Ok(list) = self.runtime.list().await {
                for i in list {
                    if let Err(e) = self.runtime.remove(&i.name).await {
                        tracing::warn!(instance = %i.name, error = %e, "draining");
                    }
                }
            }
            let want = BTreeMap::new();
            // NB: the store itself, not the mirror, which may trail the last pass's writes.
            if let Ok(listing) = self.store.list(crate::discovery::registration::PREFIX).await {
                let have = registrator::mine(&self.node, &listing.kvs);
                let _ = registrator::sync(&self.store, None, &want, &have).await;
            }
            let _ = self.store.delete_prefix(&format!("{}{}/", keys::PS, self.node)).await;
            if self.host_routes {
                let _ = netlink::in_netns_or_here(self.host_netns.as_deref(), |nl| async move {
                    routes::sync(&nl, &BTreeMap::new()).await
                })
                .await;
            }
            tracing::info!(node = %self.node, "instances drained");
        }
    }
}
