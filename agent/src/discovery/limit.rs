//! A service with more registered backends than the datapath holds for one service
//! (`MAX_BACKENDS_PER_SERVICE`, 1,024) degrades predictably: the newest registrations (by the
//! store revision they were last written at) are programmed, the oldest are left out, and how
//! many were left out is written with the service (`viking services` shows it). A deleted
//! registration always leaves: the set is recomputed from the registrations that exist.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use crate::datapath::ServiceSpec;

/// Backends one service holds in the datapath.
pub const MAX: usize = viking_common::MAX_BACKENDS_PER_SERVICE as usize;

/// The backends of a service in the order a spec carries them: up to `MAX`, by address; more,
/// the `MAX` newest by address, then the rest newest first (the ones `cap` leaves out).
/// `candidates` may name an address more than once (two registrations): its newest counts.
pub fn order(candidates: impl IntoIterator<Item = (SocketAddr, i64)>) -> Vec<SocketAddr> {
    let mut newest: BTreeMap<SocketAddr, i64> = BTreeMap::new();
    for (addr, rev) in candidates {
        let r = newest.entry(addr).or_insert(rev);
        *r = (*r).max(rev);
    }
    if newest.len() <= MAX {
        return newest.into_keys().collect();
    }
    let mut by_age: Vec<(SocketAddr, i64)> = newest.into_iter().collect();
    // Newest first; equal revisions (one transaction) by address, so the choice is stable.
    by_age.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let rest = by_age.split_off(MAX);
    let kept: BTreeSet<SocketAddr> = by_age.into_iter().map(|(a, _)| a).collect();
    kept.into_iter().chain(rest.into_iter().map(|(a, _)| a)).collect()
}

/// The spec to program (its first `MAX` backends) and how many it leaves out.
pub fn cap(spec: &ServiceSpec) -> (std::borrow::Cow<'_, ServiceSpec>, usize) {
    if spec.backends.len() <= MAX {
        return (std::borrow::Cow::Borrowed(spec), 0);
    }
    let mut capped = spec.clone();
    let left_out = capped.backends.len() - MAX;
    capped.backends.truncate(MAX);
    (std::borrow::Cow::Owned(capped), left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 80))
    }

    #[test]
    fn under_the_limit_by_address() {
        let got = order([(addr(3), 9), (addr(1), 1), (addr(2), 5), (addr(1), 7)]);
        assert_eq!(got, vec![addr(1), addr(2), addr(3)]);
    }

    #[test]
    fn over_the_limit_the_newest_win() {
        let n = MAX + 500;
        // Registration i written at revision i: the newest are the highest.
        let got = order((0..n).map(|i| (addr(i), i as i64)));
        assert_eq!(got.len(), n);
        let kept: BTreeSet<SocketAddr> = got[..MAX].iter().copied().collect();
        let want: BTreeSet<SocketAddr> = (500..n).map(addr).collect();
        assert_eq!(kept, want);
        assert!(got[..MAX].windows(2).all(|w| w[0] < w[1]), "the kept ones by address");
        assert_eq!(got[MAX], addr(499), "then the rest, newest first");
        let spec = ServiceSpec {
            name: "s".into(),
            frontend: crate::datapath::Frontend {
                addr: "127.0.0.1:20000".parse().unwrap(),
                proto: crate::datapath::Proto::Tcp,
                netns: 0,
            },
            algo: crate::datapath::Algo::Random,
            backends: got,
            ejection: Default::default(),
            end_tcp: false,
        };
        let (capped, left_out) = cap(&spec);
        assert_eq!((capped.backends.len(), left_out), (MAX, 500));
    }
}
