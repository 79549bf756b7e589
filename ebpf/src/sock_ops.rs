//! sock_ops: keeps the active-connection count of each backend for least-connections.
//!
//! connect() tags a TCP socket sent to a backend in `SOCK_BACKEND`. Here, at TCP connect the
//! socket asks for state callbacks; when established it is counted active; when it reaches
//! TCP_CLOSE (closed, reset, or a connect that failed) it is uncounted and forgotten, and its
//! reverse-translation entry (`REVNAT`) goes with it.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::bpf_get_socket_cookie,
    programs::SockOpsContext,
    EbpfContext as _,
};
use viking_common::{RevNatKey, SOCK_COUNTED};

use crate::maps::{BACKEND_ACTIVE, REVNAT, SOCK_BACKEND};

pub fn try_sockops(ctx: &SockOpsContext) -> Result<u32, i32> {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB
        && op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return Ok(1);
    }
    // SAFETY: helper given the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(tracked) = SOCK_BACKEND.get_ptr_mut(cookie) else {
        return Ok(1);
    };
    // SAFETY: SOCK_BACKEND entries are written by connect() and removed only below, for this
    // socket, whose callbacks the kernel serialises under the socket lock.
    let tracked = unsafe { &mut *tracked };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    } else if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        if tracked.flags & SOCK_COUNTED == 0 {
            tracked.flags |= SOCK_COUNTED;
            add(tracked.backend, 1);
        }
    } else if ctx.arg(1) == BPF_TCP_CLOSE {
        if tracked.flags & SOCK_COUNTED != 0 {
            add(tracked.backend, u64::MAX); // wrapping -1
        }
        // The reverse translation is no longer needed: free its LRU slot now rather than
        // letting closed sockets push live ones out.
        let key = RevNatKey { cookie, addr: tracked.addr, port: tracked.port, _pad: [0; 6] };
        let _ = REVNAT.remove(key);
        SOCK_BACKEND.remove(cookie)?;
    }
    Ok(1)
}

#[inline(always)]
fn add(backend: u32, delta: u64) {
    if let Some(p) = BACKEND_ACTIVE.get_ptr_mut(backend) {
        // NB: the BPF target has no compare-and-swap, so core's atomics offer no fetch_add;
        // the intrinsic lowers to the BPF atomic add instruction.
        // SAFETY: an aligned u64 inside an array map value, shared by all CPUs.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, delta) };
    }
}
