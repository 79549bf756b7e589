//! The `viking` command line: one file per command group.
pub mod agent;
pub mod services;
pub mod table;
