//! What every handler shares: the API's state, its error answer, and what a host runs jobs
//! and reports itself with. Handlers (server, health, status, rollout, run) look down here.
use std::{future::Future, net::IpAddr, pin::Pin, sync::Arc, time::Instant};

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
    Json,
};
use tokio::sync::watch;

use super::ApiErrorBody;
use crate::{
    deploy::{DeployError, Deployer},
    runtime::{InstanceSpec, RunIo, RuntimeError},
    store::{HealthSignal, Store},
};

pub struct ApiState<S: Store> {
    pub store: S,
    pub deployer: std::sync::Arc<Deployer<S>>,
    pub token: String,
    pub node: String,
    /// Whether this node leads now (from its election task).
    pub leading: watch::Receiver<bool>,
    /// Forwards writes to the leader (trusting `--api-ca` when the leader speaks TLS).
    pub http: reqwest::Client,
    /// Whether the store works (`/v1/health` says so).
    pub store_health: HealthSignal,
    /// What runs `viking run` jobs placed on this host (the agent's runtime).
    pub runner: Option<std::sync::Arc<dyn Runner>>,
    /// This agent's address, API and start, for `/v1/status`.
    pub local: Arc<Local>,
}

pub type Shared<S> = Arc<ApiState<S>>;

/// An error answer: a status and a message for a person.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ApiErrorBody { error: self.1 })).into_response()
    }
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let status = match &e {
            DeployError::Stack(_) => StatusCode::BAD_REQUEST,
            DeployError::NotFound(_) => StatusCode::NOT_FOUND,
            DeployError::Conflict(_)
            | DeployError::Dependents { .. }
            | DeployError::NotPlanned(_) => StatusCode::CONFLICT,
            DeployError::Cluster(crate::cluster::ClusterError::PortsExhausted { .. }) => {
                StatusCode::INSUFFICIENT_STORAGE
            }
            // NB: a retry cannot help a request over the store's limits.
            DeployError::Store(crate::store::StoreError::Limit { .. })
            | DeployError::Cluster(crate::cluster::ClusterError::Store(
                crate::store::StoreError::Limit { .. },
            )) => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self(status, e.to_string())
    }
}

/// Runs a job here: the agent's runtime behind a trait object, so the API needs no runtime
/// type parameter.
pub trait Runner: Send + Sync {
    fn run(
        &self,
        spec: InstanceSpec,
        io: RunIo,
    ) -> Pin<Box<dyn Future<Output = Result<i32, RuntimeError>> + Send + '_>>;
}

impl<R: crate::runtime::Runtime> Runner for R {
    fn run(
        &self,
        spec: InstanceSpec,
        io: RunIo,
    ) -> Pin<Box<dyn Future<Output = Result<i32, RuntimeError>> + Send + '_>> {
        Box::pin(async move { self.run_attached(&spec, io).await })
    }
}

/// What the agent knows of itself, for status.
#[derive(Debug, Clone)]
pub struct Local {
    /// The address other hosts reach this one on.
    pub address: IpAddr,
    /// The API as other agents reach it (`HOST:PORT`).
    pub api: String,
    pub tls: bool,
    pub started: Instant,
}
