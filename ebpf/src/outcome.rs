//! Failed connects, seen where the kernel's TCP sees them: BTF tracepoints that fire only on
//! rare events (a RST received, a segment retransmitted), so that a connect that goes well
//! runs none of them. Each looks for the socket's storage
//! (sockets connect() did not redirect have none) and counts a failure against its backend
//! while the socket is still connecting.
//!
//! They are host-wide (tracepoints are not per cgroup): a socket of another cgroup or another
//! agent has no storage in this map and is left alone.
use aya_ebpf::{
    bindings::BPF_TCP_SYN_SENT, helpers::bpf_sk_storage_get, programs::BtfTracePointContext,
};
use viking_common::{SockState, SKC_STATE_OFFSET};

use crate::{health, maps::socks_ptr};

/// `tcp_receive_reset(struct sock *sk)`, fired before the RST closes the socket: a RST to
/// the SYN (nothing listens on the backend's port).
pub fn try_reset(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    failed_if_connecting(ctx)
}

/// `tcp_retransmit_skb(const struct sock *sk, ...)`: in SYN_SENT, the SYN went unanswered
/// for one retransmission timeout (the backend's host drops it, or is gone).
pub fn try_retransmit(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    failed_if_connecting(ctx)
}

#[inline(always)]
fn failed_if_connecting(ctx: &BtfTracePointContext) -> Result<u32, u32> {
    // The first argument of each of these tracepoints is the socket.
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
    // SAFETY: a lookup (no create) of the socket's storage.
    let p =
        unsafe { bpf_sk_storage_get(socks_ptr(), sk.cast_mut().cast(), core::ptr::null_mut(), 0) };
    // NB: the socket lock is held on the paths that fire these in SYN_SENT (softirq
    // processing of the socket's packets, its timer), so its storage is not written at once.
    // SAFETY: this socket's storage.
    if let Some(st) = unsafe { p.cast::<SockState>().as_mut() } {
        health::failed(st, health::precise_now);
    }
    Ok(0)
}
