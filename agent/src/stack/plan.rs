//! A deploy plan: jobs in start order, the link environment of each, and the ambassador
//! ports its links use. Computed the same way for `viking deploy --dry-run` and for a deploy.
use std::{collections::BTreeMap, future::Future, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::{
    env::{link_env, LinkPorts},
    names::service_name,
    Deployed, Job, Port, Stack, StackError,
};

/// Gives the ambassador port of a service's container port: the same answer every time for
/// the same pair (the store's port allocator in a cluster).
pub trait PortAllocator {
    type Error: std::fmt::Display;
    fn port(
        &self,
        service: &str,
        port: Port,
    ) -> impl Future<Output = Result<u16, Self::Error>> + Send;
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedJob {
    pub job: Job,
    /// `<stack>_<job>`.
    pub service: String,
    /// The link environment (the job's own `env` is applied on top, by the runtime).
    pub link_env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllocatedPort {
    pub service: String,
    pub port: Port,
    pub ambassador_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub stack: String,
    pub jobs: Vec<PlannedJob>,
    pub ports: Vec<AllocatedPort>,
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Stack(#[from] StackError),
    #[error("allocating an ambassador port for {service} {port}: {message}")]
    Alloc { service: String, port: Port, message: String },
}

/// Plans `stack` against what is deployed, allocating one ambassador port per linked
/// service and port.
pub async fn plan<A: PortAllocator + Sync>(
    stack: &Stack,
    deployed: &(dyn Deployed + Sync),
    ambassador: IpAddr,
    alloc: &A,
) -> Result<Plan, PlanError> {
    stack.check_links(deployed, true)?;
    let order = stack.order()?;
    let mut ports: BTreeMap<(String, Port), u16> = BTreeMap::new();
    let mut jobs = Vec::new();
    for name in order {
        let Some(job) = stack.job(&name) else { continue };
        let mut links = Vec::new();
        for link in &job.links {
            let target_stack = link.stack_or(&stack.name);
            let target_ports = if target_stack == stack.name {
                stack.job(&link.job).map(|j| j.ports.clone()).unwrap_or_default()
            } else {
                deployed.ports(target_stack, &link.job).unwrap_or_default()
            };
            let service = service_name(target_stack, &link.job);
            let mut lp = LinkPorts { prefix: link.env_prefix(&stack.name), ports: Vec::new() };
            for p in target_ports {
                let key = (service.clone(), p);
                let q = match ports.get(&key) {
                    Some(q) => *q,
                    None => {
                        let q = alloc.port(&service, p).await.map_err(|e| PlanError::Alloc {
                            service: service.clone(),
                            port: p,
                            message: e.to_string(),
                        })?;
                        ports.insert(key, q);
                        q
                    }
                };
                lp.ports.push((p, q));
            }
            links.push(lp);
        }
        jobs.push(PlannedJob {
            service: service_name(&stack.name, &job.name),
            link_env: link_env(ambassador, &links),
            job: job.clone(),
        });
    }
    Ok(Plan {
        stack: stack.name.clone(),
        jobs,
        ports: ports
            .into_iter()
            .map(|((service, port), ambassador_port)| AllocatedPort {
                service,
                port,
                ambassador_port,
            })
            .collect(),
        warnings: stack.warnings(deployed),
    })
}
