//! Map layouts and constants shared by the eBPF programs (`viking-ebpf`) and the agent.
//!
//! Every key and value here is `#[repr(C)]` with explicit padding so that the kernel and the
//! agent agree byte for byte. With the `user` feature each implements `aya::Pod`.
//!
//! Addresses are 16 bytes in network byte order, laid out like `bpf_sock_addr.user_ip6`; an
//! IPv4 address is stored IPv4-mapped (`::ffff:a.b.c.d`), so one table serves both families and
//! a v6 socket connecting to a v4-mapped address finds the v4 service. Ports are stored as the
//! kernel stores them: the network-order `u16` (`port.to_be()`).
#![no_std]

/// Names of the maps, as the agent pins them under `<bpffs>/maps/`.
pub mod maps {
    pub const SERVICES: &str = "SERVICES";
    pub const BACKENDS: &str = "BACKENDS";
    pub const BACKEND_ACTIVE: &str = "BACKEND_ACTIVE";
    pub const BACKEND_TOTAL: &str = "BACKEND_TOTAL";
    pub const SERVICE_STATS: &str = "SERVICE_STATS";
    pub const RR_STATE: &str = "RR_STATE";
    pub const REVNAT: &str = "REVNAT";
    pub const SOCK_BACKEND: &str = "SOCK_BACKEND";
    pub const SERVICE_NAMES: &str = "SERVICE_NAMES";
    pub const SCOPED: &str = "SCOPED";
    pub const SOCKS: &str = "SOCKS";
    pub const PORTS: &str = "PORTS";
    pub const HEALTH_CONFIG: &str = "HEALTH_CONFIG";
    pub const SERVICE_HEALTH: &str = "SERVICE_HEALTH";
    pub const BACKEND_HEALTH: &str = "BACKEND_HEALTH";
    pub const STALE: &str = "STALE";
    pub const FLAGS: &str = "FLAGS";
    pub const ENDED: &str = "ENDED";
    pub const CONNS: &str = "CONNS";
    pub const CONN_PORTS: &str = "CONN_PORTS";
    pub const CONN_STATS: &str = "CONN_STATS";
    pub const CONN_SLOTS: &str = "CONN_SLOTS";
    pub const CONN_FILL: &str = "CONN_FILL";
    /// Every map whose contents must survive an agent restart, in the order they came (the
    /// upgrade test removes the newer ones to play an older agent).
    pub const PINNED: [&str; 23] = [
        SERVICES,
        BACKENDS,
        BACKEND_ACTIVE,
        BACKEND_TOTAL,
        SERVICE_STATS,
        RR_STATE,
        REVNAT,
        SOCK_BACKEND,
        SERVICE_NAMES,
        SCOPED,
        SOCKS,
        PORTS,
        HEALTH_CONFIG,
        SERVICE_HEALTH,
        BACKEND_HEALTH,
        STALE,
        FLAGS,
        ENDED,
        CONNS,
        CONN_PORTS,
        CONN_STATS,
        CONN_SLOTS,
        CONN_FILL,
    ];
}

/// Names of the programs in the object (the function names in `ebpf/src/main.rs`).
pub mod programs {
    pub const CONNECT4: &str = "connect4";
    pub const CONNECT6: &str = "connect6";
    pub const SENDMSG4: &str = "sendmsg4";
    pub const SENDMSG6: &str = "sendmsg6";
    pub const RECVMSG4: &str = "recvmsg4";
    pub const RECVMSG6: &str = "recvmsg6";
    pub const GETPEERNAME4: &str = "getpeername4";
    pub const GETPEERNAME6: &str = "getpeername6";
    /// cgroup/sock_release: a redirected socket leaves its backend's count; its connect's
    /// outcome is judged if the kernel's TCP did not judge it before.
    pub const RELEASE: &str = "viking_release";
    /// The BTF tracepoint that sees a redirected connect's SYN go unanswered (host-wide, on
    /// retransmissions only).
    pub const SYN_RETRANSMIT: &str = "syn_retransmit";
    /// The tracepoint each of those attaches to.
    pub const TRACEPOINTS: [(&str, &str); 1] = [(SYN_RETRANSMIT, "tcp_retransmit_skb")];
    /// Programs of earlier agents whose pinned links an upgrade removes: the sock_ops program
    /// of agents before the release hook, and the tracepoint on every RST received of agents
    /// before the release hook judged refused connects.
    pub const OLD: [&str; 2] = ["viking_sockops", "syn_reset"];
    /// Socket iterators that end sockets pinned to a backend that left (bpf_sock_destroy).
    pub const END_UDP: &str = "end_udp";
    pub const END_TCP: &str = "end_tcp";
    /// Programs that only return, on the two hooks every TCP connection runs (connect4 at
    /// connect(), sock_release at close). The agent never attaches them: a benchmark does,
    /// beside the datapath's, to read what a run that does nothing costs on the machine
    /// (the floor of BPF_ENABLE_STATS' per-run time).
    pub const FLOOR_CONNECT4: &str = "floor_connect4";
    pub const FLOOR_RELEASE: &str = "floor_release";
}

