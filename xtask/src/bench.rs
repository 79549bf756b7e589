//! `cargo xtask bench datapath|discovery|agent|overlay|vpc|dns [--json FILE] [--svg DIR] [--quick]`: setup,
//! build, then the
//! benchmark binary (tests/src/bin/vk-bench.rs), as root. Results: docs/benchmarks.md.
use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context as _};

use crate::{
    setup,
    util::{exec, Step},
};

pub fn run(
    which: &str,
    json: Option<PathBuf>,
    svg: Option<PathBuf>,
    quick: bool,
) -> anyhow::Result<()> {
    if !["datapath", "discovery", "agent", "overlay", "vpc", "dns"].contains(&which) {
        bail!("unknown benchmark {which:?} (there are: datapath, discovery, agent, overlay, vpc, dns)");
    }
    if !is_root() {
        bail!(
            "cargo xtask bench needs root: it loads eBPF programs and creates network namespaces"
        );
    }
    // NB: cargo runs the binary from the workspace root; a relative path means the caller's
    // directory.
    let absolute = |p: Option<PathBuf>| -> anyhow::Result<Option<PathBuf>> {
        Ok(match p {
            Some(p) if p.is_relative() => {
                Some(std::env::current_dir().context("current directory")?.join(p))
            }
            other => other,
        })
    };
    let (json, svg) = (absolute(json)?, absolute(svg)?);
    setup::run()?;
    {
        let _s = Step::new(1, 2, "build (release: agent library with its eBPF object, vk-bench)");
        exec(Command::new("cargo").args(["build", "--release", "-p", "viking-tests", "--bins"]))?;
        if which == "agent" || which == "overlay" {
            // The agent processes they measure.
            exec(Command::new("cargo").args([
                "build",
                "--release",
                "-p",
                "viking",
                "--bin",
                "viking",
            ]))?;
        }
    }
    let _s = match which {
        "discovery" => Step::new(2, 2, "bench discovery (about a minute; --quick: seconds)"),
        "agent" => Step::new(2, 2, "bench agent (under a minute)"),
        "overlay" => Step::new(2, 2, "bench overlay (about two minutes; --quick: under a minute)"),
        "vpc" => Step::new(2, 2, "bench vpc (about two minutes; --quick: under a minute)"),
        "dns" => Step::new(2, 2, "bench dns (under a minute)"),
        _ => Step::new(2, 2, "bench datapath (a few minutes; --quick: under a minute)"),
    };
    let mut cmd = Command::new("cargo");
    cmd.args(["run", "--release", "-q", "-p", "viking-tests", "--bin", "vk-bench", "--"]);
    cmd.arg(which);
    if let Some(path) = &json {
        cmd.arg("--json").arg(path);
    }
    if let Some(dir) = &svg {
        cmd.arg("--svg").arg(dir);
    }
    if quick {
        cmd.arg("--quick");
    }
    exec(&mut cmd)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
