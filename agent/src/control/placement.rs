//! The leader's placement loop: read what is deployed (job records and their stored plans),
//! the live hosts and the current intent; decide where every instance goes (`decide`, pure,
//! over the scheduler); then write the difference as intent under
//! `/viking/proc/<host>/<stack>/<job>/<index>` (the instance's full spec: command, env with
//! links, address) or the reason it waits under `/viking/waiting/`.
//!
//! A change in one stack never stops another: a job whose record does not parse, or that has
//! no usable plan, keeps the intents it has (they are neither moved nor deleted) and its
//! missing instances wait with the reason; an address that cannot be allocated makes only
//! that stack's new instances wait. Only a record that is gone (`viking rm`) removes intents.
//!
//! The writes are grouped per instance (a move deletes the old key and writes the new one in
//! one transaction) and packed into transactions within etcd's limits, each fenced by this
//! node's leader key: a pass is not one transaction, so a job of scale 300 places as a small
//! one does, and a leader deposed mid-pass writes nothing more.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use tokio::sync::watch;

use super::{
    instances::{After, Intent},
    scheduler::{schedule, InstanceId, Placement, SchedulerInput},
};
use crate::{
    cluster::{membership, Addresses, ClusterError, HostInfo},
    deploy::{folder::DeployedJobs, plans::record_hash, DeployError, Deployer, JobPlan, Plans},
    runtime::{instance_name, InstanceSpec},
    stack::Job,
    store::{bulk, keys, Changes, Compare, LeaderKey, Op, Store},
};

/// How often the leader places when it cannot watch for changes.
pub const PERIOD: Duration = Duration::from_millis(500);
/// How often it places anyway while it watches (a safety net: a change wakes it at once).
pub const IDLE_PERIOD: Duration = Duration::from_secs(5);
/// The least time between the starts of two passes woken by changes: many hosts reporting
/// their load make one pass, not one each.
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// What a pass reads that others write: jobs deployed and removed, their plans, hosts
/// joining, leaving and reporting load, intent edited by hand. (History, waiting records and
/// addresses are the leader's own.)
const WATCHED: [&str; 4] = [keys::DEPLOY, keys::PLANS, keys::HOSTS, keys::PROC];

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

type Id = (String, String);

/// What a pass reads.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// Job records that parse.
    pub jobs: BTreeMap<Id, Job>,
    /// Jobs whose record does not parse.
    pub invalid: BTreeSet<Id>,
    pub plans: BTreeMap<Id, JobPlan>,
    pub hosts: Vec<HostInfo>,
    /// The current intent: instance -> (host, intent; `None` when it does not parse).
    pub intents: BTreeMap<InstanceId, Vec<(String, Option<Intent>)>>,
    /// Where a job last ran.
    pub history: BTreeMap<Id, String>,
}

/// Where every instance should be, as a pass decides it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Decision {
    /// Placed instances: host and intent (`spec.address` `None` when it needs one).
    pub placed: BTreeMap<InstanceId, (String, Intent)>,
    /// Instances whose current intents stay as they are (their job cannot be placed now).
    pub kept: BTreeSet<InstanceId>,
    /// Instances not placed, and why.
    pub waiting: BTreeMap<InstanceId, String>,
    /// Where each job's instance 0 now runs (fixed jobs return there).
    pub history: BTreeMap<Id, String>,
}

/// Whether a job can be placed with its plan: a current plan, or one that cannot be made
/// any more but keeps its last good links. Else why not.
fn usable<'a>(job: &Job, plan: Option<&'a JobPlan>) -> Result<&'a JobPlan, String> {
    match plan {
        None => Err("waiting for its plan (the leader plans records added by hand)".into()),
        Some(p) if p.error.is_none() && p.record == record_hash(job) => Ok(p),
        Some(p) if p.error.is_none() => Err("its record changed; waiting for its plan".into()),
        Some(p) if !p.links.is_empty() => Ok(p),
        Some(p) => Err(p.error.clone().unwrap_or_default()),
    }
}

