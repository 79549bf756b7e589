//! Compare-and-swap loops: how many times to try, and a short random pause between tries so
//! that writers racing for one key spread out.
use std::time::Duration;

use super::ClusterError;

/// Attempts before a CAS loop gives up. Each lost attempt means another writer succeeded, so
/// reaching it means sustained contention, not a stuck store.
pub(crate) const MAX_ATTEMPTS: u32 = 2_000;

pub(crate) struct Attempts {
    n: u32,
    what: String,
}

impl Attempts {
    pub(crate) fn new(what: impl Into<String>) -> Self {
        Self { n: 0, what: what.into() }
    }

    /// Call after losing a race: pauses briefly, or fails after `MAX_ATTEMPTS`.
    pub(crate) async fn lost(&mut self) -> Result<(), ClusterError> {
        self.n += 1;
        if self.n >= MAX_ATTEMPTS {
            return Err(ClusterError::Contention { what: self.what.clone(), attempts: self.n });
        }
        // NB: a lost compare-and-swap means another writer won, so there is no livelock to
        // break: retry at once at first; spread out only under sustained contention.
        let spread = 250u64 << self.n.min(6);
        tokio::time::sleep(Duration::from_micros(jitter(spread))).await;
        Ok(())
    }
}

/// A number in 0..max from the clock's low bits and a per-process random seed; enough to
/// de-synchronise racing writers.
fn jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    if max == 0 {
        return 0;
    }
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish() % max
}
