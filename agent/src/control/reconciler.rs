//! The per-host reconciler: makes what runs on this host match its intent
//! (`/viking/proc/<host>/`). It starts missing instances once the jobs they link to are
//! registered and the path to them exists (`overlay::Paths`), stops unwanted ones, restarts
//! crashed daemons with backoff, runs non-daemonized jobs to their end, registers services
//! (`discovery::registrator`), reports status under `/viking/ps/<host>/` and publishes the
//! running containers to embassy.
//!
//! It reads the store through mirrors (a listing, then a watch): a pass costs the store
//! nothing, and a change to this host's intent starts a pass at once.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use super::instances::{Intent, Phase, Status};
use crate::{
    discovery::{
        embassy::{Container, Containers},
        registered::{self, Registered},
        registrator::{self, Held},
    },
    overlay::Paths,
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
    /// Whether the path to a linked service's backends exists (overlay route, datapath); a
    /// linked-from instance starts only once it does. `None`: registered is enough.
    pub paths: Option<Paths>,
    backoff: BTreeMap<String, Backoff>,
    /// Non-daemonized instances that ran to their end: intent revision, exit code.
    done: BTreeMap<String, (i64, i32)>,
    /// Where `done` is kept, so that a completed run-once job stays completed across an
    /// agent restart.
    done_file: Option<std::path::PathBuf>,
    mirrors: Option<Mirrors>,
    /// The last pass left an instance waiting for the jobs it links to.
    waiting: bool,
}

/// The prefixes a pass reads, kept in memory.
struct Mirrors {
    /// `/viking/proc/<this host>/`
    intents: Mirror,
    /// `/services/`: every registration (which jobs are up; this host's own records), only
    /// what a pass asks of each (`discovery::registered`).
    services: Mirror<Registered>,
    /// `/viking/ps/`: every host's statuses (which jobs run somewhere; this host's own).
    ps: Mirror,
}

/// What the reconciler read of the store in one pass.
struct View {
    intents: BTreeMap<String, (Intent, i64)>,
    registered: BTreeSet<String>,
    /// Registered services whose backends this host cannot reach yet, and why.
    unreachable: BTreeMap<String, String>,
    running_jobs: BTreeSet<(String, String)>,
    /// The registrations under this host's lease when the pass read them.
    mine: BTreeMap<String, Held>,
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
            paths: None,
            backoff: BTreeMap::new(),
            done: BTreeMap::new(),
            done_file: None,
            mirrors: None,
            waiting: false,
        }
    }

    /// Keeps the completed run-once instances in `file` (and loads what it holds).
    pub fn keep_completed_in(mut self, file: std::path::PathBuf) -> Self {
        self.done_file = Some(file);
        self.load_done();
        self
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
                services: Mirror::projected(
                    &self.store,
                    crate::discovery::registration::PREFIX,
                    Registered::project,
                )
                .await?,
                ps: Mirror::start(&self.store, keys::PS).await?,
            });
            // The listings the mirrors started from are garbage now.
            crate::memory::give_back();
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

    /// Wakes when a registration changes (what a pending instance waits for).
    fn registration_changes(&self) -> Option<watch::Receiver<Revision>> {
        self.mirrors.as_ref().map(|m| m.services.subscribe())
    }

    async fn view(&mut self) -> Result<View, StoreError> {
        let lease = *self.lease.borrow();
        let m = self.mirrors().await?;
        let (intent_kvs, ps) = (m.intents.kvs(), m.ps.kvs());
        let mut intents = BTreeMap::new();
        for kv in intent_kvs {
            match serde_json::from_slice::<Intent>(&kv.value) {
                Ok(i) => {
                    intents.insert(i.spec.name(), (i, kv.mod_revision));
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "ignoring an intent record"),
            }
        }
        // NB: only the services an instance links to are looked at (`blocked_on`).
        let linked: BTreeSet<String> = intents
            .values()
            .flat_map(|(i, _)| i.after.iter().filter(|a| a.ports))
            .map(|a| service_name(&a.stack, &a.job))
            .collect();
        let seen = m.services.with(|all| registered::read(all, &linked, lease));
        let mut unreachable = BTreeMap::new();
        if let Some(paths) = &self.paths {
            for (service, backends) in seen.backends {
                if let Some(why) = paths.problem(backends) {
                    unreachable.insert(service, why);
                }
            }
        }
        let running_jobs = ps
            .iter()
            .filter_map(|kv| {
                let (_, stack, job, _) = keys::parse_instance(keys::PS, &kv.key)?;
                let st: Status = serde_json::from_slice(&kv.value).ok()?;
                matches!(st.phase, Phase::Running | Phase::Completed).then_some((stack, job))
            })
            .collect();
        let (registered, mine) = (seen.registered, seen.mine);
        Ok(View { intents, registered, unreachable, running_jobs, mine, ps })
    }
}

