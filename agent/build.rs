//! Builds the eBPF programs (`ebpf/`) with aya-build and leaves the object in OUT_DIR, where
//! `src/datapath/object.rs` embeds it. With AYA_BUILD_SKIP=1 (no bpf-linker, e.g. a plain
//! `cargo check`) it leaves an empty stub instead, and the agent says so when it starts.
//!
//! It also builds `pause/pause.rs` as a static binary (`OUT_DIR/pause`): the process of docker
//! instances' sandbox containers (`src/runtime/sandbox.rs`).
use std::{env, fs, path::PathBuf, process::Command};

use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?);
    build_pause(&out_dir)?;
    let object = out_dir.join("viking");
    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        fs::write(&object, b"").with_context(|| format!("writing stub {}", object.display()))?;
        // The VPC filter's object (ebpf/src/vpc/), also a stub.
        let vpc = out_dir.join("viking-vpc");
        fs::write(&vpc, b"").with_context(|| format!("writing stub {}", vpc.display()))?;
        return Ok(());
    }
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root = PathBuf::from(manifest_dir).join("..").join("ebpf");
    let root =
        root.canonicalize().with_context(|| format!("no eBPF crate at {}", root.display()))?;
    let root = root.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    let package = aya_build::Package { name: "viking-ebpf", root_dir: root, ..Default::default() };
    // NB: CARGO_INCREMENTAL=1 (handy for the agent) reaches the nested eBPF build and changes
    // its code generation: the verifier then rejects recvmsg6 ("dereference of modified ctx
    // ptr"). The eBPF crate is always built whole.
    // A build script is one thread: nothing reads the environment concurrently.
    env::remove_var("CARGO_INCREMENTAL");
    println!("cargo:rerun-if-env-changed=CARGO_INCREMENTAL");
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

/// `pause/pause.rs` -> `OUT_DIR/pause`, static (crt-static), so it runs in any image.
fn build_pause(out_dir: &std::path::Path) -> anyhow::Result<()> {
    let src = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?)
        .join("pause")
        .join("pause.rs");
    println!("cargo:rerun-if-changed={}", src.display());
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let target = env::var("TARGET").context("TARGET not set")?;
    let out = out_dir.join("pause");
    let status = Command::new(&rustc)
        .args(["--edition", "2021", "--crate-name", "pause", "--target", &target])
        .args(["-C", "opt-level=s", "-C", "panic=abort", "-C", "strip=symbols"])
        .args(["-C", "target-feature=+crt-static", "-o"])
        .arg(&out)
        .arg(&src)
        // NB: not the agent's flags (they may hold incremental or coverage settings).
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_INCREMENTAL")
        .status()
        .with_context(|| format!("running {rustc}"))?;
    if !status.success() {
        anyhow::bail!("building {} failed ({status})", src.display());
    }
    Ok(())
}
