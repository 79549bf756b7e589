//! The state of each redirected connected socket (TCP, connected UDP), kept by socket cookie
//! and deleted at the socket's release.
//!
//! A socket's state goes first to its slot in `CONN_SLOTS` (its cookie modulo the slot
//! count): claimed by a compare-and-swap of the cookie, freed by its owner, no lock, no hash.
//! A socket whose slot another holds goes to the preallocated hash `CONNS`; when that is full
//! too, to its socket storage (`SOCKS`). Lookups try the three in that order.
//!
//! NB: socket storage alone did the job before, but creating a socket's storage allocates and
//! takes two locks: 60% of a redirected connect4; a `CONNS` insert and delete were still half
//! of the rest. Finding a slot again needs the cookie, which the kernel makes on first use,
//! for any socket that asks: `CONN_PORTS` (how many tracked sockets are connected to each
//! port) keeps every other socket from asking.
use core::{
    ffi::c_void,
    intrinsics::{atomic_cxchg, AtomicOrdering},
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_socket_cookie, bpf_sk_storage_get},
};
use viking_common::{conn_stats, sock, ConnSlot, SockState, MAX_CONN_SLOTS, SKC_DPORT_OFFSET};

use crate::{
    health,
    lb::active,
    maps::{socks_ptr, CONNS, CONN_FILL, CONN_PORTS, CONN_SLOTS, CONN_STATS},
};

const EEXIST: i32 = 17;

/// Records `st` for socket `cookie`. A socket connecting again replaces its state: its earlier
/// backend counts it no more. False when the slot is taken and the table full (nothing
/// recorded).
#[inline(always)]
pub fn track(cookie: u64, st: &SockState) -> bool {
    if let Some(slot) = slot(cookie) {
        // SAFETY: an aligned u64 inside a map value; the cookie is claimed atomically, so
        // two sockets of one slot cannot both take it.
        let (held, claimed) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                &raw mut (*slot).cookie,
                0,
                cookie,
            )
        };
        if claimed {
            // SAFETY: the slot is this socket's now; the socket is locked during connect().
            unsafe { (*slot).state = *st };
            fill(1);
            ports(st.port, 1);
            count(st);
            return true;
        }
        if held == cookie {
            // SAFETY: this socket's slot; the socket is locked during connect().
            replace(unsafe { &mut (*slot).state }, st);
            count(st);
            return true;
        }
    }
    match CONNS.insert(cookie, st, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            ports(st.port, 1);
            stat(conn_stats::HASHED, 1);
        }
        Err(e) if e == -EEXIST => {
            let Some(p) = CONNS.get_ptr_mut(cookie) else {
                return false;
            };
            // SAFETY: this socket's entry; the socket is locked during connect().
            replace(unsafe { &mut *p }, st);
        }
        Err(_) => {
            stat(conn_stats::PAST_TABLE, 1);
            return false;
        }
    }
    count(st);
    true
}

/// The socket's earlier state gives way to `st`: its backend counts it no more.
#[inline(always)]
fn replace(old: &mut SockState, st: &SockState) {
    if old.flags & sock::COUNTED != 0 {
        active(old.backend, u64::MAX); // wrapping -1
    }
    if old.port != st.port {
        ports(old.port, u32::MAX);
        ports(st.port, 1);
    }
    *old = *st;
}

/// The backend counts the socket, for least connections.
#[inline(always)]
fn count(st: &SockState) {
    if st.flags & sock::COUNTED != 0 {
        active(st.backend, 1);
    }
}

/// The slot of socket `cookie`.
#[inline(always)]
fn slot(cookie: u64) -> Option<*mut ConnSlot> {
    CONN_SLOTS.get_ptr_mut(cookie as u32 & (MAX_CONN_SLOTS - 1))
}

/// Whether a tracked socket may be connected to `port` (network order). Sockets to any other
/// port are none of ours: no cookie, no lookup.
#[inline(always)]
pub fn any_on(port: u16) -> bool {
    CONN_PORTS.get(u32::from(port)).is_some_and(|n| *n != 0)
}

/// The state of socket `cookie`, if it is tracked here.
///
/// # Safety
/// The caller holds the socket (its lock, or its last reference at release), so that no other
/// program writes the entry meanwhile.
#[inline(always)]
pub unsafe fn get(cookie: u64) -> Option<&'static mut SockState> {
    if let Some(slot) = slot(cookie) {
        // SAFETY: a slot this socket holds stays its own while the caller holds the socket.
        unsafe {
            if (*slot).cookie == cookie {
                return Some(&mut (*slot).state);
            }
        }
    }
    // SAFETY: as the caller promises.
    unsafe { get_hashed(cookie) }
}

