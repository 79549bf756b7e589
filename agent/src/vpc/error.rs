use std::{fmt, path::PathBuf};

/// A problem in a policy file, located as precisely as the input allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct PolicyError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem has no single line (a missing file, two files at odds).
    pub line: usize,
    /// Where in the document: `allow[1].ports[0]`, `interface`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl PolicyError {
    pub fn new(
        file: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self { file: file.into(), line, field: field.into(), message: message.into() }
    }
}

/// What can go wrong between the agent and the filter in the kernel.
#[derive(Debug, thiserror::Error)]
pub enum VpcError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("this viking was built without its eBPF programs (AYA_BUILD_SKIP=1); rebuild with bpf-linker installed (cargo xtask setup)")]
    NoObject,
    #[error("loading the VPC filter's eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("VPC program {name}: {source}")]
    Program { name: &'static str, source: aya::programs::ProgramError },
    #[error("VPC program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("VPC map {name}: {source}")]
    Map { name: &'static str, source: aya::maps::MapError },
    #[error("pinning {path}: {source}")]
    Pin { path: PathBuf, source: aya::pin::PinError },
    #[error("link pinned at {path}: {source}")]
    Link { path: PathBuf, source: aya::programs::links::LinkError },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    #[error("attaching to {iface}: {message}")]
    Attach { iface: String, message: String },
    #[error("refused: {0}")]
    Refused(String),
    #[error("{0}")]
    Full(String),
    #[error("the VPC loop has stopped")]
    Stopped,
}

impl VpcError {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }

    pub(crate) fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { name, source }
    }
}
