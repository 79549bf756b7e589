//! The control loops, over the cluster state (`cluster`) and what is deployed (`deploy`):
//!
//! - `scheduler`: where each instance goes (pure); `placement`: the leader's loop that runs
//!   it and writes intent to `/viking/proc/`
//! - `reconciler`: each agent's loop that makes its runtime match its intent, registers
//!   services and reports status to `/viking/ps/`
//! - `instances`: the intent, status and `viking ps` records
pub mod instances;
pub mod placement;
pub mod reconciler;
pub mod scheduler;
