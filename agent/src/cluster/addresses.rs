//! The subnet and address allocator (seed 001 "DHCP"): a subnet per stack out of a pool, an
//! address per container inside its stack's subnet.
//!
//! - `/viking/alloc/subnets/<stack>` holds the stack's subnet (`10.32.3.0/24`). It is sized
//!   for the stack's instance count: at least a /24, larger when the stack needs more.
//! - `/viking/alloc/ips/<stack>/<ip>` holds the owner of that address (the container, e.g.
//!   `web/0`). The same owner asking again gets the same address.
//! - In each subnet the network address, the first host address (the gateway, for the
//!   overlay's bridge) and the broadcast address are never given out.
//! - Addresses are handed out round-robin after the most recently allocated one, so a released
//!   address is reused as late as possible (stale ARP/conntrack entries die first).
//!
//! Every allocation is a compare-and-swap: it commits only if nothing was added under what it
//! looked at (the pool's subnets, the stack's addresses) since it looked, so no subnet or
//! address ever has two owners.
use std::{
    collections::{BTreeMap, HashSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use serde::Serialize;

use super::{error::check_name, retry::Attempts, ClusterError};
use crate::store::{keys, Compare, KeyValue, Listing, Op, Store, Txn};

/// The default pool: weave's default allocation range, private (RFC 1918) and clear of
/// Docker's 172.17.0.0/16 and the usual 192.168.0.0/16 LANs. 4096 /24 stacks.
pub const DEFAULT_POOL: &str = "10.32.0.0/12";
/// Stacks get at least this (a /24: 253 containers).
pub const MIN_SUBNET_PREFIX: u8 = 24;
/// Addresses of a subnet never given to containers: network, gateway, broadcast.
pub const RESERVED: u64 = 3;

pub fn default_pool() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(10, 32, 0, 0), 12)
        .unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::UNSPECIFIED))
}

/// The gateway address of a stack's subnet (its first host address).
pub fn gateway(subnet: Ipv4Network) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// How many containers a subnet holds.
pub fn capacity(subnet: Ipv4Network) -> u64 {
    (1u64 << (32 - u32::from(subnet.prefix()))).saturating_sub(RESERVED)
}

/// The prefix length a stack of `instances` containers needs.
pub fn prefix_for(instances: u64) -> u8 {
    let needed = instances + RESERVED;
    let bits = 64 - (needed.saturating_sub(1)).leading_zeros();
    (32u32.saturating_sub(bits)).min(u32::from(MIN_SUBNET_PREFIX)) as u8
}

/// A stack's subnet and how much of it is in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubnetAllocation {
    pub stack: String,
    pub subnet: Ipv4Network,
    pub used: usize,
    pub capacity: u64,
}

/// One container address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IpAllocation {
    pub stack: String,
    pub ip: Ipv4Addr,
    pub owner: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct AddressTable {
    pub subnets: Vec<SubnetAllocation>,
    pub ips: Vec<IpAllocation>,
}

/// The allocator, over any store, for one pool.
#[derive(Clone)]
pub struct Addresses<S> {
    store: S,
    pool: Ipv4Network,
}

fn parse_subnet(kv: &KeyValue) -> Result<Ipv4Network, ClusterError> {
    let text = kv.text()?.trim();
    let net: Ipv4Network = text.parse().map_err(|_| {
        ClusterError::bad_value(&kv.key, &kv.value, "not an IPv4 subnet like 10.32.0.0/24")
    })?;
    if net.network() != net.ip() {
        return Err(ClusterError::bad_value(&kv.key, &kv.value, "not a subnet's network address"));
    }
    if net.prefix() > 30 {
        return Err(ClusterError::bad_value(&kv.key, &kv.value, "smaller than a /30"));
    }
    Ok(net)
}

fn parse_owner(kv: &KeyValue) -> Result<String, ClusterError> {
    let owner = kv.text()?.trim();
    if owner.is_empty() {
        return Err(ClusterError::bad_value(&kv.key, &kv.value, "no owner"));
    }
    Ok(owner.to_string())
}

