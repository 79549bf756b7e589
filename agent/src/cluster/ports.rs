//! The ambassador port allocator (seed 000 "port allocator"): one port per linked service and
//! container port, from an atomically incremented counter, stable across redeploys.
//!
//! - `/viking/alloc/ports/next` holds the next port to give (decimal). Each allocation moves it
//!   on with a compare-and-swap, so two allocators never hand out the same port.
//! - `/viking/alloc/ports/<stack>_<job>/<port>` holds the ambassador port (decimal) of that
//!   container port. Asking again returns it; removing the service releases it.
//! - Once the counter has passed the end of the range, ports released since are reused
//!   (lowest first), still under the counter's compare-and-swap; none left is an error.
//!
//! TCP and UDP on one container port share its ambassador port (the datapath keys services by
//! protocol, so they stay distinct), as Docker links share `X_PORT_P` for both.
use std::{collections::BTreeSet, fmt, str::FromStr};

use serde::Serialize;

use super::{error::check_name, retry::Attempts, ClusterError};
use crate::{
    stack::Port,
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

/// One allocated ambassador port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortAllocation {
    /// `<stack>_<job>`.
    pub service: String,
    /// The container port.
    pub port: u16,
    pub ambassador_port: u16,
}

/// Everything the port allocator holds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PortTable {
    /// The counter: the next port to give (past the range's end once it has wrapped).
    pub next: Option<u32>,
    pub ports: Vec<PortAllocation>,
}

/// The port allocator, over any store.
#[derive(Clone)]
pub struct AmbassadorPorts<S> {
    store: S,
    range: PortRange,
    /// The counter as last seen: a new allocation tries it at once instead of reading first
    /// (a stale one just loses the compare-and-swap, whose answer brings the current one).
    counter: std::sync::Arc<std::sync::Mutex<Option<KeyValue>>>,
}

fn parse_port(kv: &KeyValue) -> Result<u16, ClusterError> {
    let text = kv.text()?;
    match text.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(ClusterError::bad_value(&kv.key, &kv.value, "not a port number 1-65535")),
    }
}

fn parse_counter(kv: &KeyValue) -> Result<u32, ClusterError> {
    let text = kv.text()?;
    match text.trim().parse::<u32>() {
        Ok(n) if n <= 65536 => Ok(n),
        _ => Err(ClusterError::bad_value(&kv.key, &kv.value, "not a port counter 0-65536")),
    }
}

/// `<service>/<port>` of an allocation key, or an error naming the key.
fn parse_key(key: &str) -> Result<(String, u16), ClusterError> {
    let bad = || {
        ClusterError::Invalid(format!(
            "key {key} is not an ambassador port record (/viking/alloc/ports/<stack>_<job>/<port>)"
        ))
    };
    let rest = key.strip_prefix(keys::PORTS).ok_or_else(bad)?;
    let (service, port) = rest.split_once('/').ok_or_else(bad)?;
    if keys::segment_problem(service).is_some() {
        return Err(bad());
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((service.to_string(), p)),
        _ => Err(bad()),
    }
}

impl<S: Store> AmbassadorPorts<S> {
    pub fn new(store: S, range: PortRange) -> Self {
        Self { store, range, counter: Default::default() }
    }

