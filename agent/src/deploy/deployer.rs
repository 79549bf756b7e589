//! Deploying: read what is deployed, decide (`planner`), commit the records, plans and port
//! allocations together, all or nothing (`store::bulk`), under compares of what was read. A
//! lost race is read and decided again. The one place that plans: placement and the API only
//! read the plans it stores; no read writes.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{
    folder::{self, DeployedJobs, JobRecord},
    planner::{Change, Decision, DeployState, Planner},
    plans::Plans,
};
use crate::{
    cluster::{
        ports::PortTable,
        vips::{self, VipTable},
        ClusterError, PortRange,
    },
    stack::{plan::Plan, Job, Stack, StackError},
    store::{bulk, keys, Compare, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0} changed while it was being deployed, {ATTEMPTS} times in a row; deploy again")]
    Conflict(String),
    #[error(
        "stack {stack} is linked to by {}: remove those first, or remove it with --force (their \
         links keep their ports and refuse connections until it is back)",
        by.join(", ")
    )]
    Dependents { stack: String, by: Vec<String> },
    #[error("{0}")]
    NotPlanned(String),
}

/// How many times a change is read and decided again after losing a race.
const ATTEMPTS: usize = 20;

/// A deployed stack as `viking stacks` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackSummary {
    pub name: String,
    pub jobs: Vec<String>,
    pub instances: u32,
    /// What is wrong: records that do not parse (key, field, why), jobs that cannot be planned
    /// or wait for a plan, links to jobs that are gone.
    #[serde(default)]
    pub problems: Vec<String>,
}

pub struct Deployer<S: Store> {
    store: S,
    planner: Planner,
}

impl<S: Store> Deployer<S> {
    pub fn new(store: S, range: PortRange, ambassador: IpAddr) -> Self {
        Self { store, planner: Planner { ambassador, range, vips: vips::default_range() } }
    }

    /// What is deployed, after finishing any bulk write still pending (a writer that died).
    async fn settled(&self) -> Result<DeployState, DeployError> {
        bulk::settle(&self.store).await?;
        self.state().await
    }

    /// What is deployed, read only.
    async fn state(&self) -> Result<DeployState, DeployError> {
        let records = DeployedJobs::read(&self.store).await?;
        let plans = Plans::read(&self.store).await?;
        let ports = PortTable::read(&self.store.list(keys::PORTS).await?.kvs)?;
        let vips = VipTable::read(&self.store.list(vips::PREFIX).await?.kvs)?;
        let contexts = super::context::stored(&self.store.list(super::context::PREFIX).await?.kvs);
        // NB: hosts that do not say their runtime (older agents) leave it unknown.
        let hosts = crate::cluster::membership::hosts(&self.store).await.unwrap_or_default();
        let docker = if hosts.iter().any(|h| h.info.runtime.is_none()) || hosts.is_empty() {
            None
        } else {
            Some(hosts.iter().any(|h| h.info.runtime.as_deref() == Some("docker")))
        };
        Ok(DeployState { records, plans, ports, vips, contexts, docker })
    }

