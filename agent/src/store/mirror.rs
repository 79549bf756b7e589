//! A local copy of everything under a prefix: one listing, then a watch (resyncs included).
//! For loops that read the same prefix again and again: they read memory, and the store sees
//! one watch instead of a listing per pass.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::{sync::watch, task::JoinHandle};

use super::{KeyValue, Result, Revision, Store, WatchEvent};

#[derive(Debug, Default)]
struct State {
    kvs: BTreeMap<String, KeyValue>,
    /// The store revision the copy is complete up to.
    revision: Revision,
}

/// A running mirror of one prefix. Dropping it stops its watch.
pub struct Mirror {
    state: Arc<Mutex<State>>,
    revision: watch::Sender<Revision>,
    task: JoinHandle<()>,
}

impl Mirror {
    /// Lists `prefix`, then follows it from the listing's revision on.
    pub async fn start<S: Store>(store: &S, prefix: &str) -> Result<Self> {
        let listing = store.list(prefix).await?;
        let mut events = store.watch(prefix, Some(listing.revision + 1)).await?;
        let state = Arc::new(Mutex::new(State {
            kvs: listing.kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect(),
            revision: listing.revision,
        }));
        let (revision, _) = watch::channel(listing.revision);
        let task = tokio::spawn({
            let (state, revision) = (state.clone(), revision.clone());
            async move {
                while let Some(event) = events.next().await {
                    let mut s = lock(&state);
                    apply(&mut s, event);
                    // Events that are already queued go in before anyone is woken.
                    while let Some(event) = events.try_next() {
                        apply(&mut s, event);
                    }
                    let now = s.revision;
                    drop(s);
                    revision.send_replace(now);
                }
            }
        });
        Ok(Self { state, revision, task })
    }

    /// Every key-value under the prefix, in key order.
    pub fn kvs(&self) -> Vec<KeyValue> {
        lock(&self.state).kvs.values().cloned().collect()
    }

    /// The store revision the copy is complete up to.
    pub fn revision(&self) -> Revision {
        lock(&self.state).revision
    }

    /// Whether the watch behind it still runs (it ends only when the store is closed).
    pub fn is_live(&self) -> bool {
        !self.task.is_finished()
    }

    /// The revision after each batch of changes: `changed()` on it wakes a loop when the
    /// prefix changed since it last looked.
    pub fn subscribe(&self) -> watch::Receiver<Revision> {
        self.revision.subscribe()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // NB: nothing that holds the lock can panic half way, so a poisoned one is still whole.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

fn apply(state: &mut State, event: WatchEvent) {
    let revision = event.revision();
    match event {
        WatchEvent::Put(kv) => {
            state.kvs.insert(kv.key.clone(), kv);
        }
        WatchEvent::Delete { key, .. } => {
            state.kvs.remove(&key);
        }
        WatchEvent::Resync { kvs, .. } => {
            state.kvs = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
        }
    }
    state.revision = state.revision.max(revision);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, revision: Revision) -> KeyValue {
        KeyValue {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: None,
        }
    }

    #[test]
    fn a_resync_replaces_everything_and_the_revision_only_grows() {
        let mut s = State::default();
        apply(&mut s, WatchEvent::Put(kv("/a", "1", 5)));
        apply(&mut s, WatchEvent::Put(kv("/b", "2", 6)));
        apply(&mut s, WatchEvent::Resync { kvs: vec![kv("/c", "3", 9)], revision: 9 });
        assert_eq!(s.kvs.keys().collect::<Vec<_>>(), ["/c"]);
        apply(&mut s, WatchEvent::Delete { key: "/c".into(), revision: 10 });
        assert!(s.kvs.is_empty());
        assert_eq!(s.revision, 10);
    }
}
