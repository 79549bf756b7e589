use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{bail, Context as _};

/// The workspace root (xtask lives one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().map(PathBuf::from).unwrap_or_default()
}

/// Runs a command in the workspace root, streaming its output; fails on a non-zero exit.
pub fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd.current_dir(root()).status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed: {status}");
    }
    Ok(())
}

/// Whether a command runs and exits 0 (output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.output().is_ok_and(|o| o.status.success())
}

/// Prints a step header and, when dropped, how long it took.
pub struct Step {
    name: String,
    start: Instant,
}

impl Step {
    pub fn new(n: usize, of: usize, name: &str) -> Self {
        println!("==> [{n}/{of}] {name}");
        Self { name: name.to_owned(), start: Instant::now() }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        println!("    {} done in {:.1}s", self.name, self.start.elapsed().as_secs_f64());
    }
}
