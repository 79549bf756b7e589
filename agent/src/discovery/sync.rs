//! Keeps the datapath's service table equal to the store and the running containers:
//!
//! - every allocated ambassador port (`/viking/alloc/ports/<service>/<port>`) becomes a service
//!   at `ambassador:port` (every network namespace) whose backends are the registrations of
//!   that service and port (`/services/<env>/<service>/<port>/..`);
//! - every `BACKEND_*` descriptor of a running container (embassy mode, `embassy.rs`) becomes
//!   a service at `127.0.0.1:port` in that container's network namespace only, whose backends
//!   are the registrations the descriptor matches.
//!
//! - every job's virtual IP (`/viking/alloc/vips/<stack>/<job>`, `cluster::vips`) becomes a
//!   service at `VIP:port` (every network namespace) for each of the job's own ports, whose
//!   backends are the registrations of that job's port (docs/names.md).
//!
//! The loop owns the table's entries on the ambassador address (netns 0) with a port in the
//! allocator's range, the entries on an address of the VIP range (netns 0), and every
//! netns-scoped entry on 127.0.0.1: it adds, replaces and removes them. Other entries (`viking service add` on any other address or port) are left alone.
//!
//! It programs only what changed: it remembers what it last applied and, after each batch of
//! changes, upserts the services whose spec differs and removes the ones no longer wanted (one
//! registration change among 1k services is one upsert). On start, after a watch resync
//! (compaction, reconnect) and after a failed map update it reconciles in full against the
//! table instead.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use super::{
    embassy::{self, is_embassy_addr, Containers, Reported},
    endpoints::{fit_name, Endpoints, Known},
    limit,
    registration::{Endpoint, PREFIX as SERVICES},
};
use crate::{
    cluster::{ports::PortAllocation, vips, vips::Vip, PortRange},
    datapath::{Algo, Datapath, Frontend, Proto, ServiceSpec, ServiceTable, GRACE},
    store::{keys, KeyValue, Store, WatchEvent},
};

/// After a failed map update, the next full pass comes this much later (or with the next
/// change, whichever is first).
const RETRY: Duration = Duration::from_secs(1);

/// The ambassador-port services the datapath should hold, each balanced as its allocation
/// says. A service with more backends than the datapath holds for one carries them all, the
/// newest first (`limit::order`); the programmer installs as many as fit.
pub fn desired(
    allocations: &[PortAllocation],
    endpoints: &Endpoints,
    ambassador: IpAddr,
) -> Vec<ServiceSpec> {
    let mut out = Vec::new();
    for a in allocations {
        let mine: Vec<&Known> =
            endpoints.of_service(&a.service).filter(|e| e.port == a.port).collect();
        let udp = mine.iter().any(|e| e.proto == Some(Proto::Udp));
        let protos: &[Proto] = if udp { &[Proto::Tcp, Proto::Udp] } else { &[Proto::Tcp] };
        for &proto in protos {
            let backends = limit::order(
                mine.iter()
                    .filter(|e| {
                        e.proto.unwrap_or(Proto::Tcp) == proto || (udp && e.proto.is_none())
                    })
                    .map(|e| (e.addr, e.revision))
                    .filter(|(b, _)| b.is_ipv4() == ambassador.is_ipv4() || ambassador.is_ipv6()),
            );
            out.push(ServiceSpec {
                ejection: Default::default(),
                end_tcp: false,
                name: fit_name(&match a.variant {
                    None => format!("{}:{}", a.service, a.port),
                    Some(v) => format!("{}:{}@{v}", a.service, a.port),
                }),
                frontend: Frontend {
                    addr: SocketAddr::new(ambassador, a.ambassador_port),
                    proto,
                    netns: 0,
                },
                algo: a.balance,
                backends,
            });
        }
    }
    out
}

