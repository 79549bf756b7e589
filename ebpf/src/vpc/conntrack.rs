//! The connection table: the connections whose packets pass without asking the policy.
//!
//! Entries come from the egress program (any TCP or UDP packet, or ICMP echo request, the host
//! or an instance sends: its replies may come back) and from the ingress program when the
//! policy admits a packet (so a reload that drops the rule does not cut the connection).
//! A socket lookup would not do: instances live in network namespaces of their own, which a
//! lookup from the host's interface does not see.
use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::bpf_ktime_get_ns,
    programs::TcContext,
};
use viking_common::{
    vpc::{
        rule, CtKey, CtValue, CT_CLOSING, CT_CLOSING_NS, CT_ICMP_NS, CT_REFRESH_NS, CT_TCP_NS,
        CT_UDP_NS, FAMILY_V4,
    },
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    maps::{VPC_CONFIG, VPC_CT},
    packet::{parse, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn echo_request(p: &Packet) -> bool {
    p.icmp_type == if p.family == FAMILY_V4 { 8 } else { 128 }
}

#[inline(always)]
fn echo_reply(p: &Packet) -> bool {
    p.icmp_type == if p.family == FAMILY_V4 { 0 } else { 129 }
}

#[inline(always)]
fn key(p: &Packet, remote: [u32; 4], local: [u32; 4], rport: u16, lport: u16) -> CtKey {
    CtKey {
        remote,
        local,
        remote_port: rport,
        local_port: lport,
        proto: p.proto,
        family: p.family,
        _pad: 0,
    }
}

/// The key of the connection an inbound packet belongs to (TCP, UDP, ICMP echo reply).
#[inline(always)]
pub fn inbound_key(p: &Packet) -> Option<CtKey> {
    match p.proto {
        PROTO_TCP | PROTO_UDP => Some(key(p, p.src, p.dst, p.sport, p.dport)),
        _ if p.is_icmp() && echo_reply(p) => Some(key(p, p.src, p.dst, 0, p.icmp_id)),
        _ => None,
    }
}

/// The key of the connection an outbound packet belongs to (TCP, UDP, ICMP echo request).
#[inline(always)]
pub fn outbound_key(p: &Packet) -> Option<CtKey> {
    match p.proto {
        PROTO_TCP | PROTO_UDP => Some(key(p, p.dst, p.src, p.dport, p.sport)),
        _ if p.is_icmp() && echo_request(p) => Some(key(p, p.dst, p.src, 0, p.icmp_id)),
        _ => None,
    }
}

#[inline(always)]
fn timeout(proto: u8, flags: u32) -> u64 {
    if flags & CT_CLOSING != 0 {
        CT_CLOSING_NS
    } else if proto == PROTO_TCP {
        CT_TCP_NS
    } else if proto == PROTO_UDP {
        CT_UDP_NS
    } else {
        CT_ICMP_NS
    }
}

/// Keeps an entry current: its last-seen time, and whether the TCP connection is closing.
#[inline(always)]
fn touch(v: *mut CtValue, p: &Packet, now: u64) {
    // SAFETY: a pointer into a map value, valid for this program run; concurrent writers on
    // other CPUs write the same kind of value (a time, a flag), so a lost update is harmless.
    unsafe {
        if now > (*v).seen + CT_REFRESH_NS {
            (*v).seen = now;
        }
        if p.proto == PROTO_TCP {
            let closing = (*v).flags & CT_CLOSING != 0;
            if !closing && p.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
                (*v).flags |= CT_CLOSING;
                (*v).seen = now;
            } else if closing && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
                // The same ports opened again.
                (*v).flags &= !CT_CLOSING;
                (*v).seen = now;
            }
        }
    }
}

/// The rule of a live connection `key` belongs to, if it is one; keeps it current.
#[inline(always)]
pub fn established(key: &CtKey, p: &Packet, now: u64) -> Option<u32> {
    let v = VPC_CT.get_ptr_mut(key)?;
    // SAFETY: as in `touch`.
    let (seen, flags, rule) = unsafe { ((*v).seen, (*v).flags, (*v).rule) };
    if now.saturating_sub(seen) > timeout(p.proto, flags) {
        return None;
    }
    touch(v, p, now);
    Some(rule)
}

/// Whether a connection is tracked for `key` (an ICMP error's quoted packet).
#[inline(always)]
pub fn tracked(key: &CtKey, now: u64) -> bool {
    // SAFETY: a hash map value, read at once.
    match unsafe { VPC_CT.get(key) } {
        // NB: a quoted packet is ours, so its protocol is the key's.
        Some(v) => now.saturating_sub(v.seen) <= timeout(key.proto, v.flags),
        None => false,
    }
}

/// Remembers a connection the policy admitted (replacing a lapsed entry).
#[inline(always)]
pub fn admit(p: &Packet, rule: u32, now: u64) {
    let Some(key) = inbound_key(p) else { return };
    if p.proto == PROTO_TCP && p.tcp_flags & TCP_RST != 0 {
        return;
    }
    let flags = if p.proto == PROTO_TCP && p.tcp_flags & TCP_FIN != 0 { CT_CLOSING } else { 0 };
    let _ = VPC_CT.insert(key, CtValue { seen: now, rule, flags }, u64::from(BPF_ANY));
}

pub fn try_egress(ctx: &TcContext) -> Result<i32, i32> {
    let Some(p) = parse(ctx)? else { return Ok(TC_ACT_UNSPEC) };
    if p.later_fragment {
        return Ok(TC_ACT_UNSPEC);
    }
    let Some(key) = outbound_key(&p) else { return Ok(TC_ACT_UNSPEC) };
    if p.proto == PROTO_UDP {
        // The overlay's tunnel packets are not connections: members are let in by address.
        if let Some(cfg) = VPC_CONFIG.get(0) {
            if cfg.overlay_port != 0 && p.dport == cfg.overlay_port {
                return Ok(TC_ACT_UNSPEC);
            }
        }
    }
    let now = now();
    match VPC_CT.get_ptr_mut(key) {
        Some(v) => touch(v, &p, now),
        None => {
            if p.proto == PROTO_TCP && p.tcp_flags & TCP_RST != 0 {
                return Ok(TC_ACT_UNSPEC);
            }
            let flags =
                if p.proto == PROTO_TCP && p.tcp_flags & TCP_FIN != 0 { CT_CLOSING } else { 0 };
            let v = CtValue { seen: now, rule: rule::REPLY, flags };
            let _ = VPC_CT.insert(key, v, u64::from(BPF_NOEXIST));
        }
    }
    Ok(TC_ACT_UNSPEC)
}
