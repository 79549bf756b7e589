//! A lease kept alive in the background, which tells its owner the moment it may be gone.
use std::time::{Duration, Instant};

use tokio::{sync::watch, task::JoinHandle};

use super::{LeaseId, Result, Store, StoreError};

/// A granted lease and the task refreshing it (every third of its TTL).
///
/// `is_alive()` turns false, for good, when the store says the lease is gone or when no
/// refresh has succeeded for a whole TTL (counted from when the last successful refresh was
/// sent, so the store cannot have kept it longer than we think): whoever acts under the
/// lease (a leader) stops acting then. Dropping it stops the refreshes; the store expires the
/// lease one TTL later. `revoke` ends it at once.
pub struct Lease<S: Store> {
    store: S,
    id: LeaseId,
    ttl: Duration,
    alive: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl<S: Store> Lease<S> {
    pub async fn grant(store: &S, ttl: Duration) -> Result<Self> {
        let sent = Instant::now();
        let id = store.grant(ttl).await?;
        let (tx, alive) = watch::channel(true);
        let task = tokio::spawn(keep(store.clone(), id, ttl, sent + ttl, tx));
        Ok(Self { store: store.clone(), id, ttl, alive, task })
    }

    pub fn id(&self) -> LeaseId {
        self.id
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn is_alive(&self) -> bool {
        *self.alive.borrow()
    }

    /// A receiver that turns false when the lease is lost.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.alive.clone()
    }

    /// Resolves once the lease is lost.
    pub async fn lost(&self) {
        let mut rx = self.alive.clone();
        let _ = rx.wait_for(|alive| !alive).await;
    }

    /// Ends the lease now: its keys go at once.
    pub async fn revoke(self) -> Result<()> {
        self.task.abort();
        self.store.revoke(self.id).await
    }
}

impl<S: Store> Drop for Lease<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn keep<S: Store>(
    store: S,
    id: LeaseId,
    ttl: Duration,
    mut deadline: Instant,
    alive: watch::Sender<bool>,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next.min(deadline).into()).await;
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(store = %store.describe(), lease = %id, "lease not refreshed for its whole TTL: lost");
            break;
        }
        let sent = now;
        match tokio::time::timeout(deadline - now, store.keep_alive(id)).await {
            Ok(Ok(granted)) => {
                deadline = sent + granted;
                next = sent + period;
            }
            Ok(Err(e @ StoreError::LeaseNotFound { .. })) => {
                tracing::warn!(error = %e, "lease lost");
                break;
            }
            Ok(Err(e)) => {
                tracing::warn!(store = %store.describe(), lease = %id, error = %e, "lease refresh failed; retrying");
                next = Instant::now() + (period / 4).max(Duration::from_millis(50));
            }
            Err(_) => {
                tracing::warn!(store = %store.describe(), lease = %id, "lease refresh got no answer within its TTL: lost");
                break;
            }
        }
    }
    let _ = alive.send(false);
}
