//! Ending the sockets still pinned to a backend that left (ebpf/src/stale.rs does the ending).
//!
//! The socket iterators see the sockets of one network namespace: the one current when the
//! iterator is opened. Viking's sockets belong to the processes of its cgroup, which may sit
//! in many namespaces (containers), so a sweep opens the pinned iterators once in each
//! namespace of the cgroup's processes, from a short-lived thread that enters it.
use std::{
    collections::HashSet,
    fs::File,
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::sched::{setns, CloneFlags};
use viking_common::programs;

use super::error::DatapathError;

/// Where the iterators are pinned and whose processes' namespaces they run in.
#[derive(Clone, Debug)]
pub struct Sweeper {
    links: PathBuf,
    /// The datapath's cgroup; None: every process on the host (the cgroup v2 root).
    cgroup: Option<PathBuf>,
}

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub namespaces: usize,
    /// Namespaces that could not be entered or iterated (their processes went away, mostly).
    pub failed: usize,
}

impl Sweeper {
    pub fn new(links: PathBuf, cgroup: Option<PathBuf>) -> Self {
        Self { links, cgroup }
    }

    pub fn links(&self) -> &Path {
        &self.links
    }

    /// Whether this kernel can end sockets (the agent pinned the iterators).
    pub fn available(&self) -> bool {
        self.links.join(programs::END_UDP).exists()
    }

    /// Runs the UDP iterator (and the TCP one if `tcp`) in every namespace of the cgroup's
    /// processes and in this process's own: sockets whose backend is listed in `STALE` are
    /// ended.
    pub fn sweep(&self, tcp: bool) -> Result<Swept, DatapathError> {
        let mut pins = vec![self.links.join(programs::END_UDP)];
        if tcp {
            pins.push(self.links.join(programs::END_TCP));
        }
        let mut swept = Swept::default();
        for ns in namespaces(self.cgroup.as_deref())? {
            swept.namespaces += 1;
            if let Err(e) = run_in(&ns, &pins) {
                tracing::debug!(error = %e, "sweeping one network namespace");
                swept.failed += 1;
            }
        }
        Ok(swept)
    }
}

/// One open handle per distinct network namespace: this process's, then its cgroup's
/// processes' (below `cgroup`, or all of them).
fn namespaces(cgroup: Option<&Path>) -> Result<Vec<File>, DatapathError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut add = |path: PathBuf| {
        // NB: a process may exit between the listing and here; it had no sockets to end.
        if let Ok(f) = File::open(&path) {
            if let Ok(m) = f.metadata() {
                if seen.insert((m.dev(), m.ino())) {
                    out.push(f);
                }
            }
        }
    };
    add(PathBuf::from("/proc/thread-self/ns/net"));
    match cgroup {
        Some(dir) => {
            let mut stack = vec![dir.to_owned()];
            while let Some(dir) = stack.pop() {
                let procs = dir.join("cgroup.procs");
                let text = std::fs::read_to_string(&procs)
                    .map_err(DatapathError::io("reading", procs.clone()))?;
                for pid in text.split_whitespace() {
                    add(PathBuf::from(format!("/proc/{pid}/ns/net")));
                }
                let entries =
                    std::fs::read_dir(&dir).map_err(DatapathError::io("listing", dir.clone()))?;
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
        }
        None => {
            let entries =
                std::fs::read_dir("/proc").map_err(DatapathError::io("listing", "/proc"))?;
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
                    add(e.path().join("ns/net"));
                }
            }
        }
    }
    Ok(out)
}

/// Opens and drains each pinned iterator from a thread inside `ns`.
fn run_in(ns: &File, pins: &[PathBuf]) -> Result<(), String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // NB: only this short-lived thread changes namespace.
            setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| format!("entering: {e}"))?;
            for pin in pins {
                let mut it = File::open(pin).map_err(|e| format!("{}: {e}", pin.display()))?;
                let mut sink = Vec::new();
                it.read_to_end(&mut sink).map_err(|e| format!("{}: {e}", pin.display()))?;
            }
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err("the sweeping thread panicked".into()))
    })
}
