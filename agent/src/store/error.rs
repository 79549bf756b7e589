use std::{path::PathBuf, time::Duration};

/// What can go wrong talking to the store. Every variant names what it was about: the
/// endpoints of an etcd cluster, the directory of an embedded store, the key.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "bad --store {spec:?}: {reason} (expected etcd://HOST:PORT[,HOST:PORT..] or embedded:DIR)"
    )]
    BadSpec { spec: String, reason: String },
    #[error("etcd at {endpoints} is unreachable: {reason}")]
    Unreachable { endpoints: String, reason: String },
    #[error("etcd at {endpoints}: {op} {key}: {source}")]
    Etcd {
        endpoints: String,
        op: &'static str,
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd at {endpoints}: {op} {key}: no answer within {after:?}")]
    Timeout { endpoints: String, op: &'static str, key: String, after: Duration },
    #[error("embedded store {dir}: {op}: {reason}")]
    Embedded { dir: PathBuf, op: &'static str, reason: String },
    #[error("embedded store {dir} is in use by another process{holder}; stop it or use its API")]
    InUse { dir: PathBuf, holder: String },
    #[error(
        "embedded store {dir} was opened read-only (another process owns it): {op} is not possible"
    )]
    ReadOnly { dir: PathBuf, op: &'static str },
    #[error("no embedded store at {dir} (nothing was ever written there)")]
    Missing { dir: PathBuf },
    #[error("{store}: lease {lease:x} does not exist (expired or revoked)")]
    LeaseNotFound { store: String, lease: i64 },
    #[error("{store}: revision {revision} is compacted (oldest kept: {compacted})")]
    Compacted { store: String, revision: i64, compacted: i64 },
    #[error("{store}: key {key:?} is not valid: {reason}")]
    BadKey { store: String, key: String, reason: &'static str },
    #[error("{store}: the store is closed")]
    Closed { store: String },
    /// A request over etcd's limits (`store::limits`): refused whole, never worth retrying.
    #[error("{store}: {op} {key}: refused: {limit}")]
    Limit { store: String, op: &'static str, key: String, limit: super::limits::Limit },
}

impl StoreError {
    /// True for errors a retry may cure (the store is unreachable or did not answer in time).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Timeout { .. } => true,
            Self::Etcd { source, .. } => etcd_transient(source),
            _ => false,
        }
    }
}

/// Errors of the etcd client that a retry (possibly on another member) may cure.
pub(crate) fn etcd_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    // gRPC status codes (tonic::Code, not re-exported by etcd-client): CANCELLED, UNKNOWN,
    // DEADLINE_EXCEEDED, ABORTED, INTERNAL, UNAVAILABLE.
    const RETRY: [i32; 6] = [1, 2, 4, 10, 13, 14];
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(s) => {
            RETRY.contains(&(s.code() as i32))
                && !s.message().contains("compacted")
                // NB: an answer (nobody campaigns), not a failure.
                && !s.message().contains("election: no leader")
        }
        // NB: etcd-client reports a lease that is gone as a keep-alive error: an answer.
        E::LeaseKeepAliveError(m) => !m.contains("not found"),
        E::WatchError(_) => true,
        _ => false,
    }
}
