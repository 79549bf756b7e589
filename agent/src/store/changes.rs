//! Word that something changed under some prefixes, without keeping what: for loops that read
//! the store themselves (they need to see their own writes) but have nothing to do while
//! nothing changes.
use tokio::{sync::watch, task::JoinHandle};

use super::{Result, Store};

/// Watches on some prefixes. Dropping it stops them.
pub struct Changes {
    seen: watch::Receiver<u64>,
    tasks: Vec<JoinHandle<()>>,
}

impl Changes {
    /// Watches each prefix from the next revision on.
    pub async fn start<S: Store>(store: &S, prefixes: &[&str]) -> Result<Self> {
        let (count, seen) = watch::channel(0u64);
        // Built first, so that a watch that fails to start drops (and stops) the others.
        let mut this = Self { seen, tasks: Vec::with_capacity(prefixes.len()) };
        for prefix in prefixes {
            let mut events = store.watch(prefix, None).await?;
            let count = count.clone();
            this.tasks.push(tokio::spawn(async move {
                while events.next().await.is_some() {
                    while events.try_next().is_some() {}
                    count.send_modify(|n| *n += 1);
                }
            }));
        }
        Ok(this)
    }

    /// Returns once something changed since the last call (at once if it already has). Never
    /// returns once the watches have ended: see `is_live`.
    pub async fn next(&mut self) {
        if self.seen.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether every watch behind it still runs (they end only when the store is closed).
    pub fn is_live(&self) -> bool {
        self.tasks.iter().all(|t| !t.is_finished())
    }
}

impl Drop for Changes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
