//! What the responder knows, and its answers (pure): Viking's domains (`viking`, or
//! `--dns-domain`, and `service.consul`), each job's VIP and ports (`cluster::vips`), and the
//! addresses of its instances (`/viking/ps/`).
//!
//! In each domain D:
//! - `<job>.<stack>.D` A: the job's VIP;
//! - `<n>.<job>.<stack>.D` A: instance n's own address;
//! - `_<port>._<tcp|udp>.<job>.<stack>.D` SRV: `<job>.<stack>.D:<port>`, the VIP as additional;
//! - D itself and `<stack>.D` of a deployed stack: no records (NOERROR, empty);
//! - anything else under D: NXDOMAIN, at once. Names outside every D are not the zone's.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use hickory_proto::rr::{
    rdata::{A, SOA, SRV},
    Name, RData, Record, RecordType,
};

use crate::{datapath::Proto, stack::Port};

/// How long answers may be cached: a deploy or rm shows within a second.
pub const TTL: u32 = 1;

/// One job's names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobNames {
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<Port>,
    /// Instance index -> its address.
    pub instances: BTreeMap<u32, IpAddr>,
}

/// Everything the responder answers from.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Viking's domains, lower case, fully qualified.
    pub domains: Vec<Name>,
    /// (stack, job) -> its names. Only jobs with a VIP (deployed) have names.
    pub jobs: BTreeMap<(String, String), JobNames>,
    /// Changes with every rebuild (the SOA's serial).
    pub serial: u32,
}

/// The zone's answer to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Records (possibly none: the name exists, not with that type), and additional ones.
    Found { answers: Vec<Record>, additionals: Vec<Record> },
    /// The name is in Viking's domain but does not exist.
    NxDomain,
    /// Not in Viking's domains: forwarded.
    NotOurs,
}

impl Zone {
    /// A zone for `domain` (e.g. `viking`) and `service.consul`.
    pub fn new(domain: &str) -> Result<Self, String> {
        let mut domains = Vec::new();
        for d in [domain, "service.consul"] {
            let mut n = Name::from_ascii(d)
                .map_err(|e| format!("{d:?} is not a domain name: {e}"))?
                .to_lowercase();
            n.set_fqdn(true);
            if n.is_root() {
                return Err("the root cannot be Viking's domain".into());
            }
            if !domains.contains(&n) {
                domains.push(n);
            }
        }
        Ok(Self { domains, jobs: BTreeMap::new(), serial: 0 })
    }

    /// The SOA that goes with an empty or negative answer (caches keep those `TTL` too).
    pub fn soa(&self, domain: &Name) -> Record {
        let host = |l: &str| Name::from_ascii(l).and_then(|n| n.append_domain(domain));
        let (m, r) = (host("ns").unwrap_or_default(), host("hostmaster").unwrap_or_default());
        Record::from_rdata(
            domain.clone(),
            TTL,
            RData::SOA(SOA::new(m, r, self.serial, 60, 10, 3600, TTL)),
        )
    }

    /// Which of Viking's domains `name` is in, and its labels before it (lower case).
    pub fn split(&self, name: &Name) -> Option<(&Name, Vec<String>)> {
        let mut name = name.to_lowercase();
        name.set_fqdn(true);
        let domain = self.domains.iter().find(|d| d.zone_of(&name))?;
        let keep = usize::from(name.num_labels() - domain.num_labels());
        let labels =
            name.iter().take(keep).map(|l| String::from_utf8_lossy(l).into_owned()).collect();
        Some((domain, labels))
    }

    /// The answer to `name` of type `qtype`.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        let Some((domain, labels)) = self.split(name) else { return Lookup::NotOurs };
        let found =
            |answers: Vec<Record>, additionals: Vec<Record>| Lookup::Found { answers, additionals };
        let job = |stack: &str, job: &str| self.jobs.get(&(stack.to_owned(), job.to_owned()));
        let a = |ip: Ipv4Addr| vec![Record::from_rdata(name.clone(), TTL, RData::A(A(ip)))];
        match labels.as_slice() {
            [] => found(vec![], vec![]),
            [stack] if self.jobs.keys().any(|(s, _)| s == stack) => found(vec![], vec![]),
            [j, s] => match job(s, j).and_then(|n| n.vip) {
                Some(vip) if qtype == RecordType::A => found(a(vip), vec![]),
                Some(_) => found(vec![], vec![]),
                None => Lookup::NxDomain,
            },
            [n, j, s] => {
                let ip = n.parse::<u32>().ok().and_then(|n| job(s, j)?.instances.get(&n).copied());
                match ip {
                    Some(IpAddr::V4(ip)) if qtype == RecordType::A => found(a(ip), vec![]),
                    Some(_) => found(vec![], vec![]),
                    None => Lookup::NxDomain,
                }
            }
            [port, proto, j, s] => {
                let port = port.strip_prefix('_').and_then(|p| p.parse::<u16>().ok());
                let proto = match proto.as_str() {
                    "_tcp" => Some(Proto::Tcp),
                    "_udp" => Some(Proto::Udp),
                    _ => None,
                };
                let names = job(s, j).filter(|n| n.vip.is_some());
                let has = |n: &&JobNames| {
                    n.ports.iter().any(|p| Some(p.port) == port && Some(p.proto) == proto)
                };
                match (names.filter(has), port) {
                    (Some(n), Some(port)) if qtype == RecordType::SRV => {
                        let target = Name::from_ascii(format!("{j}.{s}"))
                            .and_then(|t| t.append_domain(domain))
                            .unwrap_or_default();
                        let srv = SRV::new(0, 0, port, target.clone());
                        let extra = n
                            .vip
                            .map(|v| Record::from_rdata(target, TTL, RData::A(A(v))))
                            .into_iter()
                            .collect();
                        found(vec![Record::from_rdata(name.clone(), TTL, RData::SRV(srv))], extra)
                    }
                    (Some(_), Some(_)) => found(vec![], vec![]),
                    _ => Lookup::NxDomain,
                }
            }
            _ => Lookup::NxDomain,
        }
    }

    /// The names `name` stands for from an instance of `stack`, in the order its resolver
    /// tries them (`search <stack>.<domain> <domain>`, `ndots:2`): what `viking dig` asks.
    pub fn candidates(&self, name: &str, stack: Option<&str>) -> Vec<String> {
        let name = name.trim();
        if let Some(abs) = name.strip_suffix('.') {
            return vec![format!("{abs}.")];
        }
        let domain = self.domains[0].to_ascii();
        let domain = domain.trim_end_matches('.');
        let mut search: Vec<String> = stack.map(|s| format!("{s}.{domain}")).into_iter().collect();
        search.push(domain.to_owned());
        let searched = search.iter().map(|d| format!("{name}.{d}."));
        let absolute = format!("{name}.");
        if name.matches('.').count() >= NDOTS {
            std::iter::once(absolute).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(absolute)).collect()
        }
    }
}

