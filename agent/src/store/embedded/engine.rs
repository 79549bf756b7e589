//! The embedded store's single writer: a thread that takes every pending write, applies them
//! in order in one redb write transaction (each its own revision, as etcd would), commits once
//! (durably), then publishes the events and answers. Concurrent writers share one commit.
use std::{
    collections::HashSet,
    sync::{mpsc, Arc},
    time::{Duration, Instant},
};

use redb::{MultimapTable, ReadableMultimapTable, ReadableTable, Table, WriteTransaction};
use tokio::sync::oneshot;

use super::{codec, Shared, KV, LEASES, LEASE_KEYS, LOG, META};
use crate::store::{
    Compare, KeyValue, LeaseId, Op, Revision, StoreError, Txn, TxnResult, WatchEvent,
};

/// Writes taken into one commit at most.
const MAX_BATCH: usize = 1024;
/// History kept for watches from past revisions; older revisions are compacted automatically.
pub(super) const RETAIN: i64 = 100_000;
/// Longest the writer sleeps between lease expiry checks.
const TICK: Duration = Duration::from_millis(200);
/// After a storage error, how often the writer tries to reopen the file (and, once open, to
/// commit) while nothing else asks it to.
const REOPEN: Duration = Duration::from_millis(500);

pub(super) enum Write {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
    DeletePrefix { prefix: String },
    Txn(Txn),
    Grant { ttl: Duration },
    Revoke { lease: LeaseId },
    Compact { revision: Revision },
    Shutdown,
}

pub(super) enum Done {
    Revision(Revision),
    Count(u64),
    Txn(TxnResult),
    Lease(LeaseId),
    Nothing,
}

pub(super) struct Request {
    pub write: Write,
    pub reply: oneshot::Sender<Result<Done, StoreError>>,
}

/// A live lease: its TTL and when it expires unless kept alive. Memory only: on open every
/// persisted lease starts a fresh TTL (etcd does the same after a restart or leader change).
pub(super) struct LeaseState {
    pub ttl: Duration,
    pub deadline: Instant,
}

/// Why one write failed: its own fault (the rest of the batch goes on), or the disk's (the
/// whole batch fails, nothing is committed).
enum Fail {
    Request(StoreError),
    Storage(redb::Error),
}

macro_rules! storage_error {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Self {
                Fail::Storage(e.into())
            }
        }
    )*};
}
storage_error!(redb::Error, redb::StorageError, redb::TableError);

struct Batch<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    log: Table<'t, (i64, u32), &'static [u8]>,
    meta: Table<'t, &'static str, i64>,
    leases: Table<'t, i64, u64>,
    lease_keys: MultimapTable<'t, i64, &'static str>,
    shared: &'t Shared,
    /// The last revision given out.
    rev: Revision,
    compacted: Revision,
    /// Events of the operation being applied (its revision is `rev + 1`).
    pending: u32,
    events: Vec<WatchEvent>,
    granted: Vec<(i64, Duration)>,
    revoked: HashSet<i64>,
}

impl<'t> Batch<'t> {
    fn open(txn: &'t WriteTransaction, shared: &'t Shared) -> Result<Self, Fail> {
        let meta = txn.open_table(META)?;
        let rev = meta.get("revision")?.map_or(0, |g| g.value());
        let compacted = meta.get("compacted")?.map_or(0, |g| g.value());
        Ok(Self {
            kv: txn.open_table(KV)?,
            log: txn.open_table(LOG)?,
            meta,
            leases: txn.open_table(LEASES)?,
            lease_keys: txn.open_multimap_table(LEASE_KEYS)?,
            shared,
            rev,
            compacted,
            pending: 0,
            events: Vec::new(),
            granted: Vec::new(),
            revoked: HashSet::new(),
        })
    }

    fn lease_alive(&self, lease: LeaseId) -> bool {
        if self.revoked.contains(&lease.0) {
            return false;
        }
        self.granted.iter().any(|(id, _)| *id == lease.0)
            || self.shared.leases().get(&lease.0).is_some_and(|l| l.deadline > Instant::now())
    }

    fn check_lease(&self, lease: Option<LeaseId>) -> Result<(), Fail> {
        match lease {
            Some(l) if !self.lease_alive(l) => Err(Fail::Request(StoreError::LeaseNotFound {
                store: self.shared.describe(),
                lease: l.0,
            })),
            _ => Ok(()),
        }
    }

    fn emit(&mut self, event: WatchEvent) -> Result<(), Fail> {
        let rev = self.rev + 1;
        self.log.insert((rev, self.pending), codec::encode_event(&event).as_slice())?;
        self.pending += 1;
        self.events.push(event);
        Ok(())
    }

