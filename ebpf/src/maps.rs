//! The maps, declared once; their layouts come from `viking_common`.
//!
//! None is pinned by the object itself: the agent pins each by name under its own bpffs
//! directory (`EbpfLoader::map_pin_path`), so several agents on one kernel stay apart.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use viking_common::{
    Backend, BackendKey, RevNatKey, RevNatValue, ServiceKey, ServiceStats, ServiceValue,
    SockBackend, MAX_BACKENDS, MAX_BACKEND_SLOTS, MAX_REVNAT, MAX_SERVICES, MAX_TRACKED_SOCKETS,
    SERVICE_NAME_LEN,
};

// NB: not preallocated, so that an update replaces the element through RCU and a reader sees
// the old value or the new one, never a mix (the atomic backend-set flip relies on it).
#[map]
pub static SERVICES: HashMap<ServiceKey, ServiceValue> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map]
pub static BACKENDS: HashMap<BackendKey, Backend> =
    HashMap::with_max_entries(MAX_BACKEND_SLOTS, BPF_F_NO_PREALLOC);

/// Active (established, not yet closed) TCP connections per backend id, kept by sock_ops.
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
