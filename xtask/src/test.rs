//! `cargo xtask test`: setup, lint, build, then every test. As root nothing is skipped: the
//! privileged tests create their own namespaces, cgroups and bpffs directories.
use std::process::Command;

use anyhow::bail;

use crate::{
    setup,
    util::{exec, Step},
};

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    if !nix_root() {
        bail!("cargo xtask test needs root: the integration tests load eBPF programs and create network namespaces");
    }
    setup::run()?;
    {
        let _s = Step::new(1, 3, "lint (rustfmt, clippy -D warnings; the eBPF crate on its own)");
        exec(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
        exec(Command::new("cargo").args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
        // NB: the eBPF crate only compiles for the BPF target, with nightly and build-std.
        exec(
            Command::new("cargo")
                .args(["+nightly", "clippy", "-p", "viking-ebpf", "--target", "bpfel-unknown-none"])
                .args([
                    "-Z",
                    "build-std=core",
                    "--target-dir",
                    "target/ebpf-lint",
                    "--",
                    "-D",
                    "warnings",
                ])
                .env(
                    "CARGO_ENCODED_RUSTFLAGS",
                    format!("--cfg=bpf_target_arch=\"{}\"", std::env::consts::ARCH),
                ),
        )?;
    }
    {
        let _s = Step::new(2, 3, "build (eBPF object through aya-build, agent, probe)");
        exec(Command::new("cargo").args(["build", "--bins"]))?;
    }
    let _s = Step::new(3, 3, "tests (unit + privileged integration)");
    exec(Command::new("cargo").args(["test", "--no-fail-fast"]).args(extra))
}

fn nix_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