/// The first job `intent` waits for, if any. Start order matters for a job's first start:
/// once an instance of the job runs somewhere (a replica moved, a rolling replacement), the
/// others start without waiting.
fn blocked_on(intent: &Intent, view: &View) -> Option<String> {
    if view.running_jobs.contains(&(intent.spec.stack.clone(), intent.spec.job.clone())) {
        return None;
    }
    intent.after.iter().find_map(|a| {
        if a.ports {
            if let Some(why) = view.unreachable.get(&service_name(&a.stack, &a.job)) {
                return Some(format!("waiting for a path to {}/{}: {why}", a.stack, a.job));
            }
        }
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

impl<S: Store, R: Runtime> Reconciler<S, R> {
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

    /// One pass: read, decide (`decide`), act on the runtime, then publish registrations,
    /// status and embassy's containers.
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
        let d = decide(&view, &instances, &mut self.backoff, &self.done, now);

        for name in &d.stop {
            tracing::info!(instance = %name, "not wanted here any more; stopping it");
            if let Err(e) = self.runtime.remove(name).await {
                tracing::warn!(instance = %name, error = %e, "stopping");
            }
            instances.remove(name);
            self.backoff.remove(name);
        }
        let mut done_changed = self.done.len();
        self.done.retain(|n, _| view.intents.contains_key(n));
        done_changed = usize::from(done_changed != self.done.len());
        for (name, code) in &d.finished {
            if let Some((_, revision)) = view.intents.get(name) {
                self.done.insert(name.clone(), (*revision, *code));
                done_changed += 1;
            }
            if let Err(e) = self.runtime.remove(name).await {
                tracing::warn!(instance = %name, error = %e, "removing a completed job");
            }
            instances.remove(name);
        }
        if done_changed > 0 {
            self.save_done();
        }
        let mut statuses: BTreeMap<String, Status> = BTreeMap::new();
        for (name, (phase, detail)) in d.status {
            let inst = instances.get(&name).filter(|i| i.state == InstanceState::Running);
            statuses.insert(name.clone(), self.status(&name, phase, detail, inst));
        }
        for name in d.start {
            let Some((intent, _)) = view.intents.get(&name) else { continue };
            let backoff = self.backoff.entry(name.clone()).or_default();
            let (phase, detail) = match self.runtime.start(&intent.spec).await {
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
            };
            let inst = instances.get(&name).filter(|i| i.state == InstanceState::Running);
            statuses.insert(name.clone(), self.status(&name, phase, detail, inst));
        }
        self.waiting = statuses.values().any(|s| s.phase == Phase::Pending);
        self.publish(&view, &instances, &statuses).await
    }

    /// Loads the run-once instances that completed (kept across agent restarts).
    fn load_done(&mut self) {
        let Some(path) = &self.done_file else { return };
        if let Ok(bytes) = std::fs::read(path) {
            match serde_json::from_slice::<BTreeMap<String, (i64, i32)>>(&bytes) {
                Ok(done) => self.done = done,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "ignoring the completed-jobs file")
                }
            }
        }
    }

    fn save_done(&self) {
        let Some(path) = &self.done_file else { return };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&self.done)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(file = %path.display(), error = %e, "saving the completed jobs");
        }
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
        let have: BTreeMap<String, Held> = view
            .mine
            .iter()
            .filter(|(_, h)| h.lease == lease)
            .map(|(k, h)| (k.clone(), *h))
            .collect();
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
        Ok(())
    }

    /// Reconciles until `stop`; then, if `drain`, stops every instance of this host.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>, drain: bool) {
        let changed = self.runtime.changed();
        let mut intents: Option<watch::Receiver<Revision>> = None;
        let mut registrations: Option<watch::Receiver<Revision>> = None;
        let mut paths = self.paths.clone();
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
            if registrations.is_none() {
                registrations = self.registration_changes();
            }
            // NB: a pending instance starts on the event that completes its path (its link
            // registered, the route or datapath entry in place), not on the next period.
            let waiting = self.waiting;
            let linked_changed = async {
                if !waiting {
                    return std::future::pending().await;
                }
                tokio::select! {
                    Some(Ok(())) = async { Some(registrations.as_mut()?.changed().await) } => {}
                    true = async {
                        match paths.as_mut() {
                            Some(p) => {
                                p.changed().await;
                                true
                            }
                            None => false,
                        }
                    } => {}
                    else => std::future::pending().await,
                }
            };
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
                _ = linked_changed => {}
                _ = stop.changed() => break,
            }
            if intents.as_ref().is_some_and(|rx| rx.has_changed().is_err()) {
                intents = None;
            }
            if registrations.as_ref().is_some_and(|rx| rx.has_changed().is_err()) {
                registrations = None;
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
            let lease = *self.lease.borrow();
            if let (Ok(listing), Some(lease)) =
                (self.store.list(crate::discovery::registration::PREFIX).await, lease)
            {
                let have = registrator::mine(lease, &listing.kvs);
                let _ = registrator::sync(&self.store, None, &want, &have).await;
            }
            let _ = self.store.delete_prefix(&format!("{}{}/", keys::PS, self.node)).await;
            tracing::info!(node = %self.node, "instances drained");
        }
    }
}

