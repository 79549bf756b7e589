//! Loading the embedded object and attaching its programs to a cgroup, with maps and links
//! pinned so that the datapath outlives the agent process.
use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        BtfTracePoint, CgroupSock, CgroupSockAddr, Iter, Program, ProgramError,
    },
    Btf, Ebpf, EbpfLoader,
};
use viking_common::{maps, programs};

use super::{
    error::DatapathError,
    object::{patched, Patched},
};

type Result<T> = std::result::Result<T, DatapathError>;

const SOCK_ADDR_PROGRAMS: [&str; 8] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::RECVMSG4,
    programs::RECVMSG6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
];

/// Every program the agent attaches.
pub const ALL: [&str; 10] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::RECVMSG4,
    programs::RECVMSG6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::RELEASE,
    programs::SYN_RETRANSMIT,
];

/// The loaded object and what this kernel lets it do.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// The socket iterators can end sockets (the kernel has `bpf_sock_destroy`, 6.5+).
    pub can_end_sockets: bool,
    /// Maps this load created (no pin of an earlier agent had them).
    pub created: Vec<&'static str>,
}

/// Loads the object, reusing maps already pinned under `maps_dir` (their contents survive).
pub fn load(maps_dir: &Path) -> Result<Loaded> {
    let Patched { object, can_end_sockets } = patched()?;
    let mut loader = EbpfLoader::new();
    // The release hook tells a refused connect from an ended connection by this field.
    let rcv_nxt = super::btf::field_offset("tcp_sock", "rcv_nxt").unwrap_or_else(|| {
        tracing::warn!(
            "tcp_sock.rcv_nxt not found in the kernel's BTF: a refused connect counts against \
             its backend only when a blocking connect() reported it"
        );
        0
    });
    loader.override_global("TCP_RCV_NXT", &rcv_nxt, true);
    let mut created = Vec::new();
    for name in maps::PINNED {
        let path = maps_dir.join(name);
        if !path.exists() {
            created.push(name);
        }
        loader.map_pin_path(name, path);
    }
    let ebpf = loader.load(object.bytes())?;
    Ok(Loaded { ebpf, can_end_sockets, created })
}

/// Loads program `$name` of `$ebpf` as a `$ty` (unless it is loaded already) and attaches it
/// to the cgroup file `$cg`; `$path` names the link in errors. Gives its link, unpinned (it
/// detaches when dropped), and the program's kernel id.
// NB: a macro, not a function: aya's program types share these methods but no trait.
macro_rules! cgroup_link {
    ($ebpf:expr, $ty:ty, $name:expr, $cg:expr, $path:expr) => {{
        let name: &'static str = $name;
        let err = |source| $crate::datapath::DatapathError::Program { name, source };
        let prog: &mut $ty = $crate::datapath::programs::program($ebpf, name)?;
        if prog.fd().is_err() {
            prog.load().map_err(err)?;
        }
        let id = prog.info().map_err(err)?.id();
        // NB: with bpf_link (kernel 5.7+) "Single" means flags 0, and links on one cgroup
        // still run side by side; BPF_F_ALLOW_MULTI is refused there with EINVAL.
        let link = prog.attach($cg, aya::programs::CgroupAttachMode::Single).map_err(err)?;
        let link: aya::programs::links::FdLink = prog
            .take_link(link)
            .map_err(err)?
            .try_into()
            .map_err(|source| $crate::datapath::DatapathError::Link { path: $path, source })?;
        (link, id)
    }};
}
pub(super) use cgroup_link;

