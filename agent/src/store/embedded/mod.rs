//! The embedded store: etcd's semantics (revisions, transactions, watches from a revision,
//! leases, compaction) on one machine, persisted in a redb file (`DIR/store.redb`).
//!
//! One writer thread commits every write durably before it is acknowledged (`engine`);
//! readers use redb's snapshots concurrently; watchers get the history from the `log` table
//! and then live events (`hub`). Another process may open the same directory read-only (the
//! CLI while the agent runs).
mod codec;
mod engine;
mod hub;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{mpsc as std_mpsc, Arc, Mutex, MutexGuard, RwLock},
    time::{Duration, Instant},
};

use redb::{
    ConcurrencyMode, MultimapTableDefinition, ReadOnlyDatabase, ReadableDatabase, ReadableTable,
    TableDefinition,
};
use tokio::sync::{mpsc, oneshot};

use self::{
    engine::{Done, LeaseState, Request, Write},
    hub::{event_key, Hub},
};
use super::{
    election,
    health::HealthSignal,
    watch::{Backoff, WATCH_BUFFER},
    KeyValue, LeaderKey, LeaseId, Listing, Result, Revision, Store, StoreError, Txn, TxnResult,
    Watch, WatchEvent,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<(i64, u32), &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const LEASES: TableDefinition<i64, u64> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");

/// The database file inside the store's directory.
pub const FILE: &str = "store.redb";
/// Holds the PID of the process that has the store open for writing.
const OWNER: &str = "owner.pid";

enum Db {
    Rw(redb::Database),
    Ro(ReadOnlyDatabase),
    /// Closed after a storage error (redb refuses every call after an I/O error until it is
    /// reopened) and not reopened yet: why.
    Broken(String),
}

/// Opens (creating if needed) the database file for reading and writing.
fn open_rw(dir: &Path) -> std::result::Result<redb::Database, redb::DatabaseError> {
    redb::Builder::new().set_concurrency_mode(ConcurrencyMode::SingleWriter).create(dir.join(FILE))
}

/// What a database file holds on opening: its revision, its compacted revision and its
/// persisted leases (id, TTL).
type Loaded = (Revision, Revision, Vec<(i64, Duration)>);

/// Makes every table exist (so readers never find one missing) and reads what it holds.
fn load(db: &redb::Database) -> std::result::Result<Loaded, redb::Error> {
    let txn = db.begin_write()?;
    let loaded = {
        txn.open_table(KV)?;
        txn.open_table(LOG)?;
        txn.open_multimap_table(LEASE_KEYS)?;
        let meta = txn.open_table(META)?;
        let revision = meta.get("revision")?.map_or(0, |g| g.value());
        let compacted = meta.get("compacted")?.map_or(0, |g| g.value());
        let mut leases = Vec::new();
        for entry in txn.open_table(LEASES)?.iter()? {
            let (id, ttl) = entry?;
            leases.push((id.value(), Duration::from_millis(ttl.value())));
        }
        (revision, compacted, leases)
    };
    txn.commit()?;
    Ok(loaded)
}

/// What the handles and the writer thread share.
struct Shared {
    dir: PathBuf,
    /// `None` once closed.
    db: RwLock<Option<Db>>,
    hub: Mutex<Hub>,
    leases: Mutex<HashMap<i64, LeaseState>>,
    /// Whether commits work (`/v1/health` reports it).
    health: HealthSignal,
}

impl Shared {
    fn describe(&self) -> String {
        format!("embedded {}", self.dir.display())
    }

    fn error(&self, op: &'static str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Embedded { dir: self.dir.clone(), op, reason: e.to_string() }
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn leases(&self) -> MutexGuard<'_, HashMap<i64, LeaseState>> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Time until the next lease expires.
    fn next_expiry(&self) -> Duration {
        let now = Instant::now();
        self.leases()
            .values()
            .map(|l| l.deadline.saturating_duration_since(now))
            .min()
            .unwrap_or(Duration::MAX)
    }

    /// Removes the expired leases from the live set; the writer revokes them.
    fn take_expired(&self) -> Vec<i64> {
        let now = Instant::now();
        let mut leases = self.leases();
        let expired: Vec<i64> =
            leases.iter().filter(|(_, l)| l.deadline <= now).map(|(id, _)| *id).collect();
        for id in &expired {
            leases.remove(id);
        }
        expired
    }

    /// Runs `f` on a read snapshot.
    fn read<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, redb::Error>,
    ) -> Result<T> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        let txn = match guard.as_ref() {
            None => return Err(StoreError::Closed { store: self.describe() }),
            Some(Db::Rw(db)) => db.begin_read(),
            Some(Db::Ro(db)) => db.begin_read(),
            Some(Db::Broken(why)) => return Err(self.broken(op, why)),
        };
        let txn = txn.map_err(|e| self.error(op, e))?;
        f(&txn).map_err(|e| self.error(op, e))
    }

    fn broken(&self, op: &'static str, why: &str) -> StoreError {
        self.error(op, format!("unavailable after a storage error, reopening: {why}"))
    }
}

