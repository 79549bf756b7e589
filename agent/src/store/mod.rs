//! The store: where the cluster's state lives (keys in docs/store.md, from design.md).
//!
//! - `Store`: the trait everything above is written against (get, put, delete, transactions,
//!   prefix listing, watch from a revision, leases, elections).
//! - `etcd`: the distributed implementation (etcd v3 through etcd-client).
//! - `embedded`: a single machine with nothing installed (redb on disk), same semantics.
//! - `lease`: a lease kept alive in the background, which says when it is lost.
//! - `mirror`: a prefix copied into memory and kept current by a watch; `changes`: only
//!   word that some prefixes changed.
//! - `keys`: the key layout.
//! - `health`: whether the store works right now (what `/v1/health` reports).
mod any;
pub mod bulk;
mod changes;
mod election;
pub mod embedded;
mod error;
pub mod etcd;
pub mod health;
pub mod keys;
mod lease;
pub mod limits;
mod mirror;
mod spec;
mod types;
mod watch;

use std::{future::Future, time::Duration};

pub use any::AnyStore;
pub use changes::Changes;
pub use embedded::EmbeddedStore;
pub use error::StoreError;
pub use etcd::{EtcdOptions, EtcdStore};
pub use health::{HealthSignal, StoreHealth};
pub use lease::Lease;
pub use mirror::Mirror;
pub use spec::{StoreSpec, DEFAULT_STORE};
pub use types::{
    bounded, BadValue, Compare, KeyValue, LeaderKey, LeaseId, Listing, Op, Revision, Txn,
    TxnResult, WatchEvent,
};
pub use watch::Watch;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A consistent key-value store with revisions, watches and leases: etcd's v3 model.
///
/// Implementations are cheap to clone (a handle) and safe to share between tasks. Writes are
/// acknowledged only once durable (etcd: committed by a quorum; embedded: on disk).
pub trait Store: Clone + Send + Sync + 'static {
    /// What this store is, for messages: `etcd 127.0.0.1:2379` or `embedded /var/lib/viking`.
    fn describe(&self) -> String;

    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send;

    /// Every key under `prefix`, in key order, at one revision.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Listing>> + Send;

    /// Writes `key`; with a lease, the key goes when the lease does. Returns the revision.
    fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> impl Future<Output = Result<Revision>> + Send;

    /// Deletes `key`; true if it existed.
    fn delete(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes every key under `prefix`; how many there were.
    fn delete_prefix(&self, prefix: &str) -> impl Future<Output = Result<u64>> + Send;

    /// Compare-and-swap: runs `then` if every compare holds, else `otherwise`, atomically.
    fn txn(&self, txn: Txn) -> impl Future<Output = Result<TxnResult>> + Send;

    /// Follows every change under `prefix` from revision `from` (default: the next one).
    /// Survives reconnects; on compaction it sends `WatchEvent::Resync` and carries on.
    fn watch(
        &self,
        prefix: &str,
        from: Option<Revision>,
    ) -> impl Future<Output = Result<Watch>> + Send;

    /// The current revision.
    fn revision(&self) -> impl Future<Output = Result<Revision>> + Send;

    /// Forgets history before `revision`: watches from earlier revisions resync.
    fn compact(&self, revision: Revision) -> impl Future<Output = Result<()>> + Send;

    /// A new lease of `ttl` (etcd rounds up to whole seconds).
    fn grant(&self, ttl: Duration) -> impl Future<Output = Result<LeaseId>> + Send;

    /// Refreshes a lease to its full TTL; returns that TTL. `LeaseNotFound` once it is gone.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<Duration>> + Send;

    /// Ends a lease now, deleting its keys.
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<()>> + Send;

    /// Waits until this lease's candidate leads `election`, then returns its key.
    /// (etcd: the election API; embedded: the same protocol on its own keys.)
    fn campaign(
        &self,
        election: &str,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> impl Future<Output = Result<LeaderKey>> + Send;

    /// The current leader's key and value, if any.
    fn leader(&self, election: &str) -> impl Future<Output = Result<Option<KeyValue>>> + Send;

    /// Gives up leadership (or candidacy).
    fn resign(&self, key: &LeaderKey) -> impl Future<Output = Result<()>> + Send;
}

/// Opens the store a `--store` argument names.
pub async fn open(spec: &StoreSpec, etcd: &EtcdOptions) -> Result<AnyStore> {
    AnyStore::open(spec, etcd).await
}
