//! The plain types every store speaks: keys and values with their revisions, transactions,
//! watch events, leases, election keys. Modelled on etcd's v3 API, which the embedded store
//! reproduces.
use std::fmt;

use serde::Serialize;

/// The store's logical clock: every write (a put, a delete, a transaction with writes) gets the
/// next revision; reads and watches are consistent with respect to it.
pub type Revision = i64;

/// A lease: keys put under it disappear when it expires or is revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One key with its value and history markers (etcd's mvccpb.KeyValue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// The revision of the last write to the key.
    pub mod_revision: Revision,
    /// Writes since creation (1 after the first put).
    pub version: i64,
    pub lease: Option<LeaseId>,
}

impl KeyValue {
    /// The value as UTF-8 text, or an error naming the key.
    pub fn text(&self) -> Result<&str, BadValue> {
        std::str::from_utf8(&self.value).map_err(|_| BadValue {
            key: self.key.clone(),
            value: String::from_utf8_lossy(&self.value).into_owned(),
            reason: "not UTF-8 text".into(),
        })
    }
}

#[cfg(test)]
impl KeyValue {
    /// A key as the store holds it after one put at `revision` (tests' fixtures).
    pub(crate) fn put_at(
        key: &str,
        value: impl AsRef<[u8]>,
        revision: Revision,
        lease: Option<LeaseId>,
    ) -> Self {
        Self {
            key: key.to_owned(),
            value: value.as_ref().to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease,
        }
    }
}

/// A value that does not parse as what its key says it holds. Its message shows a bounded
/// prefix of the key and the value (a value may be megabytes: the log gets 200 bytes of it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key {}: value {} is not valid: {reason}", bounded(key), bounded(value))]
pub struct BadValue {
    pub key: String,
    pub value: String,
    pub reason: String,
}

/// How much of a key or value an error message shows.
pub const SHOWN: usize = 200;

/// `text` quoted, cut after `SHOWN` bytes (at a character boundary) with its full length said.
pub fn bounded(text: &str) -> String {
    if text.len() <= SHOWN {
        return format!("{text:?}");
    }
    let mut end = SHOWN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes in all)", &text[..end], text.len())
}

/// A consistent snapshot of every key under a prefix.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Sorted by key.
    pub kvs: Vec<KeyValue>,
    /// The store's revision when the snapshot was taken: watch from `revision + 1` to follow it.
    pub revision: Revision,
}

/// A condition of a transaction; all must hold for its `then` branch to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last written at exactly this revision.
    ModRevision(String, Revision),
    /// The key exists and holds exactly this value.
    Value(String, Vec<u8>),
    /// No key under the prefix was created or written after this revision (deletions are not
    /// seen). With a listing's revision: "nothing was added under the prefix since I looked".
    PrefixUnchangedSince(String, Revision),
}

/// An operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
    },
    DeletePrefix {
        prefix: String,
    },
    /// Its result is in `TxnResult::gets`, in the order of the branch's gets.
    Get {
        key: String,
    },
}

impl Op {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self::Put { key: key.into(), value: value.into(), lease: None }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        Self::Delete { key: key.into() }
    }
    pub fn get(key: impl Into<String>) -> Self {
        Self::Get { key: key.into() }
    }
    pub(crate) fn key(&self) -> &str {
        match self {
            Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => key,
            Op::DeletePrefix { prefix } => prefix,
        }
    }
}

/// If every `when` holds, run `then`, else `otherwise`: atomically, at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub when: Vec<Compare>,
    pub then: Vec<Op>,
    pub otherwise: Vec<Op>,
}

impl Txn {
    pub fn when(compares: impl IntoIterator<Item = Compare>) -> Self {
        Self { when: compares.into_iter().collect(), ..Self::default() }
    }
    pub fn then(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.then = ops.into_iter().collect();
        self
    }
    pub fn otherwise(mut self, ops: impl IntoIterator<Item = Op>) -> Self {
        self.otherwise = ops.into_iter().collect();
        self
    }
    /// The key a message about this transaction names: its first compare's, else its first
    /// operation's.
    pub fn first_key(&self) -> &str {
        self.when
            .first()
            .map(|c| match c {
                Compare::Absent(k)
                | Compare::ModRevision(k, _)
                | Compare::Value(k, _)
                | Compare::PrefixUnchangedSince(k, _) => k.as_str(),
            })
            .or_else(|| self.then.first().map(Op::key))
            .unwrap_or_default()
    }

    /// A read-only transaction: several keys read in one consistent snapshot.
    pub fn read(keys: impl IntoIterator<Item = String>) -> Self {
        Self { then: keys.into_iter().map(|key| Op::Get { key }).collect(), ..Self::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether the `then` branch ran.
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    /// The results of the branch's `Get`s, in order.
    pub gets: Vec<Option<KeyValue>>,
}

/// What a watch reports. Events come in revision order, each exactly once; when the watch
/// cannot continue exactly (the revision it needs was compacted), it sends a `Resync` with the
/// complete state instead, and carries on from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete {
        key: String,
        revision: Revision,
    },
    /// Everything under the prefix at `revision`: replace what you knew. Later events have
    /// higher revisions.
    Resync {
        kvs: Vec<KeyValue>,
        revision: Revision,
    },
}

impl WatchEvent {
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { revision, .. } | WatchEvent::Resync { revision, .. } => *revision,
        }
    }
}

/// The key that holds leadership of an election while its lease lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The election (e.g. `/viking/leader`).
    pub name: String,
    /// The candidate's key under it (`<name>/<lease hex>`).
    pub key: String,
    /// Its create revision: the lowest live one under the election leads.
    pub revision: Revision,
    pub lease: LeaseId,
}

/// The end of the range of keys starting with `prefix` (etcd's range_end): `None` when every
/// key from `prefix` on matches.
pub(crate) fn prefix_end(prefix: &str) -> Option<Vec<u8>> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