struct Inner {
    shared: Arc<Shared>,
    /// `None` for a read-only handle.
    writer: Option<Mutex<std_mpsc::Sender<Request>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A handle on an embedded store; clones share it.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmbeddedStore({})", self.inner.shared.dir.display())
    }
}

fn revision_of(txn: &redb::ReadTransaction) -> std::result::Result<Revision, redb::Error> {
    Ok(txn.open_table(META)?.get("revision")?.map_or(0, |g| g.value()))
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `dir` for reading and writing. Only one process
    /// may do so at a time; another gets `StoreError::InUse` naming the holder.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || Self::open_blocking(d))
            .await
            .map_err(|e| StoreError::Embedded { dir, op: "open", reason: e.to_string() })?
    }

    fn open_blocking(dir: PathBuf) -> Result<Self> {
        let err = |op: &'static str, e: &dyn std::fmt::Display| StoreError::Embedded {
            dir: dir.clone(),
            op,
            reason: e.to_string(),
        };
        std::fs::create_dir_all(&dir).map_err(|e| err("creating the directory", &e))?;
        let db = open_rw(&dir).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse { holder: holder(&dir), dir: dir.clone() }
            }
            e => err("open", &e),
        })?;
        let _ = std::fs::write(dir.join(OWNER), format!("{}\n", std::process::id()));
        let (revision, compacted, persisted) = load(&db).map_err(|e| err("initialising", &e))?;
        let now = Instant::now();
        let leases: HashMap<i64, LeaseState> = persisted
            .into_iter()
            .map(|(id, ttl)| (id, LeaseState { ttl, deadline: now + ttl }))
            .collect();
        tracing::debug!(dir = %dir.display(), revision, leases = leases.len(), "embedded store open");
        let shared = Arc::new(Shared {
            dir: dir.clone(),
            db: RwLock::new(Some(Db::Rw(db))),
            hub: Mutex::new(Hub::new(revision, compacted)),
            leases: Mutex::new(leases),
            health: HealthSignal::new(),
        });
        let (tx, rx) = std_mpsc::channel();
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("viking-store".into())
            .spawn(move || engine::run(s, rx))
            .map_err(|e| err("starting the writer", &e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                writer: Some(Mutex::new(tx)),
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Opens the store in `dir` for reading only, alongside the process that writes it (the
    /// CLI next to a running agent). Writes, leases and watches are refused.
    pub async fn open_read_only(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || Self::open_read_only_blocking(d))
            .await
            .map_err(|e| StoreError::Embedded { dir, op: "open", reason: e.to_string() })?
    }

    fn open_read_only_blocking(dir: PathBuf) -> Result<Self> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Err(StoreError::Missing { dir });
        }
        let db = redb::Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(&path)
            .map_err(|e| StoreError::Embedded {
                dir: dir.clone(),
                op: "open read-only",
                reason: e.to_string(),
            })?;
        let shared = Arc::new(Shared {
            dir,
            db: RwLock::new(Some(Db::Ro(db))),
            hub: Mutex::new(Hub::new(0, 0)),
            leases: Mutex::new(HashMap::new()),
            health: HealthSignal::new(),
        });
        let revision = shared.read("open read-only", revision_of)?;
        shared.hub().revision = revision;
        Ok(Self { inner: Arc::new(Inner { shared, writer: None, thread: Mutex::new(None) }) })
    }

    /// Opens for writing when possible, else read-only (someone else writes): what a command
    /// that only reads wants.
    pub async fn open_for_reading(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.join(FILE).exists() {
            return Err(StoreError::Missing { dir: dir.to_path_buf() });
        }
        match Self::open(dir).await {
            Err(StoreError::InUse { .. }) => Self::open_read_only(dir).await,
            other => other,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    pub fn is_read_only(&self) -> bool {
        self.inner.writer.is_none()
    }

    /// Whether commits work: unhealthy from a failed commit (a full or failing disk) until the
    /// writer has reopened the file and committed again.
    pub fn health(&self) -> HealthSignal {
        self.inner.shared.health.clone()
    }

    /// Finishes pending writes, stops the writer and releases the file: another process (or
    /// this one) may open the directory afterwards. Other handles then get `Closed`.
    pub async fn close(&self) -> Result<()> {
        if self.inner.writer.is_some() {
            // NB: an error means the writer is gone already.
            let _ = self.write(Write::Shutdown).await;
        }
        let thread = self.inner.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            shared.hub().close();
            shared.db.write().unwrap_or_else(|e| e.into_inner()).take();
        })
        .await
        .map_err(|e| self.inner.shared.error("close", e))
    }

    async fn write(&self, write: Write) -> Result<Done> {
        let shared = &self.inner.shared;
        let Some(writer) = &self.inner.writer else {
            let op = match write {
                Write::Put { .. } => "put",
                Write::Delete { .. } | Write::DeletePrefix { .. } => "delete",
                Write::Txn(_) => "txn",
                Write::Grant { .. } => "grant lease",
                Write::Revoke { .. } => "revoke lease",
                Write::Compact { .. } => "compact",
                Write::Shutdown => "close",
            };
            return Err(StoreError::ReadOnly { dir: shared.dir.clone(), op });
        };
        let (reply, rx) = oneshot::channel();
        writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(Request { write, reply })
            .map_err(|_| StoreError::Closed { store: shared.describe() })?;
        rx.await.map_err(|_| StoreError::Closed { store: shared.describe() })?
    }

    async fn read<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&redb::ReadTransaction) -> std::result::Result<T, redb::Error> + Send + 'static,
    ) -> Result<T> {
        let shared = self.inner.shared.clone();
        tokio::task::spawn_blocking(move || shared.read(op, f))
            .await
            .map_err(|e| self.inner.shared.error(op, e))?
    }

    fn limit(&self, op: &'static str, key: &str, limit: super::limits::Limit) -> StoreError {
        StoreError::Limit { store: self.describe(), op, key: key.to_owned(), limit }
    }

    fn unexpected(&self, op: &'static str) -> StoreError {
        self.inner.shared.error(op, "unexpected answer from the writer")
    }

    /// History from `from` and a live subscription after it, atomically (no gap, no overlap).
    fn subscribe(
        shared: &Shared,
        prefix: &str,
        from: Revision,
    ) -> Result<(Vec<WatchEvent>, mpsc::Receiver<WatchEvent>)> {
        let mut hub = shared.hub();
        if hub.closed {
            return Err(StoreError::Closed { store: shared.describe() });
        }
        if from < hub.compacted {
            return Err(StoreError::Compacted {
                store: shared.describe(),
                revision: from,
                compacted: hub.compacted,
            });
        }
        let upto = hub.revision;
        let history = if from <= upto {
            let prefix = prefix.to_string();
            let (compacted, history) = shared.read("watch history", move |txn| {
                // NB: a compaction commits (deleting log rows) before the hub hears of it, so
                // the compacted revision that counts is the one in this read's snapshot.
                let compacted = txn.open_table(META)?.get("compacted")?.map_or(0, |g| g.value());
                let log = txn.open_table(LOG)?;
                let mut out = Vec::new();
                for entry in log.range((from, 0)..=(upto, u32::MAX))? {
                    let (_, v) = entry?;
                    if let Some(e) = codec::decode_event(v.value()) {
                        if event_key(&e).starts_with(&prefix) {
                            out.push(e);
                        }
                    }
                }
                Ok((compacted, out))
            })?;
            if from < compacted {
                return Err(StoreError::Compacted {
                    store: shared.describe(),
                    revision: from,
                    compacted,
                });
            }
            history
        } else {
            Vec::new()
        };
        Ok((history, hub.subscribe(prefix, WATCH_BUFFER)))
    }
}