    /// Decides `change` against what is deployed and commits it; again on a lost race.
    async fn change(
        &self,
        change: &Change<'_>,
        what: &str,
    ) -> Result<(DeployState, Decision), DeployError> {
        for attempt in 0..ATTEMPTS {
            let state = self.settled().await?;
            let decision = self.planner.decide(&state, change)?;
            if decision.ops.is_empty() {
                return Ok((state, decision));
            }
            let when = vec![
                state.ports.unchanged(),
                Compare::PrefixUnchangedSince(folder::PREFIX.into(), state.records.revision),
            ];
            if bulk::commit(&self.store, when, decision.ops.clone()).await? {
                return Ok((state, decision));
            }
            // NB: another writer won; spread out so that many racing deploys all finish.
            let pause = 5 * (attempt as u64 + 1) + rand::random::<u64>() % 20;
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Err(DeployError::Conflict(what.to_owned()))
    }

    /// Plans and (unless `dry_run`) deploys, with the `build:` contexts its jobs name.
    /// Redeploying an unchanged stack writes nothing.
    pub async fn deploy(
        &self,
        stack: &Stack,
        contexts: &super::planner::Contexts,
        dry_run: bool,
    ) -> Result<Plan, DeployError> {
        let change = Change::Deploy(stack, contexts);
        let (state, decision) = if dry_run {
            let state = self.state().await?;
            let decision = self.planner.decide(&state, &change)?;
            (state, decision)
        } else {
            self.change(&change, &format!("stack {}", stack.name)).await?
        };
        if !dry_run && !decision.ops.is_empty() {
            tracing::info!(stack = %stack.name, jobs = stack.jobs.len(), plans = decision.written, "deployed");
        }
        self.planner.report(stack, &state, &decision)
    }

    /// Removes a stack: its records and plans, and the ports no plan uses any more. Refused
    /// while other stacks link to it, unless `force`.
    pub async fn remove(&self, stack: &str, force: bool) -> Result<(), DeployError> {
        self.change(&Change::Remove { stack, force }, &format!("stack {stack}")).await?;
        tracing::info!(stack, force, "removed");
        Ok(())
    }

    /// Plans the records that have no current plan (added or edited by hand); the leader does
    /// this before it places. A record that cannot be planned gets a plan saying why.
    pub async fn adopt(&self) -> Result<Decision, DeployError> {
        let (_, decision) = self.change(&Change::Adopt, "the deploy folder").await?;
        if !decision.ops.is_empty() {
            tracing::info!(written = decision.written, removed = decision.removed, "plans adopted");
        }
        Ok(decision)
    }

    /// Writes job records (`viking config apply`), all or nothing.
    pub async fn apply(&self, records: &[JobRecord]) -> Result<usize, DeployError> {
        for r in records {
            // Re-parse the canonical value, so what lands is exactly what is read back.
            folder::parse_record(&r.key, &folder::record_value(&r.job))?;
        }
        self.change(&Change::Apply(records), "the deploy folder").await?;
        Ok(records.len())
    }

    pub async fn stacks(&self) -> Result<Vec<StackSummary>, DeployError> {
        let state = self.state().await?;
        Ok(summaries(&state))
    }

    /// The link environment `job` of `stack` runs with, from its stored plan.
    pub async fn env(
        &self,
        stack: &str,
        job: &str,
    ) -> Result<BTreeMap<String, String>, DeployError> {
        Ok(self.job(stack, job).await?.1)
    }

    /// A job's record and its link environment, from its stored plan.
    pub async fn job(
        &self,
        stack: &str,
        job: &str,
    ) -> Result<(Job, BTreeMap<String, String>), DeployError> {
        let records = DeployedJobs::read(&self.store).await?;
        let Some(record) = records.jobs.get(&(stack.to_owned(), job.to_owned())) else {
            return Err(DeployError::NotFound(format!("stack {stack} has no job {job}")));
        };
        let plan = self
            .store
            .get(&super::plans::plan_key(stack, job))
            .await?
            .and_then(|kv| serde_json::from_slice::<super::plans::JobPlan>(&kv.value).ok());
        match plan {
            Some(p) if p.record == super::plans::record_hash(record) || p.error.is_some() => {
                Ok((record.clone(), p.env))
            }
            _ => Err(DeployError::NotPlanned(format!(
                "{stack}/{job} is not planned yet: the leader plans records added by hand \
                 before it places them"
            ))),
        }
    }

    /// Every job record (for `viking config export`).
    pub async fn records(&self) -> Result<DeployedJobs, DeployError> {
        Ok(DeployedJobs::read(&self.store).await?)
    }
}

/// `viking stacks`: each stack with its jobs and what is wrong with it.
fn summaries(state: &DeployState) -> Vec<StackSummary> {
    let mut out: BTreeMap<String, StackSummary> = BTreeMap::new();
    let entry = |out: &mut BTreeMap<String, StackSummary>, name: &str| {
        out.entry(name.to_owned()).or_insert_with(|| StackSummary {
            name: name.to_owned(),
            jobs: Vec::new(),
            instances: 0,
            problems: Vec::new(),
        });
    };
    for ((stack, name), job) in &state.records.jobs {
        entry(&mut out, stack);
        let Some(s) = out.get_mut(stack) else { continue };
        s.jobs.push(name.clone());
        s.instances += job.scale;
        match state.plans.get(stack, name) {
            None => s.problems.push(format!("{name}: not planned yet")),
            Some(p) if p.error.is_none() && p.record != super::plans::record_hash(job) => {
                s.problems.push(format!("{name}: its record changed; not planned yet"))
            }
            Some(p) => s.problems.extend(p.problems().into_iter().map(|w| format!("{name}: {w}"))),
        }
    }
    for e in &state.records.invalid {
        let key = e.file.to_string_lossy();
        let Some(stack) = key.strip_prefix(folder::PREFIX).and_then(|r| r.split_once('/')) else {
            continue;
        };
        entry(&mut out, stack.0);
        if let Some(s) = out.get_mut(stack.0) {
            s.problems.push(format!("{e} (the job keeps what it runs)"));
        }
    }
    out.into_values().collect()
}
