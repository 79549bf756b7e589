//! The DNS responder: whether it serves, and why not (`viking status`, `viking_names_up`).
use std::sync::{Arc, Mutex};

use prometheus_client::{metrics::gauge::Gauge, registry::Registry};
use serde::{Deserialize, Serialize};

/// What the responder is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "detail", rename_all = "snake_case")]
pub enum NamesState {
    /// `--dns-listen off`, or the agent has not got to it yet.
    #[default]
    Off,
    /// Answering on this address.
    Serving(String),
    /// It could not start, or it stopped: why.
    Failed(String),
}

#[derive(Debug, Clone, Default)]
pub struct NamesMetrics {
    up: Gauge,
    state: Arc<Mutex<NamesState>>,
}

impl NamesMetrics {
    pub(super) fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "up",
            "1 while the DNS responder answers, 0 when it is off or failed (viking status says why)",
            m.up.clone(),
        );
        m
    }

    pub fn serving(&self, listen: impl ToString) {
        self.set(NamesState::Serving(listen.to_string()));
    }

    pub fn failed(&self, why: impl ToString) {
        self.set(NamesState::Failed(why.to_string()));
    }

    pub fn state(&self) -> NamesState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set(&self, s: NamesState) {
        self.up.set(i64::from(matches!(s, NamesState::Serving(_))));
        if let Ok(mut g) = self.state.lock() {
            *g = s;
        }
    }
}
