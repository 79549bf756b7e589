//! A local copy of everything under a prefix: one listing, then a watch (resyncs included).
//! For loops that read the same prefix again and again: they read memory, and the store sees
//! one watch instead of a listing per pass. A mirror may keep each record whole or only what
//! its reader needs of it (`Mirror::projected`), so a large prefix costs little to follow.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use tokio::{sync::watch, task::JoinHandle};

use super::{KeyValue, Result, Revision, Store, WatchEvent};

/// What a mirror keeps of each record: the record itself, or a projection of it (`None`: the
/// record is not kept, as if absent).
pub type Projection<T> = fn(KeyValue) -> Option<T>;

#[derive(Debug)]
struct State<T> {
    kvs: BTreeMap<String, T>,
    /// The store revision the copy is complete up to.
    revision: Revision,
    project: Projection<T>,
}

/// A running mirror of one prefix. Dropping it stops its watch.
pub struct Mirror<T = KeyValue> {
    state: Arc<Mutex<State<T>>>,
    revision: watch::Sender<Revision>,
    task: JoinHandle<()>,
}

impl Mirror {
    /// Lists `prefix`, then follows it from the listing's revision on.
    pub async fn start<S: Store>(store: &S, prefix: &str) -> Result<Self> {
        Self::projected(store, prefix, Some).await
    }

    /// Every key-value under the prefix, in key order.
    pub fn kvs(&self) -> Vec<KeyValue> {
        lock(&self.state).kvs.values().cloned().collect()
    }
}

impl<T: Send + 'static> Mirror<T> {
    /// `start`, keeping of each record only what `project` makes of it.
    pub async fn projected<S: Store>(
        store: &S,
        prefix: &str,
        project: Projection<T>,
    ) -> Result<Self> {
        let listing = store.list(prefix).await?;
        let mut events = store.watch(prefix, Some(listing.revision + 1)).await?;
        let kvs = build(project, listing.kvs);
        let state = State { kvs, revision: listing.revision, project };
        let state = Arc::new(Mutex::new(state));
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

    /// Reads what the mirror holds (key -> what it keeps), in key order, without copying it.
    /// The watch waits while `read` runs: keep it short.
    pub fn with<R>(&self, read: impl FnOnce(&BTreeMap<String, T>) -> R) -> R {
        read(&lock(&self.state).kvs)
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

impl<T> Drop for Mirror<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(state: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // NB: nothing that holds the lock can panic half way, so a poisoned one is still whole.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The map of a whole listing. NB: built in one go rather than key by key, the tree's nodes
/// come out full where inserts in key order leave each about half empty (at 40,000
/// registrations that is megabytes); each record is dropped once projected, so the next
/// projection reuses its memory rather than scattering long-lived data over the listing's.
fn build<T>(project: Projection<T>, kvs: Vec<KeyValue>) -> BTreeMap<String, T> {
    kvs.into_iter()
        .filter_map(|kv| {
            let key = kv.key.clone();
            Some((key, project(kv)?))
        })
        .collect()
}

fn put<T>(state: &mut State<T>, kv: KeyValue) {
    let key = kv.key.clone();
    match (state.project)(kv) {
        Some(kept) => {
            state.kvs.insert(key, kept);
        }
        None => {
            state.kvs.remove(&key);
        }
    }
}

fn apply<T>(state: &mut State<T>, event: WatchEvent) {
    let revision = event.revision();
    match event {
        WatchEvent::Put(kv) => put(state, kv),
        WatchEvent::Delete { key, .. } => {
            state.kvs.remove(&key);
        }
        WatchEvent::Resync { kvs, .. } => {
            state.kvs.clear();
            state.kvs = build(state.project, kvs);
        }
    }
    state.revision = state.revision.max(revision);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, revision: Revision) -> KeyValue {
        KeyValue::put_at(key, value, revision, None)
    }

    #[test]
    fn a_resync_replaces_everything_and_the_revision_only_grows() {
        let mut s = State { kvs: BTreeMap::new(), revision: 0, project: Some };
        apply(&mut s, WatchEvent::Put(kv("/a", "1", 5)));
        apply(&mut s, WatchEvent::Put(kv("/b", "2", 6)));
        apply(&mut s, WatchEvent::Resync { kvs: vec![kv("/c", "3", 9)], revision: 9 });
        assert_eq!(s.kvs.keys().collect::<Vec<_>>(), ["/c"]);
        apply(&mut s, WatchEvent::Delete { key: "/c".into(), revision: 10 });
        assert!(s.kvs.is_empty());
        assert_eq!(s.revision, 10);
    }

    #[test]
    fn a_projection_keeps_what_it_makes_and_drops_what_it_refuses() {
        fn len(kv: KeyValue) -> Option<usize> {
            (!kv.value.is_empty()).then_some(kv.value.len())
        }
        let mut s = State { kvs: BTreeMap::new(), revision: 0, project: len };
        apply(&mut s, WatchEvent::Put(kv("/a", "one", 5)));
        apply(&mut s, WatchEvent::Put(kv("/b", "two!", 6)));
        assert_eq!(s.kvs, BTreeMap::from([("/a".into(), 3), ("/b".into(), 4)]));
        // A record that no longer projects is gone, as a deleted one would be.
        apply(&mut s, WatchEvent::Put(kv("/a", "", 7)));
        assert_eq!(s.kvs, BTreeMap::from([("/b".into(), 4)]));
        apply(
            &mut s,
            WatchEvent::Resync { kvs: vec![kv("/c", "3", 9), kv("/d", "", 9)], revision: 9 },
        );
        assert_eq!(s.kvs, BTreeMap::from([("/c".into(), 1)]));
    }
}
