//! The virtual IP allocator (seed 001 "dns-search", docs/names.md): one stable IPv4 address
//! per deployed job, out of a VIP range, that the datapath maps (at the job's own ports) to
//! the job's backends and the DNS responder gives for `<job>.<stack>.viking`.
//!
//! - `/viking/alloc/vips/<stack>/<job>` holds the address, the job's ports and its balance:
//!   `{"ip": "10.96.0.1", "ports": ["80/tcp"], "balance": "round_robin"}`. Discovery reads
//!   nothing else to program `VIP:port`, names read nothing else to answer.
//! - Deploys allocate in the commit that stores their job records and release in the one that
//!   removes them (`deploy::planner`), like the ambassador ports, and under the same compare
//!   (the ambassador port counter, which every deploy rewrites): no address has two owners.
//! - `assign` is the allocation itself, pure: a job keeps the address it has; a new one takes
//!   the lowest address of the range no job holds; none left is an error.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use super::{error::check_name, ClusterError};
use crate::{
    datapath::Algo,
    stack::Port,
    store::{KeyValue, Op},
};

/// Where VIP records live.
pub const PREFIX: &str = "/viking/alloc/vips/";

/// The default VIP range: Kubernetes' service range starts here, it is private (RFC 1918) and
/// clear of the overlay's pool (10.32.0.0/12) and docker's 172.17.0.0/16. 65534 jobs.
pub const DEFAULT_VIP_RANGE: &str = "10.96.0.0/16";

pub fn default_range() -> Ipv4Network {
    // NB: a constant that parses.
    DEFAULT_VIP_RANGE.parse().unwrap_or_else(|_| Ipv4Network::from(Ipv4Addr::new(10, 96, 0, 0)))
}

/// `/viking/alloc/vips/<stack>/<job>`.
pub fn key(stack: &str, job: &str) -> String {
    format!("{PREFIX}{stack}/{job}")
}

/// One job's virtual IP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    #[serde(skip)]
    pub stack: String,
    #[serde(skip)]
    pub job: String,
    pub ip: Ipv4Addr,
    /// The job's own ports: the datapath serves `ip:port` for each.
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub balance: Algo,
}

impl Vip {
    pub fn key(&self) -> String {
        key(&self.stack, &self.job)
    }

    pub fn value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A VIP record, or an error naming its key.
    pub fn parse(kv: &KeyValue) -> Result<Self, ClusterError> {
        let bad = || {
            ClusterError::Invalid(format!(
                "key {} is not a VIP record (/viking/alloc/vips/<stack>/<job>)",
                kv.key
            ))
        };
        let rest = kv.key.strip_prefix(PREFIX).ok_or_else(bad)?;
        let (stack, job) = rest.split_once('/').ok_or_else(bad)?;
        if check_name("stack", stack).is_err() || check_name("job", job).is_err() {
            return Err(bad());
        }
        let mut v: Vip = serde_json::from_slice(&kv.value).map_err(|e| {
            ClusterError::bad_value(&kv.key, &kv.value, format!("not a VIP record: {e}"))
        })?;
        v.stack = stack.to_owned();
        v.job = job.to_owned();
        Ok(v)
    }
}

/// Every VIP record, by (stack, job). A record that does not parse is an error naming it.
#[derive(Debug, Clone, Default)]
pub struct VipTable {
    pub vips: BTreeMap<(String, String), Vip>,
}

impl VipTable {
    pub fn read(kvs: &[KeyValue]) -> Result<Self, ClusterError> {
        let mut vips = BTreeMap::new();
        for kv in kvs {
            let v = Vip::parse(kv)?;
            vips.insert((v.stack.clone(), v.job.clone()), v);
        }
        Ok(Self { vips })
    }

    pub fn get(&self, stack: &str, job: &str) -> Option<&Vip> {
        self.vips.get(&(stack.to_owned(), job.to_owned()))
    }
}

/// What a job wants of its VIP: its ports and balance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub ports: Vec<Port>,
    pub balance: Algo,
}

/// The addresses of `range` a VIP may take: all but the network's first and last.
fn usable(range: Ipv4Network) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(range.network());
    let last = u32::from(range.broadcast());
    let (lo, hi) = if range.prefix() >= 31 { (first, last) } else { (first + 1, last - 1) };
    (lo..=hi).map(Ipv4Addr::from)
}

/// The VIPs `wanted` jobs should have: each keeps the address it has (when it is in the range
/// and not another's), a new one takes the lowest free. Pure: the caller commits the result
/// (`ops`) under the deploy's compares.
pub fn assign(
    range: Ipv4Network,
    table: &VipTable,
    wanted: &BTreeMap<(String, String), Wanted>,
) -> Result<Vec<Vip>, ClusterError> {
    let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
    let mut out = Vec::with_capacity(wanted.len());
    let mut new = Vec::new();
    for (id, w) in wanted {
        match table.vips.get(id) {
            Some(v) if range.contains(v.ip) && used.insert(v.ip) => {
                out.push(Vip { ports: w.ports.clone(), balance: w.balance, ..v.clone() })
            }
            _ => new.push((id, w)),
        }
    }
    let mut free = usable(range).filter(|ip| !used.contains(ip));
    for ((stack, job), w) in new {
        check_name("stack", stack)?;
        check_name("job", job)?;
        let ip = free.next().ok_or_else(|| ClusterError::VipsExhausted {
            range: range.to_string(),
            used: used.len(),
        })?;
        out.push(Vip {
            stack: stack.clone(),
            job: job.clone(),
            ip,
            ports: w.ports.clone(),
            balance: w.balance,
        });
    }
    out.sort_by(|a, b| (&a.stack, &a.job).cmp(&(&b.stack, &b.job)));
    Ok(out)
}

