//! The state of each redirected connected socket (TCP, connected UDP), kept by socket cookie
//! in the preallocated hash `CONNS`, and deleted at the socket's release.
//!
//! NB: socket storage (`SOCKS`) did the same job, but creating a socket's storage allocates
//! and takes two locks: 60% of a redirected connect4. A preallocated hash element costs a
//! cookie and a lock-free-list pop. Finding it again needs the cookie, which the kernel makes
//! on first use, for any socket that asks: `CONN_PORTS` (how many tracked sockets are
//! connected to each port) keeps every other socket from asking. When `CONNS` is full a
//! socket gets storage instead (`SOCKS`), as before; lookups try both.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_socket_cookie, bpf_sk_storage_get},
};
use viking_common::{conn_stats, sock, SockState, SKC_DPORT_OFFSET};

use crate::{
    health,
    lb::active,
    maps::{socks_ptr, CONNS, CONN_PORTS, CONN_STATS},
};

const EEXIST: i32 = 17;

/// Records `st` for socket `cookie`. A socket connecting again replaces its state: its earlier
/// backend counts it no more. False when the table is full (nothing recorded).
#[inline(always)]
pub fn track(cookie: u64, st: &SockState) -> bool {
    match CONNS.insert(cookie, st, u64::from(BPF_NOEXIST)) {
        Ok(()) => ports(st.port, 1),
        Err(e) if e == -EEXIST => {
            let Some(p) = CONNS.get_ptr_mut(cookie) else {
                return false;
            };
            // SAFETY: this socket's entry; the socket is locked during connect().
            let old = unsafe { &mut *p };
            if old.flags & sock::COUNTED != 0 {
                active(old.backend, u64::MAX); // wrapping -1
            }
            if old.port != st.port {
                ports(old.port, u32::MAX);
                ports(st.port, 1);
            }
            *old = *st;
        }
        Err(_) => {
            past_table();
            return false;
        }
    }
    if st.flags & sock::COUNTED != 0 {
        active(st.backend, 1);
    }
    true
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
    // SAFETY: an entry of a preallocated hash, valid while the caller holds the socket.
    CONNS.get_ptr_mut(cookie).map(|p| unsafe { &mut *p })
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

/// Deletes the entry of socket `cookie` (at its release or its ending), connected to `port`.
#[inline(always)]
pub fn forget(cookie: u64, port: u16) {
    if CONNS.remove(cookie).is_ok() {
        ports(port, u32::MAX);
    }
}

/// Counts a socket that found the table full.
#[inline(always)]
fn past_table() {
    if let Some(n) = CONN_STATS.get_ptr_mut(conn_stats::PAST_TABLE) {
        // SAFETY: an array slot shared by all CPUs.
        health::add(unsafe { &mut *n }, 1);
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
