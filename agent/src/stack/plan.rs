//! A deploy's answer: the stack's jobs in start order, the link environment of each, and the
//! ambassador ports its links use (`deploy::planner` makes it; `viking deploy [--dry-run]`
//! prints it).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Job, Port};

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
