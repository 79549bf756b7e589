//! Deploying a stack: plan it against what is deployed, allocate its links' ambassador ports,
//! write its job records in one transaction. All or nothing: a refused stack changes nothing.
use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::folder::{job_key, parse_record, record_value, stack_prefix, DeployedJobs, JobRecord};
use crate::{
    cluster::{AmbassadorPorts, ClusterError, PortRange},
    stack::{
        plan::{plan, Plan, PlanError, PortAllocator},
        service_name, Format, ParsedJob, Port, Stack, StackError,
    },
    store::{Compare, Op, Store, StoreError, Txn},
};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Control(#[from] ClusterError),
    #[error("{0}")]
    NotFound(String),
    #[error("stack {0} changed while it was being deployed; deploy again")]
    Conflict(String),
}

/// A deployed stack as `viking stacks` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackSummary {
    pub name: String,
    pub jobs: Vec<String>,
    pub instances: u32,
}

/// Allocates for real.
struct Allocate<'a, S>(&'a AmbassadorPorts<S>);
/// Only looks: the port a service already has, or 0 (a dry run writes nothing).
struct Peek<'a, S>(&'a AmbassadorPorts<S>);

impl<S: Store> PortAllocator for Allocate<'_, S> {
    type Error = ClusterError;
    async fn port(&self, service: &str, port: Port) -> Result<u16, ClusterError> {
        self.0.allocate(service, port.port).await
    }
}

impl<S: Store> PortAllocator for Peek<'_, S> {
    type Error = ClusterError;
    async fn port(&self, service: &str, port: Port) -> Result<u16, ClusterError> {
        Ok(self.0.get(service, port.port).await?.unwrap_or(0))
    }
}

pub struct Deployer<S: Store> {
    store: S,
    ports: AmbassadorPorts<S>,
    ambassador: IpAddr,
}

impl<S: Store> Deployer<S> {
    pub fn new(store: S, range: PortRange, ambassador: IpAddr) -> Self {
        Self { ports: AmbassadorPorts::new(store.clone(), range), store, ambassador }
    }

    /// Plans and (unless `dry_run`) deploys. Redeploying an unchanged stack writes nothing.
    pub async fn deploy(&self, stack: &Stack, dry_run: bool) -> Result<Plan, DeployError> {
        let deployed = DeployedJobs::read(&self.store).await?;
        // A link to a record that does not parse is refused with that record's own error.
        for pj in &stack.jobs {
            for link in &pj.job.links {
                let key = job_key(link.stack_or(&stack.name), &link.job);
                if let Some(bad) =
                    deployed.invalid.iter().find(|e| e.file.as_os_str() == key.as_str())
                {
                    return Err(DeployError::Stack(bad.clone()));
                }
            }
        }
        if dry_run {
            return Ok(plan(stack, &deployed, self.ambassador, &Peek(&self.ports)).await?);
        }
        let planned = plan(stack, &deployed, self.ambassador, &Allocate(&self.ports)).await?;
        let mut ops = Vec::new();
        let mut when = Vec::new();
        let existing: BTreeMap<&str, _> =
            deployed.stack(&stack.name).map(|j| (j.name.as_str(), j)).collect();
        for pj in &stack.jobs {
            let key = job_key(&stack.name, &pj.job.name);
            if existing.get(pj.job.name.as_str()) != Some(&&pj.job) {
                ops.push(Op::put(key, record_value(&pj.job)));
            }
        }
        for name in existing.keys() {
            if stack.job(name).is_none() {
                ops.push(Op::delete(job_key(&stack.name, name)));
            }
        }
        if ops.is_empty() {
            return Ok(planned);
        }
        // Nothing may have been added under the stack since it was read.
        when.push(Compare::PrefixUnchangedSince(stack_prefix(&stack.name), deployed.revision));
        let result = self.store.txn(Txn::when(when).then(ops)).await?;
        if !result.succeeded {
            return Err(DeployError::Conflict(stack.name.clone()));
        }
        tracing::info!(stack = %stack.name, jobs = stack.jobs.len(), "deployed");
        Ok(planned)
    }

