//! cgroup/sock_release: the end of a redirected socket. It leaves the least-connections count
//! of its backend, its connect's outcome is judged if nothing judged it before, and its state
//! is deleted.
//!
//! The kernel runs this program once per socket of the cgroup, when the application closes it
//! (TCP or UDP, service or not). A socket that is none of ours costs an array load (its
//! destination port has no tracked socket) and a storage lookup that finds nothing. The
//! socket's TCP state here is the one before close:
//!
//! - SYN_SENT: the application gave up on the connect (its own timeout): failed.
//! - CLOSE: either the connect failed (a RST answered the SYN, an ICMP error, the kernel's
//!   SYN retries ran out), or the connection was established and ended before the close
//!   (reset by the peer, both sides' FINs). Told apart by `tcp_sock.rcv_nxt`: the kernel
//!   zeroes it at connect() and sets it from the SYN-ACK, so 0 means the backend never
//!   answered: failed; else succeeded.
//! - any other state (ESTABLISHED, CLOSE_WAIT, FIN_WAIT...): it was established: succeeded
//!   (also after a SYN retransmission counted it failed: the backend answered in the end).
//!
//! NB: a refused connect is judged here, at the close that follows it, rather than by a
//! tracepoint on every RST the host receives, which all other traffic would pay for.
use aya_ebpf::{
    bindings::{BPF_TCP_CLOSE, BPF_TCP_SYN_SENT},
    helpers::{bpf_get_socket_cookie, bpf_probe_read_kernel, bpf_sk_storage_get},
    programs::SockContext,
    EbpfContext as _,
};
use viking_common::{flags, sock, RevNatKey, SockState, PROTO_TCP, SOCK_COUNTED};

use crate::{
    conns, health,
    lb::active,
    maps::{flag, socks_ptr, REVNAT, SOCK_BACKEND},
};

/// Offset of `rcv_nxt` in `struct tcp_sock` on this kernel, set by the agent from the kernel's
/// BTF at load (aya cannot relocate the programs' own field accesses); 0: not known.
#[unsafe(no_mangle)]
static TCP_RCV_NXT: u32 = 0;

pub fn try_release(ctx: &SockContext) -> Result<i32, i32> {
    // SAFETY: the kernel hands every cgroup/sock program a valid context.
    let (proto, state, port) =
        unsafe { ((*ctx.sock).protocol, (*ctx.sock).state, (*ctx.sock).dst_port) };
    // NB: a connect that failed (or a connect(AF_UNSPEC)) disconnects a TCP socket: its
    // destination port is 0 by now, whichever backend it was sent to. (A connected UDP socket
    // disconnected so is not found again: its entry stays. It holds no count.)
    let disconnected = port == 0 && state == BPF_TCP_CLOSE && proto == u32::from(PROTO_TCP);
    let mut tracked = false;
    if conns::any_on(port) || disconnected {
        // SAFETY: helper given the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the socket is being released: nothing else runs on it.
        if let Some(st) = unsafe { conns::get(cookie) } {
            end(ctx, st, proto, state, port);
            let port = st.port;
            // SAFETY: as above.
            unsafe { conns::forget(cookie, port) };
            tracked = true;
        }
    }
    // NB: also for a socket found above: one that connected again may have counted its first
    // backend in its storage (when its slot was taken and CONNS full then).
    // SAFETY: a lookup (no create) of the storage of the program's own socket.
    let p = unsafe { bpf_sk_storage_get(socks_ptr(), ctx.sock.cast(), core::ptr::null_mut(), 0) };
    // SAFETY: the socket is being released: nothing else runs on it.
    match unsafe { p.cast::<SockState>().as_mut() } {
        // (Its first connect is not judged by the socket's state now, which is the second's.)
        Some(st) if tracked => uncount(st),
        Some(st) => end(ctx, st, proto, state, port),
        None if !tracked => legacy(ctx),
        None => {}
    }
    Ok(1)
}

/// The socket leaves its backend's count; a TCP connect's outcome is judged.
#[inline(always)]
fn end(ctx: &SockContext, st: &mut SockState, proto: u32, state: u32, port: u16) {
    uncount(st);
    if st.flags & sock::CONNECTED == 0 || proto != u32::from(PROTO_TCP) {
        return;
    }
    let answered = match state {
        BPF_TCP_SYN_SENT => Some(false),
        BPF_TCP_CLOSE => answered(ctx, port),
        _ => Some(true),
    };
    match answered {
        Some(true) => health::succeeded(st),
        Some(false) => health::failed(st, health::now),
        None => {}
    }
}

#[inline(always)]
fn uncount(st: &mut SockState) {
    if st.flags & sock::COUNTED != 0 {
        st.flags &= !sock::COUNTED;
        active(st.backend, u64::MAX); // wrapping -1
    }
}

/// Whether the backend ever answered this closed socket's SYN (see the module docs). Without
/// the field's offset: only a socket its failed connect disconnected (destination port 0)
/// is known to have failed.
#[inline(always)]
fn answered(ctx: &SockContext, port: u16) -> Option<bool> {
    // SAFETY: a global the agent sets before load, read as such.
    let off = unsafe { core::ptr::read_volatile(&raw const TCP_RCV_NXT) };
    if off == 0 {
        return (port == 0).then_some(false);
    }
    // NB: the context of a cgroup/sock program is the socket itself.
    // SAFETY: a checked kernel read inside the socket, at an offset from the kernel's BTF.
    let rcv_nxt =
        unsafe { bpf_probe_read_kernel(ctx.sock.cast::<u8>().add(off as usize).cast::<u32>()) };
    rcv_nxt.ok().map(|n| n != 0)
}

/// Sockets redirected by an agent from before socket storage: tracked by cookie in
/// SOCK_BACKEND, their reverse translation in REVNAT; both deleted here.
#[inline(always)]
fn legacy(ctx: &SockContext) {
    if !flag(flags::LEGACY) {
        return;
    }
    // SAFETY: helper given the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: copied out at once.
    let Some(tracked) = (unsafe { SOCK_BACKEND.get(cookie) }).copied() else {
        return;
    };
    if tracked.flags & SOCK_COUNTED != 0 {
        active(tracked.backend, u64::MAX);
    }
    let key = RevNatKey { cookie, addr: tracked.addr, port: tracked.port, _pad: [0; 6] };
    let _ = REVNAT.remove(key);
    let _ = SOCK_BACKEND.remove(cookie);
}
