//! Installs what a fresh machine of this kind lacks, and nothing when all is there.
//! See docs/operations.md for the list and why each is needed.
use std::{path::Path, process::Command};

use anyhow::Context as _;

use crate::util::{exec, succeeds, Step};

/// Debian packages: the eBPF toolchain (LLVM 22 for bpf-linker), protoc (etcd-client), and the
/// real components tests, benchmarks and the demo run.
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "protobuf-compiler",
    // NB: etcd-client 0.21.1's protos import google/protobuf/descriptor.proto, which ships here.
    "libprotobuf-dev",
    "etcd-server",
    "etcd-client",
    "docker.io",
    "iperf3",
    "redis-server",
    "redis-tools",
    "haproxy",
    "busybox-static",
    "socat",
    "iproute2",
    "iptables",
    // The VPC benchmark's baseline: the nftables ruleset a user would write instead.
    "nftables",
    "dnsmasq-base",
    "bpftool",
    // The etcd TLS test makes its certificates with the openssl CLI.
    "openssl",
    // promtool: the metrics test checks /metrics with Prometheus' own parser and linter (the
    // package's server is not started: nothing enables it where there is no systemd).
    "prometheus",
];

const STEPS: usize = 5;

pub fn run() -> anyhow::Result<()> {
    let all = Step::new(0, STEPS, "setup");
    apt()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    cargo_fuzz()?;
    drop(all);
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn apt() -> anyhow::Result<()> {
    let _s = Step::new(1, STEPS, "apt packages");
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("    all {} present", APT_PACKAGES.len());
        return Ok(());
    }
    println!("    installing: {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-q"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn rust_src() -> anyhow::Result<()> {
    let _s = Step::new(2, STEPS, "rust-src for the nightly toolchain");
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("rustup (the nightly toolchain builds the eBPF programs)")?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        println!("    present");
        return Ok(());
    }
    exec(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let _s = Step::new(3, STEPS, "bpf-linker (built against LLVM 22)");
    if succeeds(Command::new("bpf-linker").arg("--version")) {
        println!("    present");
        return Ok(());
    }
    // NB: bpf-linker 0.13 defaults to LLVM 23; Debian has 22. Without LLVM_PREFIX the link
    // fails with "unable to find library -lLLVM" (toolchain.md).
    let path = format!("/usr/lib/llvm-22/bin:{}", std::env::var("PATH").unwrap_or_default());
    exec(
        Command::new("cargo")
            .args([
                "install",
                "--locked",
                "bpf-linker",
                "--no-default-features",
                "--features",
                "llvm-22",
            ])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", path),
    )
}

fn bpffs() -> anyhow::Result<()> {
    let _s = Step::new(4, STEPS, "bpffs at /sys/fs/bpf");
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .context("reading /proc/self/mounts")?
        .lines()
        .any(|l| l.split_whitespace().nth(2) == Some("bpf"));
    if mounted {
        println!("    mounted");
        return Ok(());
    }
    std::fs::create_dir_all(Path::new("/sys/fs/bpf")).context("creating /sys/fs/bpf")?;
    exec(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let _s = Step::new(5, STEPS, "cargo-fuzz (the fuzz targets, with nightly)");
    if succeeds(Command::new("cargo").args(["fuzz", "--version"])) {
        println!("    present");
        return Ok(());
    }
    exec(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))
}
