//! The discovery loop (store -> datapath): how long its passes take, how long a change waits
//! to be programmed, failures, and whether the first sync is done (`/v1/ready`).
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

#[derive(Debug, Clone)]
pub struct DiscoveryMetrics {
    lag: Histogram,
    pass: Histogram,
    errors: Counter,
    last_sync: Gauge<f64, AtomicU64>,
    synced: Gauge,
    /// The last lag observed, in microseconds plus one (for `viking status`).
    last_lag_us: Arc<AtomicU64>,
    first_done: Arc<AtomicBool>,
}

impl DiscoveryMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self {
            lag: super::seconds_histogram(),
            pass: super::seconds_histogram(),
            errors: Counter::default(),
            last_sync: Gauge::default(),
            synced: Gauge::default(),
            last_lag_us: Arc::default(),
            first_done: Arc::default(),
        };
        r.register_with_unit(
            "lag",
            "Time from a registration or allocation change reaching the agent to the \
             datapath holding it",
            Unit::Seconds,
            m.lag.clone(),
        );
        r.register_with_unit(
            "pass_duration",
            "Time one programming pass (store view -> kernel maps) took",
            Unit::Seconds,
            m.pass.clone(),
        );
        r.register(
            "errors",
            "Map updates that failed (retried by a full pass a second later)",
            m.errors.clone(),
        );
        r.register_with_unit(
            "last_sync_timestamp",
            "When the datapath last matched the store (Unix time)",
            Unit::Seconds,
            m.last_sync.clone(),
        );
        r.register(
            "synced",
            "1 once the first pass has programmed the datapath from the store",
            m.synced.clone(),
        );
        m
    }

    /// One pass took `took`; `lag` is how long its oldest change waited (None: nothing
    /// changed); `failed` map updates failed.
    pub fn pass(&self, took: Duration, lag: Option<Duration>, failed: usize) {
        self.pass.observe(took.as_secs_f64());
        if failed > 0 {
            self.errors.inc_by(failed as u64);
            return;
        }
        if let Some(lag) = lag {
            self.lag.observe(lag.as_secs_f64());
            self.last_lag_us.store(lag.as_micros() as u64 + 1, Ordering::Relaxed);
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
        self.last_sync.set(now);
        self.synced.set(1);
        self.first_done.store(true, Ordering::Relaxed);
    }

    /// Whether a pass has programmed the whole store view without a failure.
    pub fn synced(&self) -> bool {
        self.first_done.load(Ordering::Relaxed)
    }

    /// The last lag, and when the datapath last matched the store (Unix seconds).
    pub fn last(&self) -> (Option<Duration>, Option<f64>) {
        let lag = self
            .first_done
            .load(Ordering::Relaxed)
            .then(|| Duration::from_micros(self.last_lag_us.load(Ordering::Relaxed)));
        let at = self.last_sync.get();
        (lag, (at > 0.0).then_some(at))
    }
}
