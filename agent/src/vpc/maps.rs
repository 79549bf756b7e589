//! Programming the filter's pinned maps.
//!
//! A policy is written whole into the generation the kernel does not read (`stage`), made live
//! by one update of `VPC_CONFIG.gen` (`flip`), and the old generation is deleted once no
//! program can still be reading it (`retire`). A packet meets the old policy or the new one.
use std::{collections::BTreeSet, net::IpAddr, path::Path, time::Duration};

use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues,
};
use ipnetwork::IpNetwork;
use viking_common::vpc::{
    maps, ClusterKey, CtKey, CtValue, MemberKey, PolicyKey, RuleRef, RuleStats, VpcConfig,
    FAMILY_V4, FAMILY_V6, MAX_SLOTS, MEMBER_FIXED_BITS, POLICY_FIXED_BITS, VERDICT_ALLOW,
    VERDICT_DENY,
};

use super::{
    compile::{Compiled, Space},
    error::VpcError,
    policy::{Action, DefaultAction},
    sockets::{Conn, SockProto},
};

type Result<T> = std::result::Result<T, VpcError>;

/// How long a retired generation stays readable (a TC program runs for microseconds).
pub const GRACE: Duration = Duration::from_millis(50);

fn open_map(dir: &Path, name: &'static str) -> Result<Map> {
    let data = MapData::from_pin(dir.join(name)).map_err(VpcError::map(name))?;
    Map::from_map_data(data).map_err(VpcError::map(name))
}

/// Network-order words of an address: an IPv4 address in the first word.
pub fn words(ip: IpAddr) -> (u8, [u32; 4]) {
    match ip {
        IpAddr::V4(v4) => (FAMILY_V4, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (FAMILY_V6, [w(0), w(4), w(8), w(12)])
        }
    }
}

fn addr_of(family: u8, w: [u32; 4]) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(w[0].to_ne_bytes())
    } else {
        let mut o = [0u8; 16];
        for (i, x) in w.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&x.to_ne_bytes());
        }
        IpAddr::from(o)
    }
}

fn policy_key(gen: u8, space: Space, net: &IpNetwork) -> Key<PolicyKey> {
    let (family, addr) = words(net.network());
    Key::new(
        POLICY_FIXED_BITS + u32::from(net.prefix()),
        PolicyKey {
            gen,
            slot: space.slot,
            proto: space.proto,
            family,
            port: space.port.to_be(),
            _pad: 0,
            addr,
        },
    )
}

fn cluster_key(gen: u8, space: Space) -> ClusterKey {
    ClusterKey {
        gen,
        slot: space.slot,
        proto: space.proto,
        _pad: 0,
        port: space.port.to_be(),
        _pad2: 0,
    }
}

fn rule_ref(rule: u32, action: Action) -> RuleRef {
    let verdict = if action == Action::Deny { VERDICT_DENY } else { VERDICT_ALLOW };
    RuleRef { rule, verdict, _pad: [0; 3] }
}

fn member_key(ip: IpAddr) -> Key<MemberKey> {
    let (family, addr) = words(ip);
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    Key::new(MEMBER_FIXED_BITS + bits, MemberKey { family, _pad: [0; 3], addr })
}

/// Typed access to the filter's pinned maps.
pub struct VpcMaps {
    config: Array<MapData, VpcConfig>,
    ifaces: HashMap<MapData, u32, u32>,
    members: LpmTrie<MapData, MemberKey, u32>,
    policy: LpmTrie<MapData, PolicyKey, RuleRef>,
    cluster: HashMap<MapData, ClusterKey, RuleRef>,
    ct: HashMap<MapData, CtKey, CtValue>,
    stats: PerCpuArray<MapData, RuleStats>,
    ncpus: usize,
}

