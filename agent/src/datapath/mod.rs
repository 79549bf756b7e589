//! The kernel datapath: the eBPF socket load balancer and its service table.
//!
//! - `programs`: load the embedded object, attach to a cgroup, pin maps and links.
//! - `table`: the typed service table (upsert/remove/list with counters).
//! - `spec`: the plain types the rest of the agent speaks.
//! - `floor`: no-op programs a benchmark attaches beside the datapath's, to measure a run's
//!   floor.
mod btf;
mod error;
mod floor;
mod health;
mod ids;
pub mod log;
pub mod mounts;
pub mod netns;
mod object;
mod programs;
mod spec;
mod stale;
mod table;

use std::path::{Path, PathBuf};

use viking_common::{RevNatKey, RevNatValue, SockBackend};

pub use error::DatapathError;
pub use floor::Floor;
/// How many programs the agent attaches (their links pinned under `<bpffs>/links/`).
pub const PROGRAMS: usize = programs::ALL.len();
pub use health::Health;
pub use spec::{check_backend, Algo, Ejection, Frontend, Proto, ServiceSpec};
pub use table::{BackendStatus, EndedSockets, ServiceStatus, ServiceTable, TrackedSockets, GRACE};

/// Where one agent's datapath lives.
#[derive(Clone, Debug)]
pub struct DatapathConfig {
    /// The cgroup v2 directory the programs attach to (sockets of processes below it).
    pub cgroup: PathBuf,
    /// This agent's bpffs directory: `maps/` and `links/` are pinned inside.
    pub bpffs: PathBuf,
}

impl DatapathConfig {
    pub fn maps_dir(&self) -> PathBuf {
        maps_dir(&self.bpffs)
    }
}

pub fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("maps")
}

fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// A running datapath: programs attached, maps open.
pub struct Datapath {
    ebpf: aya::Ebpf,
    pub table: ServiceTable,
}

impl Datapath {
    /// Loads and attaches the programs. Pinned maps of an earlier agent are reused with their
    /// contents, and its pinned links are replaced without a gap: a restart keeps every
    /// service and established connection.
    pub fn start(config: &DatapathConfig) -> Result<Self, DatapathError> {
        mounts::ensure_bpffs(&config.bpffs)?;
        let maps = config.maps_dir();
        let links = links_dir(&config.bpffs);
        for dir in [&maps, &links] {
            std::fs::create_dir_all(dir).map_err(DatapathError::io("creating", dir.clone()))?;
        }
        let programs::Loaded { mut ebpf, can_end_sockets, created } = programs::load(&maps)?;
        let mut table = ServiceTable::open(&maps)?;
        // Before the new programs run: they read the counts.
        table.repair_counts()?;
        // An agent from before socket storage tracked its sockets in SOCK_BACKEND and REVNAT
        // only: the programs look there for sockets without storage while any may be open.
        let legacy = created.contains(&viking_common::maps::SOCKS)
            && any_entry::<RevNatKey, RevNatValue>(&maps, viking_common::maps::REVNAT)?
            || any_entry::<u64, SockBackend>(&maps, viking_common::maps::SOCK_BACKEND)?;
        table.set_legacy(legacy)?;
        table.set_sweep_cgroup(config.cgroup.clone());
        programs::attach_all(&mut ebpf, &config.cgroup, &links)?;
        programs::attach_tracepoints(&mut ebpf, &links)?;
        programs::attach_iterators(&mut ebpf, can_end_sockets, &links)?;
        let orphans = table.collect_orphans()?;
        tracing::info!(
            cgroup = %config.cgroup.display(),
            bpffs = %config.bpffs.display(),
            services = table.list()?.len(),
            orphans,
            legacy,
            can_end_sockets,
            "datapath attached"
        );
        Ok(Self { ebpf, table })
    }

    /// Forwards the programs' aya-log records into `tracing` (needs a tokio runtime).
    pub fn spawn_log(&mut self) {
        log::spawn(&mut self.ebpf);
    }

    /// Every program and whether its link is pinned (attached) under `bpffs`.
    pub fn programs_pinned(bpffs: &Path) -> Vec<(&'static str, bool)> {
        programs::ALL.iter().map(|p| (*p, links_dir(bpffs).join(p).exists())).collect()
    }

    /// Detaches the programs and deletes every pin: what `viking agent --cleanup` does.
    pub fn remove(bpffs: &Path) -> Result<(), DatapathError> {
        programs::remove_all(bpffs)
    }
}

/// Whether the pinned hash map `name` holds any entry.
fn any_entry<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<bool, DatapathError> {
    let map: aya::maps::HashMap<_, K, V> = table::open_map(dir, name)?
        .try_into()
        .map_err(|source| DatapathError::MapOp { name, source })?;
    Ok(map.keys().next().is_some())
}
