//! Either store, chosen at run time from `--store`.
use std::time::Duration;

use super::{
    EmbeddedStore, EtcdOptions, EtcdStore, KeyValue, LeaderKey, LeaseId, Listing, Result, Revision,
    Store, StoreSpec, Txn, TxnResult, Watch,
};

#[derive(Clone, Debug)]
pub enum AnyStore {
    Etcd(EtcdStore),
    Embedded(EmbeddedStore),
}

impl AnyStore {
    /// Connects to etcd, or opens the embedded store for reading and writing.
    pub async fn open(spec: &StoreSpec, etcd: &EtcdOptions) -> Result<Self> {
        Ok(match spec {
            StoreSpec::Etcd(endpoints) => Self::Etcd(EtcdStore::connect(endpoints, etcd).await?),
            StoreSpec::Embedded(dir) => Self::Embedded(EmbeddedStore::open(dir).await?),
        })
    }

    /// Like `open`, but an embedded store another process writes is opened read-only, and a
    /// missing one is an error rather than created: for commands that only look.
    pub async fn open_for_reading(spec: &StoreSpec, etcd: &EtcdOptions) -> Result<Self> {
        Ok(match spec {
            StoreSpec::Etcd(endpoints) => Self::Etcd(EtcdStore::connect(endpoints, etcd).await?),
            StoreSpec::Embedded(dir) => Self::Embedded(EmbeddedStore::open_for_reading(dir).await?),
        })
    }

    /// Whether the store works right now (docs/store.md, "Health").
    pub fn health(&self) -> super::HealthSignal {
        match self {
            Self::Etcd(s) => s.health(),
            Self::Embedded(s) => s.health(),
        }
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Etcd($s) => $e,
            AnyStore::Embedded($s) => $e,
        }
    };
}

impl Store for AnyStore {
    fn describe(&self) -> String {
        each!(self, s => s.describe())
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        each!(self, s => s.get(key).await)
    }
    async fn list(&self, prefix: &str) -> Result<Listing> {
        each!(self, s => s.list(prefix).await)
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        each!(self, s => s.put(key, value, lease).await)
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        each!(self, s => s.delete(key).await)
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        each!(self, s => s.delete_prefix(prefix).await)
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        each!(self, s => s.txn(txn).await)
    }
    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<Watch> {
        each!(self, s => s.watch(prefix, from).await)
    }
    async fn revision(&self) -> Result<Revision> {
        each!(self, s => s.revision().await)
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        each!(self, s => s.compact(revision).await)
    }
    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        each!(self, s => s.grant(ttl).await)
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        each!(self, s => s.keep_alive(lease).await)
    }
    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        each!(self, s => s.revoke(lease).await)
    }
    async fn campaign(&self, election: &str, value: Vec<u8>, lease: LeaseId) -> Result<LeaderKey> {
        each!(self, s => s.campaign(election, value, lease).await)
    }
    async fn leader(&self, election: &str) -> Result<Option<KeyValue>> {
        each!(self, s => s.leader(election).await)
    }
    async fn resign(&self, key: &LeaderKey) -> Result<()> {
        each!(self, s => s.resign(key).await)
    }
}