fn subnet_stack(key: &str) -> Result<String, ClusterError> {
    match key.strip_prefix(keys::SUBNETS) {
        Some(stack) if keys::segment_problem(stack).is_none() => Ok(stack.to_string()),
        _ => Err(ClusterError::Invalid(format!(
            "key {key} is not a subnet record (/viking/alloc/subnets/<stack>)"
        ))),
    }
}

fn ip_key(key: &str) -> Result<(String, Ipv4Addr), ClusterError> {
    let bad = || {
        ClusterError::Invalid(format!(
            "key {key} is not an address record (/viking/alloc/ips/<stack>/<ip>)"
        ))
    };
    let rest = key.strip_prefix(keys::IPS).ok_or_else(bad)?;
    let (stack, ip) = rest.split_once('/').ok_or_else(bad)?;
    if keys::segment_problem(stack).is_some() {
        return Err(bad());
    }
    Ok((stack.to_string(), ip.parse().map_err(|_| bad())?))
}

/// The stack's addresses: (ip, owner, create revision), each checked to lie in `subnet`.
fn stack_ips(
    listing: &Listing,
    stack: &str,
    subnet: Option<Ipv4Network>,
) -> Result<Vec<(Ipv4Addr, String, i64)>, ClusterError> {
    let mut out = Vec::with_capacity(listing.kvs.len());
    for kv in &listing.kvs {
        let (s, ip) = ip_key(&kv.key)?;
        if s != stack {
            continue;
        }
        if let Some(net) = subnet {
            if !net.contains(ip) {
                return Err(ClusterError::Invalid(format!(
                    "key {}: {ip} lies outside stack {stack}'s subnet {net}",
                    kv.key
                )));
            }
        }
        out.push((ip, parse_owner(kv)?, kv.create_revision));
    }
    Ok(out)
}

/// The first block of `prefix` inside `pool` overlapping none of `taken`.
fn free_block(pool: Ipv4Network, prefix: u8, taken: &[Ipv4Network]) -> Option<Ipv4Network> {
    let size = 1u64 << (32 - u32::from(prefix));
    let start = u64::from(u32::from(pool.network()));
    let end = start + (1u64 << (32 - u32::from(pool.prefix())));
    let mut spans: Vec<(u64, u64)> = taken
        .iter()
        .map(|n| {
            let a = u64::from(u32::from(n.network()));
            (a, a + (1u64 << (32 - u32::from(n.prefix()))))
        })
        .collect();
    spans.sort_unstable();
    let mut cand = start;
    'next: while cand + size <= end {
        for &(a, b) in &spans {
            if a < cand + size && cand < b {
                cand = b.div_ceil(size) * size;
                continue 'next;
            }
        }
        let ip = Ipv4Addr::from(u32::try_from(cand).ok()?);
        return Ipv4Network::new(ip, prefix).ok();
    }
    None
}

impl<S: Store> Addresses<S> {
    pub fn new(store: S, pool: Ipv4Network) -> Self {
        Self { store, pool }
    }

    pub fn pool(&self) -> Ipv4Network {
        self.pool
    }

    /// Every stack's subnet, checked, with the listing's revision.
    async fn subnets(&self) -> Result<(Vec<(String, Ipv4Network, KeyValue)>, i64), ClusterError> {
        let listing = self.store.list(keys::SUBNETS).await?;
        let mut out = Vec::with_capacity(listing.kvs.len());
        for kv in listing.kvs {
            out.push((subnet_stack(&kv.key)?, parse_subnet(&kv)?, kv));
        }
        Ok((out, listing.revision))
    }

