//! Socket iterators that end the sockets still pinned to a backend that left its service.
//!
//! The agent lists the departed backends in `STALE` and reads these iterators (pinned links)
//! once in each network namespace of its cgroup's processes. A socket whose state says it
//! was connected to one of them is ended with the kernel function `bpf_sock_destroy` (Linux
//! 6.5+): the application sees ECONNABORTED and connects again, to a live backend.
//!
//! NB: aya 0.14 cannot relocate calls to kernel functions, so the call is emitted as a raw
//! instruction (`SOCK_DESTROY_CALL`) whose imm the agent sets to the function's BTF id before
//! loading; on a kernel without the function these two programs are not loaded at all.
use core::ffi::c_void;

use aya_ebpf::helpers::bpf_skc_to_tcp_sock;
use viking_common::{ended, sock, StaleKey, SOCK_DESTROY_CALL};

use crate::{
    conns, health,
    maps::{ENDED, STALE},
};

/// `iter/udp`: the context is `struct bpf_iter__udp { meta; udp_sk; uid; bucket }`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/udp")]
pub extern "C" fn end_udp(ctx: *mut c_void) -> i32 {
    // SAFETY: the second pointer of the iterator's context: the socket, or NULL at the end.
    let sk = unsafe { *ctx.cast::<*mut c_void>().add(1) };
    if !sk.is_null() {
        end_if_stale(sk, sk, ended::UDP);
    }
    0
}

/// `iter/tcp`: the context is `struct bpf_iter__tcp { meta; sk_common; uid }`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/tcp")]
pub extern "C" fn end_tcp(ctx: *mut c_void) -> i32 {
    // SAFETY: as in `end_udp`.
    let skc = unsafe { *ctx.cast::<*mut c_void>().add(1) };
    if skc.is_null() {
        return 0;
    }
    // Full sockets only (not request or time-wait sockets).
    // SAFETY: a helper given a socket pointer from the iterator.
    let tp = unsafe { bpf_skc_to_tcp_sock(skc) };
    if !tp.is_null() {
        end_if_stale(tp.cast(), skc, ended::TCP);
    }
    0
}

#[inline(always)]
fn end_if_stale(sk: *mut c_void, skc: *mut c_void, counter: u32) {
    // SAFETY: the iterator's socket, held by the iterator; copied out at once.
    let Some((st, cookie)) = (unsafe { conns::of_sock(sk) }).map(|(st, c)| (*st, c)) else {
        return;
    };
    if st.flags & sock::CONNECTED == 0 {
        return;
    }
    let key = StaleKey { service: st.service, port: st.port, _pad: 0, addr: st.addr };
    // SAFETY: only the presence is read.
    if unsafe { STALE.get(key) }.is_none() {
        return;
    }
    if sock_destroy(skc) == 0 {
        if let Some(n) = ENDED.get_ptr_mut(counter) {
            // SAFETY: an array slot shared by all CPUs.
            health::add(unsafe { &mut *n }, 1);
        }
        // NB: an ended UDP socket is disconnected (destination port 0), so its release would
        // not find its entry again: it goes now. (It holds no connection count. An ended TCP
        // socket keeps its port and leaves at its release, uncounted there.)
        if counter == ended::UDP {
            if let Some(cookie) = cookie {
                let port = st.port;
                // SAFETY: the iterator holds the socket.
                unsafe { conns::forget(cookie, port) };
            }
        }
    }
}

/// `bpf_sock_destroy(struct sock_common *)`: the call instruction the agent patches.
#[inline(always)]
fn sock_destroy(skc: *mut c_void) -> i64 {
    let ret: i64;
    // SAFETY: a kernel-function call: argument in r1, result in r0, r1-r5 clobbered.
    unsafe {
        core::arch::asm!(
            ".quad {call}",
            call = const SOCK_DESTROY_CALL,
            inlateout("r1") skc => _,
            lateout("r0") ret,
            lateout("r2") _,
            lateout("r3") _,
            lateout("r4") _,
            lateout("r5") _,
            options(nostack),
        );
    }
    ret
}
