//! The `viking` command line: one file per command group.
pub mod agent;
pub mod allocations;
pub mod hosts;
pub mod instances;
pub mod names;
pub mod out;
pub mod peers;
pub mod progress;
pub mod services;
pub mod stacks;
pub mod status;
pub mod store_args;
pub mod table;
pub mod tls_args;
pub mod vpc;
