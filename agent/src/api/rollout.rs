//! `GET /v1/rollout/{stack}`: how far a stack's rollout is, job by job, the way `kubectl
//! rollout status` follows a deployment: each instance placed on a host, started, registered
//! (jobs with ports), and in the datapath of the agent answering (its registered address is
//! a backend there). `viking deploy --wait` polls it until the stack is done or an instance
//! failed.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    sync::Arc,
};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse as _, Response},
    Json,
};
use serde::{Deserialize, Serialize};

use super::state::{ApiError, ApiState};
use crate::{
    control::instances::{ps, PsRow},
    discovery::registration::{Endpoint, PREFIX},
    metrics,
    runtime::instance_name,
    stack::service_name,
    store::Store,
};

/// A deployed job: how many instances it wants and whether it has ports (is registered).
#[derive(Debug, Clone)]
pub struct JobWant {
    pub name: String,
    pub scale: u32,
    pub ports: bool,
}

/// One job's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRollout {
    pub job: String,
    pub desired: u32,
    pub placed: u32,
    pub started: u32,
    /// None: the job has no ports, nothing to register.
    pub registered: Option<u32>,
    pub in_datapath: Option<u32>,
    /// Instances that failed or crashed: `#index on host: state (detail)`.
    pub failed: Vec<String>,
    pub done: bool,
}

/// A stack's progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub stack: String,
    pub jobs: Vec<JobRollout>,
    /// Every instance runs (and is registered and in the datapath where it has ports).
    pub done: bool,
    /// An instance failed to start or crashed.
    pub failed: bool,
}

/// The rollout of `stack` from `viking ps`'s rows, the registrations and the backends in
/// this agent's datapath (None: the datapath could not be read).
pub fn compute(
    stack: &str,
    jobs: &[JobWant],
    rows: &[PsRow],
    registrations: &[Endpoint],
    backends: Option<&BTreeSet<SocketAddr>>,
) -> Rollout {
    // (service, instance) -> its registered addresses.
    let mut registered: BTreeMap<(&str, &str), Vec<SocketAddr>> = BTreeMap::new();
    for e in registrations.iter().filter(|e| e.key.env == stack) {
        registered.entry((e.key.service.as_str(), e.key.id.as_str())).or_default().push(e.addr());
    }
    let mut out = Vec::new();
    for j in jobs {
        let mine: Vec<&PsRow> = rows
            .iter()
            .filter(|r| r.stack == stack && r.job == j.name && r.index < j.scale)
            .collect();
        let placed = mine.iter().filter(|r| !r.host.is_empty() && r.state != "waiting").count();
        let up: Vec<&&PsRow> =
            mine.iter().filter(|r| r.state == "running" || r.state == "completed").collect();
        let failed: Vec<String> = mine
            .iter()
            .filter(|r| r.state == "failed" || r.state == "restarting")
            .map(|r| {
                let detail =
                    if r.detail.is_empty() { String::new() } else { format!(" ({})", r.detail) };
                format!("#{} on {}: {}{detail}", r.index, r.host, r.state)
            })
            .collect();
        let (reg, dp) = if j.ports {
            let service = service_name(stack, &j.name);
            let mut reg = 0u32;
            let mut dp = 0u32;
            for r in up.iter().filter(|r| r.state == "running") {
                let name = instance_name(stack, &j.name, r.index);
                let Some(addrs) = registered.get(&(service.as_str(), name.as_str())) else {
                    continue;
                };
                reg += 1;
                if backends.is_some_and(|b| addrs.iter().all(|a| b.contains(a))) {
                    dp += 1;
                }
            }
            (Some(reg), Some(dp))
        } else {
            (None, None)
        };
        let started = up.len() as u32;
        let done = started == j.scale
            && reg.is_none_or(|n| n == j.scale)
            && dp.is_none_or(|n| n == j.scale);
        out.push(JobRollout {
            job: j.name.clone(),
            desired: j.scale,
            placed: placed as u32,
            started,
            registered: reg,
            in_datapath: dp,
            failed,
            done,
        });
    }
    Rollout {
        stack: stack.to_owned(),
        done: !out.is_empty() && out.iter().all(|j| j.done),
        failed: out.iter().any(|j| !j.failed.is_empty()),
        jobs: out,
    }
}

