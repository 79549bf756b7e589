//! The runtime an agent was started with (`viking agent --runtime`).
use std::sync::Arc;

use tokio::sync::Notify;

use super::{
    docker::DockerRuntime, exec::ExecRuntime, Instance, InstanceSpec, Result, RunIo, Runtime,
};

/// Which runtime: `exec` or `docker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    Exec,
    Docker,
}

#[derive(Clone)]
pub enum AnyRuntime {
    Exec(ExecRuntime),
    Docker(DockerRuntime),
}

macro_rules! each {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            AnyRuntime::Exec($r) => $e,
            AnyRuntime::Docker($r) => $e,
        }
    };
}

impl Runtime for AnyRuntime {
    fn describe(&self) -> String {
        each!(self, r => r.describe())
    }
    async fn start(&self, spec: &InstanceSpec) -> Result<Instance> {
        each!(self, r => r.start(spec).await)
    }
    async fn remove(&self, name: &str) -> Result<()> {
        each!(self, r => r.remove(name).await)
    }
    async fn list(&self) -> Result<Vec<Instance>> {
        each!(self, r => r.list().await)
    }
    fn changed(&self) -> Arc<Notify> {
        each!(self, r => r.changed())
    }
    async fn run_attached(&self, spec: &InstanceSpec, io: RunIo) -> Result<i32> {
        each!(self, r => r.run_attached(spec, io).await)
    }
}
