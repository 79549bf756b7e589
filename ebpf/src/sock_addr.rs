//! The cgroup sock_addr hooks: rewrite a connect/sendmsg to an ambassador address into one to
//! a backend, and make getpeername/recvmsg report the ambassador address back.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext as _,
};
use aya_log_ebpf::debug;
use viking_common::{
    flags, sock, v4_mapped, Addr, RevNatKey, RevNatValue, SockState, PROTO_TCP, PROTO_UDP,
};

use crate::{
    conns, health,
    lb::{active, count, select, Verdict},
    maps::{flag, REVNAT, SOCKS},
};

const ECONNREFUSED: i32 = 111;
/// Let the syscall go on.
pub const ALLOW: i32 = 1;
/// Fail the syscall (with the errno set by `bpf_set_retval`, else EPERM).
const REJECT: i32 = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// The destination (connect, sendmsg) or peer (recvmsg, getpeername) in the context.
#[inline(always)]
fn read(ctx: &SockAddrContext, family: Family) -> (Addr, u16) {
    // SAFETY: the kernel hands every sock_addr program a valid context.
    let sa = unsafe { &*ctx.sock_addr };
    let addr = match family {
        Family::V4 => v4_mapped(sa.user_ip4),
        // NB: word by word, volatile: a copy of the whole array may become a loop over a
        // moved context pointer, which the verifier refuses.
        // SAFETY: 4-byte loads of context fields.
        Family::V6 => unsafe {
            let p = &raw const sa.user_ip6;
            [
                core::ptr::read_volatile(&raw const (*p)[0]),
                core::ptr::read_volatile(&raw const (*p)[1]),
                core::ptr::read_volatile(&raw const (*p)[2]),
                core::ptr::read_volatile(&raw const (*p)[3]),
            ]
        },
    };
    (addr, sa.user_port as u16)
}

#[inline(always)]
fn write(ctx: &SockAddrContext, family: Family, addr: &Addr, port: u16) {
    // SAFETY: as in `read`; the verifier allows 4-byte stores to these fields.
    let sa = unsafe { &mut *ctx.sock_addr };
    match family {
        Family::V4 => sa.user_ip4 = addr[3],
        Family::V6 => {
            sa.user_ip6[0] = addr[0];
            sa.user_ip6[1] = addr[1];
            sa.user_ip6[2] = addr[2];
            sa.user_ip6[3] = addr[3];
        }
    }
    sa.user_port = u32::from(port);
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: as in `read`.
    unsafe { (*ctx.sock_addr).protocol as u8 }
}

/// connect4/connect6, for TCP and UDP.
#[inline(always)]
pub fn try_connect(ctx: &SockAddrContext, family: Family) -> Result<i32, i32> {
    let proto = protocol(ctx);
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Ok(ALLOW);
    }
    let (addr, port) = read(ctx, family);
    // SAFETY: helper given the program's own context.
    let netns = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    match select(addr, port, proto, netns, family == Family::V4) {
        Verdict::Pass => Ok(ALLOW),
        Verdict::Refuse(service) => {
            count(service, |s| s.rejects += 1);
            debug!(ctx, "viking: service {} has no backend, connect refused", service);
            // SAFETY: plain helper; only sets the syscall's return value.
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            Ok(REJECT)
        }
        Verdict::Backend { service, backend } => {
            write(ctx, family, &backend.addr, backend.port);
            // Open TCP connections per backend, for least connections; the socket leaves the
            // count when it is closed (release.rs). A UDP socket connected again keeps one
            // state, the latest.
            let counted = if proto == PROTO_TCP { sock::COUNTED } else { 0 };
            let st = SockState {
                backend: backend.id,
                service,
                flags: sock::CONNECTED | counted,
                gen: health::gen(backend.id),
                addr: backend.addr,
                orig_addr: addr,
                port: backend.port,
                orig_port: port,
                _pad: 0,
            };
            // SAFETY: helper given the program's own context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            if !conns::track(cookie, &st) {
                in_storage(ctx, st);
            }
            Ok(ALLOW)
        }
    }
}

