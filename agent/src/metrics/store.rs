//! Store request latency and errors, per operation: `Measured` wraps any store and records
//! every request it passes on.
use std::{future::Future, time::Duration, time::Instant};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::store::{
    KeyValue, LeaderKey, LeaseId, Listing, Result, Revision, Store, Txn, TxnResult, Watch,
};

type Op = [(&'static str, &'static str); 1];

#[derive(Debug, Clone)]
pub struct StoreMetrics {
    duration: Family<Op, Histogram, fn() -> Histogram>,
    errors: Family<Op, Counter>,
}

impl StoreMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self {
            duration: Family::new_with_constructor(super::seconds_histogram),
            errors: Family::default(),
        };
        r.register_with_unit(
            "request_duration",
            "Time the store took to answer a request, by operation (a campaign's wait for \
             leadership is not counted)",
            Unit::Seconds,
            m.duration.clone(),
        );
        r.register("request_errors", "Store requests that failed, by operation", m.errors.clone());
        m
    }

    /// Records one request of `op` that started at `started`.
    pub fn observe<T>(&self, op: &'static str, started: Instant, result: &Result<T>) {
        let labels = [("op", op)];
        self.duration.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        // NB: created at 0 with the first request, so that rate() sees the first error.
        let errors = self.errors.get_or_create(&labels);
        if result.is_err() {
            errors.inc();
        }
    }
}

/// A store whose every request is timed and counted (`viking_store_*`).
#[derive(Clone, Debug)]
pub struct Measured<S> {
    inner: S,
    metrics: StoreMetrics,
}

impl<S: Store> Measured<S> {
    /// `inner`, recording into the process's metrics.
    pub fn new(inner: S) -> Self {
        Self { inner, metrics: super::global().store.clone() }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn time<T>(&self, op: &'static str, f: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let r = f.await;
        self.metrics.observe(op, started, &r);
        r
    }
}

impl<S: Store> Store for Measured<S> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.time("get", self.inner.get(key)).await
    }
    async fn list(&self, prefix: &str) -> Result<Listing> {
        self.time("list", self.inner.list(prefix)).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        self.time("put", self.inner.put(key, value, lease)).await
    }
    async fn delete(&self, key: &str) -> Result<bool> {
        self.time("delete", self.inner.delete(key)).await
    }
    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        self.time("delete_prefix", self.inner.delete_prefix(prefix)).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        self.time("txn", self.inner.txn(txn)).await
    }
    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<Watch> {
        self.time("watch", self.inner.watch(prefix, from)).await
    }
    async fn revision(&self) -> Result<Revision> {
        self.time("revision", self.inner.revision()).await
    }
    async fn compact(&self, revision: Revision) -> Result<()> {
        self.time("compact", self.inner.compact(revision)).await
    }
    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        self.time("grant", self.inner.grant(ttl)).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.time("keep_alive", self.inner.keep_alive(lease)).await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.time("revoke", self.inner.revoke(lease)).await
    }
    async fn campaign(&self, election: &str, value: Vec<u8>, lease: LeaseId) -> Result<LeaderKey> {
        // NB: waiting to lead is no latency; only a failure is recorded.
        let r = self.inner.campaign(election, value, lease).await;
        if r.is_err() {
            self.metrics.errors.get_or_create(&[("op", "campaign")]).inc();
        }
        r
    }
    async fn leader(&self, election: &str) -> Result<Option<KeyValue>> {
        self.time("leader", self.inner.leader(election)).await
    }
    async fn resign(&self, key: &LeaderKey) -> Result<()> {
        self.time("resign", self.inner.resign(key)).await
    }
}
