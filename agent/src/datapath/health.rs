//! Passive health as the agent reads it: backend states for `viking services`, and the
//! service's ejection settings in their kernel form (`HEALTH_CONFIG`).
use std::fmt;

use serde::Serialize;
use viking_common::{BackendHealth, HealthConfig};

use super::spec::Ejection;

/// Where a backend stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// In rotation.
    Ok,
    /// Out of selection until its backoff ends.
    Ejected,
    /// Its backoff ended: back in rotation, one connect at a time until one succeeds.
    Probing,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ok => "ok",
            Self::Ejected => "ejected",
            Self::Probing => "probing",
        })
    }
}

/// CLOCK_MONOTONIC, the clock of the programs' deadlines. NB: precise, not coarse: selection
/// reads the coarse clock (up to a tick behind), the tracing programs the precise one, so a
/// deadline read against the precise clock never shows more than its backoff left.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// A backend's state at `now`, and the milliseconds its ejection has left.
pub fn state(h: &BackendHealth, now: u64) -> (Health, u64) {
    if h.until_ns == 0 {
        (Health::Ok, 0)
    } else if now < h.until_ns {
        (Health::Ejected, (h.until_ns - now).div_ceil(1_000_000))
    } else {
        (Health::Probing, 0)
    }
}

pub fn config_of(e: &Ejection, end_tcp: bool) -> HealthConfig {
    HealthConfig {
        after: e.after,
        backoff_ms: e.backoff_ms,
        max_backoff_ms: e.max_backoff_ms,
        end_tcp: u32::from(end_tcp),
    }
}

pub fn ejection_of(c: &HealthConfig) -> Ejection {
    Ejection { after: c.after, backoff_ms: c.backoff_ms, max_backoff_ms: c.max_backoff_ms }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_follow_the_clock() {
        let mut h = BackendHealth::default();
        assert_eq!(state(&h, 5), (Health::Ok, 0));
        h.until_ns = 2_500_000_000;
        assert_eq!(state(&h, 1_000_000_000), (Health::Ejected, 1_500));
        assert_eq!(state(&h, 3_000_000_000), (Health::Probing, 0));
    }

    #[test]
    fn settings_round_trip_through_the_kernel_form() {
        let e = Ejection { after: 4, backoff_ms: 250, max_backoff_ms: 8_000 };
        let c = config_of(&e, true);
        assert_eq!(c.end_tcp, 1);
        assert_eq!(ejection_of(&c), e);
    }
}
