//! Deployments: stacks written to the deployment config folder (`/viking/deploy/<stack>/<job>`)
//! and read back, including job files operators add there by hand (seed 000).
//!
//! - `folder`: job records in the store, and `viking config export|apply` to a real folder
//! - `deployer`: deploy (plan + allocate + write, all or nothing), remove, list, env
mod deployer;
pub mod folder;

pub use deployer::{DeployError, Deployer, StackSummary};
pub use folder::{DeployedJobs, JobRecord};
