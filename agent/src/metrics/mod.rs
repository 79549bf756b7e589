//! The agent's Prometheus metrics (docs/metrics.md), served at `/metrics` in the Prometheus
//! text format (prometheus-client).
//!
//! One registry per process (`global()`): the loops record into it with small calls and the
//! API encodes it. Each concern keeps its families in a file of its own; adding a family is a
//! field there and one `register` line in its `register` function, and adding a concern is
//! one more line in `Metrics::new`.
//!
//! - `store`: request latency and errors (`Measured` wraps any `Store`)
//! - `discovery`: store -> datapath passes, their lag, first sync
//! - `control`: reconcile and placement passes, instances by state, leadership
//! - `names`: whether the DNS responder answers, and why not
//! - `datapath`: read from the pinned maps at each scrape (per service and backend counters,
//!   map occupancy, programs attached)
mod control;
mod datapath;
mod discovery;
mod names;
mod store;

use std::sync::{Arc, OnceLock};

use prometheus_client::{
    metrics::{family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub use control::ControlMetrics;
pub use datapath::{
    occupancy as datapath_occupancy, DatapathView, FAMILIES as DATAPATH_FAMILIES, PROGRAMS,
};
pub use discovery::DiscoveryMetrics;
pub use names::{NamesMetrics, NamesState};
pub use store::{Measured, StoreMetrics};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every metric family of the agent, and the handles the loops record into.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub store: StoreMetrics,
    pub discovery: DiscoveryMetrics,
    pub control: ControlMetrics,
    pub names: NamesMetrics,
    /// The pinned maps, read at each scrape (and by `viking status`).
    pub datapath: Arc<DatapathView>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered (`global()` is the process's own).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("viking");
        let build = Family::<[(&'static str, &'static str); 1], Gauge>::default();
        build.get_or_create(&[("version", env!("CARGO_PKG_VERSION"))]).set(1);
        registry.register("build_info", "The running agent's version (always 1)", build);
        let store = StoreMetrics::register(registry.sub_registry_with_prefix("store"));
        let discovery = DiscoveryMetrics::register(registry.sub_registry_with_prefix("discovery"));
        let control = ControlMetrics::register(&mut registry);
        let names = NamesMetrics::register(registry.sub_registry_with_prefix("names"));
        let datapath = Arc::new(DatapathView::default());
        registry.register_collector(Box::new(datapath.clone()));
        Self { registry, store, discovery, control, names, datapath }
    }

    /// Every family in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The process's metrics: one agent per process records here, `/metrics` serves them.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    GLOBAL.get_or_init(Metrics::new)
}

/// Buckets for durations, in seconds: 0.5 ms to 10 s.
const SECONDS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_conventions() {
        let m = Metrics::new();
        m.control.leader(true);
        m.discovery.pass(
            std::time::Duration::from_millis(3),
            Some(std::time::Duration::from_millis(5)),
            0,
        );
        m.control.instances(["running", "running", "failed"]);
        m.store.observe("get", std::time::Instant::now(), &Ok(()));
        let text = m.encode().unwrap();
        for line in [
            "viking_build_info{version=\"",
            "# TYPE viking_discovery_lag_seconds histogram",
            "viking_discovery_lag_seconds_count 1",
            "viking_discovery_synced 1",
            "viking_leader 1",
            "viking_instances{state=\"running\"} 2",
            "viking_instances{state=\"failed\"} 1",
            "viking_instances{state=\"pending\"} 0",
            "# TYPE viking_store_request_errors_total counter",
            "viking_store_request_errors_total{op=\"get\"} 0",
            "viking_store_request_duration_seconds_count{op=\"get\"} 1",
        ] {
            assert!(text.contains(line), "{line:?} missing from:\n{text}");
        }
        // No datapath yet: nothing is made up.
        assert!(!text.contains("viking_service_"), "{text}");
    }
}