/// The intent of one placed instance.
fn intent(
    stack: &str,
    job: &Job,
    plan: &JobPlan,
    index: u32,
    host: &str,
    address: Option<IpAddr>,
) -> Intent {
    let name = instance_name(stack, &job.name, index);
    let mut env = plan.env.clone();
    env.extend(job.env.clone());
    env.insert("VIKING_HOST".into(), host.to_owned());
    env.insert("VIKING_INSTANCE".into(), name);
    let after = plan
        .links
        .iter()
        .filter(|l| l.missing.is_none())
        .map(|l| After { stack: l.stack.clone(), job: l.job.clone(), ports: !l.ports.is_empty() })
        .collect();
    Intent {
        spec: InstanceSpec {
            stack: stack.to_owned(),
            job: job.name.clone(),
            index,
            // NB: compose's `build:` with `image:` tags the build so; without, a tag of its own.
            image: job.image.clone().or_else(|| {
                job.build_hash
                    .as_deref()
                    .map(|h| crate::deploy::context::image_tag(stack, &job.name, h))
            }),
            command: job.command.clone(),
            env,
            ports: job.ports.clone(),
            volumes: job.volumes.clone(),
            daemonize: job.daemonize,
            address,
            build: job.build_hash.clone(),
        },
        after,
        fixed: job.fixed,
        tags: job.tags.clone(),
        record: record_hash(job),
    }
}

/// Where every instance goes: pure, over the scheduler.
pub fn decide(view: &View) -> Decision {
    let mut d = Decision::default();
    let mut placeable: Vec<(String, Job)> = Vec::new();
    let mut plans: BTreeMap<&Id, &JobPlan> = BTreeMap::new();
    for (id, job) in &view.jobs {
        match usable(job, view.plans.get(id)) {
            Ok(p) => {
                plans.insert(id, p);
                placeable.push((id.0.clone(), job.clone()));
            }
            Err(why) => {
                for index in 0..job.scale {
                    let iid = (id.0.clone(), id.1.clone(), index);
                    if view.intents.contains_key(&iid) {
                        d.kept.insert(iid);
                    } else {
                        d.waiting.insert(iid, why.clone());
                    }
                }
            }
        }
    }
    // A job whose record does not parse keeps every intent it has.
    for iid in view.intents.keys() {
        if view.invalid.contains(&(iid.0.clone(), iid.1.clone())) {
            d.kept.insert(iid.clone());
        }
    }
    let current: BTreeMap<InstanceId, String> = view
        .intents
        .iter()
        .filter_map(|(iid, at)| Some((iid.clone(), at.first()?.0.clone())))
        .collect();
    let input = SchedulerInput {
        jobs: placeable,
        hosts: view.hosts.clone(),
        current,
        history: view.history.clone(),
        load: view.hosts.iter().map(|h| (h.name.clone(), h.load)).collect(),
    };
    for ((stack, job_name, index), placement) in schedule(&input) {
        let id = (stack.clone(), job_name.clone());
        let (Some(job), Some(plan)) = (view.jobs.get(&id), plans.get(&id)) else { continue };
        let iid = (stack.clone(), job_name.clone(), index);
        let now = view.intents.get(&iid).map(Vec::as_slice).unwrap_or_default();
        match placement {
            Placement::Waiting(why) => {
                // A fixed instance keeps its intent on its (absent) host: it returns there.
                if job.fixed && !now.is_empty() {
                    d.kept.insert(iid.clone());
                }
                d.waiting.insert(iid, why);
            }
            Placement::Host(host) => {
                let address = now.iter().find_map(|(_, i)| i.as_ref()?.spec.address);
                let mut want = intent(&stack, job, plan, index, &host, address);
                // NB: seed 003: a static job is not replaced while its own record is unchanged
                // (a redeploy of its stack that changed other jobs, or its links' ports).
                if job.is_static {
                    if let Some(old) = now
                        .iter()
                        .filter(|(h, _)| *h == host)
                        .find_map(|(_, i)| i.as_ref().filter(|i| i.record == want.record))
                    {
                        want = old.clone();
                    }
                }
                if index == 0 && view.history.get(&id) != Some(&host) {
                    d.history.insert(id, host.clone());
                }
                d.placed.insert(iid, (host, want));
            }
        }
    }
    d
}

pub struct Placer<S: Store> {
    store: S,
    deployer: std::sync::Arc<Deployer<S>>,
    addresses: Addresses<S>,
    /// Give instances addresses from their stack's subnet.
    pub assign_addresses: bool,
    /// This node's leader key while it leads: every write of a pass is fenced by it.
    leader: watch::Receiver<Option<LeaderKey>>,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    pub placed: usize,
    pub written: usize,
    pub removed: usize,
    pub waiting: usize,
}

impl<S: Store> Placer<S> {
    pub fn new(
        store: S,
        deployer: std::sync::Arc<Deployer<S>>,
        addresses: Addresses<S>,
        leader: watch::Receiver<Option<LeaderKey>>,
    ) -> Self {
        Self { store, deployer, addresses, assign_addresses: true, leader }
    }

