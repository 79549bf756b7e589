//! The state of each redirected connected socket (TCP, connected UDP), kept by socket cookie
//! in the preallocated hash `CONNS`, and deleted at the socket's release.
//!
//! NB: socket storage (`SOCKS`) did the same job, but creating a socket's storage allocates
//! and takes two locks: 60% of a redirected connect4. A preallocated hash element costs a
//! cookie and a lock-free-list pop. Finding it again needs the cookie, which the kernel makes
//! on first use, for any socket that asks: `CONN_PORTS` (how many tracked sockets are
//! connected to each port) keeps every other socket from asking. When `CONNS` is full a
//! socket gets storage instead (`SOCKS`), as before; lookups try both.
use aya_ebpf::bindings::BPF_NOEXIST;
use viking_common::{conn_stats, sock, SockState};

use crate::{
    health,
    lb::active,
    maps::{CONNS, CONN_PORTS, CONN_STATS},
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

/// Deletes the entry of socket `cookie` (at its release), whose state was `st`.
#[inline(always)]
pub fn forget(cookie: u64, st: &SockState) {
    let port = st.port;
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
