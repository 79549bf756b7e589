//! The caller's end of a watch: a stream of events fed by a task that reconnects and resyncs.
use std::time::Duration;

use tokio::{sync::mpsc, task::JoinHandle};

use super::WatchEvent;

/// Events buffered between the store and a slow reader before the feeding task waits.
pub(crate) const WATCH_BUFFER: usize = 1024;

/// A running watch. Dropping it stops the task that feeds it.
pub struct Watch {
    rx: mpsc::Receiver<WatchEvent>,
    task: JoinHandle<()>,
}

impl Watch {
    pub(crate) fn new(rx: mpsc::Receiver<WatchEvent>, task: JoinHandle<()>) -> Self {
        Self { rx, task }
    }

    /// The next event; `None` once the store is closed for good.
    pub async fn next(&mut self) -> Option<WatchEvent> {
        self.rx.recv().await
    }

    /// The next event if one comes within `wait`.
    /// The next event if one is already queued; never waits (a zero `next_within` would wait
    /// for the timer's next tick, about a millisecond).
    pub fn try_next(&mut self) -> Option<WatchEvent> {
        self.rx.try_recv().ok()
    }

    pub async fn next_within(&mut self, wait: Duration) -> Option<WatchEvent> {
        tokio::time::timeout(wait, self.rx.recv()).await.ok().flatten()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Exponential backoff for reconnect loops: 50 ms doubling to 2 s.
pub(crate) struct Backoff(Duration);

impl Backoff {
    pub(crate) fn new() -> Self {
        Self(Duration::from_millis(50))
    }
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }
    pub(crate) fn reset(&mut self) {
        self.0 = Duration::from_millis(50);
    }
}