/// Capacity of the service table (keys) and of the service id space.
pub const MAX_SERVICES: u32 = 131_072;
/// Capacity of the backend-id space (counters are arrays indexed by backend id). As large as
/// the service id space, so that every service can have a backend of its own (the per-CPU
/// total counter costs 1 MiB per CPU at this size).
pub const MAX_BACKENDS: u32 = 131_072;
/// Capacity of the backend-slot map: every live backend set, plus the one being replaced.
pub const MAX_BACKEND_SLOTS: u32 = 524_288;
/// Most backends one service may have.
pub const MAX_BACKENDS_PER_SERVICE: u32 = 1024;
/// Least-connections scans at most this many slots, starting at a random one.
pub const LEAST_CONN_SCAN: u32 = 32;
/// Sockets whose address the kernel reports back as the ambassador (LRU).
pub const MAX_REVNAT: u32 = 262_144;
/// TCP sockets tracked for active-connection counts (by agents before socket storage).
pub const MAX_TRACKED_SOCKETS: u32 = 262_144;
/// Slots of `CONN_SLOTS`, where a redirected connected socket's state goes first (a slot
/// per cookie modulo this, 64 bytes each: 4 MiB of kernel memory). A power of two.
pub const MAX_CONN_SLOTS: u32 = 65_536;
/// Redirected connected sockets whose slot was taken, in the preallocated hash `CONNS` (about
/// 7 MiB of kernel memory); past it a socket's state goes to its socket storage (`SOCKS`).
pub const MAX_CONNS: u32 = 65_536;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// How a service picks a backend for a new connection.
pub mod algo {
    pub const RANDOM: u8 = 0;
    pub const ROUND_ROBIN: u8 = 1;
    pub const LEAST_CONN: u8 = 2;
}

/// The third word of an IPv4-mapped IPv6 address, in network byte order.
pub const V4_MAPPED_PREFIX: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// An address as 16 network-order bytes (see the crate docs).
pub type Addr = [u32; 4];

/// The IPv4-mapped form of a network-order IPv4 address (`bpf_sock_addr.user_ip4`).
#[inline(always)]
pub const fn v4_mapped(ip4: u32) -> Addr {
    [0, 0, V4_MAPPED_PREFIX, ip4]
}

/// Whether the address is IPv4-mapped, so a v4 socket can use it.
#[inline(always)]
pub const fn is_v4_mapped(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED_PREFIX
}

/// Key of the service table: the ambassador address a client connects to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub proto: u8,
    pub _pad: [u8; 5],
    /// Network-namespace cookie the service is visible in; 0 means every namespace.
    pub netns: u64,
}

/// Value of the service table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceValue {
    /// Stable id: index of the service's counters and round-robin state.
    pub id: u32,
    /// The backend set in force; replaced whole by writing a new set and flipping this.
    pub set: u32,
    /// Number of slots in the set; 0 refuses connections.
    pub count: u32,
    pub algo: u8,
    pub _pad: u8,
    /// Backends the service has beyond `MAX_BACKENDS_PER_SERVICE`, left out of the set
    /// (saturating). Read by userspace only (`viking services`).
    pub unprogrammed: u16,
}

/// Key of the backend-slot map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub set: u32,
    pub slot: u32,
}

/// One backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: Addr,
    /// Network order.
    pub port: u16,
    pub _pad: u16,
    /// Stable id of this backend: index of its counters.
    pub id: u32,
}

/// Per-CPU counters of one service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceStats {
    /// Connections (TCP connects, connected-UDP connects, unconnected UDP sends) sent to a backend.
    pub conns: u64,
    /// Connects refused because the service had no backend.
    pub rejects: u64,
    /// Unconnected UDP datagrams dropped because the service had no backend.
    pub drops: u64,
}

/// Key of the reverse-translation map: a socket and the backend it was sent to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RevNatKey {
    pub cookie: u64,
    pub addr: Addr,
    pub port: u16,
    pub _pad: [u8; 6],
}

/// The ambassador address a socket asked for.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevNatValue {
    pub addr: Addr,
    pub port: u16,
    pub _pad: u16,
    pub _pad2: u32,
}

/// A TCP socket sent to a backend, tracked for least-connections.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockBackend {
    pub backend: u32,
    pub service: u32,
    /// `SOCK_COUNTED` once the established callback counted it as active.
    pub flags: u32,
    pub _pad: u32,
    /// The backend it was sent to: with the socket's cookie, its `REVNAT` key, deleted when
    /// the socket closes.
    pub addr: Addr,
    pub port: u16,
    pub _pad2: [u8; 6],
}

pub const SOCK_COUNTED: u32 = 1;

/// Bytes of a service name kept in `SERVICE_NAMES`.
pub const SERVICE_NAME_LEN: usize = 64;

mod health;
pub use health::*;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: every type is #[repr(C)], made only of integers, with explicit padding fields.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for ServiceValue {}
    unsafe impl aya::Pod for BackendKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for ServiceStats {}
    unsafe impl aya::Pod for RevNatKey {}
    unsafe impl aya::Pod for RevNatValue {}
    unsafe impl aya::Pod for SockBackend {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<ServiceKey>(), 32);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<BackendKey>(), 8);
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(size_of::<ServiceStats>(), 24);
        assert_eq!(size_of::<RevNatKey>(), 32);
        assert_eq!(size_of::<RevNatValue>(), 24);
        assert_eq!(size_of::<SockBackend>(), 40);
    }

    #[test]
    fn v4_mapped_matches_the_kernel_layout() {
        let ip = u32::from_ne_bytes([127, 0, 0, 1]);
        let a = v4_mapped(ip);
        let mut bytes = [0u8; 16];
        for (i, w) in a.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(bytes, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
        assert!(is_v4_mapped(&a));
        assert!(!is_v4_mapped(&[0, 0, 0, 1]));
    }
}

/// The VPC host filter's maps (a separate object, `viking-vpc`).
pub mod vpc;
