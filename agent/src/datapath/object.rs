//! The eBPF object built by `agent/build.rs` and embedded in the binary.

/// The programs' ELF object; empty when built with AYA_BUILD_SKIP=1.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/viking"));