/// The socket's state in its socket storage, when `CONNS` is full.
#[inline(always)]
fn in_storage(ctx: &SockAddrContext, st: SockState) {
    // A new storage starts uncounted.
    let mut init = st;
    init.flags &= !sock::COUNTED;
    // SAFETY: the socket of the program's own context.
    let p = unsafe { SOCKS.get_or_insert_ptr_mut(ctx, Some(&mut init)) };
    if p.is_null() {
        // Fail open: the connect goes to the backend, getpeername reports it as is.
        return;
    }
    // SAFETY: this socket's own storage; the socket is locked during connect().
    let p = unsafe { &mut *p };
    if p.flags & sock::COUNTED != 0 {
        // A TCP socket connecting again after its connect failed: its first backend counts it
        // no more.
        active(p.backend, u64::MAX); // wrapping -1
    }
    *p = st;
    if st.flags & sock::COUNTED != 0 {
        active(st.backend, 1);
    }
}

/// sendmsg4/sendmsg6: unconnected UDP (`sendto` with an address).
#[inline(always)]
pub fn try_sendmsg(ctx: &SockAddrContext, family: Family) -> Result<i32, i32> {
    if protocol(ctx) != PROTO_UDP {
        return Ok(ALLOW);
    }
    let (addr, port) = read(ctx, family);
    // SAFETY: helper given the program's own context.
    let netns = || unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    match select(addr, port, PROTO_UDP, netns, family == Family::V4) {
        Verdict::Pass => Ok(ALLOW),
        Verdict::Refuse(service) => {
            count(service, |s| s.drops += 1);
            unsafe { bpf_set_retval(-ECONNREFUSED) };
            Ok(REJECT)
        }
        Verdict::Backend { backend, .. } => {
            write(ctx, family, &backend.addr, backend.port);
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            remember(cookie, &backend.addr, backend.port, addr, port)?;
            // Marks the socket: its replies are looked up in REVNAT (see `try_restore`).
            let mut st = SockState { flags: sock::REVNAT, ..SockState::default() };
            // SAFETY: the socket of the program's own context.
            let p = unsafe { SOCKS.get_or_insert_ptr_mut(ctx, Some(&mut st)) };
            if !p.is_null() {
                // SAFETY: this socket's own storage.
                unsafe {
                    if (*p).flags & sock::REVNAT == 0 {
                        (*p).flags |= sock::REVNAT;
                    }
                }
            }
            Ok(ALLOW)
        }
    }
}

/// recvmsg4/6 and getpeername4/6: report the ambassador address instead of the backend's.
#[inline(always)]
pub fn try_restore(ctx: &SockAddrContext, family: Family) -> Result<i32, i32> {
    let (addr, port) = read(ctx, family);
    if conns::any_on(port) {
        // SAFETY: helper given the program's own context.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the caller's socket; copied out at once.
        if let Some(st) = unsafe { conns::get(cookie) }.map(|st| *st) {
            if restore(ctx, family, &st, addr, port) {
                return Ok(ALLOW);
            }
        }
    }
    // SAFETY: the socket of the program's own context.
    let p = unsafe { SOCKS.get_ptr_mut(ctx) };
    if !p.is_null() {
        // SAFETY: this socket's own storage, copied out.
        let st = unsafe { *p };
        if restore(ctx, family, &st, addr, port) || st.flags & sock::REVNAT == 0 {
            return Ok(ALLOW);
        }
    } else if !flag(flags::LEGACY) {
        // Neither redirected by this agent nor possibly by an older one.
        return Ok(ALLOW);
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = RevNatKey { cookie, addr, port, _pad: [0; 6] };
    // SAFETY: copied out at once.
    if let Some(orig) = unsafe { REVNAT.get(key) }.copied() {
        write(ctx, family, &orig.addr, orig.port);
    }
    Ok(ALLOW)
}

/// Reports the ambassador address if the socket was connected to this backend address.
#[inline(always)]
fn restore(ctx: &SockAddrContext, family: Family, st: &SockState, addr: Addr, port: u16) -> bool {
    if st.flags & sock::CONNECTED != 0 && st.port == port && st.addr == addr {
        write(ctx, family, &st.orig_addr, st.orig_port);
        return true;
    }
    false
}

/// Records which ambassador address a socket asked for, keyed by the backend it got.
#[inline(always)]
fn remember(cookie: u64, backend: &Addr, bport: u16, addr: Addr, port: u16) -> Result<(), i32> {
    let key = RevNatKey { cookie, addr: *backend, port: bport, _pad: [0; 6] };
    // NB: unconnected UDP calls this per datagram; skip the LRU write when nothing changed.
    if let Some(old) = unsafe { REVNAT.get(key) } {
        if old.addr == addr && old.port == port {
            return Ok(());
        }
    }
    REVNAT.insert(key, RevNatValue { addr, port, _pad: 0, _pad2: 0 }, 0)
}
