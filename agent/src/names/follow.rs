//! The zone follows the store: the VIP records (`/viking/alloc/vips/`) and the instances'
//! status records (`/viking/ps/`), listed once and then watched; after each batch of changes
//! a new zone is published (the responder answers from whichever it holds).
use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use tokio::sync::watch;

use super::zone::{JobNames, Zone};
use crate::{
    cluster::vips::{self, Vip},
    store::{keys, KeyValue, Store, StoreError, WatchEvent},
};

/// What the zone is built from.
#[derive(Debug, Default)]
pub struct Sources {
    /// Record key -> VIP.
    vips: BTreeMap<String, Vip>,
    /// Status key -> (stack, job, index, address).
    instances: BTreeMap<String, (String, String, u32, Option<IpAddr>)>,
}

impl Sources {
    fn put_vip(&mut self, kv: &KeyValue) {
        match Vip::parse(kv) {
            Ok(v) => {
                self.vips.insert(kv.key.clone(), v);
            }
            Err(e) => {
                tracing::warn!(error = %e, "names: ignoring a VIP record");
                self.vips.remove(&kv.key);
            }
        }
    }

    fn put_instance(&mut self, kv: &KeyValue) {
        let Some((_, stack, job, index)) = keys::parse_instance(keys::PS, &kv.key) else {
            return;
        };
        #[derive(serde::Deserialize)]
        struct Addr {
            #[serde(default)]
            address: Option<IpAddr>,
        }
        let address = serde_json::from_slice::<Addr>(&kv.value).ok().and_then(|a| a.address);
        self.instances.insert(kv.key.clone(), (stack, job, index, address));
    }

    /// Applies one event of either prefix.
    pub fn apply(&mut self, ev: WatchEvent, vips_prefix: bool) {
        match (ev, vips_prefix) {
            (WatchEvent::Put(kv), true) => self.put_vip(&kv),
            (WatchEvent::Put(kv), false) => self.put_instance(&kv),
            (WatchEvent::Delete { key, .. }, true) => {
                self.vips.remove(&key);
            }
            (WatchEvent::Delete { key, .. }, false) => {
                self.instances.remove(&key);
            }
            (WatchEvent::Resync { kvs, .. }, true) => {
                self.vips.clear();
                kvs.iter().for_each(|kv| self.put_vip(kv));
            }
            (WatchEvent::Resync { kvs, .. }, false) => {
                self.instances.clear();
                kvs.iter().for_each(|kv| self.put_instance(kv));
            }
        }
    }

    /// The zone: every job with a VIP, and the addresses of its instances.
    pub fn zone(&self, base: &Zone, serial: u32) -> Zone {
        let mut jobs: BTreeMap<(String, String), JobNames> = BTreeMap::new();
        for v in self.vips.values() {
            let n = jobs.entry((v.stack.clone(), v.job.clone())).or_default();
            n.vip = Some(v.ip);
            n.ports = v.ports.clone();
        }
        for (stack, job, index, address) in self.instances.values() {
            if let (Some(n), Some(a)) = (jobs.get_mut(&(stack.clone(), job.clone())), address) {
                n.instances.insert(*index, *a);
            }
        }
        Zone { domains: base.domains.clone(), jobs, serial }
    }
}

/// Reads the zone once (`viking dig`'s view, and the start of `run`).
pub async fn read<S: Store>(store: &S, base: &Zone) -> Result<Zone, StoreError> {
    let mut s = Sources::default();
    let v = store.list(vips::PREFIX).await?;
    s.apply(WatchEvent::Resync { kvs: v.kvs, revision: v.revision }, true);
    let p = store.list(keys::PS).await?;
    s.apply(WatchEvent::Resync { kvs: p.kvs, revision: p.revision }, false);
    Ok(s.zone(base, 0))
}

/// Keeps `zone` equal to the store until `stop`.
pub async fn run<S: Store>(
    store: S,
    base: Zone,
    zone: watch::Sender<Arc<Zone>>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut s = Sources::default();
    let v = store.list(vips::PREFIX).await?;
    let p = store.list(keys::PS).await?;
    let mut vips_watch = store.watch(vips::PREFIX, Some(v.revision + 1)).await?;
    let mut ps_watch = store.watch(keys::PS, Some(p.revision + 1)).await?;
    s.apply(WatchEvent::Resync { kvs: v.kvs, revision: v.revision }, true);
    s.apply(WatchEvent::Resync { kvs: p.kvs, revision: p.revision }, false);
    let mut serial: u32 = 1;
    zone.send_replace(Arc::new(s.zone(&base, serial)));
    loop {
        tokio::select! {
            ev = vips_watch.next() => match ev {
                Some(ev) => s.apply(ev, true),
                None => break,
            },
            ev = ps_watch.next() => match ev {
                Some(ev) => s.apply(ev, false),
                None => break,
            },
            _ = stop.changed() => break,
        }
        // Take whatever else is queued, so a burst makes one zone.
        while let Some(ev) = vips_watch.try_next() {
            s.apply(ev, true);
        }
        while let Some(ev) = ps_watch.try_next() {
            s.apply(ev, false);
        }
        serial = serial.wrapping_add(1);
        zone.send_replace(Arc::new(s.zone(&base, serial)));
    }
    Ok(())
}