    /// Ends an operation: it took a revision if it changed anything.
    fn finish(&mut self) -> Revision {
        if self.pending > 0 {
            self.rev += 1;
            self.pending = 0;
        }
        self.rev
    }

    fn read(&self, key: &str) -> Result<Option<KeyValue>, Fail> {
        Ok(self.kv.get(key)?.and_then(|g| codec::decode_record(key, g.value())))
    }

    fn keys_under(&self, prefix: &str) -> Result<Vec<(String, i64)>, Fail> {
        let mut out = Vec::new();
        for entry in self.kv.range::<&str>(prefix..)? {
            let (k, v) = entry?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            let modified = codec::record_meta(v.value()).map_or(0, |m| m.modified);
            out.push((key.to_string(), modified));
        }
        Ok(out)
    }

    fn put(&mut self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<(), Fail> {
        let rev = self.rev + 1;
        let old = self.kv.get(key)?.and_then(|g| codec::record_meta(g.value()));
        let (create, version, old_lease) = match old {
            Some(m) => (m.create, m.version + 1, m.lease),
            None => (rev, 1, 0),
        };
        let lease_id = lease.map_or(0, |l| l.0);
        if old_lease != 0 && old_lease != lease_id {
            self.lease_keys.remove(old_lease, key)?;
        }
        if lease_id != 0 {
            self.lease_keys.insert(lease_id, key)?;
        }
        let meta = codec::Meta { create, modified: rev, version, lease: lease_id };
        self.kv.insert(key, codec::record(&meta, value).as_slice())?;
        self.emit(WatchEvent::Put(KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: create,
            mod_revision: rev,
            version,
            lease,
        }))
    }

    fn delete(&mut self, key: &str) -> Result<bool, Fail> {
        let old = self.kv.remove(key)?.and_then(|g| codec::record_meta(g.value()));
        let Some(old) = old else { return Ok(false) };
        if old.lease != 0 {
            self.lease_keys.remove(old.lease, key)?;
        }
        let revision = self.rev + 1;
        self.emit(WatchEvent::Delete { key: key.to_string(), revision })?;
        Ok(true)
    }

    fn delete_prefix(&mut self, prefix: &str) -> Result<u64, Fail> {
        let mut n = 0;
        for (key, _) in self.keys_under(prefix)? {
            n += u64::from(self.delete(&key)?);
        }
        Ok(n)
    }

    fn holds(&self, c: &Compare) -> Result<bool, Fail> {
        Ok(match c {
            Compare::Absent(key) => self.kv.get(key.as_str())?.is_none(),
            Compare::ModRevision(key, rev) => {
                self.read(key)?.map_or(0, |kv| kv.mod_revision) == *rev
            }
            Compare::Value(key, value) => self.read(key)?.is_some_and(|kv| &kv.value == value),
            Compare::PrefixUnchangedSince(prefix, rev) => {
                self.keys_under(prefix)?.iter().all(|(_, m)| m <= rev)
            }
        })
    }

    fn txn(&mut self, txn: &Txn) -> Result<TxnResult, Fail> {
        let mut succeeded = true;
        for c in &txn.when {
            if !self.holds(c)? {
                succeeded = false;
                break;
            }
        }
        let branch = if succeeded { &txn.then } else { &txn.otherwise };
        // NB: every check before the first write, so a refused transaction changes nothing.
        for op in branch {
            if let Op::Put { lease, .. } = op {
                self.check_lease(*lease)?;
            }
        }
        let mut gets = Vec::new();
        for op in branch {
            match op {
                Op::Put { key, value, lease } => self.put(key, value, *lease)?,
                Op::Delete { key } => {
                    self.delete(key)?;
                }
                Op::DeletePrefix { prefix } => {
                    self.delete_prefix(prefix)?;
                }
                Op::Get { key } => gets.push(self.read(key)?),
            }
        }
        let revision = self.finish();
        Ok(TxnResult { succeeded, revision, gets })
    }