pub async fn rollout<S: Store>(
    State(st): State<Arc<ApiState<S>>>,
    Path(stack): Path<String>,
) -> Result<Response, ApiError> {
    let unavailable = |e: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, e);
    let records = st.deployer.records().await?;
    let jobs: Vec<JobWant> = records
        .jobs
        .iter()
        .filter(|((s, _), _)| *s == stack)
        .map(|((_, name), j)| JobWant {
            name: name.clone(),
            scale: j.scale,
            ports: !j.ports.is_empty(),
        })
        .collect();
    if jobs.is_empty() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("stack {stack} is not deployed")));
    }
    let rows = ps(&st.store, Some(&stack)).await.map_err(|e| unavailable(e.to_string()))?;
    let regs: Vec<Endpoint> = st
        .store
        .list(&format!("{PREFIX}{stack}/"))
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .kvs
        .iter()
        .filter_map(|kv| Endpoint::parse(&kv.key, &kv.value).ok())
        .collect();
    let view = metrics::global().datapath.clone();
    let backends = tokio::task::spawn_blocking(move || match view.services() {
        Some(Ok(services)) => Some(
            services
                .iter()
                .flat_map(|s| s.backends.iter().map(|b| b.addr))
                .collect::<BTreeSet<_>>(),
        ),
        _ => None,
    })
    .await
    .unwrap_or(None);
    Ok(Json(compute(&stack, &jobs, &rows, &regs, backends.as_ref())).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(job: &str, index: u32, host: &str, state: &str) -> PsRow {
        PsRow {
            stack: "s".into(),
            job: job.into(),
            index,
            host: host.into(),
            state: state.into(),
            detail: if state == "failed" { "no such image".into() } else { String::new() },
            address: None,
            ports: Vec::new(),
            restarts: 0,
            handle: String::new(),
        }
    }

    fn reg(job: &str, index: u32, port: u16) -> Endpoint {
        let key = format!("/services/s/s_{job}/80/{port}/s_{job}_{index}");
        let v = format!(r#"{{"ipaddress": "10.0.0.1", "host_port": {port}}}"#);
        Endpoint::parse(&key, v.as_bytes()).unwrap()
    }

    #[test]
    fn follows_each_step_until_done() {
        let jobs = [
            JobWant { name: "web".into(), scale: 2, ports: true },
            JobWant { name: "batch".into(), scale: 1, ports: false },
        ];
        // Nothing placed yet.
        let r = compute("s", &jobs, &[], &[], None);
        assert!(!r.done && !r.failed);
        assert_eq!((r.jobs[1].placed, r.jobs[1].started, r.jobs[1].registered), (0, 0, None));

        let rows = vec![
            row("web", 0, "a", "running"),
            row("web", 1, "b", "starting"),
            row("batch", 0, "a", "completed"),
        ];
        let regs = vec![reg("web", 0, 40000)];
        let backends: BTreeSet<SocketAddr> = BTreeSet::new();
        let r = compute("s", &jobs, &rows, &regs, Some(&backends));
        let web = &r.jobs[0];
        assert_eq!(
            (web.placed, web.started, web.registered, web.in_datapath),
            (2, 1, Some(1), Some(0))
        );
        assert!(r.jobs[1].done, "a completed job is done");
        assert!(!r.done);

        let rows = vec![
            row("web", 0, "a", "running"),
            row("web", 1, "b", "running"),
            row("web", 2, "b", "running"),
            row("batch", 0, "a", "completed"),
        ];
        let regs = vec![reg("web", 0, 40000), reg("web", 1, 40001)];
        let backends: BTreeSet<SocketAddr> =
            ["10.0.0.1:40000".parse().unwrap(), "10.0.0.1:40001".parse().unwrap()].into();
        let r = compute("s", &jobs, &rows, &regs, Some(&backends));
        assert_eq!(r.jobs[0].started, 2, "an instance beyond the scale is on its way out");
        assert!(r.done, "{r:?}");
    }

    #[test]
    fn a_failed_instance_fails_the_rollout() {
        let jobs = [JobWant { name: "web".into(), scale: 1, ports: false }];
        let r = compute("s", &jobs, &[row("web", 0, "a", "failed")], &[], None);
        assert!(r.failed && !r.done);
        assert_eq!(r.jobs[0].failed, ["#0 on a: failed (no such image)"]);
    }
}
