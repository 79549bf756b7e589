//! Viking's kernel programs. Each hook is a thin wrapper over a fallible `try_` function; on
//! an internal error the syscall goes on untouched (fail open: a full map must not cut
//! traffic that is not ours).
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(internal_features)]

mod conns;
mod health;
mod lb;
mod maps;
mod outcome;
mod release;
mod sock_addr;
mod stale;

use aya_ebpf::{
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr},
    programs::{BtfTracePointContext, SockAddrContext, SockContext},
};
use sock_addr::{try_connect, try_restore, try_sendmsg, Family, ALLOW};

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, Family::V4).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    try_connect(&ctx, Family::V6).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    try_sendmsg(&ctx, Family::V4).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    try_sendmsg(&ctx, Family::V6).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn recvmsg4(ctx: SockAddrContext) -> i32 {
    try_restore(&ctx, Family::V4).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn recvmsg6(ctx: SockAddrContext) -> i32 {
    try_restore(&ctx, Family::V6).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    try_restore(&ctx, Family::V4).unwrap_or(ALLOW)
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    try_restore(&ctx, Family::V6).unwrap_or(ALLOW)
}

#[cgroup_sock(sock_release)]
pub fn viking_release(ctx: SockContext) -> i32 {
    release::try_release(&ctx).unwrap_or(1)
}

#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn syn_retransmit(ctx: BtfTracePointContext) -> u32 {
    outcome::try_retransmit(&ctx).unwrap_or(0)
}

/// A connect4 that only allows: the floor a benchmark measures beside `connect4` (never
/// attached by the agent).
#[cgroup_sock_addr(connect4)]
pub fn floor_connect4(_ctx: SockAddrContext) -> i32 {
    ALLOW
}

/// A sock_release that does nothing: the floor beside `viking_release`.
#[cgroup_sock(sock_release)]
pub fn floor_release(_ctx: SockContext) -> i32 {
    1
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
