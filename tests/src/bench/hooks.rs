//! What Viking's hooks cost inside the kernel, from the kernel's own per-program counters
//! (run time and run count). They count only while BPF_ENABLE_STATS is held: `StatsOn` holds
//! it and turns it off again on drop (the kernel does so too if the process dies).
use std::{os::fd::OwnedFd, path::Path};

use anyhow::Context as _;
use aya::programs::links::{FdLink, PinnedLink};
use viking_common::programs;

/// The programs a TCP connect goes through: connect4 at connect(), then the socket's others:
/// sock_release at its close, and the tracepoint of unanswered SYNs (host-wide).
pub const PROGRAMS: [&str; 3] = [programs::CONNECT4, programs::RELEASE, programs::SYN_RETRANSMIT];

pub struct StatsOn {
    _fd: OwnedFd,
}

impl StatsOn {
    pub fn new() -> anyhow::Result<Self> {
        let fd = aya::sys::enable_stats(aya::sys::Stats::RunTime)
            .context("BPF_ENABLE_STATS (kernel 5.8+)")?;
        Ok(Self { _fd: fd })
    }
}

/// Accumulated run time (ns) and run count of one program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub run_ns: u64,
    pub runs: u64,
}

impl std::ops::Add for Counters {
    type Output = Self;
    fn add(self, rhs: Self) -> Self {
        Self { run_ns: self.run_ns + rhs.run_ns, runs: self.runs + rhs.runs }
    }
}

impl std::ops::Sub for Counters {
    type Output = Self;
    fn sub(self, rhs: Self) -> Self {
        Self {
            run_ns: self.run_ns.saturating_sub(rhs.run_ns),
            runs: self.runs.saturating_sub(rhs.runs),
        }
    }
}

/// The counters of the program whose link is pinned at `<bpffs>/links/<name>`.
pub fn read(bpffs: &Path, name: &str) -> anyhow::Result<Counters> {
    let path = bpffs.join("links").join(name);
    let link: FdLink = PinnedLink::from_pin(&path)
        .with_context(|| format!("opening the link pinned at {}", path.display()))?
        .into();
    let id = link.info().with_context(|| format!("link info of {name}"))?.program_id();
    by_id(id).with_context(|| format!("the program pinned at {}", path.display()))
}

/// The counters of the loaded program `id`.
pub fn by_id(id: u32) -> anyhow::Result<Counters> {
    for info in aya::programs::loaded_programs() {
        let info = info.context("listing loaded programs")?;
        if info.id() == id {
            return Ok(Counters {
                run_ns: info.run_time().as_nanos() as u64,
                runs: info.run_count(),
            });
        }
    }
    anyhow::bail!("program {id} is not loaded")
}

/// The counters of every program in `PROGRAMS`, in that order.
pub fn read_all(bpffs: &Path) -> anyhow::Result<Vec<Counters>> {
    PROGRAMS.iter().map(|name| read(bpffs, name)).collect()
}

/// Entries in the datapath's REVNAT map (an LRU hash of one entry per connected socket; a
/// full one evicts on every new connection).
pub fn revnat_entries(bpffs: &Path) -> anyhow::Result<usize> {
    let path = bpffs.join("maps").join("REVNAT");
    let data = aya::maps::MapData::from_pin(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let map = aya::maps::Map::from_map_data(data).context("REVNAT")?;
    // NB: key and value by size only (RevNatKey: 32 bytes, RevNatValue: 24), to count them.
    let map: aya::maps::HashMap<_, [u8; 32], [u8; 24]> =
        map.try_into().context("REVNAT as a hash map")?;
    Ok(map.keys().filter(Result::is_ok).count())
}
