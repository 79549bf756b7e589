//! Passive health: connects that fail count against their backend; after `after` of them in
//! a row it leaves selection for a backoff that doubles while it keeps failing, and comes back
//! on its first success. All in the kernel, decided on the socket's own callbacks.
//!
//! Selection reads `BACKEND_HEALTH` (an inlined array load; the clock only when the backend
//! was ejected). Each redirected TCP socket's outcome is reported once: `failed` by the
//! kernel's TCP events (outcome.rs: RST to the SYN, SYN retransmitted, ICMP error while
//! connecting) or by its release while still connecting, else `succeeded` at its release.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use viking_common::{sock, BackendHealth, HealthConfig, SockState, PROBE_NS};

use crate::maps::{BACKEND_HEALTH, HEALTH_CONFIG, SERVICE_HEALTH};

/// CLOCK_MONOTONIC at tick resolution (a few ms, plenty for ejections; cheaper to read).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// CLOCK_MONOTONIC, precise: for tracing programs, which may not read the coarse clock. The
/// two differ by less than a tick, which an ejection's length does not notice.
#[inline(always)]
pub fn precise_now() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Whether new connections may go to backend `id`: in rotation, or its ejection is over and
/// no probe is out. Does not claim the probe (see `claim`). `now` is read from the clock only
/// for a backend that was ejected (0 until then), once per selection.
#[inline(always)]
pub fn eligible(id: u32, now: &mut u64) -> bool {
    let Some(h) = BACKEND_HEALTH.get(id) else {
        return true;
    };
    if h.until_ns == 0 {
        return true;
    }
    if *now == 0 {
        *now = self::now();
    }
    *now >= h.until_ns && *now >= h.probe_ns
}

/// Called for the backend chosen: if its ejection just ended, this connect is the probe, and
/// the others keep away from it until the probe has had time to answer.
#[inline(always)]
pub fn claim(id: u32, now: &mut u64) {
    if let Some(h) = BACKEND_HEALTH.get_ptr_mut(id) {
        // SAFETY: an array slot; racing writers at worst let two probes through.
        unsafe {
            if (*h).until_ns != 0 {
                if *now == 0 {
                    *now = self::now();
                }
                (*h).probe_ns = *now + PROBE_NS;
            }
        }
    }
}

/// The backend's ejection generation, recorded with the socket.
#[inline(always)]
pub fn gen(id: u32) -> u32 {
    BACKEND_HEALTH.get(id).map_or(0, |h| h.gen)
}

/// The socket's connect succeeded (known at its release): its backend is healthy again,
/// if the socket was sent within the backend's current ejection generation (a connection
/// from before an ejection that closes now says nothing about the backend now).
#[inline(always)]
pub fn succeeded(st: &mut SockState) {
    st.flags |= sock::ESTABLISHED;
    let Some(h) = BACKEND_HEALTH.get_ptr_mut(st.backend) else {
        return;
    };
    // SAFETY: an array slot; plain stores (see `failed` on races).
    let h = unsafe { &mut *h };
    if h.gen != st.gen {
        return;
    }
    // NB: only written when there is something to clear, so that healthy backends' cache
    // lines are not bounced between CPUs on every connection.
    if h.fails != 0 || h.level != 0 || h.until_ns != 0 {
        h.fails = 0;
        h.level = 0;
        h.until_ns = 0;
        h.probe_ns = 0;
    }
}

/// The socket's connect failed. Counted once per socket, and against the backend only within
/// the ejection generation it was sent in (sockets sent before an ejection do not extend it).
/// `clock` is `now` or, in tracing programs, `precise_now`.
#[inline(always)]
pub fn failed(st: &mut SockState, clock: fn() -> u64) {
    if st.flags & (sock::FAILED | sock::ESTABLISHED) != 0 {
        return;
    }
    st.flags |= sock::FAILED;
    let Some(h) = BACKEND_HEALTH.get_ptr_mut(st.backend) else {
        return;
    };
    // NB: concurrent failures on several CPUs race on the plain fields; the worst outcome is
    // an ejection counted twice or a backoff doubled once more. The counters are atomic.
    // SAFETY: an array slot shared by all CPUs.
    let h = unsafe { &mut *h };
    add(&mut h.failures, 1);
    if let Some(s) = SERVICE_HEALTH.get_ptr_mut(st.service) {
        // SAFETY: as above.
        add(unsafe { &mut (*s).failures }, 1);
    }
    let Some(cfg) = HEALTH_CONFIG.get(st.service) else {
        return;
    };
    if cfg.after == 0 || h.gen != st.gen {
        return;
    }
    let now = clock();
    if h.level > 0 {
        // Ejected before and not back yet: a failure after the ejection ended (the probe)
        // sends it out again for twice as long. One while it was still ejected (every backend
        // ejected, so all were tried) says nothing new.
        if now >= h.until_ns {
            eject(h, st.service, cfg, now, h.level + 1);
        }
        return;
    }
    add(&mut h.fails, 1);
    if h.fails >= u64::from(cfg.after) {
        eject(h, st.service, cfg, now, 1);
    }
}

#[inline(always)]
fn eject(h: &mut BackendHealth, service: u32, cfg: &HealthConfig, now: u64, level: u32) {
    let shift = if level > 17 { 16 } else { level - 1 };
    let max = u64::from(cfg.max_backoff_ms) * 1_000_000;
    let mut ns = (u64::from(cfg.backoff_ms) * 1_000_000) << shift;
    if ns > max {
        ns = max;
    }
    h.level = level;
    h.until_ns = now + ns;
    h.probe_ns = 0;
    h.fails = 0;
    h.gen = h.gen.wrapping_add(1);
    add(&mut h.ejections, 1);
    if let Some(s) = SERVICE_HEALTH.get_ptr_mut(service) {
        // SAFETY: an array slot shared by all CPUs.
        add(unsafe { &mut (*s).ejections }, 1);
    }
}

#[inline(always)]
pub fn add(p: &mut u64, delta: u64) {
    // NB: the BPF target has no compare-and-swap, so core's atomics offer no fetch_add; the
    // intrinsic lowers to the BPF atomic add instruction.
    // SAFETY: an aligned u64 inside a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
}

/// `add` for a u32 counter.
#[inline(always)]
pub fn add32(p: &mut u32, delta: u32) {
    // SAFETY: an aligned u32 inside a map value.
    unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(p, delta) };
}
