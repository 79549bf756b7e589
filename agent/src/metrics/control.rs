//! The control loops: reconcile and placement passes, this host's instances by state, and
//! whether this agent leads.
use std::time::Instant;

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// Every state `viking ps` shows for an instance on its host (docs/scheduling.md).
pub const STATES: [&str; 5] = ["pending", "running", "restarting", "failed", "completed"];

type State = [(&'static str, &'static str); 1];

#[derive(Debug, Clone)]
pub struct ControlMetrics {
    reconcile: Histogram,
    reconcile_errors: Counter,
    placement: Histogram,
    placement_errors: Counter,
    instances: Family<State, Gauge>,
    leader: Gauge,
}

impl ControlMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self {
            reconcile: super::seconds_histogram(),
            reconcile_errors: Counter::default(),
            placement: super::seconds_histogram(),
            placement_errors: Counter::default(),
            instances: Family::default(),
            leader: Gauge::default(),
        };
        for s in STATES {
            m.instances.get_or_create(&[("state", s)]).set(0);
        }
        r.register_with_unit(
            "reconcile_duration",
            "Time one reconcile pass (intent -> runtime, registrations, status) took",
            Unit::Seconds,
            m.reconcile.clone(),
        );
        r.register("reconcile_errors", "Reconcile passes that failed", m.reconcile_errors.clone());
        r.register_with_unit(
            "placement_duration",
            "Time one placement pass of the leader took",
            Unit::Seconds,
            m.placement.clone(),
        );
        r.register("placement_errors", "Placement passes that failed", m.placement_errors.clone());
        r.register("instances", "This host's instances by state", m.instances.clone());
        r.register("leader", "1 while this agent leads the cluster", m.leader.clone());
        m
    }

    /// A reconcile pass that started at `started` ended.
    pub fn reconciled(&self, started: Instant, ok: bool) {
        self.reconcile.observe(started.elapsed().as_secs_f64());
        if !ok {
            self.reconcile_errors.inc();
        }
    }

    /// A placement pass that started at `started` ended.
    pub fn placed(&self, started: Instant, ok: bool) {
        self.placement.observe(started.elapsed().as_secs_f64());
        if !ok {
            self.placement_errors.inc();
        }
    }

    /// This host's instances, one state each (`STATES`).
    pub fn instances<S: AsRef<str>>(&self, states: impl IntoIterator<Item = S>) {
        let mut counts = [0i64; STATES.len()];
        for s in states {
            if let Some(i) = STATES.iter().position(|k| *k == s.as_ref()) {
                counts[i] += 1;
            }
        }
        for (s, n) in STATES.iter().zip(counts) {
            self.instances.get_or_create(&[("state", s)]).set(n);
        }
    }

    /// The counts last recorded by `instances`, by state.
    pub fn instance_counts(&self) -> Vec<(&'static str, i64)> {
        STATES.iter().map(|s| (*s, self.instances.get_or_create(&[("state", s)]).get())).collect()
    }

    pub fn leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }
}