    fn grant(&mut self, ttl: Duration) -> Result<LeaseId, Fail> {
        let id = self.meta.get("lease_next")?.map_or(1, |g| g.value());
        self.meta.insert("lease_next", id + 1)?;
        let ttl = ttl.max(Duration::from_millis(1));
        self.leases.insert(id, u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))?;
        self.granted.push((id, ttl));
        Ok(LeaseId(id))
    }

    fn revoke(&mut self, lease: LeaseId) -> Result<(), Fail> {
        let mut keys: Vec<String> = Vec::new();
        for k in self.lease_keys.get(lease.0)? {
            keys.push(k?.value().to_string());
        }
        for key in keys {
            self.delete(&key)?;
        }
        self.lease_keys.remove_all(lease.0)?;
        self.leases.remove(lease.0)?;
        self.granted.retain(|(id, _)| *id != lease.0);
        self.revoked.insert(lease.0);
        self.finish();
        Ok(())
    }

    fn compact(&mut self, revision: Revision) -> Result<(), Fail> {
        let target = revision.min(self.rev);
        if target <= self.compacted {
            return Ok(());
        }
        self.log.retain_in::<(i64, u32), _>(..(target, 0), |_, _| false)?;
        self.compacted = target;
        Ok(())
    }

    fn apply(&mut self, write: &Write) -> Result<Done, Fail> {
        Ok(match write {
            Write::Put { key, value, lease } => {
                self.check_lease(*lease)?;
                self.put(key, value, *lease)?;
                Done::Revision(self.finish())
            }
            Write::Delete { key } => {
                let n = u64::from(self.delete(key)?);
                self.finish();
                Done::Count(n)
            }
            Write::DeletePrefix { prefix } => {
                let n = self.delete_prefix(prefix)?;
                self.finish();
                Done::Count(n)
            }
            Write::Txn(txn) => Done::Txn(self.txn(txn)?),
            Write::Grant { ttl } => Done::Lease(self.grant(*ttl)?),
            Write::Revoke { lease } => {
                self.revoke(*lease)?;
                Done::Nothing
            }
            Write::Compact { revision } => {
                self.compact(*revision)?;
                Done::Nothing
            }
            Write::Shutdown => Done::Nothing,
        })
    }

    fn save(&mut self) -> Result<(), Fail> {
        self.meta.insert("revision", self.rev)?;
        self.meta.insert("compacted", self.compacted)?;
        Ok(())
    }
}

/// What a committed batch changed, for the hub and the lease table.
struct Committed {
    outcomes: Vec<Result<Done, StoreError>>,
    events: Vec<WatchEvent>,
    revision: Revision,
    compacted: Revision,
    granted: Vec<(i64, Duration)>,
    revoked: HashSet<i64>,
}

fn apply_batch(
    shared: &Shared,
    db: &redb::Database,
    writes: &[&Write],
    expired: &[i64],
) -> Result<Committed, redb::Error> {
    let txn = db.begin_write()?;
    let committed = {
        let mut batch = Batch::open(&txn, shared).map_err(storage)?;
        for lease in expired {
            batch.revoke(LeaseId(*lease)).map_err(storage)?;
        }
        if batch.rev - batch.compacted > RETAIN + RETAIN / 10 {
            batch.compact(batch.rev - RETAIN).map_err(storage)?;
        }
        let mut outcomes = Vec::with_capacity(writes.len());
        for w in writes {
            outcomes.push(match batch.apply(w) {
                Ok(done) => Ok(done),
                Err(Fail::Request(e)) => Err(e),
                Err(Fail::Storage(e)) => return Err(e),
            });
        }
        batch.save().map_err(storage)?;
        Committed {
            outcomes,
            events: std::mem::take(&mut batch.events),
            revision: batch.rev,
            compacted: batch.compacted,
            granted: std::mem::take(&mut batch.granted),
            revoked: std::mem::take(&mut batch.revoked),
        }
    };
    txn.commit()?;
    Ok(committed)
}

fn storage(f: Fail) -> redb::Error {
    match f {
        Fail::Storage(e) => e,
        // NB: expiry, compaction and saving make no request-level checks.
        Fail::Request(e) => redb::Error::Corrupted(e.to_string()),
    }
}

/// The writer thread's loop; ends when every handle is gone or on `Shutdown`.
pub(super) fn run(shared: Arc<Shared>, rx: mpsc::Receiver<Request>) {
    let mut recovery = Recovery::default();
    loop {
        let mut requests = Vec::new();
        let wait = shared.next_expiry().min(TICK);
        let wait = if recovery.failing { wait.min(REOPEN) } else { wait };
        match rx.recv_timeout(wait) {
            Ok(r) => requests.push(r),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        while requests.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => requests.push(r),
                Err(_) => break,
            }
        }
        let shutdown = requests.iter().any(|r| matches!(r.write, Write::Shutdown));
        let expired = shared.take_expired();
        // NB: while failing, an empty commit now and then is the probe that says the disk
        // takes writes again (and turns the health signal back).
        let probe = recovery.failing && recovery.due();
        if !requests.is_empty() || !expired.is_empty() || probe {
            commit(&shared, requests, &expired, &mut recovery);
        }
        if shutdown {
            break;
        }
    }
    shared.hub().close();
    tracing::debug!(dir = %shared.dir.display(), "embedded store writer stopped");
}