impl VpcMaps {
    /// Opens the maps pinned in `dir` (`<bpffs>/vpc/maps`).
    pub fn open(dir: &Path) -> Result<Self> {
        let ncpus = aya::util::nr_cpus().map_err(|(what, e)| VpcError::io("reading", what)(e))?;
        Ok(Self {
            config: open_map(dir, maps::CONFIG)?.try_into().map_err(VpcError::map(maps::CONFIG))?,
            ifaces: open_map(dir, maps::IFACES)?.try_into().map_err(VpcError::map(maps::IFACES))?,
            members: open_map(dir, maps::MEMBERS)?
                .try_into()
                .map_err(VpcError::map(maps::MEMBERS))?,
            policy: open_map(dir, maps::POLICY)?.try_into().map_err(VpcError::map(maps::POLICY))?,
            cluster: open_map(dir, maps::CLUSTER)?
                .try_into()
                .map_err(VpcError::map(maps::CLUSTER))?,
            ct: open_map(dir, maps::CT)?.try_into().map_err(VpcError::map(maps::CT))?,
            stats: open_map(dir, maps::STATS)?.try_into().map_err(VpcError::map(maps::STATS))?,
            ncpus,
        })
    }

    pub fn config(&self) -> Result<VpcConfig> {
        self.config.get(&0, 0).map_err(VpcError::map(maps::CONFIG))
    }

    fn set_config(&mut self, cfg: VpcConfig) -> Result<()> {
        self.config.set(0, cfg, 0).map_err(VpcError::map(maps::CONFIG))
    }

