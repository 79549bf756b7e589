//! `GET /v1/status`: one screen on this host (`viking status`): who it is, who leads, the
//! members, the store's health, the datapath (programs, services, backends, map use), the
//! last sync and its lag, this host's instances by state, the DNS responder, and readiness.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{extract::State, response::IntoResponse as _, response::Response, Json};
use serde::{Deserialize, Serialize};

use super::{
    health::{probe_store, readiness, Check, StoreHealth},
    state::{ApiError, ApiState},
    LeaderInfo,
};
use crate::{
    cluster::{leader, membership},
    metrics,
    store::Store,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub address: IpAddr,
    pub load: u32,
    pub tags: Vec<String>,
    pub leader: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MapUse {
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DatapathStatus {
    pub programs_attached: usize,
    pub programs: usize,
    pub services: usize,
    pub backends: usize,
    /// Connections sent to backends and refused, summed over services.
    pub connections: u64,
    pub refused: u64,
    pub maps: Vec<MapUse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncStatus {
    /// The first sync is done.
    pub synced: bool,
    /// How long the last change waited to be programmed.
    pub last_lag_ms: Option<f64>,
    /// Seconds since the datapath last matched the store.
    pub last_sync_ago_s: Option<f64>,
}

/// The answer of `/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub node: String,
    pub version: String,
    pub address: IpAddr,
    pub api: String,
    pub tls: bool,
    pub uptime_s: u64,
    pub leading: bool,
    pub leader: Option<LeaderInfo>,
    pub members: Vec<Member>,
    pub store: StoreHealth,
    pub datapath: DatapathStatus,
    pub sync: SyncStatus,
    /// This host's instances by state.
    pub instances: BTreeMap<String, i64>,
    /// The DNS responder (absent from agents before it was shown).
    #[serde(default)]
    pub names: metrics::NamesState,
    pub ready: bool,
    pub checks: Vec<Check>,
}

fn datapath() -> DatapathStatus {
    let m = metrics::global();
    let mut d = DatapathStatus { programs: metrics::PROGRAMS, ..Default::default() };
    if let Some(p) = m.datapath.programs() {
        d.programs_attached = p.iter().filter(|(_, ok)| *ok).count();
    }
    match m.datapath.services() {
        None => d.error = Some("datapath not started".into()),
        Some(Err(e)) => d.error = Some(e.to_string()),
        Some(Ok(services)) => {
            d.services = services.len();
            d.backends = services.iter().map(|s| s.backends.len()).sum();
            d.connections = services.iter().map(|s| s.conns).sum();
            d.refused = services.iter().map(|s| s.rejects).sum();
            let sockets = m.datapath.sockets().and_then(Result::ok);
            d.maps = metrics::datapath_occupancy(&services, sockets.as_ref())
                .into_iter()
                .map(|(map, entries, capacity)| MapUse { map: map.into(), entries, capacity })
                .collect();
        }
    }
    d
}

/// Gathers the status; a store that does not answer shows in `store` (and leaves the leader
/// and members empty) rather than failing the whole answer.
pub async fn gather<S: Store>(st: &ApiState<S>) -> AgentStatus {
    let store = probe_store(&st.store).await;
    let leader: Option<LeaderInfo> = match leader::leader(&st.store).await {
        Ok(v) => v.and_then(|v| serde_json::from_str(&v).ok()),
        Err(_) => None,
    };
    let members = membership::hosts(&st.store)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|h| Member {
            leader: leader.as_ref().is_some_and(|l| l.node == h.info.name),
            name: h.info.name,
            address: h.info.address,
            load: h.info.load,
            tags: h.info.tags,
        })
        .collect();
    let m = metrics::global();
    let (lag, at) = m.discovery.last();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let sync = SyncStatus {
        synced: m.discovery.synced(),
        last_lag_ms: lag.map(|l| l.as_secs_f64() * 1e3),
        last_sync_ago_s: at.map(|t| (now - t).max(0.0)),
    };
    let r = readiness(&st.store, &st.store_health).await;
    AgentStatus {
        node: st.node.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        address: st.local.address,
        api: st.local.api.clone(),
        tls: st.local.tls,
        uptime_s: st.local.started.elapsed().as_secs(),
        leading: *st.leading.borrow(),
        leader,
        members,
        store,
        datapath: datapath(),
        sync,
        instances: m
            .control
            .instance_counts()
            .into_iter()
            .map(|(s, n)| (s.to_owned(), n))
            .collect(),
        names: m.names.state(),
        ready: r.ready,
        checks: r.checks,
    }
}

pub async fn status<S: Store>(State(st): State<Arc<ApiState<S>>>) -> Result<Response, ApiError> {
    Ok(Json(gather(&st).await).into_response())
}