    fn cached_counter(&self) -> Option<KeyValue> {
        self.counter.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn cache_counter(&self, kv: Option<&KeyValue>) {
        *self.counter.lock().unwrap_or_else(|e| e.into_inner()) = kv.cloned();
    }

    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The ambassador port of `service`'s container `port`: the one it already has, else a
    /// new one from the counter.
    pub async fn allocate(&self, service: &str, port: u16) -> Result<u16, ClusterError> {
        check_name("service", service)?;
        if port == 0 {
            return Err(ClusterError::Invalid(format!("service {service}: port 0 is not a port")));
        }
        let key = keys::service_port(service, port);
        let mut attempts = Attempts::new(format!("allocating an ambassador port for {key}"));
        // NB: only a counter still inside the range: past it, the record is read first, since
        // looking for a released port must not happen for a service that has one.
        let cached = self
            .cached_counter()
            .filter(|kv| parse_counter(kv).is_ok_and(|n| n < u32::from(self.range.last)));
        let mut seen = match cached {
            Some(counter) => vec![None, Some(counter)],
            None => self.store.txn(Txn::read([key.clone(), keys::PORTS_NEXT.into()])).await?.gets,
        };
        loop {
            let mut it = seen.into_iter();
            let (record, counter) = (it.next().flatten(), it.next().flatten());
            if let Some(record) = record {
                return parse_port(&record);
            }
            let n = match &counter {
                Some(kv) => parse_counter(kv)?,
                None => 0,
            }
            .max(u32::from(self.range.first));
            let (chosen, next, counter_cmp) = if n <= u32::from(self.range.last) {
                let cmp = match &counter {
                    Some(kv) => Compare::ModRevision(keys::PORTS_NEXT.into(), kv.mod_revision),
                    None => Compare::Absent(keys::PORTS_NEXT.into()),
                };
                (n as u16, n + 1, cmp)
            } else {
                let (port, cmp, counter) = self.reuse().await?;
                (port, counter.unwrap_or(n), cmp)
            };
            let r = self
                .store
                .txn(
                    Txn::when([counter_cmp, Compare::Absent(key.clone())])
                        .then([
                            Op::put(keys::PORTS_NEXT, next.to_string()),
                            Op::put(&key, chosen.to_string()),
                        ])
                        .otherwise([Op::get(&key), Op::get(keys::PORTS_NEXT)]),
                )
                .await?;
            if r.succeeded {
                self.cache_counter(Some(&KeyValue {
                    key: keys::PORTS_NEXT.into(),
                    value: next.to_string().into_bytes(),
                    create_revision: counter.as_ref().map_or(r.revision, |c| c.create_revision),
                    mod_revision: r.revision,
                    version: counter.as_ref().map_or(1, |c| c.version + 1),
                    lease: None,
                }));
                tracing::debug!(
                    service,
                    port,
                    ambassador_port = chosen,
                    "ambassador port allocated"
                );
                return Ok(chosen);
            }
            self.cache_counter(r.gets.get(1).and_then(Option::as_ref));
            seen = r.gets;
            attempts.lost().await?;
        }
    }

    /// After the counter has wrapped: the lowest port of the range no service holds, the
    /// compare that makes sure no allocation happened since we looked, and the counter then.
    async fn reuse(&self) -> Result<(u16, Compare, Option<u32>), ClusterError> {
        let listing = self.store.list(keys::PORTS).await?;
        let mut used = BTreeSet::new();
        let mut counter_rev = None;
        let mut counter = None;
        for kv in &listing.kvs {
            if kv.key == keys::PORTS_NEXT {
                counter_rev = Some(kv.mod_revision);
                counter = Some(parse_counter(kv)?);
                continue;
            }
            parse_key(&kv.key)?;
            used.insert(parse_port(kv)?);
        }
        let cmp = match counter_rev {
            Some(rev) => Compare::ModRevision(keys::PORTS_NEXT.into(), rev),
            None => Compare::Absent(keys::PORTS_NEXT.into()),
        };
        let free = (self.range.first..=self.range.last).find(|p| !used.contains(p));
        match free {
            Some(p) => Ok((p, cmp, counter)),
            None => Err(ClusterError::PortsExhausted {
                range: self.range.to_string(),
                used: used.iter().filter(|p| self.range.contains(**p)).count(),
            }),
        }
    }

    /// The ambassador port of a service port, if it has one.
    pub async fn get(&self, service: &str, port: u16) -> Result<Option<u16>, ClusterError> {
        check_name("service", service)?;
        match self.store.get(&keys::service_port(service, port)).await? {
            Some(kv) => parse_port(&kv).map(Some),
            None => Ok(None),
        }
    }

    /// Releases one service port's ambassador port.
    pub async fn release(&self, service: &str, port: u16) -> Result<bool, ClusterError> {
        check_name("service", service)?;
        Ok(self.store.delete(&keys::service_port(service, port)).await?)
    }

    /// Releases every ambassador port of a service (it was removed).
    pub async fn release_service(&self, service: &str) -> Result<u64, ClusterError> {
        check_name("service", service)?;
        Ok(self.store.delete_prefix(&keys::service_ports(service)).await?)
    }

    /// Everything allocated, sorted by service and port.
    pub async fn list(&self) -> Result<PortTable, ClusterError> {
        let listing = self.store.list(keys::PORTS).await?;
        let mut table = PortTable::default();
        for kv in &listing.kvs {
            if kv.key == keys::PORTS_NEXT {
                table.next = Some(parse_counter(kv)?);
                continue;
            }
            let (service, port) = parse_key(&kv.key)?;
            table.ports.push(PortAllocation { service, port, ambassador_port: parse_port(kv)? });
        }
        table.ports.sort_by(|a, b| (&a.service, a.port).cmp(&(&b.service, b.port)));
        Ok(table)
    }
}

/// What `stack::plan` asks for: the ambassador port of a linked service's port.
impl<S: Store> crate::stack::plan::PortAllocator for AmbassadorPorts<S> {
    type Error = ClusterError;
    fn port(
        &self,
        service: &str,
        port: Port,
    ) -> impl std::future::Future<Output = Result<u16, ClusterError>> + Send {
        self.allocate(service, port.port)
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
        assert_eq!(parse_key("/viking/alloc/ports/web_db/5432").unwrap(), ("web_db".into(), 5432));
        for bad in [
            "/viking/alloc/ports/web_db",
            "/viking/alloc/ports/web_db/x",
            "/viking/alloc/ports//80",
        ] {
            assert!(parse_key(bad).unwrap_err().to_string().contains(bad));
        }
    }
}