/// The services of a job's virtual IP: `ip:port` for each of the job's ports, balanced as the
/// job says, whose backends are the registrations of that port (with that protocol, or none
/// said).
pub fn vip_desired(vip: &Vip, endpoints: &Endpoints) -> Vec<ServiceSpec> {
    let service = crate::stack::service_name(&vip.stack, &vip.job);
    vip.ports
        .iter()
        .map(|p| {
            let backends = limit::order(
                endpoints
                    .of_service(&service)
                    .filter(|e| e.port == p.port)
                    .filter(|e| e.proto.unwrap_or(p.proto) == p.proto)
                    .map(|e| (e.addr, e.revision))
                    .filter(|(b, _)| b.is_ipv4()),
            );
            ServiceSpec {
                ejection: Default::default(),
                end_tcp: false,
                name: fit_name(&format!("{service}:{}@vip", p.port)),
                frontend: Frontend {
                    addr: SocketAddr::new(IpAddr::V4(vip.ip), p.port),
                    proto: p.proto,
                    netns: 0,
                },
                algo: vip.balance,
                backends,
            }
        })
        .collect()
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Whether it was a full reconcile against the table.
    pub full: bool,
    pub upserted: usize,
    pub removed: usize,
    /// Map updates that failed (retried by the next full pass).
    pub failed: usize,
}

/// Programs the table's owned entries, remembering what it applied so that the next pass
/// touches only what changed.
#[derive(Debug)]
pub struct Programmer {
    ambassador: IpAddr,
    range: PortRange,
    /// What was last applied to each frontend, as a digest of its spec (`digest`): all the
    /// diff asks is whether a spec differs, and 10,000 specs kept whole cost megabytes.
    applied: BTreeMap<Frontend, u64>,
    /// The VIP range: entries on its addresses (netns 0) are the loop's.
    vips: Option<ipnetwork::Ipv4Network>,
    /// The services at the per-service backend limit, and how many backends each leaves out.
    over_limit: BTreeMap<Frontend, usize>,
    full: bool,
}

impl Programmer {
    /// The first pass is a full reconcile.
    pub fn new(ambassador: IpAddr, range: PortRange) -> Self {
        Self {
            ambassador,
            range,
            applied: BTreeMap::new(),
            vips: None,
            over_limit: BTreeMap::new(),
            full: true,
        }
    }

    /// Owns the entries on addresses of the VIP range too.
    pub fn with_vips(mut self, range: ipnetwork::Ipv4Network) -> Self {
        self.vips = Some(range);
        self
    }

    /// The services at the per-service backend limit and how many backends each leaves out
    /// (what metrics report; the datapath has the same per service, `ServiceStatus`).
    pub fn over_limit(&self) -> &BTreeMap<Frontend, usize> {
        &self.over_limit
    }

    /// Installs a spec, as many of its backends as a service holds (`limit`).
    fn install(
        &mut self,
        table: &mut ServiceTable,
        spec: &ServiceSpec,
    ) -> Result<(), crate::datapath::DatapathError> {
        let (capped, left_out) = limit::cap(spec);
        table.upsert_limited(&capped, left_out)?;
        if left_out == 0 {
            if self.over_limit.remove(&spec.frontend).is_some() {
                tracing::info!(service = %spec.name, backends = spec.backends.len(), "every backend is programmed again");
            }
        } else if self.over_limit.insert(spec.frontend, left_out).is_none() {
            tracing::warn!(
                service = %spec.name,
                registered = spec.backends.len(),
                limit = limit::MAX,
                "more backends than a service holds: the newest registrations are programmed, the oldest left out"
            );
        }
        Ok(())
    }

    /// Whether the loop owns an entry of the table.
    pub fn owns(&self, f: &Frontend) -> bool {
        let ambassador_port =
            f.netns == 0 && f.addr.ip() == self.ambassador && self.range.contains(f.addr.port());
        let embassy = f.netns != 0 && is_embassy_addr(f.addr.ip());
        let vip = f.netns == 0
            && matches!((f.addr.ip(), self.vips), (IpAddr::V4(ip), Some(r)) if r.contains(ip));
        ambassador_port || embassy || vip
    }

