//! Map layouts of the VPC host filter (`ebpf/src/vpc/`, `agent/src/vpc/`;
//! docs/vpc-rules.md).
//!
//! The filter is an object of its own (`viking-vpc`), pinned under `<bpffs>/vpc/`. A policy is
//! written to the inactive *generation* of the policy maps and made live by flipping
//! `VpcConfig::gen` in one update, so a packet sees the old policy or the new one, whole.
//!
//! Ports are network order (`port.to_be()`), as the packet carries them. Policy and member keys
//! carry the address family, so an IPv6 prefix such as `::/0` never matches an IPv4 source.

/// Names of the maps, as the agent pins them under `<bpffs>/vpc/maps/`.
pub mod maps {
    pub const CONFIG: &str = "VPC_CONFIG";
    pub const IFACES: &str = "VPC_IFACES";
    pub const MEMBERS: &str = "VPC_MEMBERS";
    pub const POLICY: &str = "VPC_POLICY";
    pub const CLUSTER: &str = "VPC_CLUSTER";
    pub const CT: &str = "VPC_CT";
    pub const STATS: &str = "VPC_STATS";
    /// Every map of the filter; all are pinned (an agent restart keeps policy, members,
    /// connections and counters).
    pub const PINNED: [&str; 7] = [CONFIG, IFACES, MEMBERS, POLICY, CLUSTER, CT, STATS];
}

/// Names of the programs in the `viking-vpc` object.
pub mod programs {
    pub const INGRESS: &str = "vpc_ingress";
    pub const EGRESS: &str = "vpc_egress";
}

/// Interfaces one host can filter (policy slots).
pub const MAX_SLOTS: usize = 8;
/// The rule id space: built-in ids below `FIRST_RULE`, then the policy's rules.
pub const MAX_RULES: u32 = 1024;
/// The first id a policy rule gets.
pub const FIRST_RULE: u32 = 32;
/// Policy trie entries one policy may use (the map holds two generations).
pub const MAX_POLICY_ENTRIES: u32 = 65_536;
/// Member-rule entries one policy may use (the map holds two generations).
pub const MAX_CLUSTER_ENTRIES: u32 = 4_096;
/// Member addresses the filter knows.
pub const MAX_MEMBERS: u32 = 16_384;
/// Connections tracked (LRU: the least recently used goes when it is full).
pub const MAX_CONNECTIONS: u32 = 65_536;

/// Built-in rule ids (counters of what no policy rule decides).
pub mod rule {
    /// Packets of connections the host or its instances opened (learned on egress), and of
    /// connections that were established before the filter was attached.
    pub const REPLY: u32 = 0;
    /// ICMP that path MTU discovery and IPv6 neighbour discovery need: always passed.
    pub const ICMP: u32 = 1;
    /// ICMP errors about a tracked connection.
    pub const RELATED: u32 = 2;
    /// The overlay's UDP port: passed from members, dropped from anyone else.
    pub const OVERLAY: u32 = 3;
    /// IPv4/IPv6 fragments after the first (no ports to match; the first one was filtered).
    pub const FRAGMENT: u32 = 4;
    /// `DEFAULT + slot`: what the interface's `default` decided.
    pub const DEFAULT: u32 = 16;
}

pub const VERDICT_ALLOW: u8 = 1;
pub const VERDICT_DENY: u8 = 2;

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;

/// A tracked connection saw a FIN or an RST: it expires after `CT_CLOSING_NS` idle.
pub const CT_CLOSING: u32 = 1;

/// Idle time after which a tracked connection no longer passes by itself.
pub const CT_TCP_NS: u64 = 6 * 3600 * 1_000_000_000;
pub const CT_UDP_NS: u64 = 60 * 1_000_000_000;
pub const CT_ICMP_NS: u64 = 30 * 1_000_000_000;
pub const CT_CLOSING_NS: u64 = 60 * 1_000_000_000;
/// `CtValue::seen` is rewritten at most this often (fewer writes to a shared line).
pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// Bits of a `PolicyKey` before the address (gen, slot, proto, family, port, pad).
pub const POLICY_FIXED_BITS: u32 = 64;
/// Bits of a `MemberKey` before the address.
pub const MEMBER_FIXED_BITS: u32 = 32;

/// Index 0 of `VPC_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpcConfig {
    /// The live generation (0 or 1) of `VPC_POLICY`, `VPC_CLUSTER` and `default_deny`.
    pub gen: u32,
    /// The overlay's VXLAN port, network order; 0: no overlay port.
    pub overlay_port: u16,
    pub _pad: u16,
    /// Per generation and slot: 1 when the interface's default is deny.
    pub default_deny: [[u8; MAX_SLOTS]; 2],
}

/// Key data of `VPC_POLICY` (an LPM trie): the prefix covers `POLICY_FIXED_BITS` plus the
/// source prefix. `proto` 0 means every protocol, `port` 0 every port of the protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub gen: u8,
    pub slot: u8,
    pub proto: u8,
    pub family: u8,
    /// Network order.
    pub port: u16,
    pub _pad: u16,
    /// The source address, network order; an IPv4 address in the first word.
    pub addr: [u32; 4],
}

/// Key of `VPC_CLUSTER`: what `from: cluster` allows or denies, per port and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    pub gen: u8,
    pub slot: u8,
    pub proto: u8,
    pub _pad: u8,
    /// Network order.
    pub port: u16,
    pub _pad2: u16,
}

/// What a policy entry decides, and the rule whose counters it feeds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleRef {
    pub rule: u32,
    pub verdict: u8,
    pub _pad: [u8; 3],
}

/// Key data of `VPC_MEMBERS` (an LPM trie): a member host's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u32; 4],
}

/// Key of `VPC_CT`, as an inbound packet of the connection sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub remote: [u32; 4],
    pub local: [u32; 4],
    /// Network order; 0 for ICMP echo.
    pub remote_port: u16,
    /// Network order; the echo identifier for ICMP echo.
    pub local_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// CLOCK_MONOTONIC nanoseconds of the last packet (at `CT_REFRESH_NS` granularity).
    pub seen: u64,
    /// The rule whose counters the connection's packets feed.
    pub rule: u32,
    pub flags: u32,
}

/// Per-CPU counters of one rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    pub pass_packets: u64,
    pub pass_bytes: u64,
    pub drop_packets: u64,
    pub drop_bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], made only of integers, with explicit padding fields.
    unsafe impl aya::Pod for VpcConfig {}
    unsafe impl aya::Pod for PolicyKey {}
    unsafe impl aya::Pod for ClusterKey {}
    unsafe impl aya::Pod for RuleRef {}
    unsafe impl aya::Pod for MemberKey {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for RuleStats {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VpcConfig>(), 8 + 2 * MAX_SLOTS);
        assert_eq!(size_of::<PolicyKey>() as u32 * 8, POLICY_FIXED_BITS + 128);
        assert_eq!(size_of::<MemberKey>() as u32 * 8, MEMBER_FIXED_BITS + 128);
        assert_eq!(size_of::<ClusterKey>(), 8);
        assert_eq!(size_of::<RuleRef>(), 8);
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(size_of::<CtValue>(), 16);
        assert_eq!(size_of::<RuleStats>(), 32);
        assert!(rule::DEFAULT + MAX_SLOTS as u32 <= FIRST_RULE);
    }
}