/// The operations that turn `table` into `vips`: puts of what is new or changed, deletes of
/// what is no longer wanted.
pub fn ops(table: &VipTable, vips: &[Vip]) -> Vec<Op> {
    let keep: BTreeSet<(&str, &str)> =
        vips.iter().map(|v| (v.stack.as_str(), v.job.as_str())).collect();
    let mut ops = Vec::new();
    for v in table.vips.values() {
        if !keep.contains(&(v.stack.as_str(), v.job.as_str())) {
            ops.push(Op::delete(v.key()));
        }
    }
    for v in vips {
        if table.get(&v.stack, &v.job) != Some(v) {
            ops.push(Op::put(v.key(), v.value()));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::Proto;

    fn kv(key: &str, v: &str) -> KeyValue {
        KeyValue::put_at(key, v, 1, None)
    }

    fn want(ids: &[(&str, &str)]) -> BTreeMap<(String, String), Wanted> {
        ids.iter()
            .map(|(s, j)| {
                let w = Wanted {
                    ports: vec![Port { port: 80, proto: Proto::Tcp }],
                    balance: Algo::default(),
                };
                (((*s).to_owned(), (*j).to_owned()), w)
            })
            .collect()
    }

    fn table(vips: &[Vip]) -> VipTable {
        VipTable {
            vips: vips.iter().map(|v| ((v.stack.clone(), v.job.clone()), v.clone())).collect(),
        }
    }

    #[test]
    fn jobs_keep_their_address_and_new_ones_take_the_lowest_free() {
        let range: Ipv4Network = "10.96.0.0/29".parse().unwrap();
        let all =
            assign(range, &VipTable::default(), &want(&[("abc", "web"), ("abc", "x")])).unwrap();
        let ips: Vec<String> = all.iter().map(|v| v.ip.to_string()).collect();
        assert_eq!(ips, ["10.96.0.1", "10.96.0.2"], "the network address is never given");
        // web goes, y comes: x keeps .2, y takes the freed .1.
        let t = table(&all);
        let next = assign(range, &t, &want(&[("abc", "x"), ("abc", "y")])).unwrap();
        assert_eq!(next[0].ip.to_string(), "10.96.0.2");
        assert_eq!((next[1].job.as_str(), next[1].ip.to_string()), ("y", "10.96.0.1".into()));
        let o = ops(&t, &next);
        assert!(o.contains(&Op::delete("/viking/alloc/vips/abc/web")));
        assert!(!o.iter().any(|op| matches!(op, Op::Put { key, .. } if key.ends_with("/x"))));
        // Six usable addresses in a /29, no seventh.
        let many: Vec<(String, String)> = (0..7).map(|i| ("s".into(), format!("j{i}"))).collect();
        let refs: Vec<(&str, &str)> = many.iter().map(|(s, j)| (s.as_str(), j.as_str())).collect();
        assert!(matches!(
            assign(range, &VipTable::default(), &want(&refs)),
            Err(ClusterError::VipsExhausted { .. })
        ));
        assert_eq!(assign(range, &VipTable::default(), &want(&refs[..6])).unwrap().len(), 6);
    }

    #[test]
    fn an_address_outside_the_range_or_taken_twice_is_given_again() {
        let range: Ipv4Network = "10.96.0.0/24".parse().unwrap();
        let v = |job: &str, ip: &str| Vip {
            stack: "s".into(),
            job: job.into(),
            ip: ip.parse().unwrap(),
            ports: vec![],
            balance: Algo::default(),
        };
        let t = table(&[v("a", "10.96.0.7"), v("b", "10.96.0.7"), v("c", "192.168.0.1")]);
        let all = assign(range, &t, &want(&[("s", "a"), ("s", "b"), ("s", "c")])).unwrap();
        let ips: Vec<String> = all.iter().map(|v| v.ip.to_string()).collect();
        assert_eq!(ips, ["10.96.0.7", "10.96.0.1", "10.96.0.2"]);
    }

    #[test]
    fn records_round_trip_and_bad_ones_name_their_key() {
        let v = Vip {
            stack: "abc".into(),
            job: "pricing".into(),
            ip: "10.96.0.9".parse().unwrap(),
            ports: vec![Port { port: 53, proto: Proto::Udp }],
            balance: Algo::LeastConn,
        };
        let text = String::from_utf8(v.value()).unwrap();
        assert!(text.contains("\"53/udp\""), "{text}");
        assert_eq!(Vip::parse(&kv(&v.key(), &text)).unwrap(), v);
        let e = Vip::parse(&kv("/viking/alloc/vips/abc/pricing", "{\"ip\": \"x\"}")).unwrap_err();
        assert!(e.to_string().contains("/viking/alloc/vips/abc/pricing"), "{e}");
        let e = Vip::parse(&kv("/viking/alloc/vips/abc", "{}")).unwrap_err();
        assert!(e.to_string().contains("/viking/alloc/vips/abc"), "{e}");
    }
}