/// Who holds the store, for the error message.
fn holder(dir: &Path) -> String {
    match std::fs::read_to_string(dir.join(OWNER)) {
        Ok(pid) if !pid.trim().is_empty() => format!(" (pid {})", pid.trim()),
        _ => String::new(),
    }
}

impl Store for EmbeddedStore {
    fn describe(&self) -> String {
        self.inner.shared.describe()
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.read("get", move |txn| {
            let kv = txn.open_table(KV)?;
            Ok(kv.get(key.as_str())?.and_then(|g| codec::decode_record(&key, g.value())))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing> {
        let prefix = prefix.to_string();
        self.read("list", move |txn| {
            let kv = txn.open_table(KV)?;
            let mut kvs = Vec::new();
            for entry in kv.range::<&str>(prefix.as_str()..)? {
                let (k, v) = entry?;
                let key = k.value();
                if !key.starts_with(prefix.as_str()) {
                    break;
                }
                if let Some(kv) = codec::decode_record(key, v.value()) {
                    kvs.push(kv);
                }
            }
            Ok(Listing { kvs, revision: revision_of(txn)? })
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision> {
        super::limits::check_put(key, &value).map_err(|limit| self.limit("put", key, limit))?;
        match self.write(Write::Put { key: key.into(), value, lease }).await? {
            Done::Revision(r) => Ok(r),
            _ => Err(self.unexpected("put")),
        }
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        match self.write(Write::Delete { key: key.into() }).await? {
            Done::Count(n) => Ok(n > 0),
            _ => Err(self.unexpected("delete")),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        match self.write(Write::DeletePrefix { prefix: prefix.into() }).await? {
            Done::Count(n) => Ok(n),
            _ => Err(self.unexpected("delete")),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        super::limits::check_txn(&txn)
            .map_err(|limit| self.limit("txn", txn.first_key(), limit))?;
        // NB: a transaction of gets only is a read: no trip through the writer.
        if txn.when.is_empty() && txn.then.iter().all(|o| matches!(o, super::Op::Get { .. })) {
            let keys: Vec<String> = txn.then.iter().map(|o| o.key().to_string()).collect();
            return self
                .read("txn", move |t| {
                    let kv = t.open_table(KV)?;
                    let mut gets = Vec::new();
                    for key in &keys {
                        gets.push(
                            kv.get(key.as_str())?
                                .and_then(|g| codec::decode_record(key, g.value())),
                        );
                    }
                    Ok(TxnResult { succeeded: true, revision: revision_of(t)?, gets })
                })
                .await;
        }
        match self.write(Write::Txn(txn)).await? {
            Done::Txn(r) => Ok(r),
            _ => Err(self.unexpected("txn")),
        }
    }

    async fn watch(&self, prefix: &str, from: Option<Revision>) -> Result<Watch> {
        let shared = &self.inner.shared;
        if self.is_read_only() {
            return Err(StoreError::ReadOnly { dir: shared.dir.clone(), op: "watch" });
        }
        let start = match from {
            Some(r) => r,
            None => shared.hub().revision + 1,
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let task = tokio::spawn(watch_task(self.clone(), prefix.to_string(), start, tx));
        Ok(Watch::new(rx, task))
    }

    async fn revision(&self) -> Result<Revision> {
        self.read("revision", revision_of).await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.write(Write::Compact { revision }).await.map(|_| ())
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId> {
        match self.write(Write::Grant { ttl }).await? {
            Done::Lease(l) => Ok(l),
            _ => Err(self.unexpected("grant lease")),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        let shared = &self.inner.shared;
        if self.is_read_only() {
            return Err(StoreError::ReadOnly { dir: shared.dir.clone(), op: "keep lease alive" });
        }
        let now = Instant::now();
        match shared.leases().get_mut(&lease.0) {
            Some(l) if l.deadline > now => {
                l.deadline = now + l.ttl;
                Ok(l.ttl)
            }
            _ => Err(StoreError::LeaseNotFound { store: shared.describe(), lease: lease.0 }),
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<()> {
        self.write(Write::Revoke { lease }).await.map(|_| ())
    }

    async fn campaign(&self, election: &str, value: Vec<u8>, lease: LeaseId) -> Result<LeaderKey> {
        election::campaign(self, election, value, lease).await
    }

    async fn leader(&self, election: &str) -> Result<Option<KeyValue>> {
        election::leader(self, election).await
    }

    async fn resign(&self, key: &LeaderKey) -> Result<()> {
        election::resign(self, key).await
    }
}

/// Feeds one watch: history then live events; after falling behind, from the history again;
/// after a compaction, a resync.
async fn watch_task(
    store: EmbeddedStore,
    prefix: String,
    start: Revision,
    tx: mpsc::Sender<WatchEvent>,
) {
    let mut backoff = Backoff::new();
    // NB: the events of one transaction share its revision, so "sent up to revision R" is not
    // enough to resume: R may have been sent in part. `sent` counts R's events already out.
    let mut sent = Sent { revision: start - 1, count: 0 };
    loop {
        let shared = store.inner.shared.clone();
        let p = prefix.clone();
        let from = sent.resume_from();
        let sub =
            tokio::task::spawn_blocking(move || EmbeddedStore::subscribe(&shared, &p, from)).await;
        match sub {
            Ok(Ok((history, mut live))) => {
                let mut skip = sent.count;
                for e in history.into_iter() {
                    if sent.is_old(&e, &mut skip) {
                        continue;
                    }
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                while let Some(e) = live.recv().await {
                    if sent.is_old(&e, &mut skip) {
                        continue;
                    }
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                // The hub dropped us: we fell behind (resume from the history) or it closed.
            }
            Ok(Err(StoreError::Compacted { compacted, .. })) => {
                tracing::info!(store = %store.describe(), %prefix, wanted = sent.resume_from(), compacted, "watch: history compacted, resyncing");
                match store.list(&prefix).await {
                    Ok(listing) => {
                        sent = Sent { revision: listing.revision, count: 0 };
                        let event =
                            WatchEvent::Resync { kvs: listing.kvs, revision: listing.revision };
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(store = %store.describe(), %prefix, error = %e, "watch: resync failed");
                        backoff.wait().await;
                    }
                }
            }
            Ok(Err(StoreError::Closed { .. })) => return,
            Ok(Err(e)) => {
                tracing::warn!(store = %store.describe(), %prefix, error = %e, "watch: retrying");
                backoff.wait().await;
            }
            Err(_) => return,
        }
        if tx.is_closed() {
            return;
        }
    }
}

/// Where a watch stands: the revision of the last event it sent and how many events of that
/// revision it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sent {
    revision: Revision,
    count: usize,
}

impl Sent {
    /// The revision to read the history from: the last one again if it may be incomplete.
    fn resume_from(&self) -> Revision {
        if self.count > 0 {
            self.revision
        } else {
            self.revision + 1
        }
    }

    /// Whether `e` was sent already (`skip`: how many events of the last revision the
    /// history replays that were sent before); if not, counts it as sent.
    fn is_old(&mut self, e: &WatchEvent, skip: &mut usize) -> bool {
        let r = e.revision();
        if r < self.revision {
            return true;
        }
        if r == self.revision {
            // count 0: the revision is covered already (the start, or a resync's listing,
            // which a commit can reach before its events reach the hub).
            if *skip > 0 || self.count == 0 {
                *skip = skip.saturating_sub(1);
                return true;
            }
            self.count += 1;
        } else {
            *self = Sent { revision: r, count: 1 };
            *skip = 0;
        }
        false
    }
}

#[cfg(test)]
mod sent_tests {
    use super::*;

    fn put(key: &str, revision: Revision) -> WatchEvent {
        WatchEvent::Put(KeyValue {
            key: key.into(),
            value: Vec::new(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        })
    }

    #[test]
    fn a_transaction_half_sent_resumes_at_its_rest() {
        let mut sent = Sent { revision: 4, count: 0 };
        let mut skip = 0;
        // Live: revision 5 holds two writes; both go out.
        assert!(!sent.is_old(&put("/a", 5), &mut skip));
        assert!(!sent.is_old(&put("/b", 5), &mut skip));
        assert_eq!(sent, Sent { revision: 5, count: 2 });
        // Dropped, then replayed from revision 5: the two already sent are skipped, the third
        // of that revision and the next revision go out.
        assert_eq!(sent.resume_from(), 5);
        let mut skip = sent.count;
        assert!(sent.is_old(&put("/a", 5), &mut skip));
        assert!(sent.is_old(&put("/b", 5), &mut skip));
        assert!(!sent.is_old(&put("/c", 5), &mut skip));
        assert!(!sent.is_old(&put("/d", 6), &mut skip));
        assert!(sent.is_old(&put("/z", 3), &mut skip));
        assert_eq!(sent, Sent { revision: 6, count: 1 });
    }

    #[test]
    fn the_revision_of_a_listing_is_not_sent_again() {
        // A resync's listing at revision 7 (its events may still reach the hub after it).
        let mut sent = Sent { revision: 7, count: 0 };
        let mut skip = 0;
        assert_eq!(sent.resume_from(), 8);
        assert!(sent.is_old(&put("/a", 7), &mut skip));
        assert!(!sent.is_old(&put("/b", 8), &mut skip));
    }
}
