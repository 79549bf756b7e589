//! `cargo xtask fuzz`: the cargo-fuzz targets of `fuzz/` (one file each in `fuzz/src/bin/`),
//! built once (nightly, no sanitizer: the parsers are safe Rust, and coverage is what finds
//! their panics), then each run for a bounded time from its corpus in the repository
//! (`fuzz/corpus/<target>/`). A crash fails the run and leaves the input in
//! `fuzz/artifacts/<target>/`. `cargo xtask test` runs every target this way.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::util::{exec, root};

/// Seconds each target runs in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 30;

pub struct Options {
    /// Only these targets (default: all).
    pub targets: Vec<String>,
    pub seconds: u64,
    /// New inputs go into the repository's corpus (to commit), not a scratch folder.
    pub keep: bool,
}

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// Every target: the files of `fuzz/src/bin/`.
pub fn targets() -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir().join("src/bin");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".rs").map(str::to_owned))
        .collect();
    out.sort();
    Ok(out)
}

fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz"])
        .args(args)
        .args(["--sanitizer", "none"])
        // NB: the agent's eBPF object is not needed to parse stack files.
        .env("AYA_BUILD_SKIP", "1")
        .env_remove("CARGO_INCREMENTAL");
    cmd
}

/// Builds every target once.
pub fn build() -> anyhow::Result<()> {
    exec(cargo_fuzz(&["build"]).current_dir(fuzz_dir()))
        .context("building the fuzz targets (cargo +nightly fuzz build)")
}

/// Runs one target for `seconds`; Ok(false) when it crashed (the input is in artifacts/).
pub fn run_one(target: &str, seconds: u64, keep: bool) -> anyhow::Result<bool> {
    let corpus = fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&corpus)?;
    let scratch = std::env::temp_dir().join(format!("viking-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    // libFuzzer writes new inputs to the first folder and only reads the others.
    let dirs: [&Path; 2] = if keep { [&corpus, &scratch] } else { [&scratch, &corpus] };
    let mut cmd = cargo_fuzz(&["run", target]);
    cmd.args(dirs)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(["-timeout=10", "-rss_limit_mb=2048", "-max_len=65536", "-print_final_stats=1"])
        .current_dir(fuzz_dir());
    let shown = format!("{cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(status.success())
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let all = targets()?;
    let chosen: Vec<String> =
        if opts.targets.is_empty() { all.clone() } else { opts.targets.clone() };
    if let Some(t) = chosen.iter().find(|t| !all.contains(t)) {
        bail!("no fuzz target {t} (there are: {})", all.join(", "));
    }
    build()?;
    let mut crashed = Vec::new();
    for t in &chosen {
        println!("--- fuzz {t} for {:?}", Duration::from_secs(opts.seconds));
        if !run_one(t, opts.seconds, opts.keep)? {
            crashed.push(t.clone());
        }
    }
    if !crashed.is_empty() {
        bail!("fuzz targets crashed: {} (inputs in fuzz/artifacts/)", crashed.join(", "));
    }
    println!("fuzz: {} targets, 0 crashes", chosen.len());
    Ok(())
}
