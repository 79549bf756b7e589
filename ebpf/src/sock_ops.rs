//! sock_ops: active-connection counts for least-connections, and each redirected connect's
//! outcome for passive health.
//!
//! The kernel runs this program for every TCP socket of the cgroup at a few fixed points
//! (timeout and window init, ECN, TCP_CONNECT_CB, ESTABLISHED); the per-socket callbacks
//! (state changes, retransmission timeouts) only for sockets that asked. Only the sockets
//! connect() redirected ask (at TCP_CONNECT_CB), so every other socket costs an early return
//! here (and one storage lookup that finds nothing at TCP_CONNECT_CB).
//!
//! - ESTABLISHED: counted active; the backend answered (health).
//! - RTO while in SYN_SENT: the SYN went unanswered (health).
//! - state SYN_SENT -> CLOSE: refused (RST) or given up (health); any -> CLOSE: uncounted.
use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_RTO_CB, BPF_SOCK_OPS_STATE_CB,
        BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE, BPF_TCP_SYN_SENT,
    },
    helpers::{bpf_get_socket_cookie, bpf_sk_storage_get},
    programs::SockOpsContext,
    EbpfContext as _,
};
use viking_common::{flags, sock, RevNatKey, SockState, SOCK_COUNTED};

use crate::{
    health,
    maps::{flag, socks_ptr, BACKEND_ACTIVE, REVNAT, SOCK_BACKEND},
    sock_addr::SOCK_CALLBACKS,
};

pub fn try_sockops(ctx: &SockOpsContext) -> Result<u32, i32> {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        if ctx.cb_flags() & BPF_SOCK_OPS_STATE_CB_FLAG == 0 {
            // Not a socket this datapath (or an older agent's) redirected.
            return Ok(1);
        }
        match state(ctx) {
            Some(st) => {
                if st.flags & sock::COUNTED == 0 {
                    st.flags |= sock::COUNTED;
                    add(st.backend, 1);
                }
                health::succeeded(st);
            }
            None => legacy(ctx, op)?,
        }
    } else if op == BPF_SOCK_OPS_STATE_CB {
        if ctx.arg(1) != BPF_TCP_CLOSE {
            return Ok(1);
        }
        match state(ctx) {
            Some(st) => {
                if ctx.arg(0) == BPF_TCP_SYN_SENT {
                    health::failed(st);
                }
                if st.flags & sock::COUNTED != 0 {
                    st.flags &= !sock::COUNTED;
                    add(st.backend, u64::MAX); // wrapping -1
                }
            }
            None => legacy(ctx, op)?,
        }
    } else if op == BPF_SOCK_OPS_RTO_CB {
        // SAFETY: the kernel hands every sock_ops program a valid context.
        if unsafe { (*ctx.ops).state } == BPF_TCP_SYN_SENT {
            if let Some(st) = state(ctx) {
                health::failed(st);
            }
        }
    } else if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        // A socket connect() redirected asks for its own callbacks; on the others the lookup
        // finds no storage (one pointer test in the kernel) and nothing more happens.
        if state(ctx).is_some() {
            let _ = ctx.set_cb_flags((ctx.cb_flags() | SOCK_CALLBACKS) as i32);
        }
    }
    Ok(1)
}

/// The socket's state, if connect() redirected it.
#[inline(always)]
#[allow(clippy::mut_from_ref)] // the socket's storage, not the context, is borrowed
fn state(ctx: &SockOpsContext) -> Option<&mut SockState> {
    // SAFETY: the kernel hands every sock_ops program a valid context.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a lookup (no create) of the socket's own storage.
    let p = unsafe { bpf_sk_storage_get(socks_ptr(), sk.cast(), core::ptr::null_mut(), 0) };
    // SAFETY: the kernel serialises a socket's callbacks under the socket lock.
    unsafe { p.cast::<SockState>().as_mut() }
}

/// Sockets redirected by an agent from before socket storage: tracked by cookie in
/// SOCK_BACKEND, their reverse translation in REVNAT (deleted at close).
#[inline(always)]
fn legacy(ctx: &SockOpsContext, op: u32) -> Result<(), i32> {
    if !flag(flags::LEGACY) {
        return Ok(());
    }
    // SAFETY: helper given the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(tracked) = SOCK_BACKEND.get_ptr_mut(cookie) else {
        return Ok(());
    };
    // SAFETY: entries are removed only below, for this socket, under its lock.
    let tracked = unsafe { &mut *tracked };
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB {
        if tracked.flags & SOCK_COUNTED == 0 {
            tracked.flags |= SOCK_COUNTED;
            add(tracked.backend, 1);
        }
    } else {
        if tracked.flags & SOCK_COUNTED != 0 {
            add(tracked.backend, u64::MAX);
        }
        let key = RevNatKey { cookie, addr: tracked.addr, port: tracked.port, _pad: [0; 6] };
        let _ = REVNAT.remove(key);
        SOCK_BACKEND.remove(cookie)?;
    }
    Ok(())
}

#[inline(always)]
fn add(backend: u32, delta: u64) {
    if let Some(p) = BACKEND_ACTIVE.get_ptr_mut(backend) {
        // SAFETY: an array slot shared by all CPUs.
        health::add(unsafe { &mut *p }, delta);
    }
}
