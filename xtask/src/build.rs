//! Builds through the same path as `cargo build`: agent/build.rs drives aya-build. This only
//! finds the object in the agent's OUT_DIR and copies it to a stable place.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

use crate::util::root;

/// Where `cargo xtask build-ebpf` leaves the object.
pub fn object_path() -> PathBuf {
    root().join("target").join("bpf").join("viking.bpf.o")
}

pub fn ebpf_object() -> anyhow::Result<PathBuf> {
    let out = Command::new("cargo")
        .args(["build", "--package", "viking", "--message-format=json-render-diagnostics"])
        .current_dir(root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --package viking failed");
    }
    let mut out_dir = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let is_agent = msg["package_id"].as_str().is_some_and(|id| id.contains("/agent#"));
        if msg["reason"] == "build-script-executed" && is_agent {
            out_dir = msg["out_dir"].as_str().map(PathBuf::from);
        }
    }
    let out_dir = out_dir.context("cargo did not report the agent's build-script OUT_DIR")?;
    // The VPC filter's object beside it (target/bpf/viking-vpc.bpf.o).
    let vpc = out_dir.join("viking-vpc");
    if vpc.exists() {
        let dst = object_path().with_file_name("viking-vpc.bpf.o");
        if let Some(dir) = dst.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::copy(&vpc, &dst).with_context(|| format!("copying to {}", dst.display()))?;
    }
    let src = out_dir.join("viking");
    let bytes = std::fs::metadata(&src).with_context(|| format!("{}", src.display()))?.len();
    if bytes == 0 {
        bail!("{} is the empty stub (AYA_BUILD_SKIP set?)", src.display());
    }
    let dst = object_path();
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(&src, &dst).with_context(|| format!("copying to {}", dst.display()))?;
    Ok(dst)
}
