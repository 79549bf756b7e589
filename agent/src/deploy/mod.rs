//! Deployments: stacks written to the deployment config folder (`/viking/deploy/<stack>/<job>`)
//! with the plan of each job (`/viking/plan/<stack>/<job>`), and read back, including job
//! files operators add there by hand (seed 000).
//!
//! - `folder`: job records in the store, and `viking config export|apply` to a real folder
//! - `plans`: the plan stored with each job (links, ambassador ports, link env)
//! - `context`: fig `build:` contexts, packed by the CLI and stored with the deploy
//! - `planner`: what a change (deploy, rm, apply, adopt) makes of records, plans and ports:
//!   pure
//! - `deployer`: read, decide, commit all or nothing; the API's and the leader's entry
pub mod context;
mod deployer;
pub mod folder;
pub mod planner;
pub mod plans;

pub use deployer::{DeployError, Deployer, StackSummary};
pub use folder::{DeployedJobs, JobRecord};
pub use plans::{JobPlan, Plans};