    /// Makes the next pass a full reconcile against the table.
    pub fn resync(&mut self) {
        self.full = true;
    }

    /// Makes the owned entries of the table equal `want`.
    pub fn program(&mut self, table: &mut ServiceTable, want: Vec<ServiceSpec>) -> Applied {
        let want: BTreeMap<Frontend, ServiceSpec> =
            want.into_iter().map(|s| (s.frontend, s)).collect();
        if self.full {
            self.reconcile(table, want)
        } else {
            self.update(table, want)
        }
    }

    /// Full pass: list the table, remove the owned entries not wanted, upsert every wanted one
    /// (an upsert equal to what is installed writes nothing).
    fn reconcile(
        &mut self,
        table: &mut ServiceTable,
        want: BTreeMap<Frontend, ServiceSpec>,
    ) -> Applied {
        let mut done = Applied { full: true, ..Applied::default() };
        let installed = match table.list() {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "listing the service table");
                done.failed += 1;
                return done;
            }
        };
        self.applied.clear();
        for s in installed {
            if self.owns(&s.frontend) && !want.contains_key(&s.frontend) {
                match table.remove(&s.frontend) {
                    Ok(_) => {
                        done.removed += 1;
                        self.over_limit.remove(&s.frontend);
                    }
                    Err(e) => {
                        tracing::warn!(frontend = %s.frontend, error = %e, "removing a service");
                        done.failed += 1;
                    }
                }
            }
        }
        let mut applied = Vec::with_capacity(want.len());
        for (f, spec) in want {
            match self.install(table, &spec) {
                Ok(()) => {
                    done.upserted += 1;
                    applied.push((f, digest(&spec)));
                }
                Err(e) => {
                    tracing::warn!(service = %spec.name, frontend = %f, error = %e, "programming a service");
                    done.failed += 1;
                }
            }
        }
        // NB: built in one go, in frontend order: full nodes (`store::mirror` says why).
        self.applied = applied.into_iter().collect();
        self.full = done.failed > 0;
        done
    }

    /// Diff pass: only what differs from the last applied state.
    fn update(
        &mut self,
        table: &mut ServiceTable,
        want: BTreeMap<Frontend, ServiceSpec>,
    ) -> Applied {
        let gone: Vec<(Frontend, Option<ServiceSpec>)> =
            self.applied.keys().filter(|f| !want.contains_key(f)).map(|f| (*f, None)).collect();
        let changes = gone.into_iter().chain(want.into_iter().map(|(f, s)| (f, Some(s))));
        self.patch(table, changes)
    }

    /// Programs only the frontends named: `Some(spec)` is wanted as `spec` (upserted if it
    /// differs from what was applied), `None` is not wanted (removed if it was applied).
    /// Frontends not named are not looked at. A failure makes the next pass a full one.
    pub fn patch(
        &mut self,
        table: &mut ServiceTable,
        changes: impl IntoIterator<Item = (Frontend, Option<ServiceSpec>)>,
    ) -> Applied {
        let mut done = Applied::default();
        for (f, spec) in changes {
            match spec {
                None if self.applied.contains_key(&f) => match table.remove(&f) {
                    Ok(_) => {
                        self.applied.remove(&f);
                        self.over_limit.remove(&f);
                        done.removed += 1;
                    }
                    Err(e) => {
                        tracing::warn!(frontend = %f, error = %e, "removing a service");
                        done.failed += 1;
                    }
                },
                None => {}
                Some(spec) => match digest(&spec) {
                    d if self.applied.get(&f) == Some(&d) => {}
                    d => match self.install(table, &spec) {
                        Ok(()) => {
                            done.upserted += 1;
                            self.applied.insert(f, d);
                        }
                        Err(e) => {
                            tracing::warn!(service = %spec.name, frontend = %f, error = %e, "programming a service");
                            // NB: what the table holds for it is now unknown.
                            self.applied.remove(&f);
                            done.failed += 1;
                        }
                    },
                },
            }
        }
        if done.failed > 0 {
            self.full = true;
        }
        done
    }

    /// Whether the next pass must be a full one.
    pub fn needs_full(&self) -> bool {
        self.full
    }
}

