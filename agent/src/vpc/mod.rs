//! The VPC host filter (docs/vpc-rules.md): policy files -> the TC programs' maps.
//!
//! - `policy`: the file format and its parser (errors name file, line and field)
//! - `compile`: files + this host (tags, interfaces) -> entries per lookup space (pure)
//! - `guard`: the lockout guard (pure); `sockets`: the host's connections from /proc
//! - `maps`: programming the pinned maps (generation flip); `attach`: the object, TCX or
//!   clsact; `host`: work inside the host's network namespace
//! - `state`: the running policy on disk, rule ids; `status`: what `viking vpc status` shows
//! - `run`: the agent's loop (folder -> kernel, membership -> member set); `api`: its routes
pub mod api;
pub mod attach;
pub mod compile;
pub mod error;
pub mod guard;
pub mod host;
pub mod maps;
pub mod policy;
pub mod run;
pub mod sockets;
pub mod state;
pub mod status;

pub use attach::AttachMode;
pub use error::{PolicyError, VpcError};
pub use policy::parse_policy;
pub use run::{remove_if_present, start, VpcHandle, VpcSettings, DEFAULT_OVERLAY_PORT};
pub use status::VpcStatus;
