//! What the reconciler follows of `/services/`: for every registration, only what a pass asks
//! of it (which service it registers and at which address, the revision it was written at,
//! and whose lease holds it), not the record. A pass then reads, for the services its
//! instances link to, whether they are registered and where their backends are, and which
//! registrations this agent holds (`registrator::Held`).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    ops::Range,
};

use super::{registration::Endpoint, registrator::Held};
use crate::store::{KeyValue, LeaseId, Revision};

/// One registration as the reconciler keeps it (the store key is the mirror's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The service (where it sits in the key) and the backend's address; `None` when the
    /// record does not parse as a registration (it is still this agent's to remove if its
    /// lease holds it).
    pub backend: Option<(Range<u32>, IpAddr)>,
    pub revision: Revision,
    pub held: Held,
}

impl Registered {
    /// What the reconciler's mirror keeps of a record under `/services/`.
    pub fn project(kv: KeyValue) -> Option<Self> {
        let backend = Endpoint::parse(&kv.key, &kv.value).ok().and_then(|e| {
            let span = e.key.service_span();
            let span = u32::try_from(span.start).ok()?..u32::try_from(span.end).ok()?;
            Some((span, e.record.ipaddress))
        });
        Some(Self { backend, revision: kv.mod_revision, held: Held::of(&kv) })
    }

    /// The service it registers, read from its key; the backend's address and revision.
    fn service<'k>(&self, key: &'k str) -> Option<(&'k str, IpAddr)> {
        let (span, ip) = self.backend.as_ref()?;
        Some((key.get(span.start as usize..span.end as usize)?, *ip))
    }
}

/// What one pass reads of the registrations.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Seen {
    /// Those of `linked` that have at least one registration.
    pub registered: BTreeSet<String>,
    /// The backends of each of `linked` (address, revision written at).
    pub backends: BTreeMap<String, Vec<(IpAddr, Revision)>>,
    /// The registrations under `lease` (what this agent wrote).
    pub mine: BTreeMap<String, Held>,
}

/// Reads `all` (key -> what the mirror keeps) for the services `linked` names and the
/// registrations under `lease`.
pub fn read(
    all: &BTreeMap<String, Registered>,
    linked: &BTreeSet<String>,
    lease: Option<LeaseId>,
) -> Seen {
    let mut seen = Seen::default();
    for (key, r) in all {
        if lease.is_some() && r.held.lease == lease {
            seen.mine.insert(key.clone(), r.held);
        }
        let Some((service, ip)) = r.service(key) else { continue };
        if linked.contains(service) {
            if !seen.registered.contains(service) {
                seen.registered.insert(service.to_owned());
            }
            seen.backends.entry(service.to_owned()).or_default().push((ip, r.revision));
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, revision: Revision, lease: Option<LeaseId>) -> KeyValue {
        KeyValue::put_at(key, value, revision, lease)
    }

    fn mirror(kvs: Vec<KeyValue>) -> BTreeMap<String, Registered> {
        kvs.into_iter().filter_map(|kv| Some((kv.key.clone(), Registered::project(kv)?))).collect()
    }

    #[test]
    fn a_pass_sees_the_linked_services_and_its_own_records() {
        let all = mirror(vec![
            kv(
                "/services/prod/shared_db/5432/40000/a",
                r#"{"ipaddress":"10.0.0.1","host_port":40000}"#,
                5,
                Some(LeaseId(7)),
            ),
            kv(
                "/services/dev/shared_db/5432/40001/b",
                r#"{"ipaddress":"10.0.0.2","host_port":40001}"#,
                6,
                None,
            ),
            kv(
                "/services/prod/db/slaves/5432/40002/c",
                r#"{"ipaddress":"10.0.0.3","host_port":40002}"#,
                8,
                None,
            ),
            kv(
                "/services/prod/other/80/40003/d",
                r#"{"ipaddress":"10.0.0.4","host_port":40003}"#,
                9,
                Some(LeaseId(7)),
            ),
            // Not a registration: no service, but still this agent's to clean up.
            kv("/services/prod/shared_db/5432/40004/e", "not json", 10, Some(LeaseId(7))),
        ]);
        let linked = BTreeSet::from(["shared_db".to_owned(), "db/slaves".into(), "absent".into()]);
        let seen = read(&all, &linked, Some(LeaseId(7)));
        assert_eq!(seen.registered, BTreeSet::from(["db/slaves".to_owned(), "shared_db".into()]));
        assert_eq!(
            seen.backends["shared_db"],
            [("10.0.0.2".parse().unwrap(), 6), ("10.0.0.1".parse().unwrap(), 5)]
        );
        assert_eq!(seen.backends["db/slaves"], [("10.0.0.3".parse().unwrap(), 8)]);
        assert_eq!(
            seen.mine.keys().collect::<Vec<_>>(),
            [
                "/services/prod/other/80/40003/d",
                "/services/prod/shared_db/5432/40000/a",
                "/services/prod/shared_db/5432/40004/e"
            ]
        );
        assert!(read(&all, &linked, None).mine.is_empty(), "no lease: nothing is this agent's");
    }
}
