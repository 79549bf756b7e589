//! The VPC host filter (docs/vpc-rules.md): TC programs on each interface a policy names.
//! Each hook is a thin wrapper over a fallible `try_` function; a packet the filter cannot
//! read goes on untouched (the kernel's own checks drop what is malformed).
#![no_std]
#![no_main]

mod conntrack;
mod filter;
mod maps;
mod packet;

use aya_ebpf::{bindings::TC_ACT_UNSPEC, macros::classifier, programs::TcContext};

/// Inbound: decides every packet (connection table, built-ins, then the policy).
#[classifier]
pub fn vpc_ingress(ctx: TcContext) -> i32 {
    filter::try_ingress(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

/// Outbound: never drops; remembers the connections the host and its instances open, so
/// that their replies pass.
#[classifier]
pub fn vpc_egress(ctx: TcContext) -> i32 {
    conntrack::try_egress(&ctx).unwrap_or(TC_ACT_UNSPEC)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
