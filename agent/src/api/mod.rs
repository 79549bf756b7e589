//! The HTTP API every agent serves (axum), and the client the CLI uses.
//!
//! Any node answers; writes on a node that does not lead are forwarded once to the leader.
//! Every route but `/v1/health` needs `Authorization: Bearer <token>` (`token`).
pub mod client;
pub mod health;
pub mod rollout;
pub mod run;
pub mod serve;
pub mod server;
pub mod state;
pub mod status;
pub mod tls;
pub mod token;

use serde::{Deserialize, Serialize};

/// Default address of the API (`--api`, `--server`).
pub const DEFAULT_API: &str = "127.0.0.1:7700";

/// `POST /v1/deploy`: the stack file's text; the server parses and validates it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployRequest {
    pub name: String,
    /// The file name errors should name.
    pub file: String,
    pub text: String,
    #[serde(default)]
    pub dry_run: bool,
    /// The `build:` context of each job that has one: a tar (`deploy::context::pack`), base64.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub contexts: std::collections::BTreeMap<String, String>,
}

/// One job record, for `viking config export|apply`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobFile {
    pub stack: String,
    pub job: crate::stack::Job,
}

/// What the leader's election value holds: who leads and where its API is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub node: String,
    /// `HOST:PORT` other agents forward writes to.
    pub api: String,
    /// Whether that API speaks TLS (an older agent's value has no field: plain HTTP).
    #[serde(default)]
    pub tls: bool,
}

impl LeaderInfo {
    /// The leader's API as a URL.
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.api)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiErrorBody {
    pub error: String,
}

/// `GET /v1/jobs/{stack}/{job}`: a job and the environment it runs with (its own env over its
/// link env), for `viking run`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JobRun {
    pub stack: String,
    pub job: crate::stack::Job,
    pub env: std::collections::BTreeMap<String, String>,
}
