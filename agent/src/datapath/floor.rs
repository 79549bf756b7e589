//! The per-run floor: programs that only return, attached to the datapath's cgroup beside its
//! own connect4 and sock_release for as long as a `Floor` lives. Every TCP connection runs
//! both, so their run times (BPF_ENABLE_STATS) say what a run costs on this machine before
//! any work: the clock reads around it and the call. A benchmark reads them in the same run
//! as the datapath's programs. The agent never attaches them.
use std::{fs::File, path::Path};

use aya::programs::{links::FdLink, CgroupSock, CgroupSockAddr};
use viking_common::programs;

use super::{error::DatapathError, programs::cgroup_link, Datapath};

/// The no-op programs, attached; dropping it detaches them.
pub struct Floor {
    _links: [FdLink; 2],
    /// Kernel ids of the no-op connect4 and sock_release, in that order.
    pub ids: [u32; 2],
}

impl Datapath {
    /// Attaches the no-op programs to `cgroup` (the datapath's own, to share its sockets).
    pub fn floor(&mut self, cgroup: &Path) -> Result<Floor, DatapathError> {
        let cg = File::open(cgroup).map_err(DatapathError::io("opening cgroup", cgroup))?;
        // Loaded once per datapath; attached again for each measurement.
        let ebpf = &mut self.ebpf;
        let (connect, connect_id) =
            cgroup_link!(ebpf, CgroupSockAddr, programs::FLOOR_CONNECT4, &cg, cgroup.to_owned());
        let (release, release_id) =
            cgroup_link!(ebpf, CgroupSock, programs::FLOOR_RELEASE, &cg, cgroup.to_owned());
        Ok(Floor { _links: [connect, release], ids: [connect_id, release_id] })
    }
}
