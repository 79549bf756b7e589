//! The datapath as the pinned maps hold it, read at each scrape: per service and per backend
//! connection counters, map occupancy against the limits, and which programs are attached.
//! The agent attaches a view of its own (`attach`) once its datapath runs; until then the
//! collector reports nothing rather than zeros.
use std::{
    path::{Path, PathBuf},
    sync::Mutex,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};
use viking_common::{MAX_BACKENDS, MAX_BACKEND_SLOTS, MAX_CONNS, MAX_CONN_SLOTS, MAX_SERVICES};

use crate::datapath::{
    maps_dir, Datapath, DatapathError, ServiceStatus, ServiceTable, TrackedSockets,
};

/// The families this collector writes (with the registry's `viking_` prefix), for whoever
/// checks names against them (the Grafana dashboard's test).
pub const FAMILIES: [&str; 11] = [
    "viking_datapath_program_attached",
    "viking_datapath_read_ok",
    "viking_datapath_map_entries",
    "viking_datapath_map_capacity",
    "viking_datapath_sockets_past_table_total",
    "viking_service_connections_total",
    "viking_service_refused_connections_total",
    "viking_service_dropped_datagrams_total",
    "viking_service_backends",
    "viking_backend_connections_total",
    "viking_backend_active_connections",
];

/// Programs the agent attaches (their links pinned under `<bpffs>/links/`).
pub const PROGRAMS: usize = crate::datapath::PROGRAMS;

/// How often a read is tried again when a backend set was replaced under it.
const READ_TRIES: usize = 3;

struct Source {
    table: ServiceTable,
    bpffs: PathBuf,
}

/// A read-only view of one agent's pinned maps (its own handles on them).
#[derive(Default)]
pub struct DatapathView {
    source: Mutex<Option<Source>>,
}

impl std::fmt::Debug for DatapathView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatapathView")
    }
}

/// A per-service counter, read from a service's status.
type Counted = fn(&ServiceStatus) -> u64;

