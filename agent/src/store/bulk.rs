//! Writes larger than one transaction, committed all or nothing: a journal with one atomic
//! commit point, rolled forward by whoever finds it (docs/store.md "Bulk writes").
//!
//! etcd takes at most 128 operations and 1.5 MiB per transaction (`limits`). A change that
//! fits goes in one transaction, as before. A larger one is written ahead:
//!
//! 1. `/viking/journal/prep/<id>` under a short lease of the writer, then the operations in
//!    chunks `/viking/journal/ops/<id>/<n>` (inert: nothing reads them but this module);
//! 2. the commit: one transaction that checks the caller's compares and that no other journal
//!    is pending, and writes `/viking/journal/commit` naming the chunks. From here on the
//!    change happens, whoever finishes it;
//! 3. the chunks are applied in transactions within the limits, each guarded by the commit
//!    record (so a journal finished by someone else is not applied twice over later writes);
//! 4. the commit record goes, then the chunks.
//!
//! A writer that dies before 2 leaves chunks whose prep key lapses with its lease: `settle`
//! deletes them. One that dies after 2 leaves a commit record: `settle` (the leader runs it
//! before each placement pass, and every bulk writer before it reads) applies it. One journal
//! at most is pending in the cluster; every write through `commit`, small or large, waits for
//! it, so the keys a journal writes see no other writer through this path until it is done.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    keys,
    limits::{self, Limit, MAX_REQUEST_BYTES, MAX_TXN_OPS},
    Compare, Lease, Op, Result, Store, StoreError, Txn,
};

pub const COMMIT: &str = "/viking/journal/commit";
const PREP: &str = "/viking/journal/prep/";
const OPS: &str = "/viking/journal/ops/";
/// The size of one chunk of operations: well inside one request.
const CHUNK_BYTES: usize = 1 << 20;
/// How long the prep key of a writer that died outlives it.
const PREP_TTL: Duration = Duration::from_secs(10);
/// How often a commit that found another journal pending settles it and tries again.
const ATTEMPTS: usize = 5;

/// The commit record: which chunks hold the change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Record {
    id: String,
    chunks: usize,
}

fn chunk_key(id: &str, n: usize) -> String {
    format!("{OPS}{id}/{n:06}")
}

fn invalid(key: &str, reason: &'static str) -> StoreError {
    StoreError::BadKey { store: "journal".into(), key: key.to_owned(), reason }
}

/// Commits `ops` if every compare of `when` holds, all or nothing, whatever their number:
/// `Ok(true)` when applied, `Ok(false)` when a compare failed (nothing was written).
/// Only puts without a lease, deletes and prefix deletes: a journal outlives its writer.
pub async fn commit<S: Store>(store: &S, when: Vec<Compare>, ops: Vec<Op>) -> Result<bool> {
    if when.len() + 2 > MAX_TXN_OPS {
        return Err(limit(
            store,
            "bulk commit",
            Limit::TooManyOps { what: "compares", count: when.len() + 2 },
        ));
    }
    for op in &ops {
        match op {
            Op::Put { lease: Some(_), key, .. } => {
                return Err(invalid(key, "a bulk write cannot put a key under a lease"))
            }
            Op::Get { key } => return Err(invalid(key, "a bulk write has no gets")),
            Op::Put { key, value, .. } => {
                limits::check_put(key, value).map_err(|l| limit(store, "put", l))?
            }
            _ => {}
        }
    }
    let mut guarded = when.clone();
    guarded.push(Compare::Absent(COMMIT.into()));
    let single = Txn::when(guarded.clone()).then(ops.clone());
    if ops.len() <= MAX_TXN_OPS && limits::check_txn(&single).is_ok() {
        for _ in 0..ATTEMPTS {
            if store.txn(single.clone()).await?.succeeded {
                return Ok(true);
            }
            if !settle(store).await? {
                return Ok(false);
            }
        }
        return Ok(false);
    }
    let id = format!("{:016x}", rand::random::<u64>());
    let prep = format!("{PREP}{id}");
    let lease = Lease::grant(store, PREP_TTL).await?;
    let prep_rev = store.put(&prep, Vec::new(), Some(lease.id())).await?;
    let chunks = encode_chunks(&ops);
    for (n, chunk) in chunks.iter().enumerate() {
        store.put(&chunk_key(&id, n), chunk.clone(), None).await?;
    }
    let record = Record { id: id.clone(), chunks: chunks.len() };
    let value = serde_json::to_vec(&record).unwrap_or_default();
    // NB: the prep key still there means `settle` has not taken the chunks for a dead
    // writer's (its lease lapsed while the store was out of reach).
    guarded.push(Compare::ModRevision(prep.clone(), prep_rev));
    let commit = Txn::when(guarded).then([Op::put(COMMIT, value.clone()), Op::delete(&prep)]);
    let mut outcome = Ok(false);
    for _ in 0..ATTEMPTS {
        if store.txn(commit.clone()).await?.succeeded {
            outcome = Ok(true);
            break;
        }
        if store.get(&prep).await?.is_none() {
            outcome = Err(invalid(&prep, "the write took longer than its lease: try again"));
            break;
        }
        if !settle(store).await? {
            break;
        }
    }
    let _ = lease.revoke().await;
    if !matches!(outcome, Ok(true)) {
        store.delete_prefix(&format!("{OPS}{id}/")).await?;
        return outcome;
    }
    tracing::debug!(id, operations = ops.len(), chunks = chunks.len(), "bulk write committed");
    apply(store, &record, &value).await?;
    Ok(true)
}

