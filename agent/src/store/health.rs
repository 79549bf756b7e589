//! Whether the store works right now, as its implementation last saw it: the signal the API's
//! `/v1/health` (and readiness, metrics) report. The embedded store turns it unhealthy when a
//! commit fails (a full or failing disk) and healthy again once it has reopened its file and
//! committed; etcd when a call fails for want of the cluster (after its retries) and healthy
//! with the next answer.
use std::{sync::Arc, time::SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// One reading of the signal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreHealth {
    pub healthy: bool,
    /// Why not, when not: the store's own error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when (seconds since the epoch) it has been as it is.
    pub since: u64,
}

fn now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A store's health signal: its implementation sets it, anyone reads or waits on it. Clones
/// share it.
#[derive(Debug, Clone)]
pub struct HealthSignal {
    tx: Arc<watch::Sender<StoreHealth>>,
}

impl Default for HealthSignal {
    fn default() -> Self {
        Self::new()
    }
}

impl HealthSignal {
    /// A healthy signal.
    pub fn new() -> Self {
        let (tx, _) = watch::channel(StoreHealth { healthy: true, error: None, since: now() });
        Self { tx: Arc::new(tx) }
    }

    /// The store works (a call succeeded). Cheap when it already said so.
    pub fn ok(&self) {
        self.tx.send_if_modified(|h| {
            if h.healthy {
                return false;
            }
            tracing::info!("the store works again");
            *h = StoreHealth { healthy: true, error: None, since: now() };
            true
        });
    }

    /// The store fails, for `error`.
    pub fn failing(&self, error: impl std::fmt::Display) {
        let error = error.to_string();
        self.tx.send_if_modified(|h| {
            if !h.healthy && h.error.as_deref() == Some(error.as_str()) {
                return false;
            }
            let since = if h.healthy { now() } else { h.since };
            *h = StoreHealth { healthy: false, error: Some(error), since };
            true
        });
    }

    pub fn get(&self) -> StoreHealth {
        self.tx.borrow().clone()
    }

    pub fn is_healthy(&self) -> bool {
        self.tx.borrow().healthy
    }

    /// Follows the signal (`changed()` wakes on every change).
    pub fn subscribe(&self) -> watch::Receiver<StoreHealth> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failing_then_ok() {
        let s = HealthSignal::new();
        let mut rx = s.subscribe();
        assert!(s.is_healthy());
        s.failing("disk full");
        assert!(rx.has_changed().unwrap_or(false));
        let h = rx.borrow_and_update().clone();
        assert!(!h.healthy);
        assert_eq!(h.error.as_deref(), Some("disk full"));
        s.failing("disk full");
        assert!(!rx.has_changed().unwrap_or(true), "the same error again is no change");
        s.ok();
        assert!(s.get().healthy);
        assert!(s.get().error.is_none());
    }
}
