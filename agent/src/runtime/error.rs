use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("instance {name}: {why}")]
    Instance { name: String, why: String },
    #[error("network setup of {name}: {why}")]
    Network { name: String, why: String },
    #[error("docker: {0}")]
    Docker(String),
}

impl RuntimeError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { what, path: path.into(), source }
    }

    pub fn instance(name: &str, why: impl std::fmt::Display) -> Self {
        Self::Instance { name: name.to_owned(), why: why.to_string() }
    }
}
