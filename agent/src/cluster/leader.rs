//! Leader election at `/viking/leader` (etcd's election API; the embedded store runs the same
//! protocol, so its single host leads at once). The leader holds a lease; it knows it stopped
//! leading (`lost()`, `is_leader()`, a watch channel) as soon as its key goes or its lease may
//! have expired, and must stop acting then.
use std::time::Duration;

use tokio::{sync::watch, task::JoinHandle};

use super::ClusterError;
use crate::store::{keys, LeaderKey, Lease, Store, StoreError, WatchEvent};

/// How long a dead leader keeps leading: its lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// Leadership won by this process. Dropping it stops acting as leader and lets the lease
/// lapse; `resign` hands over at once.
pub struct Leadership<S: Store> {
    store: S,
    key: LeaderKey,
    lease: Lease<S>,
    leading: watch::Receiver<bool>,
    monitor: JoinHandle<()>,
}

/// Campaigns as `id` until this process leads (waits while another does).
pub async fn campaign<S: Store>(
    store: &S,
    id: &str,
    ttl: Duration,
) -> Result<Leadership<S>, ClusterError> {
    let lease = Lease::grant(store, ttl).await?;
    let key = tokio::select! {
        key = store.campaign(keys::LEADER, id.as_bytes().to_vec(), lease.id()) => key?,
        _ = lease.lost() => {
            return Err(StoreError::LeaseNotFound { store: store.describe(), lease: lease.id().0 }.into())
        }
    };
    tracing::info!(id, key = %key.key, "leading");
    let (tx, leading) = watch::channel(true);
    let monitor = tokio::spawn(monitor(store.clone(), key.clone(), lease.subscribe(), tx));
    Ok(Leadership { store: store.clone(), key, lease, leading, monitor })
}

/// Watches the leader key and the lease; the first sign of either going ends leadership.
async fn monitor<S: Store>(
    store: S,
    key: LeaderKey,
    mut lease_alive: watch::Receiver<bool>,
    leading: watch::Sender<bool>,
) {
    let mut watch = match store.watch(&key.key, Some(key.revision + 1)).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the leader key: stepping down");
            let _ = leading.send(false);
            return;
        }
    };
    loop {
        tokio::select! {
            r = lease_alive.wait_for(|alive| !alive) => {
                let _ = r;
                tracing::warn!(key = %key.key, "leader lease lost: no longer leading");
                break;
            }
            e = watch.next() => match e {
                Some(WatchEvent::Delete { key: k, .. }) if k == key.key => {
                    tracing::warn!(key = %key.key, "leader key deleted: no longer leading");
                    break;
                }
                Some(WatchEvent::Resync { kvs, .. }) if !kvs.iter().any(|kv| kv.key == key.key) => {
                    tracing::warn!(key = %key.key, "leader key gone: no longer leading");
                    break;
                }
                Some(_) => {}
                None => {
                    tracing::warn!(key = %key.key, "store closed: no longer leading");
                    break;
                }
            }
        }
    }
    let _ = leading.send(false);
}

impl<S: Store> Leadership<S> {
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// A receiver that turns false when leadership ends.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Resolves once this process no longer leads.
    pub async fn lost(&self) {
        let mut rx = self.leading.clone();
        let _ = rx.wait_for(|l| !l).await;
    }

    pub fn key(&self) -> &LeaderKey {
        &self.key
    }

    /// Steps down now: another candidate leads at once.
    pub async fn resign(self) -> Result<(), ClusterError> {
        self.monitor.abort();
        self.store.resign(&self.key).await?;
        self.store.revoke(self.lease.id()).await?;
        Ok(())
    }
}

impl<S: Store> Drop for Leadership<S> {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

/// The current leader's id, if any.
pub async fn leader<S: Store>(store: &S) -> Result<Option<String>, ClusterError> {
    match store.leader(keys::LEADER).await? {
        Some(kv) => Ok(Some(kv.text()?.to_string())),
        None => Ok(None),
    }
}
