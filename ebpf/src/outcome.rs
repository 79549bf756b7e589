//! A SYN that goes unanswered, seen where the kernel's TCP sees it: a BTF tracepoint that
//! fires only on a retransmission, so that a connect that goes well runs nothing here. It
//! looks for the socket's state (conns.rs; sockets connect() did not redirect have none) and
//! counts a failure against its backend while the socket is still connecting, a retransmission
//! timeout (1 s) after the SYN, long before the application gives up. (Other failed connects,
//! a RST or an ICMP error, are judged at the socket's release: release.rs.)
//!
//! It is host-wide (tracepoints are not per cgroup): a socket of another cgroup or another
//! agent has no state in these maps and is left alone.
use aya_ebpf::{bindings::BPF_TCP_SYN_SENT, programs::BtfTracePointContext};
use viking_common::SKC_STATE_OFFSET;

use crate::{conns, health};

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
    // SAFETY: the tracepoint's socket, locked (see the NB above).
    if let Some((st, _)) = unsafe { conns::of_sock(sk.cast_mut().cast()) } {
        health::failed(st, health::precise_now);
    }
    Ok(0)
}
