//! The registrations a host knows, indexed by store key and by service: what discovery's
//! loop (`sync`) and embassy's descriptors (`embassy`) select backends from.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{
    descriptor::{Descriptor, ServiceRef},
    registration::Endpoint,
};

/// The registrations the loop knows, by store key and by service.
#[derive(Debug, Default)]
pub struct Endpoints {
    by_key: BTreeMap<String, Endpoint>,
    by_service: HashMap<String, BTreeSet<String>>,
    /// The store revision each registration was last written at (0: not known).
    revisions: HashMap<String, i64>,
}

impl Endpoints {
    /// Adds or replaces a registration; returns the one it replaced.
    pub fn insert(&mut self, e: Endpoint) -> Option<Endpoint> {
        self.insert_at(e, 0)
    }

    /// Adds or replaces a registration written at store revision `revision` (which decides
    /// who is left out of a service with more backends than the datapath holds: the oldest).
    pub fn insert_at(&mut self, e: Endpoint, revision: i64) -> Option<Endpoint> {
        let key = e.key.to_key();
        let old = self.remove(&key);
        self.by_service.entry(e.key.service.clone()).or_default().insert(key.clone());
        self.revisions.insert(key.clone(), revision);
        self.by_key.insert(key, e);
        old
    }

    /// The revision a registration was last written at (0 when not known).
    pub fn revision(&self, key: &str) -> i64 {
        self.revisions.get(key).copied().unwrap_or(0)
    }

    /// Removes a registration by its store key; returns it.
    pub fn remove(&mut self, key: &str) -> Option<Endpoint> {
        self.revisions.remove(key);
        let old = self.by_key.remove(key)?;
        if let Some(keys) = self.by_service.get_mut(&old.key.service) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_service.remove(&old.key.service);
            }
        }
        Some(old)
    }

    pub fn clear(&mut self) {
        self.by_key.clear();
        self.by_service.clear();
        self.revisions.clear();
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// The registrations of `service` (any env, any port).
    pub fn of_service<'a>(&'a self, service: &str) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.by_service.get(service).into_iter().flatten().filter_map(|k| self.by_key.get(k))
    }

    /// The registrations a descriptor names (tags and protocol checked).
    pub fn for_descriptor<'a>(
        &'a self,
        d: &'a Descriptor,
    ) -> Box<dyn Iterator<Item = &'a Endpoint> + 'a> {
        match &d.service {
            ServiceRef::Name(n) => Box::new(self.of_service(n).filter(|e| d.matches(e))),
            ServiceRef::Path(p) => {
                let from = format!("{p}/");
                Box::new(
                    self.by_key
                        .range(from.clone()..)
                        .take_while(move |(k, _)| k.starts_with(&from))
                        .map(|(_, e)| e)
                        .filter(|e| d.matches(e)),
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
