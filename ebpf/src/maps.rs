//! The maps, declared once; their layouts come from `viking_common`.
//!
//! None is pinned by the object itself: the agent pins each by name under its own bpffs
//! directory (`EbpfLoader::map_pin_path`), so several agents on one kernel stay apart.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    btf_maps::SkStorage,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use viking_common::{
    conn_stats, ended, flags, Backend, BackendHealth, BackendKey, ConnSlot, HealthConfig,
    RevNatKey, RevNatValue, ServiceHealth, ServiceKey, ServiceStats, ServiceValue, SockBackend,
    SockState, StaleKey, MAX_BACKENDS, MAX_BACKEND_SLOTS, MAX_CONNS, MAX_CONN_SLOTS, MAX_REVNAT,
    MAX_SERVICES, MAX_STALE, MAX_TRACKED_SOCKETS, PORT_SLOTS, SERVICE_NAME_LEN,
};

// NB: not preallocated, so that an update replaces the element through RCU and a reader sees
// the old value or the new one, never a mix (the atomic backend-set flip relies on it).
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(MAX_BACKEND_SLOTS, BPF_F_NO_PREALLOC);

/// Open TCP connections per backend id (connected, not yet closed): +1 at connect(), -1 at
/// the socket's release.
#[map]
pub static BACKEND_ACTIVE: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Connections ever sent to each backend id.
#[map]
pub static BACKEND_TOTAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

#[map]
pub static SERVICE_STATS: PerCpuArray<ServiceStats> =
    PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Round-robin position per service id; per CPU, so no atomics on the connect path.
#[map]
pub static RR_STATE: PerCpuArray<u32> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

#[map]
pub static REVNAT: LruHashMap<RevNatKey, RevNatValue> = LruHashMap::with_max_entries(MAX_REVNAT, 0);

#[map]
pub static SOCK_BACKEND: HashMap<u64, SockBackend> =
    HashMap::with_max_entries(MAX_TRACKED_SOCKETS, 0);

/// Index 0: how many services are scoped to one network namespace. While it is 0, a connect
/// makes one SERVICES lookup instead of two.
#[map]
pub static SCOPED: Array<u32> = Array::with_max_entries(1, 0);

/// Service names for `viking services`, written by the agent, never read by the programs.
#[map]
pub static SERVICE_NAMES: HashMap<u32, [u8; SERVICE_NAME_LEN]> =
    HashMap::with_max_entries(MAX_SERVICES, 0);

// ---- Passive health, per-socket state, stale-socket ending (docs/datapath.md) ----

/// Per-socket state of the redirected connected sockets (TCP, connected UDP), in the slot of
/// their socket cookie (conns.rs): no lock, no hash.
#[map]
pub static CONN_SLOTS: Array<ConnSlot> = Array::with_max_entries(MAX_CONN_SLOTS, 0);

/// Slots taken (the sum over CPUs; each CPU's own share may be negative).
#[map]
pub static CONN_FILL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The state of sockets whose slot another socket holds, by socket cookie. Preallocated:
/// tracking a socket allocates nothing.
#[map]
pub static CONNS: HashMap<u64, SockState> = HashMap::with_max_entries(MAX_CONNS, 0);

/// How many tracked sockets (`CONN_SLOTS`, `CONNS`) are connected to each port (index: the port in network order).
/// A socket to a port with none is not looked up (no cookie made) at its release.
#[map]
pub static CONN_PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// How full `CONNS` is, and how many sockets went past it (`viking_common::conn_stats`).
#[map]
pub static CONN_STATS: Array<u64> = Array::with_max_entries(conn_stats::COUNT, 0);

/// Per-socket state kept with the socket (the kernel frees it with the socket): unconnected
/// UDP that sent to a service, connected sockets past `CONNS`'s capacity, and the sockets of
/// an agent from before `CONNS`.
#[btf_map]
pub static SOCKS: SkStorage<SockState> = SkStorage::new();

/// How many services use each port (index: the port in network order). A connect or send to
/// a port no service uses leaves at once, without a SERVICES lookup.
#[map]
pub static PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// Ejection settings per service id (written by the agent).
#[map]
pub static HEALTH_CONFIG: Array<HealthConfig> = Array::with_max_entries(MAX_SERVICES, 0);

/// Ejection and failure counters per service id.
#[map]
pub static SERVICE_HEALTH: Array<ServiceHealth> = Array::with_max_entries(MAX_SERVICES, 0);

/// Health per backend id.
#[map]
pub static BACKEND_HEALTH: Array<BackendHealth> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Backends that left a service, while the agent ends the sockets pinned to them.
#[map]
pub static STALE: HashMap<StaleKey, u32> = HashMap::with_max_entries(MAX_STALE, 0);

/// Switches (`viking_common::flags`).
#[map]
pub static FLAGS: Array<u32> = Array::with_max_entries(flags::COUNT, 0);

/// Sockets ended by the iterators (`viking_common::ended`).
#[map]
pub static ENDED: Array<u64> = Array::with_max_entries(ended::COUNT, 0);

/// Whether a switch of `FLAGS` is on.
#[inline(always)]
pub fn flag(index: u32) -> bool {
    FLAGS.get(index).is_some_and(|v| *v != 0)
}

/// The map's address, as helpers take it.
#[inline(always)]
pub fn socks_ptr() -> *mut core::ffi::c_void {
    core::ptr::from_ref(&SOCKS).cast_mut().cast()
}
