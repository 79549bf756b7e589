//! Running Viking as operators do (issue 14): the agent image as a privileged per-host
//! container under a real dockerd (`image`), its metrics and readiness (`metrics`), API TLS
//! (`tls`), and the Kubernetes manifest (`manifest`).
mod container;
mod image;
mod manifest;
mod metrics;
mod tls;