/// What one pass does, decided from what it read (pure but for the backoff bookkeeping it
/// owns: a crash is counted once).
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Instances to stop and remove: not wanted on this host any more.
    pub stop: Vec<String>,
    /// Run-once instances that ran to their end, with their exit code: removed, remembered.
    pub finished: Vec<(String, i32)>,
    /// Instances to start now (missing, crashed and ready, or running an older spec).
    pub start: Vec<String>,
    /// The status of every other wanted instance.
    pub status: BTreeMap<String, (Phase, String)>,
}

/// What to do with each instance of this host, given its intent (`view`), what the runtime
/// runs (`instances`), restart backoff and the run-once instances that completed.
fn decide(
    view: &View,
    instances: &BTreeMap<String, Instance>,
    backoff: &mut BTreeMap<String, Backoff>,
    done: &BTreeMap<String, (i64, i32)>,
    now: Instant,
) -> Decision {
    let mut d = Decision {
        stop: instances.keys().filter(|n| !view.intents.contains_key(*n)).cloned().collect(),
        ..Decision::default()
    };
    for (name, (intent, revision)) in &view.intents {
        let spec = &intent.spec;
        let b = backoff.entry(name.clone()).or_default();
        let current = instances.get(name).map(|i| (i.state, i.spec_hash == spec_hash(spec)));
        let status = match current {
            Some((InstanceState::Running, true)) => {
                let since = *b.up_since.get_or_insert(now);
                if now.duration_since(since) > STABLE {
                    b.delay = Duration::ZERO;
                }
                b.not_before = None;
                (Phase::Running, String::new())
            }
            Some((InstanceState::Exited(code), _)) if !spec.daemonize => {
                d.finished.push((name.clone(), code));
                (Phase::Completed, format!("exit {code}"))
            }
            None if !spec.daemonize && done.get(name).is_some_and(|(r, _)| r == revision) => {
                let code = done.get(name).map_or(0, |(_, c)| *c);
                (Phase::Completed, format!("exit {code}"))
            }
            state => {
                // Missing, exited, or running an older spec.
                let crashed = matches!(state, Some((InstanceState::Exited(_), _)));
                if crashed && b.not_before.is_none() {
                    b.bump(now);
                    b.restarts += 1;
                }
                if let Some(why) = blocked_on(intent, view) {
                    (Phase::Pending, why)
                } else if !b.ready(now) {
                    let phase = if crashed { Phase::Restarting } else { Phase::Failed };
                    (phase, format!("next try in {:.0?}", b.wait(now)))
                } else {
                    d.start.push(name.clone());
                    continue;
                }
            }
        };
        d.status.insert(name.clone(), status);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{control::instances::After, runtime::InstanceSpec};

    fn intent(job: &str, daemonize: bool, after: &[(&str, &str)]) -> Intent {
        Intent {
            spec: InstanceSpec {
                stack: "s".into(),
                job: job.into(),
                index: 0,
                image: None,
                command: vec!["x".into()],
                env: BTreeMap::new(),
                ports: vec![],
                volumes: vec![],
                daemonize,
                address: None,
                build: None,
            },
            after: after
                .iter()
                .map(|(s, j)| After { stack: (*s).into(), job: (*j).into(), ports: true })
                .collect(),
            fixed: false,
            tags: vec![],
            record: String::new(),
        }
    }

    fn view(intents: &[Intent]) -> View {
        View {
            intents: intents.iter().map(|i| (i.spec.name(), (i.clone(), 7))).collect(),
            registered: BTreeSet::new(),
            unreachable: BTreeMap::new(),
            running_jobs: BTreeSet::new(),
            mine: BTreeMap::new(),
            ps: vec![],
        }
    }

    fn instance(i: &Intent, state: InstanceState) -> Instance {
        Instance {
            name: i.spec.name(),
            stack: "s".into(),
            job: i.spec.job.clone(),
            index: 0,
            state,
            address: None,
            ports: vec![],
            netns_cookie: None,
            handle: "1".into(),
            env: BTreeMap::new(),
            spec_hash: spec_hash(&i.spec),
        }
    }

    #[test]
    fn missing_instances_start_once_what_they_link_to_is_registered() {
        let web = intent("web", true, &[("shared", "db")]);
        let mut v = view(std::slice::from_ref(&web));
        let mut backoff = BTreeMap::new();
        let now = Instant::now();
        let d = decide(&v, &BTreeMap::new(), &mut backoff, &BTreeMap::new(), now);
        assert!(d.start.is_empty());
        assert_eq!(
            d.status["s_web_0"],
            (Phase::Pending, "waiting for shared/db to register".into())
        );
        v.registered.insert("shared_db".into());
        // Registered, but this host has no path to it yet: still pending, saying why.
        v.unreachable.insert("shared_db".into(), "no route to 10.32.0.9 yet".into());
        let d = decide(&v, &BTreeMap::new(), &mut backoff, &BTreeMap::new(), now);
        assert!(d.start.is_empty());
        assert_eq!(
            d.status["s_web_0"],
            (Phase::Pending, "waiting for a path to shared/db: no route to 10.32.0.9 yet".into())
        );
        v.unreachable.clear();
        let d = decide(&v, &BTreeMap::new(), &mut backoff, &BTreeMap::new(), now);
        assert_eq!(d.start, ["s_web_0"]);
    }

    #[test]
    fn a_crash_is_backed_off_and_counted_once() {
        let web = intent("web", true, &[]);
        let v = view(std::slice::from_ref(&web));
        let running = BTreeMap::from([(web.spec.name(), instance(&web, InstanceState::Exited(1)))]);
        let mut backoff = BTreeMap::new();
        let now = Instant::now();
        for _ in 0..3 {
            let d = decide(&v, &running, &mut backoff, &BTreeMap::new(), now);
            assert!(d.start.is_empty());
            assert_eq!(d.status["s_web_0"].0, Phase::Restarting);
        }
        assert_eq!(backoff["s_web_0"].restarts, 1);
        let later = now + FIRST_BACKOFF + Duration::from_millis(1);
        assert_eq!(decide(&v, &running, &mut backoff, &BTreeMap::new(), later).start, ["s_web_0"]);
    }

    #[test]
    fn run_once_jobs_finish_once_and_stay_finished() {
        let job = intent("task", false, &[]);
        let v = view(std::slice::from_ref(&job));
        let exited = BTreeMap::from([(job.spec.name(), instance(&job, InstanceState::Exited(3)))]);
        let mut backoff = BTreeMap::new();
        let now = Instant::now();
        let d = decide(&v, &exited, &mut backoff, &BTreeMap::new(), now);
        assert_eq!(d.finished, [("s_task_0".into(), 3)]);
        // Removed, remembered at the intent's revision: not started again (an agent restart
        // reloads the same memory from its file).
        let done = BTreeMap::from([("s_task_0".to_owned(), (7, 3))]);
        let d = decide(&v, &BTreeMap::new(), &mut backoff, &done, now);
        assert!(d.start.is_empty());
        assert_eq!(d.status["s_task_0"], (Phase::Completed, "exit 3".into()));
        // A new intent (another revision) runs it again.
        let done = BTreeMap::from([("s_task_0".to_owned(), (6, 3))]);
        assert_eq!(decide(&v, &BTreeMap::new(), &mut backoff, &done, now).start, ["s_task_0"]);
    }

    #[test]
    fn unwanted_instances_stop_and_changed_specs_are_replaced() {
        let web = intent("web", true, &[]);
        let old = intent("old", true, &[]);
        let mut changed = instance(&web, InstanceState::Running);
        changed.spec_hash ^= 1;
        let running = BTreeMap::from([
            (web.spec.name(), changed),
            (old.spec.name(), instance(&old, InstanceState::Running)),
        ]);
        let d =
            decide(&view(&[web]), &running, &mut BTreeMap::new(), &BTreeMap::new(), Instant::now());
        assert_eq!(d.stop, ["s_old_0"]);
        assert_eq!(d.start, ["s_web_0"]);
    }
}
