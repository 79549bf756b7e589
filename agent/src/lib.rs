//! Viking's agent and CLI library. One module per concern; data flows
//! stack -> control -> store -> agent -> datapath (docs/architecture.md).
pub mod api;
pub mod cluster;
pub mod control;
pub mod datapath;
pub mod deploy;
pub mod discovery;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod netlink;
pub mod netns;
pub mod overlay;
pub mod runtime;
pub mod stack;
pub mod store;
pub mod vpc;