/// Map occupancy: (map, entries, capacity).
pub type Occupancy = Vec<(&'static str, u64, u64)>;

impl DatapathView {
    /// Opens the maps pinned under `bpffs` (the agent's running datapath).
    pub fn attach(&self, bpffs: &Path) -> Result<(), DatapathError> {
        let table = ServiceTable::open(&maps_dir(bpffs))?;
        let mut s = self.source.lock().unwrap_or_else(|e| e.into_inner());
        *s = Some(Source { table, bpffs: bpffs.to_owned() });
        Ok(())
    }

    /// Every service with its counters, or None before `attach`.
    pub fn services(&self) -> Option<Result<Vec<ServiceStatus>, DatapathError>> {
        let s = self.source.lock().unwrap_or_else(|e| e.into_inner());
        let src = s.as_ref()?;
        let mut last = None;
        for _ in 0..READ_TRIES {
            match src.table.list() {
                Ok(l) => return Some(Ok(l)),
                // NB: a backend set retired between reading a service and its slots.
                Err(e) => last = Some(e),
            }
        }
        last.map(Err)
    }

    /// The redirected sockets tracked, or None before `attach`.
    pub fn sockets(&self) -> Option<Result<TrackedSockets, DatapathError>> {
        let s = self.source.lock().unwrap_or_else(|e| e.into_inner());
        s.as_ref().map(|src| src.table.sockets())
    }

    /// Each program and whether its link is pinned, or None before `attach`.
    pub fn programs(&self) -> Option<Vec<(&'static str, bool)>> {
        let s = self.source.lock().unwrap_or_else(|e| e.into_inner());
        s.as_ref().map(|src| Datapath::programs_pinned(&src.bpffs))
    }
}

/// How full the maps are, from a listing of the services and the sockets tracked (if read).
pub fn occupancy(services: &[ServiceStatus], sockets: Option<&TrackedSockets>) -> Occupancy {
    let backends: u64 = services.iter().map(|s| s.backends.len() as u64).sum();
    let mut o = vec![
        ("services", services.len() as u64, u64::from(MAX_SERVICES)),
        ("backends", backends, u64::from(MAX_BACKENDS)),
        ("backend_slots", backends, u64::from(MAX_BACKEND_SLOTS)),
    ];
    if let Some(s) = sockets {
        o.push(("sockets", s.tracked, u64::from(MAX_CONN_SLOTS + MAX_CONNS)));
    }
    o
}

fn service_labels(s: &ServiceStatus) -> Vec<(&'static str, String)> {
    let mut l = vec![
        ("service", s.name.clone()),
        ("frontend", s.frontend.addr.to_string()),
        ("proto", s.frontend.proto.to_string()),
    ];
    if s.frontend.netns != 0 {
        l.push(("netns", s.frontend.netns.to_string()));
    }
    l
}

impl Collector for DatapathView {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(programs) = self.programs() else { return Ok(()) };
        let mut e = encoder.encode_descriptor(
            "datapath_program_attached",
            "1 while the program's link is pinned (attached to the agent's cgroup).",
            None,
            MetricType::Gauge,
        )?;
        for (name, pinned) in programs {
            ConstGauge::new(i64::from(pinned)).encode(e.encode_family(&[("program", name)])?)?;
        }
        let read = match self.services() {
            Some(r) => r,
            None => return Ok(()),
        };
        let mut e = encoder.encode_descriptor(
            "datapath_read_ok",
            "1 when this scrape could read the service table from the pinned maps.",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(read.is_ok()))
            .encode(e.encode_family(&[("map", "SERVICES")])?)?;
        let services = match read {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading the service table for /metrics");
                return Ok(());
            }
        };
        let sockets = self.sockets().and_then(Result::ok);
        let occupancy = occupancy(&services, sockets.as_ref());
        let mut e = encoder.encode_descriptor(
            "datapath_map_entries",
            "Entries in use in the datapath's maps.",
            None,
            MetricType::Gauge,
        )?;
        for (map, n, _) in &occupancy {
            ConstGauge::new(*n as i64).encode(e.encode_family(&[("map", *map)])?)?;
        }
        let mut e = encoder.encode_descriptor(
            "datapath_map_capacity",
            "Entries the datapath's maps can hold (the limits).",
            None,
            MetricType::Gauge,
        )?;
        for (map, _, cap) in &occupancy {
            ConstGauge::new(*cap as i64).encode(e.encode_family(&[("map", *map)])?)?;
        }

        if let Some(s) = &sockets {
            let mut e = encoder.encode_descriptor(
                "datapath_sockets_past_table",
                "Redirected sockets that found the socket table (CONNS) full: their state went \
                 to their socket storage, which costs their connect more.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(s.past_table).encode(e.encode_family(&[("map", "CONNS")])?)?;
        }

        let labels: Vec<_> = services.iter().map(service_labels).collect();
        let per_service: [(&str, &str, Counted); 3] = [
            ("service_connections", "Connections the datapath sent to a backend.", |s| s.conns),
            (
                "service_refused_connections",
                "Connects refused because the service had no backend.",
                |s| s.rejects,
            ),
            (
                "service_dropped_datagrams",
                "Unconnected UDP datagrams dropped because the service had no backend.",
                |s| s.drops,
            ),
        ];
        for (name, help, value) in per_service {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (s, l) in services.iter().zip(&labels) {
                ConstCounter::new(value(s)).encode(e.encode_family(l)?)?;
            }
        }
        let mut e = encoder.encode_descriptor(
            "service_backends",
            "Backends the service has.",
            None,
            MetricType::Gauge,
        )?;
        for (s, l) in services.iter().zip(&labels) {
            ConstGauge::new(s.backends.len() as i64).encode(e.encode_family(l)?)?;
        }

        let mut backend_labels = Vec::new();
        for (s, l) in services.iter().zip(&labels) {
            for b in &s.backends {
                let mut bl = l.clone();
                bl.push(("backend", b.addr.to_string()));
                backend_labels.push((b, bl));
            }
        }
        let mut e = encoder.encode_descriptor(
            "backend_connections",
            "Connections the datapath sent to this backend.",
            None,
            MetricType::Counter,
        )?;
        for (b, l) in &backend_labels {
            ConstCounter::new(b.total).encode(e.encode_family(l)?)?;
        }
        let mut e = encoder.encode_descriptor(
            "backend_active_connections",
            "Established TCP connections to this backend not yet closed.",
            None,
            MetricType::Gauge,
        )?;
        for (b, l) in &backend_labels {
            ConstGauge::new(b.active as i64).encode(e.encode_family(l)?)?;
        }
        Ok(())
    }
}
