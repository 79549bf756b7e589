//! Names (issue 13, docs/names.md): a virtual IP per deployed job, the datapath serving it at
//! the job's own ports, the DNS responder, instances' resolver settings.
#![allow(clippy::unwrap_used)]
mod datapath;
mod dns;
mod docker;
mod status;
mod vips;
