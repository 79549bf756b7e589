//! The per-run floor: programs that only return, attached to the datapath's cgroup beside its
//! own connect4 and sock_release for as long as a `Floor` lives. Every TCP connection runs
//! both, so their run times (BPF_ENABLE_STATS) say what a run costs on this machine before
//! any work: the clock reads around it and the call. A benchmark reads them in the same run
//! as the datapath's programs. The agent never attaches them.
use std::{fs::File, path::Path};

use aya::programs::{links::FdLink, CgroupAttachMode, CgroupSock, CgroupSockAddr};
use viking_common::programs;

use super::{error::DatapathError, programs::program, Datapath};

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
        // NB: a macro, as in `programs::attach_all`: the program types share no trait.
        macro_rules! attach {
            ($ty:ty, $name:expr) => {{
                let name: &'static str = $name;
                let err = |source| DatapathError::Program { name, source };
                let prog: &mut $ty = program(&mut self.ebpf, name)?;
                // Loaded once per datapath; attached again for each measurement.
                if prog.fd().is_err() {
                    prog.load().map_err(err)?;
                }
                let id = prog.info().map_err(err)?.id();
                let link = prog.attach(&cg, CgroupAttachMode::Single).map_err(err)?;
                let link: FdLink =
                    prog.take_link(link).map_err(err)?.try_into().map_err(|source| {
                        DatapathError::Link { path: cgroup.to_owned(), source }
                    })?;
                (link, id)
            }};
        }
        let (connect, connect_id) = attach!(CgroupSockAddr, programs::FLOOR_CONNECT4);
        let (release, release_id) = attach!(CgroupSock, programs::FLOOR_RELEASE);
        Ok(Floor { _links: [connect, release], ids: [connect_id, release_id] })
    }
}