    /// Reads what a pass decides on.
    pub async fn read(&self) -> Result<View, PlacementError> {
        let records = DeployedJobs::read(&self.store).await?;
        let plans = Plans::read(&self.store).await?;
        let hosts = membership::hosts(&self.store).await?.into_iter().map(|h| h.info).collect();
        let mut intents: BTreeMap<InstanceId, Vec<(String, Option<Intent>)>> = BTreeMap::new();
        for kv in self.store.list(keys::PROC).await?.kvs {
            if let Some((host, stack, job, index)) = keys::parse_instance(keys::PROC, &kv.key) {
                let intent = serde_json::from_slice::<Intent>(&kv.value).ok();
                intents.entry((stack, job, index)).or_default().push((host, intent));
            }
        }
        let history = self
            .store
            .list(keys::HISTORY)
            .await?
            .kvs
            .iter()
            .filter_map(|kv| {
                let (stack, job) = kv.key.strip_prefix(keys::HISTORY)?.split_once('/')?;
                Some(((stack.to_owned(), job.to_owned()), kv.text().ok()?.trim().to_owned()))
            })
            .collect();
        let invalid = records
            .invalid
            .iter()
            .filter_map(|e| {
                let key = e.file.to_string_lossy();
                let (s, j) = key.strip_prefix(keys::DEPLOY)?.split_once('/')?;
                Some((s.to_owned(), j.to_owned()))
            })
            .collect();
        Ok(View { jobs: records.jobs, invalid, plans: plans.plans, hosts, intents, history })
    }

    /// Places every deployed instance once: read, decide, write the difference.
    pub async fn place(&self) -> Result<Pass, PlacementError> {
        let Some(fence) = self.leader.borrow().clone() else { return Ok(Pass::default()) };
        let view = self.read().await?;
        let mut decision = decide(&view);
        if self.assign_addresses {
            self.give_addresses(&view, &mut decision).await;
        }
        let (groups, pass) = self.diff(&view, &decision).await?;
        let fence = [Compare::ModRevision(fence.key.clone(), fence.revision)];
        let n = groups.len();
        let done = bulk::commit_groups(&self.store, &fence, groups).await?;
        if done < n {
            tracing::warn!(done, of = n, "placement stopped: this node no longer leads");
        } else if n > 0 {
            tracing::info!(
                placed = pass.placed,
                written = pass.written,
                removed = pass.removed,
                waiting = pass.waiting,
                "placement"
            );
        }
        Ok(pass)
    }

    /// Addresses for placed instances that have none, stack by stack: a stack whose subnet
    /// or addresses cannot be allocated waits, the others go on.
    async fn give_addresses(&self, view: &View, d: &mut Decision) {
        let needing: Vec<InstanceId> = d
            .placed
            .iter()
            .filter(|(_, (_, i))| i.spec.address.is_none())
            .map(|(iid, _)| iid.clone())
            .collect();
        let mut failed: BTreeMap<String, String> = BTreeMap::new();
        for iid in needing {
            let stack = &iid.0;
            if let Some(why) = failed.get(stack) {
                d.placed.remove(&iid);
                d.waiting.insert(iid, why.clone());
                continue;
            }
            let total: u64 = view
                .jobs
                .iter()
                .filter(|((s, _), _)| s == stack)
                .map(|(_, j)| u64::from(j.scale))
                .sum();
            let name = instance_name(stack, &iid.1, iid.2);
            let got = match self.addresses.subnet(stack, total).await {
                Ok(_) => self.addresses.address(stack, &name).await,
                Err(e) => Err(e),
            };
            match got {
                Ok(ip) => {
                    if let Some((_, i)) = d.placed.get_mut(&iid) {
                        i.spec.address = Some(IpAddr::V4(ip));
                    }
                }
                Err(e) => {
                    let why = format!("no address for it: {e}");
                    tracing::warn!(%stack, error = %e, "allocating addresses");
                    failed.insert(stack.clone(), why.clone());
                    d.placed.remove(&iid);
                    d.waiting.insert(iid, why);
                }
            }
        }
    }

