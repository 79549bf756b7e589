//! Viking's agent and CLI library. One module per concern; data flows
//! stack -> control -> store -> agent -> datapath (docs/architecture.md).
pub mod datapath;
pub mod logging;
pub mod stack;
