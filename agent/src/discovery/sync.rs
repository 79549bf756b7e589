//! Keeps the datapath's service table equal to the store: every allocated ambassador port
//! (`/viking/alloc/ports/<service>/<port>`) becomes a service at `ambassador:port` whose
//! backends are the registrations of that service and port (`/services/<env>/<service>/<port>/..`).
//!
//! The table's entries on the ambassador address (netns 0) with a port in the allocator's
//! range belong to this loop: it adds, replaces and removes them. Other entries (`viking
//! service add` on any other address or port) are left alone.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::registration::{Endpoint, PREFIX as SERVICES};
use crate::{
    control::{ports::PortAllocation, PortRange},
    datapath::{Algo, Datapath, DatapathError, Frontend, Proto, ServiceSpec, GRACE},
    store::{keys, KeyValue, Store, WatchEvent},
};

/// The services the datapath should hold.
pub fn desired(
    allocations: &[PortAllocation],
    endpoints: &[Endpoint],
    ambassador: IpAddr,
    algo: Algo,
) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    for a in allocations {
        let mine: Vec<&Endpoint> = endpoints
            .iter()
            .filter(|e| e.key.service == a.service && e.key.port == a.port)
            .collect();
        let udp = mine.iter().any(|e| e.record.proto == Some(Proto::Udp));
        let protos: &[Proto] = if udp { &[Proto::Tcp, Proto::Udp] } else { &[Proto::Tcp] };
        for &proto in protos {
            let backends: BTreeSet<SocketAddr> = mine
                .iter()
                .filter(|e| {
                    e.record.proto.unwrap_or(Proto::Tcp) == proto
                        || (udp && e.record.proto.is_none())
                })
                .map(|e| e.addr())
                .filter(|b| b.is_ipv4() == ambassador.is_ipv4() || ambassador.is_ipv6())
                .collect();
            out.push(ServiceSpec {
                name: format!("{}:{}", a.service, a.port),
                frontend: Frontend {
                    addr: SocketAddr::new(ambassador, a.ambassador_port),
                    proto,
                    netns: 0,
                },
                algo,
                backends: backends.into_iter().collect(),
            });
        }
    }
    out
}

/// Makes the table hold exactly `want` among the entries this loop owns; returns (wanted, removed).
pub fn apply(
    datapath: &mut Datapath,
    ambassador: IpAddr,
    range: PortRange,
    want: &[ServiceSpec],
) -> Result<(usize, usize), DatapathError> {
    let keep: BTreeSet<Frontend> = want.iter().map(|s| s.frontend).collect();
    let mut removed = 0;
    for s in datapath.table.list()? {
        let owned = s.frontend.addr.ip() == ambassador
            && s.frontend.netns == 0
            && range.contains(s.frontend.addr.port());
        if owned && !keep.contains(&s.frontend) {
            datapath.table.remove(&s.frontend)?;
            removed += 1;
        }
    }
    for spec in want {
        datapath.table.upsert(spec)?;
    }
    Ok((want.len(), removed))
}

/// What the loop knows of the store.
#[derive(Default)]
struct View {
    allocations: BTreeMap<String, KeyValue>,
    registrations: BTreeMap<String, KeyValue>,
}

impl View {
    fn allocations(&self) -> Vec<PortAllocation> {
        self.allocations
            .values()
            .filter_map(|kv| {
                let rest = kv.key.strip_prefix(keys::PORTS)?;
                let (service, port) = rest.rsplit_once('/')?;
                let port: u16 = port.parse().ok()?;
                let ambassador_port: u16 = kv.text().ok()?.trim().parse().ok()?;
                Some(PortAllocation { service: service.to_owned(), port, ambassador_port })
            })
            .collect()
    }

    fn endpoints(&self) -> Vec<Endpoint> {
        self.registrations
            .values()
            .filter_map(|kv| match Endpoint::parse(&kv.key, &kv.value) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(error = %e, "ignoring a registration");
                    None
                }
            })
            .collect()
    }

    fn apply_event(map: &mut BTreeMap<String, KeyValue>, ev: WatchEvent) {
        match ev {
            WatchEvent::Put(kv) => {
                map.insert(kv.key.clone(), kv);
            }
            WatchEvent::Delete { key, .. } => {
                map.remove(&key);
            }
            WatchEvent::Resync { kvs, .. } => {
                *map = kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            }
        }
    }
}

/// Follows the store for as long as the agent runs, programming `datapath`. Changes that
/// arrive together are applied together (a 10 ms batch).
pub async fn run<S: Store>(
    store: S,
    mut datapath: Datapath,
    ambassador: IpAddr,
    range: PortRange,
    algo: Algo,
    _containers: tokio::sync::watch::Receiver<super::embassy::Containers>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Datapath, crate::store::StoreError> {
    let allocs = store.list(keys::PORTS).await?;
    let regs = store.list(SERVICES).await?;
    let mut view = View::default();
    View::apply_event(
        &mut view.allocations,
        WatchEvent::Resync { kvs: allocs.kvs, revision: allocs.revision },
    );
    View::apply_event(
        &mut view.registrations,
        WatchEvent::Resync { kvs: regs.kvs, revision: regs.revision },
    );
    let mut allocs_watch = store.watch(keys::PORTS, Some(allocs.revision + 1)).await?;
    let mut regs_watch = store.watch(SERVICES, Some(regs.revision + 1)).await?;
    let mut dirty = true;
    let mut tick = tokio::time::interval(GRACE);
    loop {
        if dirty {
            let started = Instant::now();
            let want = desired(&view.allocations(), &view.endpoints(), ambassador, algo);
            match apply(&mut datapath, ambassador, range, &want) {
                Ok((services, removed)) => {
                    tracing::debug!(services, removed, took = ?started.elapsed(), "datapath synced")
                }
                Err(e) => tracing::warn!(error = %e, "programming the datapath"),
            }
            dirty = false;
        }
        tokio::select! {
            ev = allocs_watch.next() => {
                let Some(ev) = ev else { break };
                View::apply_event(&mut view.allocations, ev);
                dirty = true;
            }
            ev = regs_watch.next() => {
                let Some(ev) = ev else { break };
                View::apply_event(&mut view.registrations, ev);
                dirty = true;
            }
            _ = tick.tick() => {
                if let Err(e) = datapath.table.collect_retired(GRACE) {
                    tracing::warn!(error = %e, "collecting retired backend sets");
                }
            }
            _ = stop.changed() => break,
        }
        if dirty {
            // Let a burst of changes land before programming once.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(datapath)
}
