//! Loading the filter's object and attaching its programs to interfaces.
//!
//! Everything is pinned under `<bpffs>/vpc/`: `maps/`, `progs/` (the loaded programs) and,
//! for TCX, `links/<ifindex>_in|_eg`. TCX (kernel 6.6+) is preferred: its links are pinned and
//! replaced atomically (`bpf_link_update`), so a new agent swaps the program under running
//! traffic. Without TCX the programs go on a clsact qdisc through netlink, at a fixed priority
//! and handle, and are replaced in place the same way. Attaching happens on a thread inside
//! the host's network namespace (`host::on_host`): interface names resolve there.
use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
        LinkOrder, SchedClassifier, TcAttachType,
    },
    EbpfLoader,
};
use serde::{Deserialize, Serialize};
use viking_common::vpc::{maps, programs};

use super::error::VpcError;

type Result<T> = std::result::Result<T, VpcError>;

/// The filter's object, built by agent/build.rs from ebpf/src/vpc/ (empty with
/// AYA_BUILD_SKIP=1).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/viking-vpc"));

/// How the programs reach an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// TCX where the kernel has it, else a clsact qdisc through netlink.
    #[default]
    Auto,
    Tcx,
    Netlink,
}

impl std::fmt::Display for AttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Tcx => "tcx",
            Self::Netlink => "netlink",
        })
    }
}

/// Priority and handle of the netlink (clsact) filters: first in line, found again by both.
const NL_PRIORITY: u16 = 1;
const NL_HANDLE: TcHandle = TcHandle::new(0, 0x5643);

/// The filter's directories under an agent's bpffs directory.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
}

impl Dirs {
    pub fn new(bpffs: &Path) -> Self {
        Self { root: bpffs.join("vpc") }
    }
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    fn progs(&self) -> PathBuf {
        self.root.join("progs")
    }
    fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    /// Whether a filter was loaded here before (its maps are pinned).
    pub fn exists(&self) -> bool {
        self.maps().join(maps::CONFIG).exists()
    }
}

const PROGRAMS: [(&str, TcAttachType, &str); 2] = [
    (programs::INGRESS, TcAttachType::Ingress, "in"),
    (programs::EGRESS, TcAttachType::Egress, "eg"),
];

/// Loads the object (maps already pinned are reused with their contents) and pins both
/// programs, replacing the pins of an earlier agent; links keep the old programs until
/// `attach` swaps them.
pub fn load(dirs: &Dirs) -> Result<()> {
    if OBJECT.is_empty() {
        return Err(VpcError::NoObject);
    }
    for dir in [dirs.maps(), dirs.progs(), dirs.links()] {
        std::fs::create_dir_all(&dir).map_err(VpcError::io("creating", &dir))?;
    }
    let mut loader = EbpfLoader::new();
    for name in maps::PINNED {
        loader.map_pin_path(name, dirs.maps().join(name));
    }
    let mut ebpf = loader.load(OBJECT)?;
    for (name, _, _) in PROGRAMS {
        let err = |source| VpcError::Program { name, source };
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or(VpcError::MissingProgram(name))?
            .try_into()
            .map_err(err)?;
        prog.load().map_err(err)?;
        let path = dirs.progs().join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(VpcError::io("unpinning", &path)(e)),
        }
        prog.pin(&path).map_err(|source| VpcError::Pin { path: path.clone(), source })?;
    }
    Ok(())
}

fn attach_err(iface: &str) -> impl Fn(String) -> VpcError + '_ {
    move |message| VpcError::Attach { iface: iface.to_owned(), message }
}

/// Attaches (or swaps in the pinned programs on) `iface` of the calling thread's namespace.
/// Returns how it is attached. Call inside the host's namespace.
pub fn attach(dirs: &Dirs, iface: &str, ifindex: u32, mode: AttachMode) -> Result<AttachMode> {
    let err = attach_err(iface);
    let tcx = match mode {
        AttachMode::Tcx => true,
        AttachMode::Netlink => false,
        AttachMode::Auto => aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)),
    };
    if tcx {
        match attach_tcx(dirs, iface, ifindex) {
            Ok(()) => return Ok(AttachMode::Tcx),
            Err(e) if mode == AttachMode::Tcx => return Err(e),
            Err(e) => tracing::warn!(iface, error = %e, "TCX attach failed; using clsact"),
        }
    }
    attach_netlink(dirs, iface).map_err(|e| err(e.to_string()))?;
    Ok(AttachMode::Netlink)
}

fn link_pin(dirs: &Dirs, ifindex: u32, suffix: &str) -> PathBuf {
    dirs.links().join(format!("{ifindex}_{suffix}"))
}

