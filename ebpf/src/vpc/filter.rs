//! The inbound decision, in order:
//! 1. ICMP that path MTU discovery and IPv6 neighbour discovery need: passed.
//! 2. The overlay's UDP port: passed from members, dropped from anyone else.
//! 3. A packet of a live connection (`conntrack`): passed.
//! 4. An ICMP error about a live connection: passed. A later fragment: passed (the first
//!    one, which carries the ports, was decided; the kernel cannot reassemble without it).
//! 5. The policy of the interface: the source's longest prefix for this port, for every port
//!    of the protocol, and for everything; for a member also the `from: cluster` rules of the
//!    same three. Any deny drops; else any allow passes (and the connection is remembered);
//!    else the interface's default.
use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    maps::lpm_trie::Key,
    programs::TcContext,
};
use viking_common::{
    vpc::{
        rule, ClusterKey, MemberKey, PolicyKey, RuleRef, FAMILY_V4, MAX_SLOTS, MEMBER_FIXED_BITS,
        POLICY_FIXED_BITS, VERDICT_DENY,
    },
    PROTO_TCP, PROTO_UDP,
};

use crate::{
    conntrack::{admit, established, inbound_key, now, outbound_key, tracked},
    maps::{VPC_CLUSTER, VPC_CONFIG, VPC_IFACES, VPC_MEMBERS, VPC_POLICY, VPC_STATS},
    packet::{parse, quoted, Packet},
};

const PASS: i32 = TC_ACT_UNSPEC;
const DROP: i32 = TC_ACT_SHOT;

#[inline(always)]
fn count(rule: u32, pass: bool, len: u64) {
    if let Some(s) = VPC_STATS.get_ptr_mut(rule) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else writes it meanwhile.
        unsafe {
            if pass {
                (*s).pass_packets += 1;
                (*s).pass_bytes += len;
            } else {
                (*s).drop_packets += 1;
                (*s).drop_bytes += len;
            }
        }
    }
}

/// ICMP that must always pass: IPv4 fragmentation needed; IPv6 packet too big, neighbour
/// and router discovery, multicast listener messages.
#[inline(always)]
fn always_passes(p: &Packet) -> bool {
    if p.family == FAMILY_V4 {
        p.icmp_type == 3 && p.icmp_code == 4
    } else {
        matches!(p.icmp_type, 2 | 130..=137 | 143)
    }
}

/// ICMP errors that quote a packet of ours (unreachable, time exceeded, parameter problem).
#[inline(always)]
fn is_error(p: &Packet) -> bool {
    if p.family == FAMILY_V4 {
        matches!(p.icmp_type, 3 | 11 | 12)
    } else {
        matches!(p.icmp_type, 1 | 3 | 4)
    }
}

#[inline(always)]
fn is_member(p: &Packet) -> bool {
    let key = Key::new(
        MEMBER_FIXED_BITS + 128,
        MemberKey { family: p.family, _pad: [0; 3], addr: p.src },
    );
    VPC_MEMBERS.get(&key).is_some()
}

/// One level of the policy (a protocol and port, either possibly "every"): a deny found is
/// returned; an allow is kept in `allow` if none was found at a more specific level.
#[inline(always)]
fn level(
    gen: u8,
    slot: u8,
    proto: u8,
    port: u16,
    p: &Packet,
    member: bool,
    allow: &mut Option<RuleRef>,
) -> Option<RuleRef> {
    let key = Key::new(
        POLICY_FIXED_BITS + 128,
        PolicyKey { gen, slot, proto, family: p.family, port, _pad: 0, addr: p.src },
    );
    if let Some(r) = VPC_POLICY.get(&key) {
        if r.verdict == VERDICT_DENY {
            return Some(*r);
        }
        if allow.is_none() {
            *allow = Some(*r);
        }
    }
    if member {
        let key = ClusterKey { gen, slot, proto, _pad: 0, port, _pad2: 0 };
        // SAFETY: a hash map value, read at once.
        if let Some(r) = unsafe { VPC_CLUSTER.get(key) } {
            if r.verdict == VERDICT_DENY {
                return Some(*r);
            }
            if allow.is_none() {
                *allow = Some(*r);
            }
        }
    }
    None
}

#[inline(always)]
fn decide(gen: u8, slot: u8, p: &Packet, port: u16, member: bool) -> Option<RuleRef> {
    let mut allow = None;
    if port != 0 {
        if let Some(deny) = level(gen, slot, p.proto, port, p, member, &mut allow) {
            return Some(deny);
        }
    }
    if let Some(deny) = level(gen, slot, p.proto, 0, p, member, &mut allow) {
        return Some(deny);
    }
    if let Some(deny) = level(gen, slot, 0, 0, p, member, &mut allow) {
        return Some(deny);
    }
    allow
}

pub fn try_ingress(ctx: &TcContext) -> Result<i32, i32> {
    let Some(p) = parse(ctx)? else { return Ok(PASS) };
    let len = u64::from(ctx.len());
    if p.is_icmp() && !p.later_fragment && always_passes(&p) {
        count(rule::ICMP, true, len);
        return Ok(PASS);
    }
    let cfg = VPC_CONFIG.get(0).ok_or(-1)?;
    if p.proto == PROTO_UDP
        && !p.later_fragment
        && cfg.overlay_port != 0
        && p.dport == cfg.overlay_port
    {
        let ok = is_member(&p);
        count(rule::OVERLAY, ok, len);
        return Ok(if ok { PASS } else { DROP });
    }
    let now = now();
    if let Some(key) = inbound_key(&p) {
        if let Some(rule) = established(&key, &p, now) {
            count(rule, true, len);
            return Ok(PASS);
        }
    }
    if p.is_icmp() && !p.later_fragment && is_error(&p) {
        if let Ok(Some(q)) = quoted(ctx, &p) {
            if outbound_key(&q).is_some_and(|k| tracked(&k, now)) {
                count(rule::RELATED, true, len);
                return Ok(PASS);
            }
        }
    }
    if p.later_fragment {
        count(rule::FRAGMENT, true, len);
        return Ok(PASS);
    }
    // SAFETY: the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: a hash map value, read at once.
    let Some(&slot) = (unsafe { VPC_IFACES.get(ifindex) }) else {
        // Not an interface the policy names (a link left from an older policy): not ours.
        return Ok(PASS);
    };
    let slot = slot as usize;
    if slot >= MAX_SLOTS {
        return Ok(PASS);
    }
    let gen = (cfg.gen & 1) as usize;
    let port = if p.proto == PROTO_TCP || p.proto == PROTO_UDP { p.dport } else { 0 };
    match decide(gen as u8, slot as u8, &p, port, is_member(&p)) {
        Some(r) if r.verdict == VERDICT_DENY => {
            count(r.rule, false, len);
            Ok(DROP)
        }
        Some(r) => {
            admit(&p, r.rule, now);
            count(r.rule, true, len);
            Ok(PASS)
        }
        None => {
            let id = rule::DEFAULT + slot as u32;
            if cfg.default_deny[gen][slot] != 0 {
                count(id, false, len);
                Ok(DROP)
            } else {
                admit(&p, id, now);
                count(id, true, len);
                Ok(PASS)
            }
        }
    }
}
