//! Harness for Viking's privileged integration tests: every test builds its own network
//! namespaces, cgroup and bpffs directory with unique names, and Drop guards remove them, so
//! tests run in parallel and leave the machine as they found it.
//!
//! Traffic goes only to loopback or to addresses inside namespaces a test created.
pub mod agent;
pub mod backend;
pub mod bench;
pub mod cluster;
pub mod docker;
pub mod etcd;
pub mod guards;
pub mod probe;
pub mod topo;
pub mod vpc;

use std::sync::atomic::{AtomicU32, Ordering};

/// A name unique to this process and call, short enough for an interface name (<= 15).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0xfffff)
}

/// Fails the test early, with a clear message, when not root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests need root (network namespaces, cgroups, eBPF); run `cargo xtask test` as root"
    );
}

/// The directory the binaries of this build are in (target/<profile>): a test binary runs
/// from its `deps/`, vk-bench from the directory itself.
pub fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("target dir");
    match dir.file_name() {
        Some(n) if n == "deps" => dir.parent().expect("target dir").to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

/// The `viking` binary built next to this test binary (target/<profile>/viking).
pub fn viking_bin() -> std::path::PathBuf {
    let dir = target_dir();
    let bin = dir.join("viking");
    assert!(bin.exists(), "{} missing: build it first (cargo build -p viking)", bin.display());
    bin
}

/// The probe binary of this package.
pub fn probe_bin() -> std::path::PathBuf {
    target_dir().join("vk-probe")
}