fn attach_tcx(dirs: &Dirs, iface: &str, ifindex: u32) -> Result<()> {
    let err = attach_err(iface);
    for (name, kind, suffix) in PROGRAMS {
        let mut prog = SchedClassifier::from_pin(dirs.progs().join(name))
            .map_err(|e| err(format!("{name}: {e}")))?;
        let pin = link_pin(dirs, ifindex, suffix);
        // A link pinned by an earlier agent: swap the program in it (no gap).
        let swapped = match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old));
                match link.map(|l| prog.attach_to_link(l)) {
                    Ok(Ok(id)) => Some(id),
                    _ => {
                        // Gone with its interface (or not ours): a fresh link replaces it.
                        let _ = std::fs::remove_file(&pin);
                        None
                    }
                }
            }
            Err(_) => None,
        };
        let id = match swapped {
            Some(id) => id,
            None => prog
                .attach_with_options(iface, kind, TcAttachOptions::TcxOrder(LinkOrder::first()))
                .map_err(|e| err(format!("{name}: {e}")))?,
        };
        let link = prog.take_link(id).map_err(|e| err(format!("{name}: {e}")))?;
        let fd: FdLink = link.try_into().map_err(|e| err(format!("{name}: {e}")))?;
        let staged = dirs.links().join(format!("{ifindex}_{suffix}_new"));
        let _ = std::fs::remove_file(&staged);
        let pinned =
            fd.pin(&staged).map_err(|source| VpcError::Pin { path: staged.clone(), source })?;
        drop(pinned);
        std::fs::rename(&staged, &pin).map_err(VpcError::io("renaming pin to", &pin))?;
    }
    Ok(())
}

fn attach_netlink(dirs: &Dirs, iface: &str) -> std::result::Result<(), String> {
    // NB: the kernel answers an existing clsact qdisc in more than one way (EEXIST,
    // "Exclusivity flag on"); if there is truly none, attaching below says so.
    if let Err(e) = tc::qdisc_add_clsact(iface) {
        tracing::debug!(iface, error = %e, "clsact qdisc not added (there already?)");
    }
    for (name, kind, _) in PROGRAMS {
        let mut prog = SchedClassifier::from_pin(dirs.progs().join(name))
            .map_err(|e| format!("{name}: {e}"))?;
        // Our filter at its priority and handle, if there: replaced in place.
        let replaced = SchedClassifierLink::attached(iface, kind, NL_PRIORITY, NL_HANDLE, None)
            .ok()
            .and_then(|l| prog.attach_to_link(l).ok());
        let id = match replaced {
            Some(id) => id,
            None => prog
                .attach_with_options(
                    iface,
                    kind,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: NL_PRIORITY,
                        handle: NL_HANDLE,
                        ..Default::default()
                    }),
                )
                .map_err(|e| format!("{name}: {e}"))?,
        };
        let link = prog.take_link(id).map_err(|e| format!("{name}: {e}"))?;
        // NB: dropping the link would detach it; the filter stays on the qdisc.
        std::mem::forget(link);
    }
    Ok(())
}

/// Takes the programs off `iface`. Call inside the host's namespace.
pub fn detach(dirs: &Dirs, iface: &str, ifindex: u32, via: AttachMode) -> Result<()> {
    for (name, kind, suffix) in PROGRAMS {
        match via {
            AttachMode::Netlink => match tc::qdisc_detach_program(iface, kind, name) {
                Ok(()) => {}
                Err(tc::TcError::IoError(e))
                    if matches!(e.kind(), io::ErrorKind::NotFound)
                        || e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => {
                    return Err(VpcError::Attach { iface: iface.into(), message: e.to_string() })
                }
            },
            _ => {
                let pin = link_pin(dirs, ifindex, suffix);
                match std::fs::remove_file(&pin) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(VpcError::io("unpinning", &pin)(e)),
                }
            }
        }
    }
    Ok(())
}

/// Removes the filter: clsact filters of ours on every interface of the calling thread's
/// namespace, then every pin (which detaches the TCX links and frees the maps).
pub fn remove(dirs: &Dirs) -> Result<()> {
    if let Ok(ifaces) = nix::net::if_::if_nameindex() {
        for i in ifaces.iter() {
            let name = i.name().to_string_lossy();
            for (prog, kind, _) in PROGRAMS {
                let _ = tc::qdisc_detach_program(&name, kind, prog);
            }
        }
    }
    if dirs.root.exists() {
        std::fs::remove_dir_all(&dirs.root).map_err(VpcError::io("removing", &dirs.root))?;
    }
    Ok(())
}
