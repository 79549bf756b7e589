//! Where cgroup v2 and bpffs are: found at run time, never hard-coded.
use std::path::{Path, PathBuf};

use super::error::DatapathError;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// The cgroup v2 mount point, from /proc/self/mounts (e.g. /sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on a hybrid host).
pub fn cgroup2_root() -> Result<PathBuf, DatapathError> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(DatapathError::io("reading", "/proc/self/mounts"))?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_src, dst, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dst))
        })
        .next()
        .ok_or(DatapathError::NoCgroup2)
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Makes sure `dir` can hold pins: mounts bpffs at /sys/fs/bpf when it is missing (a fresh
/// machine has none), then creates `dir`.
pub fn ensure_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let default = Path::new(DEFAULT_BPFFS);
    if dir.starts_with(default) && !is_bpffs(default) {
        std::fs::create_dir_all(default).map_err(DatapathError::io("creating", default))?;
        nix::mount::mount(
            Some("bpf"),
            default,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| DatapathError::io("mounting bpffs at", default)(e.into()))?;
        tracing::info!(path = %default.display(), "mounted bpffs");
    }
    std::fs::create_dir_all(dir).map_err(DatapathError::io("creating", dir))?;
    if !is_bpffs(dir) {
        return Err(DatapathError::io("pinning under", dir)(std::io::Error::other(
            "not on a bpf filesystem (mount -t bpf bpf DIR, or use a dir under /sys/fs/bpf)",
        )));
    }
    Ok(())
}
