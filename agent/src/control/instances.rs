//! The records of instances in the store: intent (`/viking/proc/<host>/...`, written by the
//! leader), status (`/viking/ps/<host>/...`, written by the host's agent under its lease) and
//! why an instance waits (`/viking/waiting/...`). `viking ps` joins them.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{runtime::InstanceSpec, stack::Port};

/// A job this instance waits for before it starts: `(stack, job)`, and whether that job has
/// ports (then it must be registered; else running somewhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct After {
    pub stack: String,
    pub job: String,
    pub ports: bool,
}

/// What the leader wants a host to run: the value at `/viking/proc/<host>/<stack>/<job>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub spec: InstanceSpec,
    #[serde(default)]
    pub after: Vec<After>,
    #[serde(default)]
    pub fixed: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The hash of the job record it was made from (`deploy::plans::record_hash`): a static
    /// job keeps its intent while its own record is unchanged.
    #[serde(default)]
    pub record: String,
}

/// What an instance is doing, as its host's agent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the jobs it links to.
    Pending,
    Running,
    /// Died; restarting after a backoff.
    Restarting,
    /// Could not be started (the detail says why); retried with backoff.
    Failed,
    /// A non-daemonized job that ran to its end.
    Completed,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Failed => "failed",
            Phase::Completed => "completed",
        })
    }
}

/// The value at `/viking/ps/<host>/<stack>/<job>/<index>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub phase: Phase,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(default)]
    pub address: Option<IpAddr>,
    /// Container port -> host port.
    #[serde(default)]
    pub ports: Vec<(Port, u16)>,
    #[serde(default)]
    pub restarts: u32,
    /// Process id or container id.
    #[serde(default)]
    pub handle: String,
    #[serde(default)]
    pub runtime: String,
}

/// One row of `viking ps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsRow {
    pub stack: String,
    pub job: String,
    pub index: u32,
    /// Where it is placed (empty when waiting for a host).
    pub host: String,
    /// `running`, `pending`, `restarting`, `failed`, `completed`, `starting` (placed, not yet
    /// reported), `host down` (placed on a host that left) or `waiting`.
    pub state: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    pub address: Option<IpAddr>,
    pub ports: Vec<(Port, u16)>,
    pub restarts: u32,
    /// Process id (exec) or container id (docker), once it runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub handle: String,
}

/// Every instance the cluster knows of, joined from intent, status and waiting records,
/// sorted by stack, job, index. `stack` narrows it to one stack.
pub async fn ps<S: crate::store::Store>(
    store: &S,
    stack: Option<&str>,
) -> Result<Vec<PsRow>, crate::cluster::ClusterError> {
    use std::collections::{BTreeMap, BTreeSet};

    use crate::store::keys;
    let alive: BTreeSet<String> =
        crate::cluster::membership::hosts(store).await?.into_iter().map(|h| h.info.name).collect();
    let mut status: BTreeMap<(String, String, String, u32), Status> = BTreeMap::new();
    for kv in store.list(keys::PS).await?.kvs {
        if let (Some(id), Ok(st)) =
            (keys::parse_instance(keys::PS, &kv.key), serde_json::from_slice(&kv.value))
        {
            status.insert(id, st);
        }
    }
    let mut rows = Vec::new();
    for kv in store.list(keys::PROC).await?.kvs {
        let Some(id) = keys::parse_instance(keys::PROC, &kv.key) else { continue };
        let (host, s, job, index) = id.clone();
        let row = match status.get(&id) {
            Some(st) => PsRow {
                state: st.phase.to_string(),
                detail: st.detail.clone(),
                address: st.address,
                ports: st.ports.clone(),
                restarts: st.restarts,
                handle: st.handle.clone(),
                stack: s,
                job,
                index,
                host,
            },
            None => PsRow {
                state: if alive.contains(&host) { "starting" } else { "host down" }.into(),
                detail: String::new(),
                address: None,
                ports: Vec::new(),
                restarts: 0,
                handle: String::new(),
                stack: s,
                job,
                index,
                host,
            },
        };
        rows.push(row);
    }
    for kv in store.list(keys::WAITING).await?.kvs {
        let mut it = kv.key.strip_prefix(keys::WAITING).unwrap_or_default().split('/');
        let (Some(s), Some(job), Some(Ok(index))) =
            (it.next(), it.next(), it.next().map(str::parse::<u32>))
        else {
            continue;
        };
        // A waiting fixed instance keeps its intent on its absent host: one row, the reason.
        rows.retain(|r| !(r.stack == s && r.job == job && r.index == index));
        rows.push(PsRow {
            stack: s.to_owned(),
            job: job.to_owned(),
            index,
            host: String::new(),
            state: "waiting".into(),
            detail: kv.text().unwrap_or_default().to_owned(),
            address: None,
            ports: Vec::new(),
            restarts: 0,
            handle: String::new(),
        });
    }
    // What a running job lacks (a link to a stack that went) is said beside its state.
    let plans = crate::deploy::Plans::read(store).await?;
    for r in rows.iter_mut().filter(|r| r.detail.is_empty()) {
        if let Some(p) = plans.get(&r.stack, &r.job) {
            r.detail = p.problems().join("; ");
        }
    }
    rows.retain(|r| stack.is_none_or(|s| r.stack == s));
    rows.sort_by(|a, b| (&a.stack, &a.job, a.index).cmp(&(&b.stack, &b.job, b.index)));
    Ok(rows)
}
