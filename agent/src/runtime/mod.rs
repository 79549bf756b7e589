//! Runtimes: what starts, stops and lists a host's instances. One trait, two engines:
//!
//! - `exec`: the job's command as a process in its own network namespace and cgroup (Nomad's
//!   exec driver is the model); for hosts without Docker, the demo and the tests.
//! - `docker`: containers through bollard.
//!
//! The reconciler (`control::reconciler`) drives a runtime; it never looks behind the trait.
use std::{collections::BTreeMap, future::Future, net::IpAddr, path::PathBuf, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::stack::Port;

pub mod any;
pub mod build;
pub mod docker;
pub mod error;
pub mod exec;

pub use any::{AnyRuntime, RuntimeKind};
pub use error::RuntimeError;

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Labels (docker) and state-file fields (exec) that say which instance a thing is.
pub const LABEL_STACK: &str = "viking.stack";
pub const LABEL_JOB: &str = "viking.job";
pub const LABEL_INDEX: &str = "viking.index";
pub const LABEL_NODE: &str = "viking.node";

/// The name of one instance: `<stack>_<job>_<index>`. `_` never appears in stack or job
/// names (docs/stack-format.md), so the name is unambiguous; Docker accepts it as a
/// container name.
pub fn instance_name(stack: &str, job: &str, index: u32) -> String {
    format!("{stack}_{job}_{index}")
}

/// Everything a runtime needs to start one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub stack: String,
    pub job: String,
    pub index: u32,
    pub image: Option<String>,
    /// argv; empty means the image's default (docker) and is refused by exec.
    pub command: Vec<String>,
    /// The job's own env plus its link env.
    pub env: BTreeMap<String, String>,
    pub ports: Vec<Port>,
    /// As written in the stack file (`/data`, `name:/data`, `/host:/data`); named and
    /// anonymous volumes live under the runtime's data directory.
    pub volumes: Vec<String>,
    /// Long-lived (restarted when it dies) or run to completion.
    pub daemonize: bool,
    /// The address the instance gets on this host, when the runtime gives it one (exec: from
    /// the stack's subnet).
    pub address: Option<IpAddr>,
    /// The hash of the `build:` context `image` is built from (`deploy::context`): the docker
    /// runtime builds it where it is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

impl InstanceSpec {
    pub fn name(&self) -> String {
        instance_name(&self.stack, &self.job, self.index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "code")]
pub enum InstanceState {
    Running,
    /// Ended, with its exit code (-1 when killed by a signal or unknown).
    Exited(i32),
}

/// What a runtime reports about one of its instances.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub name: String,
    pub stack: String,
    pub job: String,
    pub index: u32,
    pub state: InstanceState,
    /// The address other hosts reach its ports on, and the host port of each container port
    /// (exec: its own address and the same port; docker: the host's address and the
    /// published port).
    pub address: Option<IpAddr>,
    pub ports: Vec<(Port, u16)>,
    /// The cookie of its network namespace (for netns-scoped embassy services), when known.
    pub netns_cookie: Option<u64>,
    /// Process id (exec) or container id (docker).
    pub handle: String,
    /// Its environment as started (embassy reads `BACKEND_*` from it).
    pub env: BTreeMap<String, String>,
    /// The spec it was started from, as a hash: the reconciler replaces an instance whose
    /// spec changed.
    pub spec_hash: u64,
}

/// Where a runtime keeps its state, logs and volumes.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// This host's name (labels, state files: several agents may share one machine).
    pub node: String,
    /// The Viking data directory of this node (`/var/lib/viking/<node>`).
    pub data_dir: PathBuf,
    /// The cgroup the agent's programs are attached to: instances go below it.
    pub cgroup: PathBuf,
    /// The address other hosts reach this one on.
    pub host_address: IpAddr,
    /// The network namespace that is this host's network, when it is not the agent's own
    /// (`viking agent --host-netns`: the test and demo "hosts").
    pub host_netns: Option<PathBuf>,
}

/// A runtime. Implementations are cheap to clone and safe to share.
pub trait Runtime: Clone + Send + Sync + 'static {
    fn describe(&self) -> String;

    /// Starts `spec` (replacing a stopped instance of the same name).
    fn start(&self, spec: &InstanceSpec) -> impl Future<Output = Result<Instance>> + Send;

    /// Stops and removes an instance; removing one that is not there is not an error.
    fn remove(&self, name: &str) -> impl Future<Output = Result<()>> + Send;

    /// Every instance this runtime runs for this node, running or exited.
    fn list(&self) -> impl Future<Output = Result<Vec<Instance>>> + Send;

    /// Woken when an instance may have changed state (a process exited, a docker event).
    fn changed(&self) -> Arc<Notify>;

    /// Runs `spec` to completion with `io` as its stdin, stdout and stderr (stdin closed at
    /// its end); returns its exit code (`viking run`).
    fn run_attached(
        &self,
        spec: &InstanceSpec,
        io: RunIo,
    ) -> impl Future<Output = Result<i32>> + Send;
}

/// The standard streams of a job run with `viking run`: the CLI's, carried over the API.
pub struct RunIo {
    pub stdin: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    pub stdout: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
    pub stderr: Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
}

impl RunIo {
    /// This process's own streams.
    pub fn inherit() -> Self {
        Self {
            stdin: Box::new(tokio::io::stdin()),
            stdout: Box::new(tokio::io::stdout()),
            stderr: Box::new(tokio::io::stderr()),
        }
    }
}

/// A stable hash of a spec (FNV-1a over its JSON), so a changed job is noticed across
/// agent restarts.
pub fn spec_hash(spec: &InstanceSpec) -> u64 {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