    /// The subnet of `stack`, allocated for `instances` containers if it has none. An existing
    /// subnet too small for `instances` is replaced while the stack has no addresses, and is
    /// an error otherwise.
    pub async fn subnet(&self, stack: &str, instances: u64) -> Result<Ipv4Network, ClusterError> {
        check_name("stack", stack)?;
        let prefix = prefix_for(instances);
        if prefix < self.pool.prefix() {
            return Err(ClusterError::PoolTooSmall {
                stack: stack.into(),
                needed: instances + RESERVED,
                pool: self.pool.to_string(),
            });
        }
        let key = keys::subnet(stack);
        let mut attempts = Attempts::new(format!("allocating a subnet for stack {stack}"));
        loop {
            let (all, revision) = self.subnets().await?;
            let mine = all.iter().find(|(s, _, _)| s == stack);
            let mut when = vec![Compare::PrefixUnchangedSince(keys::SUBNETS.into(), revision)];
            match mine {
                Some((_, net, _)) if capacity(*net) >= instances => return Ok(*net),
                Some((_, net, kv)) => {
                    let ips = self.store.list(&keys::stack_ips(stack)).await?;
                    if !ips.kvs.is_empty() {
                        return Err(ClusterError::SubnetTooSmall {
                            stack: stack.into(),
                            subnet: net.to_string(),
                            capacity: capacity(*net),
                            needed: instances,
                        });
                    }
                    when.push(Compare::ModRevision(key.clone(), kv.mod_revision));
                    when.push(Compare::PrefixUnchangedSince(keys::stack_ips(stack), ips.revision));
                }
                None => when.push(Compare::Absent(key.clone())),
            }
            let taken: Vec<Ipv4Network> =
                all.iter().filter(|(s, _, _)| s != stack).map(|(_, n, _)| *n).collect();
            let block = free_block(self.pool, prefix, &taken).ok_or_else(|| {
                ClusterError::PoolExhausted {
                    pool: self.pool.to_string(),
                    prefix,
                    stack: stack.into(),
                }
            })?;
            let r =
                self.store.txn(Txn::when(when).then([Op::put(&key, block.to_string())])).await?;
            if r.succeeded {
                tracing::debug!(stack, subnet = %block, instances, "subnet allocated");
                return Ok(block);
            }
            attempts.lost().await?;
        }
    }

    /// The address of `owner` (a container of `stack`): the one it has, else a free one in the
    /// stack's subnet.
    pub async fn address(&self, stack: &str, owner: &str) -> Result<Ipv4Addr, ClusterError> {
        check_name("stack", stack)?;
        let owner = owner.trim();
        if owner.is_empty() || owner.chars().any(char::is_control) {
            return Err(ClusterError::Invalid(format!(
                "stack {stack}: address owner {owner:?} must be non-empty text"
            )));
        }
        let subnet_key = keys::subnet(stack);
        let prefix = keys::stack_ips(stack);
        let mut attempts =
            Attempts::new(format!("allocating an address in stack {stack} for {owner}"));
        let mut subnet_now = self.store.get(&subnet_key).await?;
        loop {
            let Some(subnet_kv) = subnet_now.take() else {
                return Err(ClusterError::NoSubnet { stack: stack.into() });
            };
            let subnet = parse_subnet(&subnet_kv)?;
            let listing = self.store.list(&prefix).await?;
            let ips = stack_ips(&listing, stack, Some(subnet))?;
            if let Some((ip, _, _)) = ips.iter().find(|(_, o, _)| o == owner) {
                return Ok(*ip);
            }
            let used: HashSet<u32> = ips.iter().map(|(ip, _, _)| u32::from(*ip)).collect();
            let first = u32::from(subnet.network()) + 2;
            let last = u32::from(subnet.broadcast()) - 1;
            let after = ips
                .iter()
                .max_by_key(|(_, _, rev)| *rev)
                .map(|(ip, _, _)| u32::from(*ip))
                .filter(|ip| (first..=last).contains(ip))
                .unwrap_or(last);
            let span = last - first + 1;
            let free = (1..=span)
                .map(|i| first + (after - first + i) % span)
                .find(|ip| !used.contains(ip))
                .map(Ipv4Addr::from);
            let Some(ip) = free else {
                return Err(ClusterError::SubnetFull {
                    stack: stack.into(),
                    subnet: subnet.to_string(),
                    used: ips.len(),
                });
            };
            let key = keys::ip(stack, ip);
            let r = self
                .store
                .txn(
                    Txn::when([
                        Compare::ModRevision(subnet_key.clone(), subnet_kv.mod_revision),
                        Compare::PrefixUnchangedSince(prefix.clone(), listing.revision),
                        Compare::Absent(key.clone()),
                    ])
                    .then([Op::put(&key, owner)])
                    // NB: the subnet as it is now, for the next attempt.
                    .otherwise([Op::get(&subnet_key)]),
                )
                .await?;
            if r.succeeded {
                tracing::debug!(stack, owner, %ip, "address allocated");
                return Ok(ip);
            }
            subnet_now = r.gets.into_iter().next().flatten();
            attempts.lost().await?;
        }
    }