    /// Removes a stack's job records and releases its services' ambassador ports.
    pub async fn remove(&self, stack: &str) -> Result<bool, DeployError> {
        let deployed = DeployedJobs::read(&self.store).await?;
        let jobs: Vec<String> = deployed.stack(stack).map(|j| j.name.clone()).collect();
        let removed = self.store.delete_prefix(&stack_prefix(stack)).await?;
        for job in &jobs {
            self.ports.release_service(&service_name(stack, job)).await?;
        }
        Ok(removed > 0)
    }

    pub async fn stacks(&self) -> Result<Vec<StackSummary>, DeployError> {
        let deployed = DeployedJobs::read(&self.store).await?;
        Ok(deployed
            .stacks()
            .into_iter()
            .map(|name| {
                let jobs: Vec<&crate::stack::Job> = deployed.stack(&name).collect();
                StackSummary {
                    instances: jobs.iter().map(|j| j.scale).sum(),
                    jobs: jobs.iter().map(|j| j.name.clone()).collect(),
                    name,
                }
            })
            .collect())
    }

    /// The deployed stack as a `Stack` (for env and plans of what runs).
    pub async fn deployed_stack(&self, stack: &str) -> Result<(Stack, DeployedJobs), DeployError> {
        let deployed = DeployedJobs::read(&self.store).await?;
        Ok((stack_of(stack, &deployed)?, deployed))
    }

    /// The plan of a stack of `deployed` (allocating any port not yet allocated): what the
    /// leader turns into intent.
    pub async fn deployed_plan(
        &self,
        stack: &str,
        deployed: &DeployedJobs,
    ) -> Result<Plan, DeployError> {
        let s = stack_of(stack, deployed)?;
        Ok(plan(&s, deployed, self.ambassador, &Allocate(&self.ports)).await?)
    }

    /// The link environment `job` of `stack` gets (allocating any port not yet allocated).
    pub async fn env(
        &self,
        stack: &str,
        job: &str,
    ) -> Result<BTreeMap<String, String>, DeployError> {
        let (s, deployed) = self.deployed_stack(stack).await?;
        let p = plan(&s, &deployed, self.ambassador, &Allocate(&self.ports)).await?;
        p.jobs
            .into_iter()
            .find(|pj| pj.job.name == job)
            .map(|pj| pj.link_env)
            .ok_or_else(|| DeployError::NotFound(format!("stack {stack} has no job {job}")))
    }

    /// Every job record (for `viking config export`).
    pub async fn records(&self) -> Result<DeployedJobs, DeployError> {
        Ok(DeployedJobs::read(&self.store).await?)
    }

    /// Writes job records (`viking config apply`), all in one transaction.
    pub async fn apply(&self, records: &[JobRecord]) -> Result<usize, DeployError> {
        for r in records {
            // Re-parse the canonical value, so what lands is exactly what is read back.
            parse_record(&r.key, &record_value(&r.job))?;
        }
        let ops: Vec<Op> =
            records.iter().map(|r| Op::put(r.key.clone(), record_value(&r.job))).collect();
        self.store.txn(Txn::when([]).then(ops)).await?;
        Ok(records.len())
    }
}

/// One stack of the deploy folder as a `Stack`.
fn stack_of(stack: &str, deployed: &DeployedJobs) -> Result<Stack, DeployError> {
    let jobs: Vec<ParsedJob> = deployed
        .stack(stack)
        .map(|j| ParsedJob { link_lines: vec![0; j.links.len()], job: j.clone(), line: 0 })
        .collect();
    if jobs.is_empty() {
        return Err(DeployError::NotFound(format!("stack {stack} is not deployed")));
    }
    Ok(Stack {
        name: stack.to_owned(),
        file: stack_prefix(stack).into(),
        format: Format::Viking,
        jobs,
    })
}