    /// The writes that turn the store's intent into `d`, grouped per instance.
    async fn diff(
        &self,
        view: &View,
        d: &Decision,
    ) -> Result<(Vec<Vec<Op>>, Pass), PlacementError> {
        let mut pass = Pass { placed: d.placed.len(), waiting: d.waiting.len(), ..Pass::default() };
        let mut groups = Vec::new();
        for (iid, at) in &view.intents {
            let (stack, job, index) = iid;
            let mut group = Vec::new();
            let want = d.placed.get(iid);
            if let Some((host, intent)) = want {
                let same = at.iter().any(|(h, i)| h == host && i.as_ref() == Some(intent));
                if !same {
                    let value = serde_json::to_vec(intent).unwrap_or_default();
                    group.push(Op::put(keys::proc(host, stack, job, *index), value));
                    pass.written += 1;
                }
            }
            let keep = d.kept.contains(iid);
            for (host, _) in at {
                let placed_here = want.is_some_and(|(h, _)| h == host);
                if !placed_here && !keep {
                    group.push(Op::delete(keys::proc(host, stack, job, *index)));
                    pass.removed += 1;
                }
            }
            if want.is_none() && !keep {
                // Gone for good: its address goes too.
                if let Err(e) =
                    self.addresses.release_owner(stack, &instance_name(stack, job, *index)).await
                {
                    tracing::warn!(instance = %instance_name(stack, job, *index), error = %e, "releasing its address");
                }
            }
            groups.push(group);
        }
        for (iid, (host, intent)) in &d.placed {
            if view.intents.contains_key(iid) {
                continue;
            }
            let value = serde_json::to_vec(intent).unwrap_or_default();
            groups.push(vec![Op::put(keys::proc(host, &iid.0, &iid.1, iid.2), value)]);
            pass.written += 1;
        }
        let waiting_now = self.store.list(keys::WAITING).await?;
        let have: BTreeMap<&str, &[u8]> =
            waiting_now.kvs.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice())).collect();
        let want: BTreeMap<String, &str> = d
            .waiting
            .iter()
            .map(|((s, j, i), why)| (keys::waiting(s, j, *i), why.as_str()))
            .collect();
        for (key, why) in &want {
            if have.get(key.as_str()) != Some(&why.as_bytes()) {
                groups.push(vec![Op::put(key.clone(), why.as_bytes().to_vec())]);
            }
        }
        for key in have.keys().filter(|k| !want.contains_key(**k)) {
            groups.push(vec![Op::delete(*key)]);
        }
        for ((s, j), host) in &d.history {
            groups.push(vec![Op::put(keys::history(s, j), host.as_bytes().to_vec())]);
        }
        groups.retain(|g| !g.is_empty());
        Ok((groups, pass))
    }
}