    /// Releases one address.
    pub async fn release_address(&self, stack: &str, ip: Ipv4Addr) -> Result<bool, ClusterError> {
        check_name("stack", stack)?;
        Ok(self.store.delete(&keys::ip(stack, ip)).await?)
    }

    /// Releases the address `owner` holds, if any.
    pub async fn release_owner(
        &self,
        stack: &str,
        owner: &str,
    ) -> Result<Option<Ipv4Addr>, ClusterError> {
        check_name("stack", stack)?;
        let listing = self.store.list(&keys::stack_ips(stack)).await?;
        for (ip, o, _) in stack_ips(&listing, stack, None)? {
            if o == owner.trim() {
                self.store.delete(&keys::ip(stack, ip)).await?;
                return Ok(Some(ip));
            }
        }
        Ok(None)
    }

    /// Releases a stack's subnet and every address in it, atomically (the stack was removed).
    pub async fn release_stack(&self, stack: &str) -> Result<(), ClusterError> {
        check_name("stack", stack)?;
        self.store
            .txn(Txn::when([]).then([
                Op::delete(keys::subnet(stack)),
                Op::DeletePrefix { prefix: keys::stack_ips(stack) },
            ]))
            .await?;
        Ok(())
    }

    /// Every subnet and address, sorted.
    pub async fn list(&self) -> Result<AddressTable, ClusterError> {
        let (subnets, _) = self.subnets().await?;
        let nets: BTreeMap<&str, Ipv4Network> =
            subnets.iter().map(|(stack, net, _)| (stack.as_str(), *net)).collect();
        let listing = self.store.list(keys::IPS).await?;
        let mut by_stack: BTreeMap<String, Vec<IpAllocation>> = BTreeMap::new();
        for kv in &listing.kvs {
            let (stack, ip) = ip_key(&kv.key)?;
            match nets.get(stack.as_str()) {
                Some(net) if net.contains(ip) => {}
                Some(net) => {
                    return Err(ClusterError::Invalid(format!(
                        "key {}: {ip} lies outside stack {stack}'s subnet {net}",
                        kv.key
                    )))
                }
                None => {
                    return Err(ClusterError::Invalid(format!(
                        "key {}: stack {stack} has no subnet",
                        kv.key
                    )))
                }
            }
            let owner = parse_owner(kv)?;
            by_stack.entry(stack.clone()).or_default().push(IpAllocation { stack, ip, owner });
        }
        let mut table = AddressTable::default();
        for (stack, subnet, _) in subnets {
            let used = by_stack.get(&stack).map_or(0, Vec::len);
            table.subnets.push(SubnetAllocation {
                stack,
                subnet,
                used,
                capacity: capacity(subnet),
            });
        }
        for (_, mut ips) in by_stack {
            ips.sort_by_key(|a| a.ip);
            table.ips.extend(ips);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn sizes() {
        assert_eq!(prefix_for(1), 24);
        assert_eq!(prefix_for(253), 24);
        assert_eq!(prefix_for(254), 23);
        assert_eq!(prefix_for(1000), 22);
        assert_eq!(capacity(net("10.32.0.0/24")), 253);
        assert_eq!(gateway(net("10.32.1.0/24")), Ipv4Addr::new(10, 32, 1, 1));
        assert_eq!(default_pool(), net(DEFAULT_POOL));
    }

    #[test]
    fn blocks_skip_what_is_taken_and_stay_aligned() {
        let pool = net("10.32.0.0/12");
        assert_eq!(free_block(pool, 24, &[]), Some(net("10.32.0.0/24")));
        let taken = [net("10.32.0.0/24"), net("10.32.2.0/24")];
        assert_eq!(free_block(pool, 24, &taken), Some(net("10.32.1.0/24")));
        assert_eq!(free_block(pool, 23, &taken), Some(net("10.32.4.0/23")));
        assert_eq!(free_block(net("10.0.0.0/24"), 24, &[net("10.0.0.0/24")]), None);
        // A subnet outside the pool (written by hand) is simply not in the way.
        assert_eq!(free_block(pool, 24, &[net("192.168.0.0/24")]), Some(net("10.32.0.0/24")));
    }
}