/// The `ndots` instances' resolvers get: `pricing` and `mongo.shared` are searched first.
pub const NDOTS: usize = 2;

#[cfg(test)]
mod tests {
    use super::*;

    fn zone() -> Zone {
        let mut z = Zone::new("viking").unwrap();
        for (stack, vip, inst) in
            [("abc", "10.96.0.1", "10.32.0.5"), ("xyz", "10.96.0.2", "10.32.1.5")]
        {
            z.jobs.insert(
                (stack.into(), "pricing".into()),
                JobNames {
                    vip: Some(vip.parse().unwrap()),
                    ports: vec![Port { port: 80, proto: Proto::Tcp }],
                    instances: BTreeMap::from([(1, inst.parse().unwrap())]),
                },
            );
        }
        z
    }

    fn a(z: &Zone, name: &str) -> Result<Vec<String>, Lookup> {
        match z.lookup(&Name::from_ascii(name).unwrap(), RecordType::A) {
            Lookup::Found { answers, .. } => {
                Ok(answers.iter().map(|r| r.data().to_string()).collect())
            }
            other => Err(other),
        }
    }

    #[test]
    fn jobs_and_instances_answer_in_both_domains_and_the_rest_is_nxdomain() {
        let z = zone();
        assert_eq!(a(&z, "pricing.abc.viking.").unwrap(), ["10.96.0.1"]);
        assert_eq!(a(&z, "PRICING.xyz.Viking").unwrap(), ["10.96.0.2"], "any case, relative");
        assert_eq!(a(&z, "pricing.abc.service.consul.").unwrap(), ["10.96.0.1"]);
        assert_eq!(a(&z, "1.pricing.abc.viking.").unwrap(), ["10.32.0.5"]);
        assert_eq!(a(&z, "1.pricing.abc.service.consul.").unwrap(), ["10.32.0.5"]);
        assert_eq!(a(&z, "abc.viking.").unwrap(), Vec::<String>::new(), "a stack: no records");
        assert_eq!(a(&z, "viking.").unwrap(), Vec::<String>::new());
        for nx in
            ["web.abc.viking.", "2.pricing.abc.viking.", "x.1.pricing.abc.viking.", "nope.viking."]
        {
            assert_eq!(a(&z, nx), Err(Lookup::NxDomain), "{nx}");
        }
        assert_eq!(a(&z, "example.com."), Err(Lookup::NotOurs));
        assert_eq!(a(&z, "vikingx."), Err(Lookup::NotOurs));
        let aaaa = z.lookup(&Name::from_ascii("pricing.abc.viking.").unwrap(), RecordType::AAAA);
        assert_eq!(aaaa, Lookup::Found { answers: vec![], additionals: vec![] });
    }

    #[test]
    fn srv_names_the_job_and_its_port_with_the_vip_as_additional() {
        let z = zone();
        let q = |n: &str| z.lookup(&Name::from_ascii(n).unwrap(), RecordType::SRV);
        let Lookup::Found { answers, additionals } = q("_80._tcp.pricing.abc.viking.") else {
            panic!("SRV")
        };
        assert_eq!(answers[0].data().to_string(), "0 0 80 pricing.abc.viking.");
        assert_eq!(additionals[0].data().to_string(), "10.96.0.1");
        assert_eq!(q("_80._udp.pricing.abc.viking."), Lookup::NxDomain);
        assert_eq!(q("_81._tcp.pricing.abc.viking."), Lookup::NxDomain);
    }

    #[test]
    fn a_name_is_searched_as_an_instance_of_its_stack_would() {
        let z = zone();
        assert_eq!(
            z.candidates("pricing", Some("abc")),
            ["pricing.abc.viking.", "pricing.viking.", "pricing."]
        );
        assert_eq!(
            z.candidates("pricing.xyz", Some("abc")),
            ["pricing.xyz.abc.viking.", "pricing.xyz.viking.", "pricing.xyz."]
        );
        assert_eq!(z.candidates("a.b.c", None), ["a.b.c.", "a.b.c.viking."]);
        assert_eq!(z.candidates("x.example.", Some("abc")), ["x.example."]);
    }
}