/// A 64-bit digest of a spec (the standard hasher with its fixed keys: the same for the same
/// spec within the process, which is all it is compared in). NB: two different specs with
/// the same digest would pass for equal and the second not be programmed; at 2^-64 per
/// change this is accepted, as for registrations (`registrator::digest`).
fn digest(spec: &ServiceSpec) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    spec.hash(&mut h);
    h.finish()
}

/// What changed since the last pass.
#[derive(Debug, Default)]
struct Dirty {
    /// Everything (start, watch resync).
    all: bool,
    /// Services whose allocations or registrations changed.
    services: BTreeSet<String>,
    /// The containers or any registration changed.
    embassy: bool,
}

/// What the loop knows of the store, and what its last pass wanted (the frontends only: of
/// the specs the `Programmer` keeps a digest each, as applied).
#[derive(Default)]
struct View {
    allocations: BTreeMap<String, PortAllocation>,
    /// Jobs' virtual IPs, by service name (`<stack>_<job>`).
    vips: BTreeMap<String, Vip>,
    endpoints: Endpoints,
    dirty: Dirty,
    /// The ambassador-port and VIP services last wanted, by service name.
    ambassador: BTreeMap<String, Vec<Frontend>>,
    /// The netns-scoped services last wanted.
    embassy: Vec<Frontend>,
}

/// `changes` gets every frontend of `old` that `new` no longer has (as not wanted) and every
/// spec of `new`; returns the frontends of `new`.
fn diff_into(
    changes: &mut Vec<(Frontend, Option<ServiceSpec>)>,
    old: &[Frontend],
    new: Vec<ServiceSpec>,
) -> Vec<Frontend> {
    let now: Vec<Frontend> = new.iter().map(|s| s.frontend).collect();
    let keep: BTreeSet<&Frontend> = now.iter().collect();
    changes.extend(old.iter().filter(|f| !keep.contains(f)).map(|f| (*f, None)));
    changes.extend(new.into_iter().map(|s| (s.frontend, Some(s))));
    now
}

fn frontends(specs: &[ServiceSpec]) -> Vec<Frontend> {
    specs.iter().map(|s| s.frontend).collect()
}

impl View {
    fn allocation(kv: &KeyValue) -> Option<PortAllocation> {
        PortAllocation::parse(kv).ok()
    }

    fn put_allocation(&mut self, kv: &KeyValue) {
        // NB: `/viking/alloc/ports/next` (the counter) lives here too, and is no allocation.
        let old = match Self::allocation(kv) {
            Some(a) => {
                self.dirty.services.insert(a.service.clone());
                self.allocations.insert(kv.key.clone(), a)
            }
            None => self.allocations.remove(&kv.key),
        };
        if let Some(old) = old {
            self.dirty.services.insert(old.service);
        }
    }

    fn put_registration(&mut self, kv: &KeyValue) {
        self.dirty.embassy = true;
        let old = match Endpoint::parse(&kv.key, &kv.value) {
            Ok(e) => {
                self.dirty.services.insert(e.key.service.clone());
                self.endpoints.insert_at(e, kv.mod_revision)
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a registration");
                self.endpoints.remove(&kv.key)
            }
        };
        if let Some(old) = old {
            self.dirty.services.insert(old.service().to_owned());
        }
    }

