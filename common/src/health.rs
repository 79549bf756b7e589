//! Layouts of passive health (backend ejection), per-socket state and stale-socket ending.
//!
//! - `SockState` is the value of `SOCKS`, socket-local storage (`BPF_MAP_TYPE_SK_STORAGE`):
//!   written by connect()/sendmsg() on the sockets Viking redirected, read by sock_ops, the
//!   getpeername/recvmsg hooks and the socket iterators; freed by the kernel with the socket.
//! - `HealthConfig` (per service id, written by the agent), `ServiceHealth` (per service id)
//!   and `BackendHealth` (per backend id) are kept by sock_ops and read at selection.
//! - `StaleKey` names a backend that left a service: sockets pinned to it are ended.
use crate::Addr;

/// What connect()/sendmsg() did with one socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    /// Backend id (index of its counters and health).
    pub backend: u32,
    pub service: u32,
    /// `sock::*` bits.
    pub flags: u32,
    /// `BackendHealth::gen` when the socket was sent: a failure counts only within it.
    pub gen: u32,
    /// The backend the socket was sent to (connected sockets).
    pub addr: Addr,
    /// The ambassador address the socket asked for (reported back by getpeername/recvmsg).
    pub orig_addr: Addr,
    /// Network order.
    pub port: u16,
    pub orig_port: u16,
    pub _pad: u32,
}

/// One slot of `CONN_SLOTS`: the state of the socket whose cookie it holds (0: free). A
/// socket's slot is its cookie modulo the slot count; a socket whose slot is taken by another
/// goes to `CONNS`. One cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnSlot {
    pub cookie: u64,
    pub state: SockState,
}

/// Bits of `SockState::flags`.
pub mod sock {
    /// A connected socket (TCP, connected UDP): `addr`/`port` are its backend.
    pub const CONNECTED: u32 = 1;
    /// Counted in `BACKEND_ACTIVE` (connected, not yet closed).
    pub const COUNTED: u32 = 2;
    /// Its connect failed and was counted against the backend (once per socket).
    pub const FAILED: u32 = 4;
    /// Unconnected UDP that sent to a service: its replies are looked up in `REVNAT`.
    pub const REVNAT: u32 = 8;
    /// Its connect succeeded (established once).
    pub const ESTABLISHED: u32 = 16;
}

/// Ejection settings of one service (index: service id). `after == 0`: never eject.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HealthConfig {
    /// Consecutive failed connects that eject a backend.
    pub after: u32,
    /// First ejection's length; doubles with each ejection in a row.
    pub backoff_ms: u32,
    /// The longest an ejection lasts.
    pub max_backoff_ms: u32,
    /// 1: when a backend leaves, the agent ends TCP sockets pinned to it as well.
    pub end_tcp: u32,
}

/// Counters of one service (index: service id), added to atomically by sock_ops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceHealth {
    /// Backends ejected (each time counts).
    pub ejections: u64,
    /// Connects that failed (RST to the SYN, SYN retransmission timeout, closed unanswered).
    pub failures: u64,
}

/// Health of one backend (index: backend id), kept by sock_ops, read at selection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendHealth {
    /// Failed connects in a row since the last success or ejection.
    pub fails: u64,
    /// Ejected until this CLOCK_MONOTONIC time (ns); 0: in rotation.
    pub until_ns: u64,
    /// Once the ejection is over, one probe connection is let through; until this time the
    /// others keep away from it.
    pub probe_ns: u64,
    /// Ejections in a row: the backoff is `backoff << (level - 1)`. 0: healthy.
    pub level: u32,
    /// Bumped at each ejection.
    pub gen: u32,
    /// Times ejected (a counter).
    pub ejections: u64,
    /// Failed connects (a counter).
    pub failures: u64,
}

/// How long a probe connection has to answer before the next one may go (the kernel's first
/// SYN retransmission timeout is 1 s: a black-holed probe is known to have failed by then).
pub const PROBE_NS: u64 = 1_000_000_000;

/// A backend that left a service (key of `STALE`): sockets of that service still pinned to it
/// are ended by the socket iterators.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StaleKey {
    pub service: u32,
    /// Network order.
    pub port: u16,
    pub _pad: u16,
    pub addr: Addr,
}

/// Capacity of `STALE` (backends ending at once).
pub const MAX_STALE: u32 = 4096;

/// Indexes of the `FLAGS` array.
pub mod flags {
    /// Set by the agent when sockets of an older agent (tracked in SOCK_BACKEND and REVNAT
    /// only) may still be open.
    pub const LEGACY: u32 = 0;
    pub const COUNT: u32 = 1;
}

/// Indexes of the `CONN_STATS` counters.
pub mod conn_stats {
    /// Sockets whose state went to their socket storage because their slot was taken and
    /// `CONNS` was full (ever).
    pub const PAST_TABLE: u32 = 0;
    /// Entries in `CONNS` now (sockets whose slot was taken). While it is 0, a socket found
    /// in its slot is not looked up in `CONNS` too. (A map pinned by an agent from before
    /// the slots lacks this index: the programs then always look.)
    pub const HASHED: u32 = 1;
    pub const COUNT: u32 = 2;
}

/// Indexes of the `ENDED` counters.
pub mod ended {
    /// UDP sockets ended (by the iterator).
    pub const UDP: u32 = 0;
    /// TCP sockets ended (by the iterator).
    pub const TCP: u32 = 1;
    /// Sweeps that failed (by the agent).
    pub const FAILED_SWEEPS: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Number of entries of `PORTS` (one per port: how many services listen on it).
pub const PORT_SLOTS: u32 = 65_536;

/// Offset of `skc_state` (the TCP state, one byte) in `struct sock_common`, at the start of
/// every `struct sock`: after the address pair (8 bytes), the hash (4) and the port pair (4)
/// and the family (2), on every kernel since 2.6. NB: a fixed offset because aya's Rust
/// programs cannot be relocated against the kernel's BTF (no CO-RE); the tests that eject a
/// backend refusing connects would fail if it moved.
pub const SKC_STATE_OFFSET: usize = 18;

/// Offset of `sock_common.skc_dport` (the destination port, network order): after the two
/// addresses and the hash, on every kernel since 2.6. Fixed, as `SKC_STATE_OFFSET` is.
pub const SKC_DPORT_OFFSET: usize = 12;

/// Marker `call` instruction the socket iterators emit for the kernel function
/// `bpf_sock_destroy`: `code` 0x85 (call), `src_reg` 2 (a kernel function), imm 0x7ead5de5.
/// The agent replaces the imm with the function's BTF id before loading.
pub const SOCK_DESTROY_CALL: u64 = 0x7EAD_5DE5_0000_2085;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)], integers only, explicit padding.
    unsafe impl aya::Pod for SockState {}
    unsafe impl aya::Pod for ConnSlot {}
    unsafe impl aya::Pod for HealthConfig {}
    unsafe impl aya::Pod for ServiceHealth {}
    unsafe impl aya::Pod for BackendHealth {}
    unsafe impl aya::Pod for StaleKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<SockState>(), 56);
        assert_eq!(size_of::<HealthConfig>(), 16);
        assert_eq!(size_of::<ServiceHealth>(), 16);
        assert_eq!(size_of::<BackendHealth>(), 48);
        assert_eq!(size_of::<StaleKey>(), 24);
    }
}
