//! The filter's maps, declared once; layouts in `viking_common::vpc`. The agent pins each
//! under `<bpffs>/vpc/maps/`.
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
};
use viking_common::vpc::{
    ClusterKey, CtKey, CtValue, MemberKey, PolicyKey, RuleRef, RuleStats, VpcConfig,
    MAX_CLUSTER_ENTRIES, MAX_CONNECTIONS, MAX_MEMBERS, MAX_POLICY_ENTRIES, MAX_RULES, MAX_SLOTS,
};

#[map]
pub static VPC_CONFIG: Array<VpcConfig> = Array::with_max_entries(1, 0);

/// ifindex -> policy slot of the interfaces the filter is attached to.
#[map]
pub static VPC_IFACES: HashMap<u32, u32> = HashMap::with_max_entries(MAX_SLOTS as u32 * 4, 0);

/// The cluster's member hosts, kept from membership.
#[map]
pub static VPC_MEMBERS: LpmTrie<MemberKey, u32> = LpmTrie::with_max_entries(MAX_MEMBERS, 0);

/// Allowed and denied source prefixes per (generation, slot, protocol, port).
#[map]
pub static VPC_POLICY: LpmTrie<PolicyKey, RuleRef> =
    LpmTrie::with_max_entries(2 * MAX_POLICY_ENTRIES, 0);

/// What `from: cluster` rules decide per (generation, slot, protocol, port).
// NB: not preallocated, so an update replaces the element through RCU.
#[map]
pub static VPC_CLUSTER: HashMap<ClusterKey, RuleRef> =
    HashMap::with_max_entries(2 * MAX_CLUSTER_ENTRIES, BPF_F_NO_PREALLOC);

/// Connections that pass by themselves: opened from here (learned on egress), or admitted by
/// the policy when they began (a reload does not cut them).
#[map]
pub static VPC_CT: LruHashMap<CtKey, CtValue> = LruHashMap::with_max_entries(MAX_CONNECTIONS, 0);

/// Per-rule packets and bytes passed and dropped.
#[map]
pub static VPC_STATS: PerCpuArray<RuleStats> = PerCpuArray::with_max_entries(MAX_RULES, 0);
