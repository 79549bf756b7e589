//! Service lookup and backend selection: the part every hook shares.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use viking_common::{
    algo, is_v4_mapped, Addr, Backend, BackendKey, ServiceKey, ServiceStats, ServiceValue,
    LEAST_CONN_SCAN,
};

use crate::maps::{
    BACKENDS, BACKEND_ACTIVE, BACKEND_TOTAL, RR_STATE, SCOPED, SERVICES, SERVICE_STATS,
};

/// What the service table says about a destination.
pub enum Verdict {
    /// Not a service: leave the socket alone.
    Pass,
    /// A service (this id) with no usable backend: refuse.
    Refuse(u32),
    /// Send it here.
    Backend { service: u32, backend: Backend },
}

/// Looks the destination up, first as a service of the caller's network namespace (only while
/// any netns-scoped service exists: `netns` is asked only then), then as a service of every
/// namespace, and picks a backend.
#[inline(always)]
pub fn select(
    addr: Addr,
    port: u16,
    proto: u8,
    netns: impl FnOnce() -> u64,
    v4_only: bool,
) -> Verdict {
    let mut key = ServiceKey { addr, port, proto, _pad: [0; 5], netns: 0 };
    let mut svc: Option<ServiceValue> = None;
    if SCOPED.get(0).is_some_and(|n| *n != 0) {
        key.netns = netns();
        // SAFETY: the value is copied out at once; SERVICES is not preallocated (see maps.rs).
        svc = unsafe { SERVICES.get(key) }.copied();
        key.netns = 0;
    }
    if svc.is_none() {
        svc = unsafe { SERVICES.get(key) }.copied();
    }
    let Some(svc) = svc else {
        return Verdict::Pass;
    };
    let Some(backend) = pick(&svc) else {
        return Verdict::Refuse(svc.id);
    };
    if v4_only && !is_v4_mapped(&backend.addr) {
        // NB: a v4 socket cannot reach a v6 backend; refusing beats a silent wrong address.
        return Verdict::Refuse(svc.id);
    }
    count(svc.id, |s| s.conns += 1);
    if let Some(total) = BACKEND_TOTAL.get_ptr_mut(backend.id) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *total += 1 };
    }
    Verdict::Backend { service: svc.id, backend }
}

#[inline(always)]
pub fn count(service: u32, f: impl FnOnce(&mut ServiceStats)) {
    if let Some(stats) = SERVICE_STATS.get_ptr_mut(service) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        f(unsafe { &mut *stats });
    }
}

#[inline(always)]
fn pick(svc: &ServiceValue) -> Option<Backend> {
    let count = svc.count;
    if count == 0 {
        return None;
    }
    let slot = match svc.algo {
        algo::ROUND_ROBIN => {
            let pos = RR_STATE.get_ptr_mut(svc.id)?;
            // SAFETY: per-CPU slot, only this CPU writes it.
            unsafe {
                let next = *pos;
                *pos = next.wrapping_add(1);
                next % count
            }
        }
        algo::LEAST_CONN => return least_conn(svc),
        _ => rand() % count,
    };
    backend(svc.set, slot)
}

/// The least-loaded backend among up to `LEAST_CONN_SCAN` slots from a random start; ties go
/// to the first seen, so equal backends share new connections at random.
#[inline(always)]
fn least_conn(svc: &ServiceValue) -> Option<Backend> {
    let count = svc.count;
    let start = rand() % count;
    // NB: the winner is kept as a slot number, not an `Option<Backend>`: the undefined payload
    // of a `None` can reach the verifier as a read of an uninitialised register.
    let mut best_slot = u32::MAX;
    let mut best_active = u64::MAX;
    for i in 0..LEAST_CONN_SCAN {
        if i >= count {
            break;
        }
        let slot = (start + i) % count;
        let Some(b) = backend(svc.set, slot) else {
            continue;
        };
        let active = BACKEND_ACTIVE.get(b.id).copied().unwrap_or(0);
        if active < best_active {
            best_active = active;
            best_slot = slot;
        }
    }
    if best_slot == u32::MAX {
        return None;
    }
    backend(svc.set, best_slot)
}

#[inline(always)]
fn backend(set: u32, slot: u32) -> Option<Backend> {
    // SAFETY: copied out at once; BACKENDS is not preallocated.
    unsafe { BACKENDS.get(BackendKey { set, slot }) }.copied()
}

#[inline(always)]
fn rand() -> u32 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_get_prandom_u32() }
}
