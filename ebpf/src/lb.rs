//! Service lookup and backend selection: the part every hook shares.
use core::ffi::c_void;

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_loop};
use viking_common::{
    algo, is_v4_mapped, Addr, Backend, BackendKey, ServiceKey, ServiceStats, ServiceValue,
    LEAST_CONN_SCAN,
};

use crate::{
    health,
    maps::{
        BACKENDS, BACKEND_ACTIVE, BACKEND_TOTAL, PORTS, RR_STATE, SCOPED, SERVICES, SERVICE_STATS,
    },
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
    // NB: most connects on a host are to no service at all: a port no service uses ends here,
    // on an inlined array load instead of a hash lookup.
    if PORTS.get(u32::from(port)).is_none_or(|n| *n == 0) {
        return Verdict::Pass;
    }
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

/// The backend for a new connection.
///
/// One scan serves every algorithm: up to `LEAST_CONN_SCAN` slots from a start, each scored,
/// the lowest score wins. Least connections starts at a random slot and scores by active
/// connections; round robin and random start at the algorithm's choice, which scores 0 and
/// ends the scan at once when it is in rotation (the usual case: one slot looked at), else the
/// others score at random. An ejected backend scores above every backend in rotation, so it
/// is chosen only when all are ejected: a service that may be healthy is never refused.
#[inline(always)]
fn pick(svc: &ServiceValue) -> Option<Backend> {
    let count = svc.count;
    if count == 0 {
        return None;
    }
    let start = match svc.algo {
        algo::ROUND_ROBIN => {
            let pos = RR_STATE.get_ptr_mut(svc.id)?;
            // SAFETY: per-CPU slot, only this CPU writes it.
            unsafe {
                let next = *pos;
                *pos = next.wrapping_add(1);
                next % count
            }
        }
        _ => rand() % count,
    };
    // The clock, read only if a backend looked at was ejected.
    let mut now = 0;
    if svc.algo != algo::LEAST_CONN {
        // The usual case: the algorithm's choice is in rotation; no scan, no clock.
        let first = backend(svc.set, start)?;
        if health::eligible(first.id, &mut now) {
            health::claim(first.id, &mut now);
            return Some(first);
        }
    }
    let mut scan = Scan {
        set: svc.set,
        count,
        start,
        least: u32::from(svc.algo == algo::LEAST_CONN),
        now,
        best_slot: u32::MAX,
        _pad: 0,
        best_score: u64::MAX,
    };
    let n = if count < LEAST_CONN_SCAN { count } else { LEAST_CONN_SCAN };
    // NB: bpf_loop (Linux 5.17+) has the verifier walk the scan's body once, not once per
    // slot and per path through the body (which ran past its million-instruction limit).
    // SAFETY: `scan_slot` has the callback's signature; `scan` outlives the call.
    unsafe { bpf_loop(n, scan_slot as *mut c_void, (&raw mut scan).cast(), 0) };
    if scan.best_slot == u32::MAX {
        return None;
    }
    let b = backend(svc.set, scan.best_slot)?;
    if scan.best_score & EJECTED == 0 {
        health::claim(b.id, &mut scan.now);
    }
    Some(b)
}

/// Ejected backends rank after every backend in rotation.
const EJECTED: u64 = 1 << 63;

/// The state of one `pick` scan, on the stack of the program.
#[repr(C)]
struct Scan {
    set: u32,
    count: u32,
    start: u32,
    least: u32,
    now: u64,
    best_slot: u32,
    _pad: u32,
    best_score: u64,
}

/// One slot of the scan (the `bpf_loop` callback): 1 stops the scan.
extern "C" fn scan_slot(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Scan` that `pick` handed to bpf_loop.
    let s = unsafe { &mut *ctx.cast::<Scan>() };
    let i = i as u32;
    if s.count == 0 {
        return 1;
    }
    let slot = (s.start + i) % s.count;
    let Some(b) = backend(s.set, slot) else {
        return 0;
    };
    let eligible = health::eligible(b.id, &mut s.now);
    let mut score = if s.least != 0 {
        BACKEND_ACTIVE.get(b.id).copied().unwrap_or(0)
    } else if i == 0 {
        0
    } else {
        u64::from(rand() & 0xffff) + 1
    };
    if !eligible {
        score |= EJECTED;
    }
    if score < s.best_score {
        s.best_score = score;
        s.best_slot = slot;
    }
    i64::from(s.least == 0 && i == 0 && eligible)
}

/// Adds `delta` (wrapping: `u64::MAX` is -1) to the open connections of backend `id`.
#[inline(always)]
pub fn active(id: u32, delta: u64) {
    if let Some(p) = BACKEND_ACTIVE.get_ptr_mut(id) {
        // SAFETY: an array slot shared by all CPUs.
        health::add(unsafe { &mut *p }, delta);
    }
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