/// Commits `groups` of operations, each group whole, packed into transactions within etcd's
/// limits, each under `fence` (e.g. "this node still leads"). For work that needs no more
/// atomicity than its groups: a placement pass, where each instance's move is one group.
/// Returns how many groups were committed; fewer than given when the fence failed.
pub async fn commit_groups<S: Store>(
    store: &S,
    fence: &[Compare],
    groups: Vec<Vec<Op>>,
) -> Result<usize> {
    let room = MAX_REQUEST_BYTES - fence.iter().map(limits::compare_bytes).sum::<usize>();
    let mut done = 0;
    let mut batch: Vec<Op> = Vec::new();
    let mut in_batch = 0;
    let mut bytes = 0;
    for group in groups.into_iter().filter(|g| !g.is_empty()) {
        let size: usize = group.iter().map(limits::op_bytes).sum();
        if !batch.is_empty() && (batch.len() + group.len() > MAX_TXN_OPS || bytes + size > room) {
            if !store
                .txn(Txn::when(fence.to_vec()).then(std::mem::take(&mut batch)))
                .await?
                .succeeded
            {
                return Ok(done);
            }
            done += in_batch;
            (in_batch, bytes) = (0, 0);
        }
        batch.extend(group);
        in_batch += 1;
        bytes += size;
    }
    if !batch.is_empty() {
        if !store.txn(Txn::when(fence.to_vec()).then(batch)).await?.succeeded {
            return Ok(done);
        }
        done += in_batch;
    }
    Ok(done)
}

/// Finishes a pending journal (applies a committed one, drops chunks nobody will commit).
/// Returns whether one was pending.
pub async fn settle<S: Store>(store: &S) -> Result<bool> {
    let listing = store.list(keys::JOURNAL).await?;
    let mut pending = false;
    let mut committed_id = None;
    if let Some(kv) = listing.kvs.iter().find(|kv| kv.key == COMMIT) {
        let record: Record = serde_json::from_slice(&kv.value)
            .map_err(|_| invalid(COMMIT, "not a journal commit record"))?;
        committed_id = Some(record.id.clone());
        apply(store, &record, &kv.value).await?;
        pending = true;
    }
    let preparing: Vec<&str> =
        listing.kvs.iter().filter_map(|kv| kv.key.strip_prefix(PREP)).collect();
    let mut dead: Vec<&str> = listing
        .kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(OPS)?.split('/').next())
        .filter(|id| !preparing.contains(id) && committed_id.as_deref() != Some(*id))
        .collect();
    dead.dedup();
    for id in dead {
        store.delete_prefix(&format!("{OPS}{id}/")).await?;
    }
    Ok(pending)
}

/// Applies a committed journal's chunks, then removes it. Stops quietly when someone else
/// finished it first.
async fn apply<S: Store>(store: &S, record: &Record, value: &[u8]) -> Result<()> {
    let guard = Compare::Value(COMMIT.into(), value.to_vec());
    let room = MAX_REQUEST_BYTES - limits::compare_bytes(&guard);
    for n in 0..record.chunks {
        let key = chunk_key(&record.id, n);
        let Some(kv) = store.get(&key).await? else {
            // NB: gone only if the journal was finished (its chunks go after its commit key).
            if store.get(COMMIT).await?.is_none_or(|c| c.value != value) {
                return Ok(());
            }
            return Err(invalid(&key, "a chunk of the pending journal is missing"));
        };
        let ops =
            decode_chunk(&kv.value).ok_or_else(|| invalid(&key, "a corrupt journal chunk"))?;
        for group in groups(ops, room) {
            let r = store.txn(Txn::when([guard.clone()]).then(group)).await?;
            if !r.succeeded {
                return Ok(());
            }
        }
    }
    store.txn(Txn::when([guard]).then([Op::delete(COMMIT)])).await?;
    store.delete_prefix(&format!("{OPS}{}/", record.id)).await?;
    Ok(())
}

