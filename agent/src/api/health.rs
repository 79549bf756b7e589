//! Probes and metrics, served without the token: `/v1/ready` (programs attached, store
//! reachable, first sync done; 503 until all hold) and `/metrics` (Prometheus text format).
//! `/v1/health` (alive) is in `server.rs`.
use std::{sync::Arc, time::Duration};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};

use super::state::ApiState;
use crate::{metrics, store::Store};

/// How long the store may take to answer a probe before it counts as unreachable.
pub const STORE_PROBE: Duration = Duration::from_secs(2);

/// The store as a probe found it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreHealth {
    /// `etcd 127.0.0.1:2379`, `embedded /var/lib/viking/store`.
    pub store: String,
    pub ok: bool,
    /// How long the probe (a revision read) took.
    pub latency_ms: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads the store's revision, within `STORE_PROBE`.
pub async fn probe_store<S: Store>(store: &S) -> StoreHealth {
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(STORE_PROBE, store.revision()).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1e3;
    let (revision, error) = match r {
        Ok(Ok(rev)) => (Some(rev), None),
        Ok(Err(e)) => (None, Some(e.to_string())),
        Err(_) => (None, Some(format!("no answer within {STORE_PROBE:?}"))),
    };
    StoreHealth { store: store.describe(), ok: error.is_none(), latency_ms, revision, error }
}

/// One readiness condition.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// The answer of `/v1/ready`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    pub checks: Vec<Check>,
}

/// Whether this agent serves its purpose: its programs are attached, its store answers (and
/// its last calls did not fail: `health`, the store's own signal), and its datapath has been
/// programmed from the store at least once.
pub async fn readiness<S: Store>(store: &S, health: &crate::store::HealthSignal) -> Readiness {
    let m = metrics::global();
    let programs = match m.datapath.programs() {
        None => Check { name: "programs".into(), ok: false, detail: "datapath not started".into() },
        Some(list) => {
            let missing: Vec<&str> = list.iter().filter(|(_, p)| !p).map(|(n, _)| *n).collect();
            Check {
                name: "programs".into(),
                ok: missing.is_empty(),
                detail: if missing.is_empty() {
                    format!("{} attached", list.len())
                } else {
                    format!("not attached: {}", missing.join(", "))
                },
            }
        }
    };
    let s = probe_store(store).await;
    let signal = health.get();
    let store = Check {
        name: "store".into(),
        ok: s.ok && signal.healthy,
        detail: match (&s.error, &signal.error) {
            (Some(e), _) => format!("{}: {e}", s.store),
            (None, Some(e)) if !signal.healthy => {
                format!("{}: failing since {}: {e}", s.store, signal.since)
            }
            _ => format!("{} answered in {:.1} ms", s.store, s.latency_ms),
        },
    };
    let synced = m.discovery.synced();
    let sync = Check {
        name: "sync".into(),
        ok: synced,
        detail: if synced {
            "datapath programmed from the store".into()
        } else {
            "first sync not done".into()
        },
    };
    let checks = vec![programs, store, sync];
    Readiness { ready: checks.iter().all(|c| c.ok), checks }
}

pub async fn ready<S: Store>(State(st): State<Arc<ApiState<S>>>) -> Response {
    let r = readiness(&st.store, &st.store_health).await;
    let status = if r.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r)).into_response()
}

pub async fn metrics() -> Response {
    // NB: reading the pinned maps is a syscall per entry: off the async threads.
    match tokio::task::spawn_blocking(|| metrics::global().encode()).await {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "encoding the metrics failed").into_response(),
    }
}
