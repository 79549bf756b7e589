//! The cluster's shared state over the store: the state machines every host agrees on
//! through compare-and-swap, below the loops that use them (placement, the reconciler,
//! discovery). Each is written once against `Store` and proven against both stores
//! (tests/tests/it/store/).
//!
//! - `ports`: one ambassador port per linked service port (seed 000)
//! - `addresses`: a subnet per stack, an address per container (seed 001 "DHCP")
//! - `membership`: hosts register under a lease; watchers see joins and leaves
//! - `leader`: election at /viking/leader; the leader knows when it stops leading
//! - `retry`: how compare-and-swap loops retry
//! - `vips`: a virtual IP per deployed job (seed 001 "dns-search", docs/names.md)
pub mod addresses;
mod error;
pub mod leader;
pub mod membership;
pub mod ports;
pub(crate) mod retry;
pub mod vips;

pub use addresses::{Addresses, DEFAULT_POOL};
pub use error::ClusterError;
pub use leader::{campaign, Leadership};
pub use membership::{HostEvent, HostInfo, HostWatcher, Member};
pub use ports::{AmbassadorPorts, PortRange, DEFAULT_PORT_RANGE};
