//! cgroup/sock_release: the end of a redirected socket. It leaves the least-connections count
//! of its backend, and its connect's outcome is judged if nothing judged it before.
//!
//! The kernel runs this program once per socket of the cgroup, when the application closes it
//! (TCP or UDP, service or not); every socket connect() did not redirect costs one storage
//! lookup that finds nothing. The socket's TCP state here is the one before close:
//!
//! - SYN_SENT: the application gave up on the connect (its own timeout): failed.
//! - CLOSE: either the connect failed (a RST to the SYN, already judged by outcome.rs), or
//!   the connection was established and ended before the close (reset by the peer, or both
//!   sides' FINs): nothing is judged.
//! - any other state (ESTABLISHED, CLOSE_WAIT, FIN_WAIT...): it was established: succeeded
//!   (also after a SYN retransmission counted it failed: the backend answered in the end).
use aya_ebpf::{
    bindings::{BPF_TCP_CLOSE, BPF_TCP_SYN_SENT},
    helpers::{bpf_get_socket_cookie, bpf_sk_storage_get},
    programs::SockContext,
    EbpfContext as _,
};
use viking_common::{flags, sock, RevNatKey, SockState, PROTO_TCP, SOCK_COUNTED};

use crate::{
    health,
    lb::active,
    maps::{flag, socks_ptr, REVNAT, SOCK_BACKEND},
};

pub fn try_release(ctx: &SockContext) -> Result<i32, i32> {
    // SAFETY: a lookup (no create) of the storage of the program's own socket.
    let p = unsafe { bpf_sk_storage_get(socks_ptr(), ctx.sock.cast(), core::ptr::null_mut(), 0) };
    // SAFETY: the socket is being released: nothing else runs on it.
    let Some(st) = (unsafe { p.cast::<SockState>().as_mut() }) else {
        return legacy(ctx);
    };
    if st.flags & sock::COUNTED != 0 {
        st.flags &= !sock::COUNTED;
        active(st.backend, u64::MAX); // wrapping -1
    }
    // SAFETY: the kernel hands every cgroup/sock program a valid context.
    let (proto, state) = unsafe { ((*ctx.sock).protocol, (*ctx.sock).state) };
    if st.flags & sock::CONNECTED == 0 || proto != u32::from(PROTO_TCP) {
        return Ok(1);
    }
    if state == BPF_TCP_SYN_SENT {
        health::failed(st, health::now);
    } else if state != BPF_TCP_CLOSE {
        health::succeeded(st);
    }
    Ok(1)
}

/// Sockets redirected by an agent from before socket storage: tracked by cookie in
/// SOCK_BACKEND, their reverse translation in REVNAT; both deleted here.
#[inline(always)]
fn legacy(ctx: &SockContext) -> Result<i32, i32> {
    if !flag(flags::LEGACY) {
        return Ok(1);
    }
    // SAFETY: helper given the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(tracked) = (unsafe { SOCK_BACKEND.get(cookie) }).copied() else {
        return Ok(1);
    };
    if tracked.flags & SOCK_COUNTED != 0 {
        active(tracked.backend, u64::MAX);
    }
    let key = RevNatKey { cookie, addr: tracked.addr, port: tracked.port, _pad: [0; 6] };
    let _ = REVNAT.remove(key);
    SOCK_BACKEND.remove(cookie)?;
    Ok(1)
}
