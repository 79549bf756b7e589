//! The ambassador port allocator (seed 000 "port allocator"): one port per linked service and
//! container port, from an atomically incremented counter, stable across redeploys.
//!
//! - `/viking/alloc/ports/next` holds the next port to give (decimal).
//! - `/viking/alloc/ports/<stack>_<job>/<port>` holds the ambassador port of that container
//!   port and how connections to it are balanced: `{"port": 20001, "balance": "round_robin"}`
//!   (a bare number, as written before balances existed, reads as that port). A link that
//!   asks for another balance than the service's gets a frontend of its own:
//!   `.../<port>@least_conn`.
//! - Every change of the allocations rewrites the counter in the same transaction, under a
//!   compare of its revision: writers of allocations (and of the deploy plans that own them,
//!   `deploy`) serialize on it, so no port ever has two owners.
//! - `assign` is the allocation itself, pure: existing keys keep their ports, new ones take
//!   the counter; once it has passed the end of the range, the lowest port no allocation
//!   holds; none left is an error.
//!
//! An allocation lives as long as a deploy plan uses it (`deploy::plans`): deploys allocate in
//! the commit that stores their plans and release what no plan uses any more in the same one.
//! TCP and UDP on one container port share its ambassador port (the datapath keys services by
//! protocol, so they stay distinct), as Docker links share `X_PORT_P` for both.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    str::FromStr,
};

use serde::{Deserialize, Serialize};

use super::{error::check_name, retry::Attempts, ClusterError};
use crate::{
    datapath::Algo,
    store::{keys, Compare, KeyValue, Op, Store, Txn},
};

/// An inclusive range of ambassador ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// 20000-29999: below Linux's ephemeral range (32768-60999), so an ambassador port never
/// shadows a local socket's port, and clear of the well-known and the usual service ports
/// (80, 443, 3306, 5432, 6379, 8080, 9000, 27017...). 10000 services*ports before reuse.
pub const DEFAULT_PORT_RANGE: PortRange = PortRange { first: 20000, last: 29999 };

impl PortRange {
    pub fn len(&self) -> usize {
        usize::from(self.last) - usize::from(self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port range like 20000-29999");
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(Self { first, last })
    }
}

impl Default for PortRange {
    fn default() -> Self {
        DEFAULT_PORT_RANGE
    }
}

/// What an ambassador port is for: a service's container port, and the balance of a link
/// that asked for its own (`None`: the service's own frontend, with the job's balance).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortKey {
    /// `<stack>_<job>`.
    pub service: String,
    /// The container port.
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<Algo>,
}

impl PortKey {
    pub fn new(service: impl Into<String>, port: u16) -> Self {
        Self { service: service.into(), port, variant: None }
    }

    /// `/viking/alloc/ports/<service>/<port>`, or `.../<port>@<balance>` for a link's own.
    pub fn key(&self) -> String {
        match self.variant {
            None => keys::service_port(&self.service, self.port),
            Some(a) => format!("{}@{a}", keys::service_port(&self.service, self.port)),
        }
    }

    /// The key of an allocation record, or an error naming it.
    pub fn parse(key: &str) -> Result<Self, ClusterError> {
        let bad = || {
            ClusterError::Invalid(format!(
                "key {key} is not an ambassador port record \
                 (/viking/alloc/ports/<stack>_<job>/<port>[@<balance>])"
            ))
        };
        let rest = key.strip_prefix(keys::PORTS).ok_or_else(bad)?;
        let (service, port) = rest.split_once('/').ok_or_else(bad)?;
        if keys::segment_problem(service).is_some() {
            return Err(bad());
        }
        let (port, variant) = match port.split_once('@') {
            Some((p, a)) => (p, Some(a.parse::<Algo>().map_err(|_| bad())?)),
            None => (port, None),
        };
        match port.parse::<u16>() {
            Ok(p) if p > 0 => Ok(Self { service: service.to_string(), port: p, variant }),
            _ => Err(bad()),
        }
    }
}

/// One allocated ambassador port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortAllocation {
    /// `<stack>_<job>`.
    pub service: String,
    /// The container port.
    pub port: u16,
    pub ambassador_port: u16,
    /// How the datapath balances connections to it.
    pub balance: Algo,
    /// Set for a link's own frontend (a balance other than the service's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<Algo>,
}

impl PortAllocation {
    pub fn key(&self) -> PortKey {
        PortKey { service: self.service.clone(), port: self.port, variant: self.variant }
    }

