//! The registrator: every running instance with ports is registered at
//! `/services/<stack>/<stack>_<job>/<port>/<host_port>/<instance>` (`<instance>.udp` for a UDP
//! port, so a job with the same port on TCP and UDP keeps both) in seed 002's format, under
//! the agent's lease (a host that dies takes its registrations with it). Each pass compares
//! what should be registered with what this agent registered and repairs both ways.
//!
//! What this agent owns is what it can prove it wrote: the records under its own lease.
//! Records another registrator wrote, even under this host's name, are left alone.
//!
//! A record's `env` is the instance's environment, as the seed's example shows, without the
//! variables that look secret (a name containing PASSWORD, SECRET, TOKEN, KEY, CREDENTIAL or
//! PRIVATE) and without those the job lists in `VIKING_PRIVATE_ENV` (comma-separated names).
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
        let env = public_env(&i.env);
        for (port, host_port) in &i.ports {
            let id = match port.proto {
                crate::datapath::Proto::Udp => format!("{}.udp", i.name),
                crate::datapath::Proto::Tcp => i.name.clone(),
            };
            let key = RegistrationKey {
                env: i.stack.clone(),
                service: service.clone(),
                port: port.port,
                host_port: *host_port,
                id,
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
                env: env.clone(),
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

/// What a pass needs to know of a registration in the store: whose lease holds it and a
/// digest of its value (to tell whether it equals what would be written, without keeping it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub lease: Option<LeaseId>,
    pub digest: u64,
}

impl Held {
    pub fn of(kv: &KeyValue) -> Self {
        Self { lease: kv.lease, digest: digest(&kv.value) }
    }
}

/// A 64-bit digest of a registration's value (the standard hasher with its fixed keys: the
/// same for the same value within the process, which is all it is compared in). NB: two values
/// with the same digest would pass for equal; at 2^-64 per pair this is accepted.
pub fn digest(value: &[u8]) -> u64 {
    use std::hash::Hasher;
    let mut h = std::hash::DefaultHasher::new();
    h.write(value);
    h.finish()
}

/// The registrations this agent made, among `all`: those under its lease.
pub fn mine(lease: LeaseId, all: &[KeyValue]) -> BTreeMap<String, Held> {
    all.iter()
        .filter(|kv| kv.key.starts_with(PREFIX) && kv.lease == Some(lease))
        .map(|kv| (kv.key.clone(), Held::of(kv)))
        .collect()
}

/// Words in a variable's name that keep it out of registrations.
const SECRET_WORDS: &[&str] =
    &["PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL", "PRIVATE"];

/// An instance's environment as its registration shows it: secrets left out.
pub fn public_env(env: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let private: Vec<&str> = env
        .get("VIKING_PRIVATE_ENV")
        .map(|v| v.split(',').map(str::trim).collect())
        .unwrap_or_default();
    env.iter()
        .filter(|(k, _)| {
            let upper = k.to_ascii_uppercase();
            !SECRET_WORDS.iter().any(|w| upper.contains(w)) && !private.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Makes this host's registrations equal `want`; returns (written, removed).
pub async fn sync<S: Store>(
    store: &S,
    lease: Option<LeaseId>,
    want: &BTreeMap<String, Vec<u8>>,
    have: &BTreeMap<String, Held>,
) -> Result<(usize, usize), StoreError> {
    let mut removed = 0;
    for key in have.keys().filter(|k| !want.contains_key(*k)) {
        store.delete(key).await?;
        removed += 1;
    }
    let mut written = 0;
    for (key, value) in want {
        let same = have.get(key).is_some_and(|h| h.digest == digest(value) && h.lease == lease);
        if !same {
            store.put(key, value.clone(), lease).await?;
            written += 1;
        }
    }
    Ok((written, removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_this_agent_holds_is_told_apart_by_lease_and_value() {
        let kv = |key: &str, value: &str, lease| KeyValue::put_at(key, value, 1, lease);
        let all = [
            kv("/services/s/s_a/80/1/a", r#"{"x":1}"#, Some(LeaseId(7))),
            kv("/services/s/s_b/80/1/b", r#"{"x":1}"#, Some(LeaseId(8))),
            kv("/services/s/s_c/80/1/c", r#"{"x":1}"#, None),
            kv("/viking/ps/h/s/a/0", r#"{"x":1}"#, Some(LeaseId(7))),
        ];
        let mine = mine(LeaseId(7), &all);
        assert_eq!(mine.keys().collect::<Vec<_>>(), ["/services/s/s_a/80/1/a"]);
        let held = mine["/services/s/s_a/80/1/a"];
        assert_eq!(held.digest, digest(br#"{"x":1}"#));
        assert_ne!(held.digest, digest(br#"{"x":2}"#));
        assert_eq!(held.lease, Some(LeaseId(7)));
    }

    #[test]
    fn secrets_stay_out_of_registrations() {
        let env: BTreeMap<String, String> = [
            ("PATH", "/bin"),
            ("DB_PASSWORD", "x"),
            ("api_token", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("MODE", "prod"),
            ("INTERNAL_URL", "x"),
            ("VIKING_PRIVATE_ENV", "INTERNAL_URL"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let public: Vec<String> = public_env(&env).into_keys().collect();
        assert_eq!(public, ["MODE", "PATH"]);
    }
}
