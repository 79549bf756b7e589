//! The leader's placement loop: runs the scheduler over what is deployed and which hosts are
//! alive, and writes the result as intent under `/viking/proc/<host>/<stack>/<job>/<index>`
//! (with the instance's full spec: command, env with links, address), or the reason it
//! waits under `/viking/waiting/`. Only what changed is written. A pass runs when the deploy
//! folder, the hosts or the intent change, not on a short timer.
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use tokio::sync::watch;

use super::{
    instances::{After, Intent},
    scheduler::{schedule, InstanceId, Placement, SchedulerInput},
};
use crate::{
    cluster::{membership, Addresses, ClusterError},
    deploy::{folder::DeployedJobs, DeployError, Deployer},
    runtime::{instance_name, InstanceSpec},
    stack::{plan::Plan, Job},
    store::{keys, Changes, Op, Store, Txn},
};

/// How often the leader places when it cannot watch for changes.
pub const PERIOD: Duration = Duration::from_millis(500);
/// How often it places anyway while it watches (a safety net: a change wakes it at once).
pub const IDLE_PERIOD: Duration = Duration::from_secs(5);
/// The least time between the starts of two passes woken by changes: many hosts reporting
/// their load make one pass, not one each.
pub const MIN_GAP: Duration = Duration::from_millis(250);
/// What a pass reads that others write: jobs deployed and removed, hosts joining, leaving
/// and reporting load, intent edited by hand. (History, waiting records and addresses are
/// the leader's own.)
const WATCHED: [&str; 3] = [keys::DEPLOY, keys::HOSTS, keys::PROC];

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error(transparent)]
    Control(#[from] ClusterError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

pub struct Placer<S: Store> {
    store: S,
    deployer: std::sync::Arc<Deployer<S>>,
    addresses: Addresses<S>,
    /// Give instances addresses from their stack's subnet (the exec runtime routes them).
    pub assign_addresses: bool,
    plans: tokio::sync::Mutex<Option<Plans>>,
}

/// How long plans are reused while nothing they were made from changes (a safety net).
const PLANS_TTL: Duration = Duration::from_secs(30);

/// The plans of every deployed stack, and what they were made from: the jobs and the
/// ambassador port allocations (a stack removed and deployed again gets new ports).
struct Plans {
    jobs: BTreeMap<(String, String), Job>,
    ports: Vec<(String, Vec<u8>)>,
    plans: BTreeMap<String, Plan>,
    made: tokio::time::Instant,
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
    pub fn new(store: S, deployer: std::sync::Arc<Deployer<S>>, addresses: Addresses<S>) -> Self {
        Self { store, deployer, addresses, assign_addresses: true, plans: Default::default() }
    }

    /// The plan of every deployed stack: made again only when the deployed jobs or the port
    /// allocations change (or after `PLANS_TTL`), since a plan reads the allocators for each
    /// of its links.
    async fn plans(
        &self,
        deployed: &DeployedJobs,
    ) -> Result<BTreeMap<String, Plan>, PlacementError> {
        let ports: Vec<(String, Vec<u8>)> = self
            .store
            .list(keys::PORTS)
            .await?
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect();
        let mut cache = self.plans.lock().await;
        if let Some(c) = cache.as_ref() {
            if c.jobs == deployed.jobs && c.ports == ports && c.made.elapsed() < PLANS_TTL {
                return Ok(c.plans.clone());
            }
        }
        let mut plans = BTreeMap::new();
        let mut complete = true;
        for stack in deployed.stacks() {
            match self.deployer.deployed_plan(&stack, deployed).await {
                Ok(p) => {
                    plans.insert(stack, p);
                }
                Err(e) => {
                    tracing::warn!(%stack, error = %e, "cannot plan a deployed stack");
                    complete = false;
                }
            }
        }
        // NB: made under the ports read before planning; a plan that allocated a port
        // changes them, so the next pass plans once more and caches that.
        *cache = complete.then(|| Plans {
            jobs: deployed.jobs.clone(),
            ports,
            plans: plans.clone(),
            made: tokio::time::Instant::now(),
        });
        Ok(plans)
    }

    /// Places every deployed instance once.
    pub async fn place(&self) -> Result<Pass, PlacementError> {
        let deployed = DeployedJobs::read(&self.store).await?;
        let hosts: Vec<_> =
            membership::hosts(&self.store).await?.into_iter().map(|h| h.info).collect();
        let load = hosts.iter().map(|h| (h.name.clone(), h.load)).collect();
        let procs = self.store.list(keys::PROC).await?;
        let mut current: BTreeMap<InstanceId, String> = BTreeMap::new();
        let mut existing: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        // Addresses instances already have (kept when they move; asked for only when new).
        let mut addresses: BTreeMap<String, std::net::IpAddr> = BTreeMap::new();
        for kv in &procs.kvs {
            if let Some((host, stack, job, index)) = keys::parse_instance(keys::PROC, &kv.key) {
                if let Ok(Intent { spec: InstanceSpec { address: Some(a), .. }, .. }) =
                    serde_json::from_slice::<Intent>(&kv.value)
                {
                    addresses.insert(instance_name(&stack, &job, index), a);
                }
                current.insert((stack, job, index), host);
                existing.insert(kv.key.clone(), kv.value.clone());
            }
        }
        let history: BTreeMap<(String, String), String> = self
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
        let waiting_now: BTreeSet<String> =
            self.store.list(keys::WAITING).await?.kvs.into_iter().map(|kv| kv.key).collect();
        let jobs: Vec<(String, crate::stack::Job)> =
            deployed.jobs.iter().map(|((s, _), j)| (s.clone(), j.clone())).collect();
        let input = SchedulerInput { jobs, hosts, current: current.clone(), history, load };
        let placements = schedule(&input);

        let plans = self.plans(&deployed).await?;

        let mut pass = Pass::default();
        let mut ops = Vec::new();
        let mut keep_keys = BTreeSet::new();
        let mut keep_waiting = BTreeSet::new();
        for ((stack, job_name, index), placement) in &placements {
            let Some(job) = deployed.jobs.get(&(stack.clone(), job_name.clone())) else {
                continue;
            };
            let Some(plan) = plans.get(stack) else { continue };
            match placement {
                Placement::Waiting(why) => {
                    let key = keys::waiting(stack, job_name, *index);
                    keep_waiting.insert(key.clone());
                    ops.push(Op::put(key, why.as_bytes().to_vec()));
                    pass.waiting += 1;
                    // A fixed instance keeps its intent on its (absent) host: it returns there.
                    if let Some(h) = current.get(&(stack.clone(), job_name.clone(), *index)) {
                        if job.fixed {
                            keep_keys.insert(keys::proc(h, stack, job_name, *index));
                        }
                    }
                }
                Placement::Host(host) => {
                    pass.placed += 1;
                    let name = instance_name(stack, job_name, *index);
                    let address = if let Some(a) = addresses.get(&name) {
                        Some(*a)
                    } else if self.assign_addresses {
                        let total: u64 = deployed.stack(stack).map(|j| u64::from(j.scale)).sum();
                        self.addresses.subnet(stack, total).await?;
                        Some(std::net::IpAddr::V4(self.addresses.address(stack, &name).await?))
                    } else {
                        None
                    };
                    let mut env = plan
                        .jobs
                        .iter()
                        .find(|pj| pj.job.name == *job_name)
                        .map(|pj| pj.link_env.clone())
                        .unwrap_or_default();
                    env.extend(job.env.clone());
                    env.insert("VIKING_HOST".into(), host.clone());
                    env.insert("VIKING_INSTANCE".into(), name.clone());
                    let after = job
                        .links
                        .iter()
                        .map(|l| {
                            let s = l.stack_or(stack).to_owned();
                            let ports = deployed
                                .jobs
                                .get(&(s.clone(), l.job.clone()))
                                .is_some_and(|j| !j.ports.is_empty());
                            After { stack: s, job: l.job.clone(), ports }
                        })
                        .collect();
                    let intent = Intent {
                        spec: InstanceSpec {
                            stack: stack.clone(),
                            job: job_name.clone(),
                            index: *index,
                            image: job.image.clone(),
                            command: job.command.clone(),
                            env,
                            ports: job.ports.clone(),
                            volumes: job.volumes.clone(),
                            daemonize: job.daemonize,
                            address,
                        },
                        after,
                        fixed: job.fixed,
                        tags: job.tags.clone(),
                    };
                    let key = keys::proc(host, stack, job_name, *index);
                    let value = serde_json::to_vec(&intent)
                        .map_err(|e| ClusterError::Invalid(format!("intent of {name}: {e}")))?;
                    keep_keys.insert(key.clone());
                    if existing.get(&key) != Some(&value) {
                        ops.push(Op::put(key, value));
                        pass.written += 1;
                    }
                    let hkey = keys::history(stack, job_name);
                    if *index == 0
                        && input.history.get(&(stack.clone(), job_name.clone())) != Some(host)
                    {
                        ops.push(Op::put(hkey, host.as_bytes().to_vec()));
                    }
                }
            }
        }
        // Waiting records are rewritten only when new or gone.
        ops.retain(|op| match op {
            Op::Put { key, .. } if key.starts_with(keys::WAITING) => !waiting_now.contains(key),
            _ => true,
        });
        for key in existing.keys().filter(|k| !keep_keys.contains(*k)) {
            ops.push(Op::delete(key.clone()));
            pass.removed += 1;
            if let Some((_, stack, job, index)) = keys::parse_instance(keys::PROC, key) {
                let still = placements.contains_key(&(stack.clone(), job.clone(), index));
                if !still {
                    let _ = self
                        .addresses
                        .release_owner(&stack, &instance_name(&stack, &job, index))
                        .await;
                }
            }
        }
        for key in waiting_now.iter().filter(|k| !keep_waiting.contains(*k)) {
            ops.push(Op::delete(key.clone()));
        }
        if !ops.is_empty() {
            self.store.txn(Txn::when([]).then(ops)).await?;
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
}

/// Places while this node leads: at once when it becomes leader, then whenever what it reads
/// changes (its own writes included: that pass finds nothing to do), and every
/// `IDLE_PERIOD` regardless. Without watches (the store refused them), every `PERIOD`.
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
