//! The control plane's state machines over the store: allocators (ambassador ports, subnets
//! and addresses), membership and leader election. Each is written once against `Store` and
//! proven against both stores (tests/tests/it/store/).
//!
//! - `ports`: one ambassador port per linked service port (seed 000)
//! - `addresses`: a subnet per stack, an address per container (seed 001 "DHCP")
//! - `membership`: hosts register under a lease; watchers see joins and leaves
//! - `leader`: election at /viking/leader; the leader knows when it stops leading
//! - `scheduler`: where each instance goes (pure); `placement`: the leader's loop that runs
//!   it and writes intent to `/viking/proc/`
//! - `reconciler`: each agent's loop that makes its runtime match its intent, registers
//!   services and reports status to `/viking/ps/`
//! - `instances`: the intent, status and `viking ps` records
pub mod addresses;
mod error;
pub mod instances;
pub mod leader;
pub mod membership;
pub mod placement;
pub mod ports;
pub mod reconciler;
mod retry;
pub mod scheduler;

pub use addresses::{Addresses, DEFAULT_POOL};
pub use error::ControlError;
pub use leader::{campaign, Leadership};
pub use membership::{HostEvent, HostInfo, HostWatcher, Member};
pub use ports::{AmbassadorPorts, PortRange, DEFAULT_PORT_RANGE};