/// The writer's view of a storage failure: redb refuses every call after an I/O error until
/// the database is reopened, so the writer reopens it (at most every `REOPEN`), and the store
/// is healthy again after its next commit.
#[derive(Default)]
struct Recovery {
    failing: bool,
    next_try: Option<Instant>,
}

impl Recovery {
    fn due(&self) -> bool {
        self.next_try.is_none_or(|t| Instant::now() >= t)
    }

    fn failed(&mut self, shared: &Shared, e: &StoreError) {
        if !self.failing {
            tracing::error!(dir = %shared.dir.display(), error = %e, "embedded store: a commit failed; every call fails until the file is reopened");
        }
        self.failing = true;
        shared.health.failing(e);
    }

    fn committed(&mut self, shared: &Shared) {
        if self.failing {
            tracing::info!(dir = %shared.dir.display(), "embedded store: commits work again");
        }
        *self = Self::default();
        shared.health.ok();
    }

    /// Closes the database and opens it again, when due. The file holds every commit that
    /// was acknowledged; one that failed may or may not be in it (as a write to etcd that
    /// timed out), so the watchers resume from the history of the file as reopened.
    fn reopen(&mut self, shared: &Shared) {
        if !self.due() {
            return;
        }
        self.next_try = Some(Instant::now() + REOPEN);
        let mut guard = shared.db.write().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return; // closed
        }
        // NB: the old handle goes first: it holds the file's lock.
        *guard = Some(super::Db::Broken("reopening".into()));
        let reopened = super::open_rw(&shared.dir)
            .map_err(|e| e.to_string())
            .and_then(|db| super::load(&db).map(|loaded| (db, loaded)).map_err(|e| e.to_string()));
        match reopened {
            Ok((db, (revision, compacted, leases))) => {
                *guard = Some(super::Db::Rw(db));
                drop(guard);
                let now = Instant::now();
                {
                    let mut live = shared.leases();
                    for (id, ttl) in leases {
                        live.entry(id).or_insert(LeaseState { ttl, deadline: now + ttl });
                    }
                }
                let mut hub = shared.hub();
                if revision != hub.revision {
                    tracing::warn!(dir = %shared.dir.display(), revision, published = hub.revision, "embedded store: a failed commit reached the disk; watchers resume from the history");
                    hub.resume_all();
                }
                hub.revision = revision;
                hub.compacted = hub.compacted.max(compacted);
                tracing::info!(dir = %shared.dir.display(), revision, "embedded store reopened");
            }
            Err(why) => {
                tracing::warn!(dir = %shared.dir.display(), error = %why, "embedded store: reopening failed; trying again");
                shared.health.failing(format!("reopening after a storage error: {why}"));
                *guard = Some(super::Db::Broken(why));
            }
        }
    }
}

fn commit(shared: &Shared, requests: Vec<Request>, expired: &[i64], recovery: &mut Recovery) {
    if recovery.failing {
        recovery.reopen(shared);
    }
    let writes: Vec<&Write> = requests.iter().map(|r| &r.write).collect();
    let result = {
        let guard = shared.db.read().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(super::Db::Rw(db)) => {
                apply_batch(shared, db, &writes, expired).map_err(|e| shared.error("commit", e))
            }
            Some(super::Db::Broken(why)) => Err(shared.broken("commit", why)),
            _ => Err(StoreError::Closed { store: shared.describe() }),
        }
    };
    match result {
        Ok(c) => {
            recovery.committed(shared);
            if !expired.is_empty() {
                tracing::debug!(dir = %shared.dir.display(), leases = ?expired, "leases expired");
            }
            {
                let now = Instant::now();
                let mut leases = shared.leases();
                for (id, ttl) in &c.granted {
                    leases.insert(*id, LeaseState { ttl: *ttl, deadline: now + *ttl });
                }
                for id in &c.revoked {
                    leases.remove(id);
                }
            }
            shared.hub().publish(&c.events, c.revision, c.compacted);
            for (req, outcome) in requests.into_iter().zip(c.outcomes) {
                let _ = req.reply.send(outcome);
            }
        }
        Err(e) => {
            if !matches!(e, StoreError::Closed { .. }) {
                recovery.failed(shared, &e);
            }
            // NB: the expired leases were not revoked; they expire again on the next round.
            let now = Instant::now();
            let mut leases = shared.leases();
            for id in expired {
                leases.entry(*id).or_insert(LeaseState { ttl: TICK, deadline: now });
            }
            drop(leases);
            for req in requests {
                let answer = match &e {
                    StoreError::Embedded { reason, .. } => shared.error("commit", reason),
                    _ => StoreError::Closed { store: shared.describe() },
                };
                let _ = req.reply.send(Err(answer));
            }
        }
    }
}