    /// Applies a watch event under `/viking/alloc/ports/`; whether it was a resync.
    fn allocation_event(&mut self, ev: WatchEvent) -> bool {
        match ev {
            WatchEvent::Put(kv) => self.put_allocation(&kv),
            WatchEvent::Delete { key, .. } => {
                if let Some(old) = self.allocations.remove(&key) {
                    self.dirty.services.insert(old.service);
                }
            }
            WatchEvent::Resync { kvs, .. } => {
                // NB: built in one go: full nodes (`store::mirror` says why).
                self.allocations = kvs
                    .into_iter()
                    .filter_map(|kv| Some((kv.key.clone(), Self::allocation(&kv)?)))
                    .collect();
                self.dirty.all = true;
                return true;
            }
        }
        false
    }

    fn put_vip(&mut self, kv: &KeyValue) {
        match Vip::parse(kv) {
            Ok(v) => {
                let service = crate::stack::service_name(&v.stack, &v.job);
                self.dirty.services.insert(service.clone());
                self.vips.insert(service, v);
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring a VIP record");
                self.delete_vip(&kv.key);
            }
        }
    }

    fn delete_vip(&mut self, key: &str) {
        let Some((stack, job)) = key.strip_prefix(vips::PREFIX).and_then(|r| r.split_once('/'))
        else {
            return;
        };
        let service = crate::stack::service_name(stack, job);
        if self.vips.remove(&service).is_some() {
            self.dirty.services.insert(service);
        }
    }

    /// Applies a watch event under `/viking/alloc/vips/`; whether it was a resync.
    fn vip_event(&mut self, ev: WatchEvent) -> bool {
        match ev {
            WatchEvent::Put(kv) => self.put_vip(&kv),
            WatchEvent::Delete { key, .. } => self.delete_vip(&key),
            WatchEvent::Resync { kvs, .. } => {
                self.vips.clear();
                for kv in &kvs {
                    self.put_vip(kv);
                }
                self.dirty.all = true;
                return true;
            }
        }
        false
    }

    /// Applies a watch event under `/services/`; whether it was a resync.
    fn registration_event(&mut self, ev: WatchEvent) -> bool {
        match ev {
            WatchEvent::Put(kv) => self.put_registration(&kv),
            WatchEvent::Delete { key, .. } => {
                self.dirty.embassy = true;
                if let Some(old) = self.endpoints.remove(&key) {
                    self.dirty.services.insert(old.service().to_owned());
                }
            }
            WatchEvent::Resync { kvs, .. } => {
                self.dirty.embassy = true;
                self.endpoints = Endpoints::build(kvs.into_iter().filter_map(|kv| {
                    match Endpoint::parse(&kv.key, &kv.value) {
                        Ok(e) => Some((e, kv.mod_revision)),
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a registration");
                            None
                        }
                    }
                }));
                self.dirty.all = true;
                return true;
            }
        }
        false
    }

    /// The ambassador-port services of one service name.
    fn ambassador_specs(&self, service: &str, ambassador: IpAddr) -> Vec<ServiceSpec> {
        let from = format!("{}{service}/", keys::PORTS);
        let allocations: Vec<PortAllocation> = self
            .allocations
            .range(from.clone()..)
            .take_while(|(k, _)| k.starts_with(&from))
            .map(|(_, a)| a)
            .filter(|a| a.service == service)
            .cloned()
            .collect();
        let mut specs = desired(&allocations, &self.endpoints, ambassador);
        if let Some(v) = self.vips.get(service) {
            specs.extend(vip_desired(v, &self.endpoints));
        }
        specs
    }

    /// One programming pass over what changed (everything, when the programmer or the view
    /// asks for a full one). Returns what it did, and the embassy problems when it looked at
    /// the containers.
    fn pass(
        &mut self,
        containers: &Containers,
        ambassador: IpAddr,
        algo: Algo,
        programmer: &mut Programmer,
        table: &mut ServiceTable,
    ) -> (Applied, Option<Vec<embassy::Problem>>) {
        let dirty = std::mem::take(&mut self.dirty);
        if dirty.all || programmer.needs_full() {
            let mut by_service: BTreeMap<&str, Vec<PortAllocation>> = BTreeMap::new();
            for a in self.allocations.values() {
                by_service.entry(a.service.as_str()).or_default().push(a.clone());
            }
            for s in self.vips.keys() {
                by_service.entry(s.as_str()).or_default();
            }
            let mut want = Vec::new();
            let mut wanted = Vec::new();
            for (s, a) in by_service {
                let mut specs = desired(&a, &self.endpoints, ambassador);
                if let Some(v) = self.vips.get(s) {
                    specs.extend(vip_desired(v, &self.endpoints));
                }
                if specs.is_empty() {
                    continue;
                }
                wanted.push((s.to_owned(), frontends(&specs)));
                want.extend(specs);
            }
            // NB: built in one go, in service order: full nodes (`store::mirror` says why).
            self.ambassador = wanted.into_iter().collect();
            let (scoped, problems) = embassy::desired(containers, &self.endpoints, algo);
            self.embassy = frontends(&scoped);
            want.extend(scoped);
            return (programmer.program(table, want), Some(problems));
        }
        let mut changes = Vec::new();
        for service in &dirty.services {
            let new = self.ambassador_specs(service, ambassador);
            let old = self.ambassador.remove(service).unwrap_or_default();
            let now = diff_into(&mut changes, &old, new);
            if !now.is_empty() {
                self.ambassador.insert(service.clone(), now);
            }
        }
        let mut problems = None;
        if dirty.embassy {
            let (scoped, p) = embassy::desired(containers, &self.endpoints, algo);
            self.embassy = diff_into(&mut changes, &self.embassy, scoped);
            problems = Some(p);
        }
        (programmer.patch(table, changes), problems)
    }
}

