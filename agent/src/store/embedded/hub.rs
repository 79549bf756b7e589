//! Live watchers of the embedded store: the writer publishes each committed batch here.
use tokio::sync::mpsc;

use crate::store::{Revision, WatchEvent};

struct Sub {
    prefix: String,
    tx: mpsc::Sender<WatchEvent>,
}

/// The committed revision as watchers know it, the oldest revision still in the history, and
/// the live subscriptions.
pub(super) struct Hub {
    pub revision: Revision,
    pub compacted: Revision,
    pub closed: bool,
    subs: Vec<Sub>,
}

pub(super) fn event_key(e: &WatchEvent) -> &str {
    match e {
        WatchEvent::Put(kv) => &kv.key,
        WatchEvent::Delete { key, .. } => key,
        WatchEvent::Resync { .. } => "",
    }
}

impl Hub {
    pub fn new(revision: Revision, compacted: Revision) -> Self {
        Self { revision, compacted, closed: false, subs: Vec::new() }
    }

    /// A live subscription for events after `self.revision`.
    pub fn subscribe(&mut self, prefix: &str, buffer: usize) -> mpsc::Receiver<WatchEvent> {
        let (tx, rx) = mpsc::channel(buffer);
        self.subs.push(Sub { prefix: prefix.to_string(), tx });
        rx
    }

    /// Hands a committed batch to every subscriber. One that cannot keep up (its buffer is
    /// full) is dropped: its watch task resumes from the history, or resyncs.
    pub fn publish(&mut self, events: &[WatchEvent], revision: Revision, compacted: Revision) {
        self.revision = self.revision.max(revision);
        self.compacted = self.compacted.max(compacted);
        if events.is_empty() {
            return;
        }
        self.subs.retain(|sub| {
            for e in events.iter().filter(|e| event_key(e).starts_with(&sub.prefix)) {
                if sub.tx.try_send(e.clone()).is_err() {
                    return false;
                }
            }
            !sub.tx.is_closed()
        });
    }

    /// Drops every live subscription: each watch task reads the history again from where it
    /// stands (after the file was reopened with commits no watcher has seen).
    pub fn resume_all(&mut self) {
        self.subs.clear();
    }

    pub fn close(&mut self) {
        self.closed = true;
        self.subs.clear();
    }
}
