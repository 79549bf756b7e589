//! A SYN that goes unanswered, seen where the kernel's TCP sees it: a BTF tracepoint that
//! fires only on a retransmission, so that a connect that goes well runs nothing here. It
//! looks for the socket's state (conns.rs; sockets connect() did not redirect have none) and
//! counts a failure against its backend while the socket is still connecting, a retransmission
//! timeout (1 s) after the SYN, long before the application gives up. (Other failed connects,
//! a RST or an ICMP error, are judged at the socket's release: release.rs.)
//!
//! It is host-wide (tracepoints are not per cgroup): a socket of another cgroup or another
//! agent has no state in these maps and is left alone.
use aya_ebpf::{
    bindings::BPF_TCP_SYN_SENT,
    helpers::{bpf_get_socket_cookie, bpf_sk_storage_get},
    programs::BtfTracePointContext,
};
use viking_common::{SockState, SKC_DPORT_OFFSET, SKC_STATE_OFFSET};

use crate::{conns, health, maps::socks_ptr};

/// `tcp_retransmit_skb(const struct sock *sk, ...)`: in SYN_SENT, the SYN went unanswered
/// for one retransmission timeout (the backend's host drops it, or is gone).
pub fn try_retransmit(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    // The tracepoint's first argument is the socket.
    let sk: *const u8 = ctx.arg(0);
    if sk.is_null() {
        return Ok(0);
    }
    // NB: `sock_common.skc_state`, at a fixed offset (see `SKC_STATE_OFFSET`). The verifier
    // checks the load against the BTF type of the argument.
    // SAFETY: a one-byte load inside `struct sock`.
    let state = unsafe { *sk.add(SKC_STATE_OFFSET) };
    if u32::from(state) != BPF_TCP_SYN_SENT {
        return Ok(0);
    }
    // NB: the socket lock is held on the path that fires this in SYN_SENT (its retransmit
    // timer), so its state is not written at once.
    // SAFETY: a two-byte load inside `struct sock` (see `SKC_DPORT_OFFSET`).
    let port = unsafe { *sk.add(SKC_DPORT_OFFSET).cast::<u16>() };
    if conns::any_on(port) {
        // SAFETY: a helper given the tracepoint's socket.
        let cookie = unsafe { bpf_get_socket_cookie(sk.cast_mut().cast()) };
        // SAFETY: see the NB above.
        if let Some(st) = unsafe { conns::get(cookie) } {
            health::failed(st, health::precise_now);
            return Ok(0);
        }
    }
    // SAFETY: a lookup (no create) of the socket's storage.
    let p =
        unsafe { bpf_sk_storage_get(socks_ptr(), sk.cast_mut().cast(), core::ptr::null_mut(), 0) };
    // SAFETY: this socket's storage (see the NB above).
    if let Some(st) = unsafe { p.cast::<SockState>().as_mut() } {
        health::failed(st, health::precise_now);
    }
    Ok(0)
}
