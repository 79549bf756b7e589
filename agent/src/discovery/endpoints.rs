//! The registrations a host knows, indexed by store key and by service: what discovery's
//! loop (`sync`) and embassy's descriptors (`embassy`) select backends from.
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    ops::{Bound, Range},
    sync::Arc,
};

use super::{
    descriptor::{Descriptor, ServiceRef},
    registration::Endpoint,
};
use crate::datapath::Proto;

/// What the loop keeps of a registration: what selects it (service, port, protocol, tags),
/// where it points, and the revision it was written at. The rest of the record is not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Known {
    /// The store key.
    pub key: Arc<str>,
    /// Where the service sits in `key`.
    service: Range<u32>,
    /// The service port (the key's `<port>`).
    pub port: u16,
    /// The address to send connections to (`ipaddress:host_port`).
    pub addr: SocketAddr,
    pub proto: Option<Proto>,
    pub tags: Box<[String]>,
    /// The store revision it was last written at (0: not known).
    pub revision: i64,
}

impl Known {
    /// What is kept of `e`, written at `revision`.
    pub fn of(e: Endpoint, revision: i64) -> Self {
        let key: Arc<str> = e.key.to_key().into();
        let span = e.key.service_span();
        // NB: a key longer than 4 GiB cannot come out of a store that takes 1.5 MiB.
        let service = span.start as u32..span.end as u32;
        Self {
            key,
            service,
            port: e.key.port,
            addr: e.addr(),
            proto: e.record.proto,
            tags: e.record.tags.into_boxed_slice(),
            revision,
        }
    }

    /// The service it registers (`apache`, `db/slaves`).
    pub fn service(&self) -> &str {
        self.key.get(self.service.start as usize..self.service.end as usize).unwrap_or_default()
    }

    /// The address to send connections to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Known {
    /// Whether this registration is one of a descriptor's endpoints.
    pub fn named_by(&self, d: &Descriptor) -> bool {
        let under = match &d.service {
            ServiceRef::Name(n) => self.service() == n,
            ServiceRef::Path(p) => {
                self.key.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/'))
            }
        };
        let proto_ok = self.proto.is_none_or(|p| p == d.proto);
        under && proto_ok && d.tags.iter().all(|t| self.tags.contains(t))
    }
}

/// The registrations the loop knows, by store key and by service.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_key: BTreeMap<Arc<str>, Known>,
    /// The keys of each service, in key order. NB: a sorted `Vec`, not a set: a service has a
    /// handful of registrations, and a set's node holds eleven.
    by_service: HashMap<Box<str>, Vec<Arc<str>>>,
}

impl Endpoints {
    /// The registrations of a whole listing (each with the revision it was written at), built
    /// in one go: the tree's nodes come out full where inserts one by one in key order leave
    /// each about half empty, and each record can be dropped as soon as it is read.
    pub fn build(all: impl IntoIterator<Item = (Endpoint, i64)>) -> Self {
        let by_key: BTreeMap<Arc<str>, Known> = all
            .into_iter()
            .map(|(e, revision)| {
                let known = Known::of(e, revision);
                (known.key.clone(), known)
            })
            .collect();
        let mut by_service: HashMap<Box<str>, Vec<Arc<str>>> = HashMap::new();
        for known in by_key.values() {
            match by_service.get_mut(known.service()) {
                Some(keys) => keys.push(known.key.clone()),
                None => {
                    by_service.insert(known.service().into(), vec![known.key.clone()]);
                }
            }
        }
        by_service.values_mut().for_each(Vec::shrink_to_fit);
        Self { by_key, by_service }
    }

    /// Adds or replaces a registration; returns the one it replaced.
    pub fn insert(&mut self, e: Endpoint) -> Option<Known> {
        self.insert_at(e, 0)
    }

    /// Adds or replaces a registration written at store revision `revision` (which decides
    /// who is left out of a service with more backends than the datapath holds: the oldest).
    pub fn insert_at(&mut self, e: Endpoint, revision: i64) -> Option<Known> {
        let known = Known::of(e, revision);
        let old = self.remove(&known.key);
        match self.by_service.get_mut(known.service()) {
            Some(keys) => {
                if let Err(at) = keys.binary_search(&known.key) {
                    keys.insert(at, known.key.clone());
                }
            }
            None => {
                self.by_service.insert(known.service().into(), vec![known.key.clone()]);
            }
        }
        self.by_key.insert(known.key.clone(), known);
        old
    }

    /// The revision a registration was last written at (0 when not known).
    pub fn revision(&self, key: &str) -> i64 {
        self.by_key.get(key).map_or(0, |k| k.revision)
    }

    /// Removes a registration by its store key; returns it.
    pub fn remove(&mut self, key: &str) -> Option<Known> {
        let old = self.by_key.remove(key)?;
        if let Some(keys) = self.by_service.get_mut(old.service()) {
            if let Ok(at) = keys.binary_search_by(|k| (**k).cmp(key)) {
                keys.remove(at);
            }
            if keys.is_empty() {
                self.by_service.remove(old.service());
            }
        }
        Some(old)
    }

    pub fn clear(&mut self) {
        self.by_key.clear();
        self.by_service.clear();
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The registrations of `service` (any env, any port).
    pub fn of_service<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Known> + 'a {
        self.by_service.get(service).into_iter().flatten().filter_map(|k| self.by_key.get(k))
    }

    /// The registrations a descriptor names (tags and protocol checked).
    pub fn for_descriptor<'a>(
        &'a self,
        d: &'a Descriptor,
    ) -> Box<dyn Iterator<Item = &'a Known> + 'a> {
        match &d.service {
            ServiceRef::Name(n) => Box::new(self.of_service(n).filter(|e| e.named_by(d))),
            ServiceRef::Path(p) => {
                let from = format!("{p}/");
                Box::new(
                    self.by_key
                        .range::<str, _>((Bound::Included(from.as_str()), Bound::Unbounded))
                        .take_while(move |(k, _)| k.starts_with(&from))
                        .map(|(_, e)| e)
                        .filter(|e| e.named_by(d)),
                )
            }
        }
    }
}

/// A service name that fits the table (64 bytes), cut at a character boundary.
pub fn fit_name(name: &str) -> String {
    let max = viking_common::SERVICE_NAME_LEN;
    if name.len() <= max {
        return name.to_owned();
    }
    let mut end = max;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_owned()
}
