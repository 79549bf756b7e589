use std::path::PathBuf;

/// What can go wrong between the agent and the kernel datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("this viking was built without its eBPF programs (AYA_BUILD_SKIP=1); rebuild with bpf-linker installed (cargo xtask setup)")]
    NoObject,
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map {name} at {path}: {source}")]
    Map { name: &'static str, path: PathBuf, source: aya::maps::MapError },
    #[error("map {name}: {source}")]
    MapOp { name: &'static str, source: aya::maps::MapError },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("link pinned at {path}: {source}")]
    Link { path: PathBuf, source: aya::programs::links::LinkError },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("no cgroup v2 mount found in /proc/self/mounts; mount one or pass --cgroup")]
    NoCgroup2,
    #[error("service {0}: more than {max} backends", max = viking_common::MAX_BACKENDS_PER_SERVICE)]
    TooManyBackends(String),
    #[error("service {service}: backend {backend} is IPv6 but the ambassador address is IPv4")]
    FamilyMismatch { service: String, backend: std::net::SocketAddr },
    #[error("service {service}: backend {backend}: {reason}")]
    BadBackend { service: String, backend: std::net::SocketAddr, reason: &'static str },
    #[error("the {0} id space is full")]
    IdsExhausted(&'static str),
    #[error("service name {0:?} is longer than {max} bytes", max = viking_common::SERVICE_NAME_LEN)]
    NameTooLong(String),
    #[error("reading the kernel's BTF (/sys/kernel/btf/vmlinux): {source}")]
    Btf { source: aya::BtfError },
    #[error("service {service}: ejection: {reason}")]
    BadEjection { service: String, reason: String },
    #[error("ending sockets pinned to departed backends: {0}")]
    Sweep(String),
}

impl DatapathError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}
