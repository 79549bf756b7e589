//! An etcd watch, fed by a task: reconnects from the last revision it delivered, resyncs
//! after a compaction.
use etcd_client::{EventType, WatchOptions};
use tokio::sync::mpsc;

use super::{convert, lossy, EtcdStore};
use crate::store::{watch::Backoff, Revision, Store, WatchEvent};

/// Feeds one watch: from `next`, reconnecting after errors (from the last revision sent) and
/// resyncing after a compaction, until the caller drops the `Watch`.
pub(super) async fn watch_task(
    store: EtcdStore,
    prefix: String,
    mut next: Revision,
    tx: mpsc::Sender<WatchEvent>,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    // Told once the server has registered the watch (its first answer), so that `watch()`
    // returns only when every later write is sure to be seen from `next` on.
    let mut ready = Some(ready);
    let mut backoff = Backoff::new();
    loop {
        let options = WatchOptions::new().with_prefix().with_start_revision(next);
        let mut stream = match store
            .client
            .watch_client()
            .watch(prefix.as_str(), Some(options))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                store.health.suspect();
                tracing::warn!(store = %store.describe(), %prefix, error = %e, "watch: reconnecting");
                backoff.wait().await;
                continue;
            }
        };
        loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    backoff.reset();
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                    if resp.compact_revision() > 0 {
                        tracing::info!(
                            store = %store.describe(), %prefix, wanted = next,
                            compacted = resp.compact_revision(), "watch: history compacted, resyncing"
                        );
                        match resync(&store, &prefix, &tx).await {
                            Some(rev) => next = rev + 1,
                            None => return,
                        }
                        break;
                    }
                    if resp.canceled() {
                        tracing::warn!(
                            store = %store.describe(), %prefix, reason = resp.cancel_reason(),
                            "watch canceled by the server; reconnecting"
                        );
                        break;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let event = match ev.event_type() {
                            EventType::Put => WatchEvent::Put(convert(kv)),
                            EventType::Delete => WatchEvent::Delete {
                                key: lossy(kv.key()),
                                revision: kv.mod_revision(),
                            },
                        };
                        next = next.max(event.revision() + 1);
                        if tx.send(event).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    store.health.suspect();
                    tracing::warn!(store = %store.describe(), %prefix, error = %e, "watch: stream broke, reconnecting");
                    break;
                }
            }
        }
        if tx.is_closed() {
            return;
        }
        backoff.wait().await;
    }
}

/// Lists `prefix` and sends the result as a `Resync`; the listing's revision, or `None` when
/// the caller has gone.
async fn resync(
    store: &EtcdStore,
    prefix: &str,
    tx: &mpsc::Sender<WatchEvent>,
) -> Option<Revision> {
    let mut backoff = Backoff::new();
    loop {
        match store.list(prefix).await {
            Ok(listing) => {
                let revision = listing.revision;
                tx.send(WatchEvent::Resync { kvs: listing.kvs, revision }).await.ok()?;
                return Some(revision);
            }
            Err(e) => {
                tracing::warn!(store = %store.describe(), prefix, error = %e, "watch: resync failed, retrying");
                if tx.is_closed() {
                    return None;
                }
                backoff.wait().await;
            }
        }
    }
}
