//! Deploy plans: what a deploy resolved for each job, stored beside its record at
//! `/viking/plan/<stack>/<job>` in the same transaction. Placement and the API read them; only
//! deploys (and the leader's adoption of records added by hand) write them.
//!
//! A plan holds the job's links with their ambassador ports, the link environment, and the
//! hash of the record it was made from (a record edited by hand is planned again). When a job
//! cannot be planned any more (a link to a stack that went, a record edited into a bad link)
//! its plan keeps the last good links and environment and says why in `error`: what runs keeps
//! running, and `viking stacks` and `viking ps` say what it waits for.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    cluster::ports::PortKey,
    stack::{Job, Port},
    store::{keys, KeyValue, Store, StoreError},
};

pub const PREFIX: &str = keys::PLANS;

pub fn plan_key(stack: &str, job: &str) -> String {
    format!("{PREFIX}{stack}/{job}")
}

/// One port of a link: the container port, and the ambassador port (its allocation) clients
/// of the link dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkPort {
    pub port: Port,
    pub ambassador_port: u16,
    /// The allocation that holds `ambassador_port`.
    pub key: PortKey,
}

/// A link of a job, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedLink {
    pub stack: String,
    pub job: String,
    /// The env var prefix (`SHARED_MONGO`).
    pub prefix: String,
    pub ports: Vec<LinkPort>,
    /// Why the linked job is not there (its stack was removed, its record does not parse):
    /// the link keeps its ambassador ports, and connects to them are refused at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// The value at `/viking/plan/<stack>/<job>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPlan {
    /// `record_hash` of the job record this plan was made from.
    pub record: String,
    #[serde(default)]
    pub links: Vec<PlannedLink>,
    /// The link environment (the job's own `env` goes over it, at placement).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Why the record could not be planned as it is now; `links` and `env` are then the last
    /// good plan's (empty if there never was one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl JobPlan {
    /// Whether this plan was made from `job` as it is now, without error.
    pub fn current_for(&self, job: &Job) -> bool {
        self.error.is_none() && self.record == record_hash(job)
    }

    /// What the job waits for, for a person: an error, and links to jobs that are not there.
    pub fn problems(&self) -> Vec<String> {
        let mut out: Vec<String> = self.error.iter().cloned().collect();
        for l in &self.links {
            if let Some(why) = &l.missing {
                out.push(format!("link {}/{}: {why} (connects are refused)", l.stack, l.job));
            }
        }
        out
    }
}

/// A stable hash of a job record's canonical form (FNV-1a over its JSON): formatting-only
/// edits of a hand-written record do not make it new.
pub fn record_hash(job: &Job) -> String {
    let bytes = serde_json::to_vec(job).unwrap_or_default();
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Every stored plan, by (stack, job); records that do not parse are listed with why.
#[derive(Debug, Clone, Default)]
pub struct Plans {
    pub plans: BTreeMap<(String, String), JobPlan>,
    pub invalid: Vec<(String, String)>,
    pub revision: i64,
}

impl Plans {
    pub fn from_kvs(kvs: &[KeyValue], revision: i64) -> Self {
        let mut out = Self { revision, ..Self::default() };
        for kv in kvs {
            let parsed = kv
                .key
                .strip_prefix(PREFIX)
                .and_then(|rest| rest.split_once('/'))
                .filter(|(s, j)| !s.is_empty() && !j.is_empty() && !j.contains('/'))
                .ok_or_else(|| "not a plan key (/viking/plan/<stack>/<job>)".to_owned())
                .and_then(|(s, j)| {
                    serde_json::from_slice::<JobPlan>(&kv.value)
                        .map(|p| ((s.to_owned(), j.to_owned()), p))
                        .map_err(|e| format!("not a plan: {e}"))
                });
            match parsed {
                Ok((id, p)) => {
                    out.plans.insert(id, p);
                }
                Err(why) => out.invalid.push((kv.key.clone(), why)),
            }
        }
        out
    }

    pub async fn read<S: Store>(store: &S) -> Result<Self, StoreError> {
        let l = store.list(PREFIX).await?;
        Ok(Self::from_kvs(&l.kvs, l.revision))
    }

    pub fn get(&self, stack: &str, job: &str) -> Option<&JobPlan> {
        self.plans.get(&(stack.to_owned(), job.to_owned()))
    }
}