/// Follows the store and the running containers for as long as the agent runs, programming
/// `datapath`. Changes that arrive together (already queued when the loop wakes up) are
/// programmed together, with no added wait.
pub async fn run<S: Store>(
    store: S,
    datapath: Datapath,
    ambassador: IpAddr,
    range: PortRange,
    algo: Algo,
    containers: tokio::sync::watch::Receiver<Containers>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Datapath, crate::store::StoreError> {
    let (programmed, _) = tokio::sync::watch::channel(0);
    run_reporting(store, datapath, ambassador, range, algo, containers, stop, programmed).await
}

/// `run`, saying after each pass that programmed everything which `/services/` revision the
/// datapath reflects (`programmed`): what a linked-from instance waits for before it starts.
#[allow(clippy::too_many_arguments)]
pub async fn run_reporting<S: Store>(
    store: S,
    mut datapath: Datapath,
    ambassador: IpAddr,
    range: PortRange,
    algo: Algo,
    mut containers: tokio::sync::watch::Receiver<Containers>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    programmed: tokio::sync::watch::Sender<crate::store::Revision>,
) -> Result<Datapath, crate::store::StoreError> {
    let allocs = store.list(keys::PORTS).await?;
    let regs = store.list(SERVICES).await?;
    let vip_list = store.list(vips::PREFIX).await?;
    let mut view = View::default();
    view.allocation_event(WatchEvent::Resync { kvs: allocs.kvs, revision: allocs.revision });
    view.vip_event(WatchEvent::Resync { kvs: vip_list.kvs, revision: vip_list.revision });
    view.registration_event(WatchEvent::Resync { kvs: regs.kvs, revision: regs.revision });
    let mut allocs_watch = store.watch(keys::PORTS, Some(allocs.revision + 1)).await?;
    let mut regs_watch = store.watch(SERVICES, Some(regs.revision + 1)).await?;
    let mut vips_watch = store.watch(vips::PREFIX, Some(vip_list.revision + 1)).await?;
    // The newest `/services/` revision taken into the view.
    let mut seen = regs.revision;
    let mut programmer = Programmer::new(ambassador, range).with_vips(vips::default_range());
    let mut reported = Reported::default();
    let mut containers_open = true;
    let mut retry_at: Option<Instant> = None;
    let mut dirty = true;
    // When the oldest change not yet in the datapath reached the loop (the lag metric).
    let mut waiting: Option<Instant> = None;
    let mut tick = tokio::time::interval(GRACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if dirty {
            let started = Instant::now();
            // NB: a copy, so the reconciler never waits on the borrow while maps are written.
            let current = containers.borrow_and_update().clone();
            let (done, problems) =
                view.pass(&current, ambassador, algo, &mut programmer, &mut datapath.table);
            if let Some(problems) = problems {
                reported.report(problems);
            }
            if done.full {
                // The listing a full pass starts from is garbage now.
                crate::memory::give_back();
            }
            retry_at = (done.failed > 0).then(|| Instant::now() + RETRY);
            if done.failed == 0 {
                programmed.send_if_modified(|r| std::mem::replace(r, seen) != seen);
            }
            let lag = waiting.filter(|_| done.upserted + done.removed > 0).map(|t| t.elapsed());
            crate::metrics::global().discovery.pass(started.elapsed(), lag, done.failed);
            waiting = waiting.filter(|_| done.failed > 0);
            tracing::debug!(
                full = done.full,
                upserted = done.upserted,
                removed = done.removed,
                failed = done.failed,
                took = ?started.elapsed(),
                "datapath synced"
            );
            dirty = false;
        }
        tokio::select! {
            ev = allocs_watch.next() => {
                let Some(ev) = ev else { break };
                if view.allocation_event(ev) {
                    programmer.resync();
                }
                dirty = true;
            }
            ev = vips_watch.next() => {
                let Some(ev) = ev else { break };
                if view.vip_event(ev) {
                    programmer.resync();
                }
                dirty = true;
            }
            ev = regs_watch.next() => {
                let Some(ev) = ev else { break };
                seen = seen.max(ev.revision());
                if view.registration_event(ev) {
                    programmer.resync();
                }
                dirty = true;
            }
            changed = containers.changed(), if containers_open => {
                match changed {
                    Ok(()) => {
                        view.dirty.embassy = true;
                        dirty = true;
                    }
                    // NB: the reconciler is gone; the last containers it published stay.
                    Err(_) => containers_open = false,
                }
            }
            _ = tick.tick() => {
                if let Err(e) = datapath.table.collect_retired(GRACE) {
                    tracing::warn!(error = %e, "collecting retired backend sets");
                }
                if retry_at.is_some_and(|at| Instant::now() >= at) {
                    dirty = true;
                }
            }
            _ = stop.changed() => break,
        }
        if dirty {
            waiting.get_or_insert_with(Instant::now);
            // Take whatever else is already queued, so a burst is programmed once.
            while let Some(ev) = allocs_watch.try_next() {
                if view.allocation_event(ev) {
                    programmer.resync();
                }
            }
            while let Some(ev) = vips_watch.try_next() {
                if view.vip_event(ev) {
                    programmer.resync();
                }
            }
            while let Some(ev) = regs_watch.try_next() {
                seen = seen.max(ev.revision());
                if view.registration_event(ev) {
                    programmer.resync();
                }
            }
        }
    }
    Ok(datapath)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership() {
        let p =
            Programmer::new("127.0.0.1".parse().unwrap(), PortRange { first: 20000, last: 29999 });
        let f =
            |addr: &str, netns| Frontend { addr: addr.parse().unwrap(), proto: Proto::Tcp, netns };
        assert!(p.owns(&f("127.0.0.1:20001", 0)));
        assert!(!p.owns(&f("127.0.0.1:6379", 0)), "outside the range: made by hand");
        assert!(!p.owns(&f("10.0.0.1:20001", 0)));
        assert!(p.owns(&f("127.0.0.1:6379", 42)), "embassy");
        assert!(p.owns(&f("[::1]:6379", 42)), "embassy, IPv6 loopback");
        assert!(!p.owns(&f("[::1]:6379", 0)), "::1 for every namespace: made by hand");
        assert!(!p.owns(&f("10.0.0.1:6379", 42)));
    }

    #[test]
    fn a_vip_serves_each_port_of_its_job_with_that_ports_registrations() {
        use crate::stack::Port;
        let mut e = Endpoints::default();
        for (key, ip, proto) in [
            ("/services/abc/abc_pricing/80/40000/1", "10.0.0.1", "tcp"),
            ("/services/abc/abc_pricing/53/40001/1", "10.0.0.1", "udp"),
            ("/services/xyz/xyz_pricing/80/40000/1", "10.0.0.9", "tcp"),
        ] {
            let v = format!(r#"{{"ipaddress": "{ip}", "host_port": 1, "proto": "{proto}"}}"#);
            e.insert(Endpoint::parse(key, v.as_bytes()).unwrap());
        }
        let vip = Vip {
            stack: "abc".into(),
            job: "pricing".into(),
            ip: "10.96.0.5".parse().unwrap(),
            ports: vec![
                Port { port: 80, proto: Proto::Tcp },
                Port { port: 53, proto: Proto::Udp },
                Port { port: 53, proto: Proto::Tcp },
            ],
            balance: Algo::LeastConn,
        };
        let specs = vip_desired(&vip, &e);
        let got: Vec<(String, usize)> = specs
            .iter()
            .map(|s| (format!("{}/{:?}", s.frontend.addr, s.frontend.proto), s.backends.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.96.0.5:80/Tcp".into(), 1),
                ("10.96.0.5:53/Udp".into(), 1),
                ("10.96.0.5:53/Tcp".into(), 0)
            ]
        );
        assert!(specs.iter().all(|s| s.algo == Algo::LeastConn && s.frontend.netns == 0));
        let p =
            Programmer::new("127.0.0.1".parse().unwrap(), PortRange { first: 20000, last: 29999 })
                .with_vips("10.96.0.0/16".parse().unwrap());
        assert!(p.owns(&specs[0].frontend));
        assert!(!p.owns(&Frontend {
            addr: "10.97.0.1:80".parse().unwrap(),
            proto: Proto::Tcp,
            netns: 0
        }));
    }

    #[test]
    fn names_fit_the_table() {
        assert_eq!(fit_name("short"), "short");
        let long = "é".repeat(40);
        let fitted = fit_name(&long);
        assert!(fitted.len() <= viking_common::SERVICE_NAME_LEN);
        assert!(long.starts_with(&fitted));
    }

    #[test]
    fn allocations_match_registrations_by_service_and_port() {
        let mut e = Endpoints::default();
        for (key, ip) in [
            ("/services/prod/shared_mongo/27017/40000/a", "10.0.0.1"),
            ("/services/dev/shared_mongo/27017/40001/b", "10.0.0.2"),
            ("/services/prod/shared_mongo/28017/40002/c", "10.0.0.3"),
            ("/services/prod/other/27017/40003/d", "10.0.0.4"),
        ] {
            let v = format!(r#"{{"ipaddress": "{ip}", "host_port": 1}}"#);
            e.insert(Endpoint::parse(key, v.as_bytes()).unwrap());
        }
        let a = PortAllocation {
            service: "shared_mongo".into(),
            port: 27017,
            ambassador_port: 20000,
            balance: Algo::LeastConn,
            variant: None,
        };
        let specs = desired(&[a], &e, "127.0.0.1".parse().unwrap());
        assert_eq!(specs[0].algo, Algo::LeastConn);
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].backends.len(), 2);
        e.remove("/services/prod/shared_mongo/27017/40000/a");
        assert_eq!(e.of_service("shared_mongo").count(), 2);
        assert_eq!(e.len(), 3);
    }
}