/// Attaches every program to `cgroup` and pins its link under `links_dir`.
///
/// A link pinned by an earlier agent stays attached until the new one is in place, so that
/// sockets see no moment without the programs; then it is unpinned, which detaches it.
pub fn attach_all(ebpf: &mut Ebpf, cgroup: &Path, links_dir: &Path) -> Result<()> {
    let cg = File::open(cgroup).map_err(DatapathError::io("opening cgroup", cgroup))?;
    macro_rules! attach {
        ($ty:ty, $name:expr) => {{
            let name: &'static str = $name;
            let (link, _) = cgroup_link!(ebpf, $ty, name, &cg, links_dir.join(name));
            replace_pin(link, &links_dir.join(name))?;
        }};
    }
    for name in SOCK_ADDR_PROGRAMS {
        attach!(CgroupSockAddr, name);
    }
    attach!(CgroupSock, programs::RELEASE);
    // Earlier agents' programs that this one does without: with the release hook in place
    // their links go (sockets they counted leave the count at their release; the release
    // judges refused connects).
    for name in programs::OLD {
        let old = links_dir.join(name);
        if old.exists() {
            std::fs::remove_file(&old).map_err(DatapathError::io("removing", old))?;
        }
    }
    Ok(())
}

/// Loads the BTF tracepoints that see redirected connects fail and pins their links. They are
/// host-wide; sockets of other cgroups have no storage in this datapath's map.
pub fn attach_tracepoints(ebpf: &mut Ebpf, links_dir: &Path) -> Result<()> {
    let btf = Btf::from_sys_fs().map_err(|source| DatapathError::Btf { source })?;
    for (name, tracepoint) in programs::TRACEPOINTS {
        let err = |source| DatapathError::Program { name, source };
        let prog: &mut BtfTracePoint = program(ebpf, name)?;
        prog.load(tracepoint, &btf).map_err(err)?;
        let id = prog.attach().map_err(err)?;
        let link: FdLink = prog.take_link(id).map_err(err)?.into();
        replace_pin(link, &links_dir.join(name))?;
    }
    Ok(())
}

/// Loads the socket iterators and pins their links (`links_dir/end_udp`, `end_tcp`): opening
/// a pin runs the iterator in the opener's network namespace. Without kernel support the
/// pins are removed, and sockets pinned to departed backends are left as they are.
pub fn attach_iterators(ebpf: &mut Ebpf, can_end_sockets: bool, links_dir: &Path) -> Result<()> {
    let iterators = [(programs::END_UDP, "udp"), (programs::END_TCP, "tcp")];
    if !can_end_sockets {
        for (name, _) in iterators {
            let _ = std::fs::remove_file(links_dir.join(name));
        }
        return Ok(());
    }
    let btf = Btf::from_sys_fs().map_err(|source| DatapathError::Btf { source })?;
    for (name, kind) in iterators {
        let err = |source| DatapathError::Program { name, source };
        let prog: &mut Iter = program(ebpf, name)?;
        prog.load(kind, &btf).map_err(err)?;
        let id = prog.attach().map_err(err)?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(err)?
            .try_into()
            .map_err(|source| DatapathError::Link { path: links_dir.join(name), source })?;
        replace_pin(link, &links_dir.join(name))?;
    }
    Ok(())
}

/// The program `name` of the object, as its type.
pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Pins `link` at `path`, detaching whatever link was pinned there before.
fn replace_pin(link: FdLink, path: &Path) -> Result<()> {
    let staged = staged(path);
    let _ = std::fs::remove_file(&staged);
    let pinned =
        link.pin(&staged).map_err(|source| DatapathError::Pin { path: staged.clone(), source })?;
    drop(pinned);
    if path.exists() {
        let old = PinnedLink::from_pin(path)
            .map_err(|source| DatapathError::Link { path: path.to_owned(), source })?;
        // Unpinned and dropped: the last reference goes, the kernel detaches it.
        drop(old.unpin().map_err(DatapathError::io("unpinning", path))?);
    }
    std::fs::rename(&staged, path).map_err(DatapathError::io("renaming pin to", path))
}

fn staged(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    // NB: bpffs refuses names with a dot in them (EPERM).
    s.push("_new");
    PathBuf::from(s)
}

/// Detaches every program and deletes every pin under `dir`: the datapath is gone.
pub fn remove_all(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(DatapathError::io("removing", dir))?;
    }
    Ok(())
}
