//! The VPC host filter (docs/vpc-rules.md): policy files -> the TC programs' maps.
//!
//! - `policy`: the file format and its parser (errors name file, line and field)
//! - `compile`: files + this host (tags, interfaces) -> entries per lookup space (pure)
pub mod compile;
pub mod error;
pub mod policy;

pub use error::{PolicyError, VpcError};