    /// The record's value: `{"port": Q, "balance": "..."}`.
    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(&Value { port: self.ambassador_port, balance: self.balance })
            .unwrap_or_default()
    }

    /// An allocation record. A bare number (written before balances existed) is that port
    /// with the default balance.
    pub fn parse(kv: &KeyValue) -> Result<Self, ClusterError> {
        let k = PortKey::parse(&kv.key)?;
        let text = kv.text()?.trim();
        let v = match text.parse::<u16>() {
            Ok(port) => Value { port, balance: Algo::default() },
            Err(_) => serde_json::from_str::<Value>(text).map_err(|_| {
                ClusterError::bad_value(
                    &kv.key,
                    &kv.value,
                    "not an ambassador port (a number, or {\"port\": N, \"balance\": ..})",
                )
            })?,
        };
        if v.port == 0 {
            return Err(ClusterError::bad_value(&kv.key, &kv.value, "port 0 is not a port"));
        }
        Ok(Self {
            service: k.service,
            port: k.port,
            variant: k.variant,
            ambassador_port: v.port,
            balance: v.balance,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Value {
    port: u16,
    #[serde(default)]
    balance: Algo,
}

/// Everything the port allocator holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortTable {
    /// The counter: the next port to give (past the range's end once it has wrapped).
    pub next: Option<u32>,
    /// The counter's mod revision: every change of allocations or plans rewrites the counter,
    /// so a transaction that compares it knows nothing was allocated or released meanwhile.
    #[serde(skip)]
    pub counter_revision: Option<i64>,
    pub ports: Vec<PortAllocation>,
}

impl PortTable {
    /// The table from a listing of `/viking/alloc/ports/`; a bad record is an error naming it.
    pub fn read(kvs: &[KeyValue]) -> Result<Self, ClusterError> {
        let mut table = PortTable::default();
        for kv in kvs {
            if kv.key == keys::PORTS_NEXT {
                table.next = Some(parse_counter(kv)?);
                table.counter_revision = Some(kv.mod_revision);
                continue;
            }
            table.ports.push(PortAllocation::parse(kv)?);
        }
        table.ports.sort_by_key(PortAllocation::key);
        Ok(table)
    }

    pub fn get(&self, key: &PortKey) -> Option<&PortAllocation> {
        self.ports.iter().find(|a| a.key() == *key)
    }

    /// The compare that holds while nothing was allocated or released since the table was read.
    pub fn unchanged(&self) -> Compare {
        match self.counter_revision {
            Some(rev) => Compare::ModRevision(keys::PORTS_NEXT.into(), rev),
            None => Compare::Absent(keys::PORTS_NEXT.into()),
        }
    }
}

/// The allocations a table should hold: `wanted` keys with their balance, each keeping the
/// port it has and new ones taking the counter (lowest free once it passed the range's end).
/// Returns the allocations and the counter after them. Pure: the caller commits it under
/// `PortTable::unchanged`.
pub fn assign(
    range: PortRange,
    table: &PortTable,
    wanted: &BTreeMap<PortKey, Algo>,
) -> Result<(Vec<PortAllocation>, u32), ClusterError> {
    let mut next = table.next.unwrap_or(0).max(u32::from(range.first));
    let mut used: BTreeSet<u16> = BTreeSet::new();
    let mut out = Vec::with_capacity(wanted.len());
    let mut new = Vec::new();
    for (key, balance) in wanted {
        match table.get(key) {
            Some(a) => {
                used.insert(a.ambassador_port);
                out.push(PortAllocation { balance: *balance, ..a.clone() });
            }
            None => new.push((key, *balance)),
        }
    }
    for (key, balance) in new {
        check_name("service", &key.service)?;
        let port = if next <= u32::from(range.last) {
            let p = next as u16;
            next += 1;
            p
        } else {
            (range.first..=range.last).find(|p| !used.contains(p)).ok_or_else(|| {
                ClusterError::PortsExhausted {
                    range: range.to_string(),
                    used: used.iter().filter(|p| range.contains(**p)).count(),
                }
            })?
        };
        used.insert(port);
        out.push(PortAllocation {
            service: key.service.clone(),
            port: key.port,
            variant: key.variant,
            ambassador_port: port,
            balance,
        });
    }
    out.sort_by_key(PortAllocation::key);
    Ok((out, next))
}

/// The operations that turn `table` into `allocations` with the counter at `next`: puts of
/// what is new or changed, deletes of what is no longer wanted, and the counter (always, so
/// that concurrent writers serialize on it).
pub fn ops(table: &PortTable, allocations: &[PortAllocation], next: u32) -> Vec<Op> {
    let mut ops = vec![Op::put(keys::PORTS_NEXT, next.to_string())];
    let keep: BTreeSet<PortKey> = allocations.iter().map(PortAllocation::key).collect();
    for a in &table.ports {
        if !keep.contains(&a.key()) {
            ops.push(Op::delete(a.key().key()));
        }
    }
    for a in allocations {
        if table.get(&a.key()) != Some(a) {
            ops.push(Op::put(a.key().key(), a.value()));
        }
    }
    ops
}

/// The port allocator, over any store: one allocation at a time (deploys allocate through
/// `assign` inside their own commit).
#[derive(Clone)]
pub struct AmbassadorPorts<S> {
    store: S,
    range: PortRange,
}

fn parse_counter(kv: &KeyValue) -> Result<u32, ClusterError> {
    let text = kv.text()?;
    match text.trim().parse::<u32>() {
        Ok(n) if n <= 65536 => Ok(n),
        _ => Err(ClusterError::bad_value(&kv.key, &kv.value, "not a port counter 0-65536")),
    }
}

impl<S: Store> AmbassadorPorts<S> {
    pub fn new(store: S, range: PortRange) -> Self {
        Self { store, range }
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The ambassador port of `service`'s container `port`: the one it already has, else a
    /// new one from the counter (two keys read and one compare-and-swap while the counter is
    /// inside the range; the whole table once it has wrapped).
    pub async fn allocate(&self, service: &str, port: u16) -> Result<u16, ClusterError> {
        check_name("service", service)?;
        if port == 0 {
            return Err(ClusterError::Invalid(format!("service {service}: port 0 is not a port")));
        }
        let key = PortKey::new(service, port);
        let k = key.key();
        let mut attempts = Attempts::new(format!("allocating an ambassador port for {k}"));
        let mut seen = self.store.txn(Txn::read([k.clone(), keys::PORTS_NEXT.into()])).await?.gets;
        loop {
            let mut it = seen.into_iter();
            let (record, counter) = (it.next().flatten(), it.next().flatten());
            if let Some(record) = record {
                return Ok(PortAllocation::parse(&record)?.ambassador_port);
            }
            let n = match &counter {
                Some(kv) => parse_counter(kv)?,
                None => 0,
            }
            .max(u32::from(self.range.first));
            let (chosen, next, cmp) = if n <= u32::from(self.range.last) {
                let cmp = match &counter {
                    Some(kv) => Compare::ModRevision(keys::PORTS_NEXT.into(), kv.mod_revision),
                    None => Compare::Absent(keys::PORTS_NEXT.into()),
                };
                (n as u16, n + 1, cmp)
            } else {
                let table = self.read().await?;
                let mut wanted: BTreeMap<PortKey, Algo> =
                    table.ports.iter().map(|a| (a.key(), a.balance)).collect();
                wanted.insert(key.clone(), Algo::default());
                let (all, next) = assign(self.range, &table, &wanted)?;
                let chosen = all.iter().find(|a| a.key() == key).map_or(0, |a| a.ambassador_port);
                (chosen, next, table.unchanged())
            };
            let value = PortAllocation {
                service: service.to_owned(),
                port,
                ambassador_port: chosen,
                balance: Algo::default(),
                variant: None,
            }
            .value();
            let r = self
                .store
                .txn(
                    Txn::when([cmp, Compare::Absent(k.clone())])
                        .then([Op::put(keys::PORTS_NEXT, next.to_string()), Op::put(&k, value)])
                        .otherwise([Op::get(&k), Op::get(keys::PORTS_NEXT)]),
                )
                .await?;
            if r.succeeded {
                tracing::debug!(
                    service,
                    port,
                    ambassador_port = chosen,
                    "ambassador port allocated"
                );
                return Ok(chosen);
            }
            seen = r.gets;
            attempts.lost().await?;
        }
    }

    async fn read(&self) -> Result<PortTable, ClusterError> {
        PortTable::read(&self.store.list(keys::PORTS).await?.kvs)
    }

    /// The ambassador port of a service port, if it has one.
    pub async fn get(&self, service: &str, port: u16) -> Result<Option<u16>, ClusterError> {
        check_name("service", service)?;
        match self.store.get(&keys::service_port(service, port)).await? {
            Some(kv) => PortAllocation::parse(&kv).map(|a| Some(a.ambassador_port)),
            None => Ok(None),
        }
    }

    /// Releases one service port's ambassador port.
    pub async fn release(&self, service: &str, port: u16) -> Result<bool, ClusterError> {
        check_name("service", service)?;
        Ok(self.release_where(|a| a.service == service && a.port == port).await? > 0)
    }

    /// Releases every ambassador port of a service (it was removed).
    pub async fn release_service(&self, service: &str) -> Result<u64, ClusterError> {
        check_name("service", service)?;
        self.release_where(|a| a.service == service).await
    }

    /// Releases the allocations `gone` picks; how many.
    async fn release_where(
        &self,
        gone: impl Fn(&PortAllocation) -> bool,
    ) -> Result<u64, ClusterError> {
        let mut attempts = Attempts::new("releasing ambassador ports");
        loop {
            let table = self.read().await?;
            let keep: Vec<PortAllocation> =
                table.ports.iter().filter(|a| !gone(a)).cloned().collect();
            let released = (table.ports.len() - keep.len()) as u64;
            if released == 0 {
                return Ok(0);
            }
            let next = table.next.unwrap_or(u32::from(self.range.first));
            let r = self
                .store
                .txn(Txn::when([table.unchanged()]).then(ops(&table, &keep, next)))
                .await?;
            if r.succeeded {
                return Ok(released);
            }
            attempts.lost().await?;
        }
    }

    /// Everything allocated, sorted by service and port.
    pub async fn list(&self) -> Result<PortTable, ClusterError> {
        self.read().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse() {
        assert_eq!("20000-29999".parse::<PortRange>().unwrap(), DEFAULT_PORT_RANGE);
        assert_eq!(DEFAULT_PORT_RANGE.len(), 10000);
        for bad in ["", "1", "5-4", "0-10", "a-b", "1-70000"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_parse_or_name_themselves() {
        let k = PortKey::parse("/viking/alloc/ports/web_db/5432").unwrap();
        assert_eq!(k, PortKey::new("web_db", 5432));
        assert_eq!(k.key(), "/viking/alloc/ports/web_db/5432");
        let v = PortKey::parse("/viking/alloc/ports/web_db/5432@least_conn").unwrap();
        assert_eq!(v.variant, Some(Algo::LeastConn));
        assert_eq!(PortKey::parse(&v.key()).unwrap(), v);
        for bad in [
            "/viking/alloc/ports/web_db",
            "/viking/alloc/ports/web_db/x",
            "/viking/alloc/ports//80",
            "/viking/alloc/ports/web_db/80@fastest",
        ] {
            assert!(PortKey::parse(bad).unwrap_err().to_string().contains(bad));
        }
    }

    fn table(next: Option<u32>, ports: &[(&str, u16, u16)]) -> PortTable {
        PortTable {
            next,
            counter_revision: None,
            ports: ports
                .iter()
                .map(|(s, p, q)| PortAllocation {
                    service: (*s).into(),
                    port: *p,
                    ambassador_port: *q,
                    balance: Algo::default(),
                    variant: None,
                })
                .collect(),
        }
    }

    fn want(keys: &[(&str, u16)]) -> BTreeMap<PortKey, Algo> {
        keys.iter().map(|(s, p)| (PortKey::new(*s, *p), Algo::RoundRobin)).collect()
    }

    #[test]
    fn assignment_keeps_ports_counts_up_then_reuses_the_lowest_free() {
        let range = PortRange { first: 100, last: 103 };
        let t = table(Some(102), &[("a_x", 80, 100), ("b_y", 80, 101)]);
        let (all, next) = assign(range, &t, &want(&[("a_x", 80), ("c_z", 53)])).unwrap();
        assert_eq!(next, 103);
        let ports: Vec<(String, u16)> =
            all.iter().map(|a| (a.service.clone(), a.ambassador_port)).collect();
        assert_eq!(ports, vec![("a_x".into(), 100), ("c_z".into(), 102)]);
        // b_y went: its port is freed, but the counter is not reused until it passed the end.
        let o = ops(&t, &all, next);
        assert!(o.contains(&Op::delete("/viking/alloc/ports/b_y/80")));
        let t = table(Some(104), &[("a_x", 80, 100), ("c_z", 53, 102), ("d", 1, 103)]);
        let (all, _) =
            assign(range, &t, &want(&[("a_x", 80), ("c_z", 53), ("d", 1), ("e", 1)])).unwrap();
        assert_eq!(all.iter().find(|a| a.service == "e").unwrap().ambassador_port, 101);
        let full = want(&[("a_x", 80), ("c_z", 53), ("d", 1), ("e", 1), ("f", 1)]);
        assert!(matches!(assign(range, &t, &full), Err(ClusterError::PortsExhausted { .. })));
    }

    #[test]
    fn values_old_and_new_parse() {
        let kv = |key: &str, v: &str| KeyValue::put_at(key, v, 1, None);
        let old = PortAllocation::parse(&kv("/viking/alloc/ports/a_b/80", "20001")).unwrap();
        assert_eq!((old.ambassador_port, old.balance), (20001, Algo::default()));
        let new = PortAllocation::parse(&kv(
            "/viking/alloc/ports/a_b/80@least_conn",
            r#"{"port": 20002, "balance": "least_conn"}"#,
        ))
        .unwrap();
        assert_eq!(
            (new.ambassador_port, new.balance, new.variant),
            (20002, Algo::LeastConn, Some(Algo::LeastConn))
        );
        assert_eq!(
            PortAllocation::parse(&kv(
                &new.key().key(),
                std::str::from_utf8(&new.value()).unwrap()
            ))
            .unwrap(),
            new
        );
        assert!(PortAllocation::parse(&kv("/viking/alloc/ports/a_b/80", "-3")).is_err());
    }
}