/// Splits `ops` into transactions of at most `MAX_TXN_OPS` operations and `room` bytes.
fn groups(ops: Vec<Op>, room: usize) -> Vec<Vec<Op>> {
    let mut out: Vec<Vec<Op>> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = limits::op_bytes(&op);
        match out.last_mut() {
            Some(g) if g.len() < MAX_TXN_OPS && bytes + size <= room => {
                bytes += size;
                g.push(op);
            }
            _ => {
                bytes = size;
                out.push(vec![op]);
            }
        }
    }
    out
}

fn limit<S: Store>(store: &S, op: &'static str, limit: Limit) -> StoreError {
    StoreError::Limit { store: store.describe(), op, key: COMMIT.into(), limit }
}

// A chunk: for each operation a tag byte (1 put, 2 delete, 3 delete prefix), the key's length
// (u32 LE) and bytes, and for a put the value's length and bytes.
fn encode_chunks(ops: &[Op]) -> Vec<Vec<u8>> {
    let mut chunks = vec![Vec::new()];
    for op in ops {
        let (tag, key, value): (u8, &str, Option<&[u8]>) = match op {
            Op::Put { key, value, .. } => (1, key, Some(value)),
            Op::Delete { key } => (2, key, None),
            Op::DeletePrefix { prefix } => (3, prefix, None),
            Op::Get { .. } => continue,
        };
        let size = 9 + key.len() + value.map_or(0, <[u8]>::len);
        if chunks.last().is_some_and(|c| !c.is_empty() && c.len() + size > CHUNK_BYTES) {
            chunks.push(Vec::new());
        }
        let Some(c) = chunks.last_mut() else { continue };
        c.push(tag);
        c.extend_from_slice(&(key.len() as u32).to_le_bytes());
        c.extend_from_slice(key.as_bytes());
        if let Some(v) = value {
            c.extend_from_slice(&(v.len() as u32).to_le_bytes());
            c.extend_from_slice(v);
        }
    }
    chunks
}

fn decode_chunk(mut b: &[u8]) -> Option<Vec<Op>> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (b.get(..n)?, b.get(n..)?);
        *b = rest;
        Some(head)
    }
    fn len(b: &mut &[u8]) -> Option<usize> {
        let bytes: [u8; 4] = take(b, 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes) as usize)
    }
    let mut ops = Vec::new();
    while let Some((&tag, rest)) = b.split_first() {
        b = rest;
        let n = len(&mut b)?;
        let key = String::from_utf8(take(&mut b, n)?.to_vec()).ok()?;
        ops.push(match tag {
            1 => {
                let n = len(&mut b)?;
                Op::put(key, take(&mut b, n)?.to_vec())
            }
            2 => Op::delete(key),
            3 => Op::DeletePrefix { prefix: key },
            _ => return None,
        });
    }
    Some(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_stay_small() {
        let ops: Vec<Op> = (0..3000)
            .map(|i| match i % 3 {
                0 => Op::put(format!("/a/{i}"), vec![b'x'; 2000]),
                1 => Op::delete(format!("/b/{i}")),
                _ => Op::DeletePrefix { prefix: format!("/c/{i}/") },
            })
            .collect();
        let chunks = encode_chunks(&ops);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.len() <= CHUNK_BYTES));
        let back: Vec<Op> = chunks.iter().flat_map(|c| decode_chunk(c).unwrap()).collect();
        assert_eq!(back, ops);
        assert_eq!(decode_chunk(&[9, 0, 0, 0, 0]), None);
        assert_eq!(decode_chunk(&[1, 5, 0, 0, 0, b'a']), None);
    }

    #[test]
    fn groups_fit_a_transaction() {
        let ops: Vec<Op> =
            (0..300).map(|i| Op::put(format!("/k/{i}"), vec![0u8; 10_000])).collect();
        let gs = groups(ops, MAX_REQUEST_BYTES);
        assert!(gs.iter().all(|g| g.len() <= MAX_TXN_OPS));
        for g in &gs {
            assert!(limits::check_txn(&Txn::when([]).then(g.clone())).is_ok());
        }
        assert_eq!(gs.iter().map(Vec::len).sum::<usize>(), 300);
    }
}