/// Places while this node leads: plans records added by hand, then places; at once when it
/// becomes leader, then whenever what it reads changes (its own writes included: that pass
/// finds nothing to do), and every `IDLE_PERIOD` regardless. Without watches (the store
/// refused them), every `PERIOD`.
pub async fn run<S: Store>(
    placer: Placer<S>,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut changes: Option<Changes> = None;
    loop {
        let started = tokio::time::Instant::now();
        if *leading.borrow() {
            if !changes.as_ref().is_some_and(Changes::is_live) {
                // NB: watching starts before the pass reads, so nothing written in between
                // goes unnoticed.
                changes = match Changes::start(&placer.store, &WATCHED).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "watching for changes; placing every {PERIOD:?}");
                        None
                    }
                };
            }
            if let Err(e) = placer.deployer.adopt().await {
                tracing::warn!(error = %e, "planning records added by hand failed");
            }
            let placed = placer.place().await;
            crate::metrics::global().control.placed(started.into_std(), placed.is_ok());
            if let Err(e) = placed {
                tracing::warn!(error = %e, "placement pass failed");
            }
        } else {
            changes = None;
        }
        let (period, changed) = match changes.as_mut() {
            Some(c) => (IDLE_PERIOD, futures::future::Either::Left(c.next())),
            None => (PERIOD, futures::future::Either::Right(std::future::pending())),
        };
        let woken_by_change = tokio::select! {
            _ = tokio::time::sleep(period) => false,
            _ = changed => true,
            _ = leading.changed() => false,
            _ = stop.changed() => return,
        };
        if woken_by_change {
            tokio::select! {
                _ = tokio::time::sleep_until(started + MIN_GAP) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::plans::PlannedLink;

    fn host(name: &str) -> HostInfo {
        HostInfo::new(name, "10.0.0.1".parse().unwrap())
    }

    fn job(name: &str, scale: u32) -> Job {
        let mut j = Job::new(name);
        j.scale = scale;
        j.command = vec!["true".into()];
        j
    }

    fn plan(job: &Job) -> JobPlan {
        JobPlan {
            record: record_hash(job),
            links: vec![],
            env: BTreeMap::from([("X_PORT".into(), "tcp://127.0.0.1:20000".into())]),
            error: None,
        }
    }

    fn view(jobs: &[(&str, Job)]) -> View {
        let mut v = View { hosts: vec![host("a"), host("b")], ..View::default() };
        for (s, j) in jobs {
            v.plans.insert(((*s).into(), j.name.clone()), plan(j));
            v.jobs.insert(((*s).into(), j.name.clone()), j.clone());
        }
        v
    }

    fn iid(s: &str, j: &str, i: u32) -> InstanceId {
        (s.into(), j.into(), i)
    }

    #[test]
    fn planned_jobs_are_placed_with_their_plans_env() {
        let d = decide(&view(&[("web", job("app", 2))]));
        assert_eq!(d.placed.len(), 2);
        let (_, i) = &d.placed[&iid("web", "app", 0)];
        assert_eq!(i.spec.env["X_PORT"], "tcp://127.0.0.1:20000");
        assert!(d.waiting.is_empty());
    }

    #[test]
    fn a_job_without_a_usable_plan_keeps_what_runs_and_others_are_placed() {
        let mut v = view(&[("web", job("app", 2)), ("other", job("db", 1))]);
        // web/app runs; then its record is edited so that it no longer plans (no old links).
        let placed = decide(&v);
        for (iid, (h, i)) in &placed.placed {
            v.intents.insert(iid.clone(), vec![(h.clone(), Some(i.clone()))]);
        }
        let mut edited = job("app", 3);
        edited.links = vec![crate::stack::Link::parse("gone/db").unwrap()];
        v.jobs.insert(("web".into(), "app".into()), edited.clone());
        v.plans.insert(
            ("web".into(), "app".into()),
            JobPlan {
                error: Some("links to gone/db, but stack gone is not deployed".into()),
                ..plan(&edited)
            },
        );
        v.plans.get_mut(&("web".into(), "app".into())).unwrap().links.clear();
        let d = decide(&v);
        assert!(d.kept.contains(&iid("web", "app", 0)) && d.kept.contains(&iid("web", "app", 1)));
        assert!(d.waiting[&iid("web", "app", 2)].contains("stack gone is not deployed"));
        assert!(d.placed.contains_key(&iid("other", "db", 0)), "the other stack is placed");
    }

    #[test]
    fn an_error_plan_with_its_last_good_links_still_places() {
        let mut v = view(&[("web", job("app", 1))]);
        let mut p = plan(&job("app", 1));
        p.error = Some("links to shared/db, but stack shared is not deployed".into());
        p.links = vec![PlannedLink {
            stack: "shared".into(),
            job: "db".into(),
            prefix: "SHARED_DB".into(),
            ports: vec![],
            missing: Some("stack shared is not deployed".into()),
        }];
        v.plans.insert(("web".into(), "app".into()), p);
        let d = decide(&v);
        let (_, i) = &d.placed[&iid("web", "app", 0)];
        assert!(i.after.is_empty(), "a missing link does not hold the start");
    }

    #[test]
    fn invalid_records_keep_their_intents_and_gone_records_lose_theirs() {
        let mut v = view(&[]);
        v.invalid.insert(("web".into(), "bad".into()));
        v.intents.insert(iid("web", "bad", 0), vec![("a".into(), None)]);
        v.intents.insert(iid("web", "gone", 0), vec![("a".into(), None)]);
        let d = decide(&v);
        assert!(d.kept.contains(&iid("web", "bad", 0)));
        assert!(
            !d.kept.contains(&iid("web", "gone", 0))
                && !d.placed.contains_key(&iid("web", "gone", 0))
        );
    }

    #[test]
    fn a_static_job_keeps_its_intent_while_its_record_is_unchanged() {
        let mut j = job("db", 1);
        j.is_static = true;
        j.fixed = true;
        let mut v = view(&[("s", j.clone())]);
        let first = decide(&v);
        let (h, i) = first.placed[&iid("s", "db", 0)].clone();
        v.intents.insert(iid("s", "db", 0), vec![(h.clone(), Some(i.clone()))]);
        // Its links' env changed (a redeploy of what it links to): it stays as it is.
        v.plans.get_mut(&("s".into(), "db".into())).unwrap().env.insert("NEW".into(), "1".into());
        assert_eq!(decide(&v).placed[&iid("s", "db", 0)].1, i);
        // Its own record changed: replaced.
        let mut j2 = j.clone();
        j2.command = vec!["other".into()];
        v.jobs.insert(("s".into(), "db".into()), j2.clone());
        v.plans.insert(("s".into(), "db".into()), plan(&j2));
        assert_ne!(decide(&v).placed[&iid("s", "db", 0)].1, i);
    }
}
