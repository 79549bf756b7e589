//! The registrator: every running instance with ports is registered at
//! `/services/<stack>/<stack>_<job>/<port>/<host_port>/<instance>` in seed 002's format, under
//! the agent's lease (a host that dies takes its registrations with it). Each pass compares
//! what should be registered with what this host has registered and repairs both ways.
use std::collections::BTreeMap;

use super::registration::{Registration, RegistrationKey, PREFIX};
use crate::{
    runtime::{Instance, InstanceState},
    stack::service_name,
    store::{KeyValue, LeaseId, Store, StoreError},
};

/// The registrations `instances` should have (key -> JSON).
pub fn wanted(
    node: &str,
    instances: &[Instance],
    tags: &BTreeMap<String, Vec<String>>,
    images: &BTreeMap<String, String>,
) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for i in instances.iter().filter(|i| i.state == InstanceState::Running) {
        let Some(address) = i.address else { continue };
        let service = service_name(&i.stack, &i.job);
        for (port, host_port) in &i.ports {
            let key = RegistrationKey {
                env: i.stack.clone(),
                service: service.clone(),
                port: port.port,
                host_port: *host_port,
                id: i.name.clone(),
            };
            let record = Registration {
                id: i.handle.clone(),
                host: node.to_owned(),
                ipaddress: address,
                host_port: *host_port,
                port: Some(port.port),
                proto: Some(port.proto),
                name: i.name.clone(),
                image: images.get(&i.name).cloned().unwrap_or_default(),
                tags: tags.get(&i.name).cloned().unwrap_or_default(),
                env: BTreeMap::new(),
                hostname: Some(i.name.clone()),
                path: Some(key.to_key()),
            };
            if let Ok(v) = serde_json::to_vec(&record) {
                out.insert(key.to_key(), v);
            }
        }
    }
    out
}

/// The registrations this host made, among `all` (its name in the record's `host`).
pub fn mine<'a>(node: &str, all: &'a [KeyValue]) -> BTreeMap<&'a str, &'a KeyValue> {
    all.iter()
        .filter(|kv| kv.key.starts_with(PREFIX))
        .filter(|kv| {
            serde_json::from_slice::<Registration>(&kv.value).is_ok_and(|r| r.host == node)
        })
        .map(|kv| (kv.key.as_str(), kv))
        .collect()
}

/// Makes this host's registrations equal `want`; returns (written, removed).
pub async fn sync<S: Store>(
    store: &S,
    lease: Option<LeaseId>,
    want: &BTreeMap<String, Vec<u8>>,
    have: &BTreeMap<&str, &KeyValue>,
) -> Result<(usize, usize), StoreError> {
    let mut removed = 0;
    for key in have.keys().filter(|k| !want.contains_key(**k)) {
        store.delete(key).await?;
        removed += 1;
    }
    let mut written = 0;
    for (key, value) in want {
        let same = have.get(key.as_str()).is_some_and(|kv| &kv.value == value && kv.lease == lease);
        if !same {
            store.put(key, value.clone(), lease).await?;
            written += 1;
        }
    }
    Ok((written, removed))
}
