//! The control plane's state machines over the store: allocators (ambassador ports, subnets
//! and addresses), membership and leader election. Each is written once against `Store` and
//! proven against both stores (tests/tests/store_*.rs).
//!
//! - `ports`: one ambassador port per linked service port (seed 000)
//! - `addresses`: a subnet per stack, an address per container (seed 001 "DHCP")
//! - `membership`: hosts register under a lease; watchers see joins and leaves
//! - `leader`: election at /viking/leader; the leader knows when it stops leading
pub mod addresses;
mod error;
pub mod leader;
pub mod membership;
pub mod ports;
mod retry;
pub mod scheduler;

pub use addresses::{Addresses, DEFAULT_POOL};
pub use error::ControlError;
pub use leader::{campaign, Leadership};
pub use membership::{HostEvent, HostInfo, HostWatcher, Member};
pub use ports::{AmbassadorPorts, PortRange, DEFAULT_PORT_RANGE};