    /// The overlay's UDP port (0: none), taken at once.
    pub fn set_overlay_port(&mut self, port: u16) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.overlay_port = port.to_be();
        self.set_config(cfg)
    }

    /// Deletes every entry of generation `gen`.
    fn clear_gen(&mut self, gen: u8) -> Result<()> {
        let keys: Vec<Key<PolicyKey>> =
            self.policy.keys().filter_map(|k| k.ok()).filter(|k| k.data().gen == gen).collect();
        for k in keys {
            self.policy.remove(&k).map_err(VpcError::map(maps::POLICY))?;
        }
        let keys: Vec<ClusterKey> =
            self.cluster.keys().filter_map(|k| k.ok()).filter(|k| k.gen == gen).collect();
        for k in keys {
            self.cluster.remove(&k).map_err(VpcError::map(maps::CLUSTER))?;
        }
        Ok(())
    }

    /// Writes `c` into the generation the kernel does not read; `ids[i]` is the kernel id of
    /// `c.rules[i]`. Returns that generation. On error nothing of it stays.
    pub fn stage(&mut self, c: &Compiled, ids: &[u32]) -> Result<u8> {
        let mut cfg = self.config()?;
        let gen = ((cfg.gen & 1) ^ 1) as u8;
        self.clear_gen(gen)?;
        let written = (|| -> Result<()> {
            for ((space, net), d) in &c.nets {
                let key = policy_key(gen, *space, net);
                self.policy
                    .insert(&key, rule_ref(ids[d.rule], d.action), 0)
                    .map_err(VpcError::map(maps::POLICY))?;
            }
            for (space, d) in &c.cluster {
                self.cluster
                    .insert(cluster_key(gen, *space), rule_ref(ids[d.rule], d.action), 0)
                    .map_err(VpcError::map(maps::CLUSTER))?;
            }
            let mut deny = [0u8; MAX_SLOTS];
            for s in &c.slots {
                deny[usize::from(s.slot)] = u8::from(s.default == DefaultAction::Deny);
            }
            cfg.default_deny[usize::from(gen)] = deny;
            self.set_config(cfg)
        })();
        if let Err(e) = written {
            let _ = self.clear_gen(gen);
            return Err(e);
        }
        Ok(gen)
    }

    /// Makes generation `gen` the one the programs read.
    pub fn flip(&mut self, gen: u8) -> Result<()> {
        let mut cfg = self.config()?;
        cfg.gen = u32::from(gen);
        self.set_config(cfg)
    }

    /// Deletes the generation that is not live (call `GRACE` after `flip`).
    pub fn retire(&mut self) -> Result<()> {
        let live = (self.config()?.gen & 1) as u8;
        self.clear_gen(live ^ 1)
    }

    /// Drops a staged generation that will not be flipped to.
    pub fn abandon(&mut self, gen: u8) -> Result<()> {
        self.clear_gen(gen)
    }

    /// Interface index -> slot, as the programs see it.
    pub fn ifaces(&self) -> Vec<(u32, u32)> {
        self.ifaces.iter().filter_map(|r| r.ok()).collect()
    }

    pub fn set_iface(&mut self, ifindex: u32, slot: u8) -> Result<()> {
        self.ifaces.insert(ifindex, u32::from(slot), 0).map_err(VpcError::map(maps::IFACES))
    }

    pub fn remove_iface(&mut self, ifindex: u32) -> Result<()> {
        match self.ifaces.remove(&ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(VpcError::map(maps::IFACES)(e)),
        }
    }

    /// The member addresses as the filter sees them.
    pub fn members(&self) -> BTreeSet<IpAddr> {
        self.members
            .keys()
            .filter_map(|k| k.ok())
            .map(|k| {
                let d = k.data();
                addr_of(d.family, d.addr)
            })
            .collect()
    }

    /// Makes the member set `want`; returns (added, removed).
    pub fn set_members(&mut self, want: &BTreeSet<IpAddr>) -> Result<(usize, usize)> {
        let have = self.members();
        let mut added = 0;
        for ip in want.difference(&have) {
            self.members.insert(&member_key(*ip), 1, 0).map_err(VpcError::map(maps::MEMBERS))?;
            added += 1;
        }
        let mut removed = 0;
        for ip in have.difference(want) {
            self.members.remove(&member_key(*ip)).map_err(VpcError::map(maps::MEMBERS))?;
            removed += 1;
        }
        Ok((added, removed))
    }

    /// Counters of one rule, summed over the CPUs.
    pub fn stats(&self, rule: u32) -> RuleStats {
        let mut sum = RuleStats::default();
        if let Ok(values) = self.stats.get(&rule, 0) {
            for v in values.iter() {
                sum.pass_packets += v.pass_packets;
                sum.pass_bytes += v.pass_bytes;
                sum.drop_packets += v.drop_packets;
                sum.drop_bytes += v.drop_bytes;
            }
        }
        sum
    }

    /// Zeroes the counters of rule ids a new rule is about to get.
    pub fn reset_stats(&mut self, rule: u32) -> Result<()> {
        let zero = PerCpuValues::try_from(vec![RuleStats::default(); self.ncpus])
            .map_err(|e| VpcError::io("per-CPU values", maps::STATS)(e))?;
        self.stats.set(rule, zero, 0).map_err(VpcError::map(maps::STATS))
    }

    /// Tracked connections now (entries, lapsed ones included until they are evicted).
    pub fn connections(&self) -> usize {
        self.ct.keys().count()
    }

    /// Puts the host's connected sockets in the connection table, so that the filter's first
    /// attach cuts none of them. Returns how many were added.
    pub fn seed(&mut self, conns: &[Conn], rule: u32) -> Result<usize> {
        let now = monotonic_ns();
        let mut n = 0;
        for c in conns {
            if c.remote.ip().is_loopback() || c.remote.is_ipv4() != c.local.is_ipv4() {
                continue;
            }
            let (family, remote) = words(c.remote.ip());
            let (_, local) = words(c.local.ip());
            let proto = match c.proto {
                SockProto::Tcp => viking_common::PROTO_TCP,
                SockProto::Udp => viking_common::PROTO_UDP,
            };
            let key = CtKey {
                remote,
                local,
                remote_port: c.remote.port().to_be(),
                local_port: c.local.port().to_be(),
                proto,
                family,
                _pad: 0,
            };
            let value = CtValue { seen: now, rule, flags: 0 };
            // NB: BPF_NOEXIST: an entry the programs keep is left as it is.
            if self.ct.insert(key, value, 1).is_ok() {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