/// The state of a kernel socket (`struct sock *` of a tracing or iterator program): in
/// `CONNS` with its cookie, if a tracked socket is connected to its destination port, else in
/// its storage (no cookie).
///
/// # Safety
/// `sk` is a socket the verifier knows by its BTF type, and the caller holds it (its lock,
/// or the iterator's reference), so that no other program writes the state meanwhile.
#[inline(always)]
pub unsafe fn of_sock(sk: *mut c_void) -> Option<(&'static mut SockState, Option<u64>)> {
    // SAFETY: a two-byte load inside `struct sock` (see `SKC_DPORT_OFFSET`).
    let port = unsafe { *sk.cast::<u8>().add(SKC_DPORT_OFFSET).cast::<u16>() };
    if any_on(port) {
        // SAFETY: a helper given the caller's socket.
        let cookie = unsafe { bpf_get_socket_cookie(sk) };
        // SAFETY: as the caller promises.
        if let Some(st) = unsafe { get(cookie) } {
            return Some((st, Some(cookie)));
        }
    }
    // SAFETY: a lookup (no create) of the socket's storage.
    let p = unsafe { bpf_sk_storage_get(socks_ptr(), sk, core::ptr::null_mut(), 0) };
    // SAFETY: the socket's storage, as the caller promises.
    unsafe { p.cast::<SockState>().as_mut() }.map(|st| (st, None))
}

/// Deletes the state of socket `cookie` (at its release or its ending), connected to `port`:
/// its slot, and its `CONNS` entry. A socket can have both: one that connected again after a
/// failed connect found its slot free the second time, taken the first (that entry is
/// uncounted here).
///
/// # Safety
/// As `get`.
#[inline(always)]
pub unsafe fn forget(cookie: u64, port: u16) {
    if let Some(slot) = slot(cookie) {
        // SAFETY: only the socket holding a slot frees it; others only read its cookie.
        unsafe {
            if (*slot).cookie == cookie {
                core::ptr::write_volatile(&raw mut (*slot).cookie, 0);
                fill(u64::MAX);
                ports(port, u32::MAX);
            }
        }
    }
    // SAFETY: as the caller promises.
    if let Some(st) = unsafe { get_hashed(cookie) } {
        if st.flags & sock::COUNTED != 0 {
            st.flags &= !sock::COUNTED;
            active(st.backend, u64::MAX); // wrapping -1
        }
        let port = st.port;
        if CONNS.remove(cookie).is_ok() {
            ports(port, u32::MAX);
            stat(conn_stats::HASHED, u64::MAX);
        }
    }
}

/// The state of socket `cookie` in `CONNS`, if any socket may be there at all.
///
/// # Safety
/// As `get`.
#[inline(always)]
pub unsafe fn get_hashed(cookie: u64) -> Option<&'static mut SockState> {
    if CONN_STATS.get(conn_stats::HASHED).is_some_and(|n| *n == 0) {
        return None;
    }
    // SAFETY: an entry of a preallocated hash, valid while the caller holds the socket.
    CONNS.get_ptr_mut(cookie).map(|p| unsafe { &mut *p })
}

/// Adds `delta` (wrapping) to this CPU's count of slots taken.
#[inline(always)]
fn fill(delta: u64) {
    if let Some(n) = CONN_FILL.get_ptr_mut(0) {
        // NB: atomic although per CPU: a program preempted here by another on this CPU would
        // lose an update, and the count would stay off. The line is this CPU's: no bouncing.
        // SAFETY: this CPU's slot of a per-CPU array.
        health::add(unsafe { &mut *n }, delta);
    }
}

/// Adds `delta` (wrapping) to the counter `CONN_STATS[i]`.
#[inline(always)]
fn stat(i: u32, delta: u64) {
    if let Some(n) = CONN_STATS.get_ptr_mut(i) {
        // SAFETY: an array slot shared by all CPUs.
        health::add(unsafe { &mut *n }, delta);
    }
}

/// Adds `delta` (wrapping) to the tracked sockets connected to `port`.
#[inline(always)]
fn ports(port: u16, delta: u32) {
    if let Some(n) = CONN_PORTS.get_ptr_mut(u32::from(port)) {
        // SAFETY: an array slot shared by all CPUs.
        health::add32(unsafe { &mut *n }, delta);
    }
}
