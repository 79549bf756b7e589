//! The service table: typed, atomic-for-readers programming of the pinned maps.
//!
//! A backend set is never edited in place. An update writes the new set under a fresh set id,
//! then flips the service entry to it in one map update (the kernel swaps the element under
//! RCU), then retires the old set. Retired sets are deleted only after `GRACE`, long after
//! any program that read the old entry has finished, so a connect sees the old set or the new
//! one, whole.
use std::{
    collections::HashMap as StdHashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use serde::Serialize;
use viking_common::{
    conn_stats, ended, flags, maps, Backend, BackendHealth, BackendKey, HealthConfig,
    ServiceHealth, ServiceKey, ServiceStats, ServiceValue, SockState, StaleKey, MAX_BACKENDS,
    MAX_BACKENDS_PER_SERVICE, MAX_SERVICES, SERVICE_NAME_LEN,
};

use super::{
    error::DatapathError,
    health::{self, Health},
    ids::IdPool,
    spec::{
        check_backend, from_addr, from_port, to_addr, to_port, Algo, Ejection, Frontend, Proto,
        ServiceSpec,
    },
    stale::Sweeper,
};

/// How long a replaced backend set stays readable before it is deleted.
pub const GRACE: Duration = Duration::from_millis(50);

type Result<T> = std::result::Result<T, DatapathError>;

fn op(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::MapOp { name, source }
}

pub(crate) fn open_map(dir: &Path, name: &'static str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| DatapathError::Map {
        name,
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data).map_err(|source| DatapathError::Map { name, path, source })
}

/// One service as read back from the kernel, with its counters.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub frontend: Frontend,
    pub algo: Algo,
    pub id: u32,
    pub backends: Vec<BackendStatus>,
    /// Connections sent to a backend.
    pub conns: u64,
    /// Connects refused for want of a backend.
    pub rejects: u64,
    /// Unconnected UDP datagrams dropped for want of a backend.
    pub drops: u64,
    /// Backends it has beyond the per-service limit, not programmed (`upsert_limited`).
    pub unprogrammed: u32,
    pub ejection: Ejection,
    pub end_tcp: bool,
    /// Backends ejected since the service was installed (each time counts).
    pub ejections: u64,
    /// Connects that failed since the service was installed.
    pub failed_connects: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BackendStatus {
    pub addr: SocketAddr,
    pub id: u32,
    /// Established TCP connections not yet closed.
    pub active: u64,
    /// Connections ever sent here.
    pub total: u64,
    pub health: Health,
    /// Milliseconds left of its ejection (0 unless ejected).
    pub ejected_ms: u64,
    /// Times ejected while it was this backend of this service.
    pub ejections: u64,
    /// Failed connects, ever and in a row.
    pub failed_connects: u64,
    pub failing: u64,
}

/// Sockets ended because their backend left (counters since the maps were created).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct EndedSockets {
    /// This kernel can end sockets (bpf_sock_destroy, Linux 6.5+).
    pub available: bool,
    pub udp: u64,
    pub tcp: u64,
    /// Sweeps that failed (the agent's log says why).
    pub failed_sweeps: u64,
}

/// The redirected sockets the datapath tracks (`CONN_SLOTS` and `CONNS`, by socket cookie).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct TrackedSockets {
    /// In the table now.
    pub tracked: u64,
    /// Sockets that found the table full (ever): their state went to their socket storage,
    /// which costs their connect more. Growing: the table is too small for this host.
    pub past_table: u64,
}

/// What a `write` has taken so far: undone by `roll_back` when it fails.
#[derive(Default)]
struct Fresh {
    service: Option<u32>,
    set: Option<u32>,
    backend_ids: Vec<u32>,
    /// Slots `0..slots` of `set` may have been written.
    slots: u32,
}

/// Typed access to the pinned service maps of one agent.
pub struct ServiceTable {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, BackendKey, Backend>,
    active: Array<MapData, u64>,
    total: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, ServiceStats>,
    rr: PerCpuArray<MapData, u32>,
    names: HashMap<MapData, u32, [u8; SERVICE_NAME_LEN]>,
    scoped: Array<MapData, u32>,
    /// Services keyed by a netns cookie, as last written to `scoped`.
    scoped_count: u32,
    ports: Array<MapData, u32>,
    /// Services per port (network order), as last written to `ports`.
    port_counts: StdHashMap<u16, u32>,
    health_config: Array<MapData, HealthConfig>,
    service_health: Array<MapData, ServiceHealth>,
    backend_health: Array<MapData, BackendHealth>,
    stale: HashMap<MapData, StaleKey, u32>,
    flags: Array<MapData, u32>,
    ended: Array<MapData, u64>,
    conns: HashMap<MapData, u64, SockState>,
    conn_fill: PerCpuArray<MapData, u64>,
    conn_stats: Array<MapData, u64>,
    sweeper: Sweeper,
    service_ids: IdPool,
    set_ids: IdPool,
    backend_ids: IdPool,
    retired: Vec<(Instant, u32, u32)>,
    ncpus: usize,
}

impl ServiceTable {
    /// Opens the maps pinned in `dir` (`<bpffs>/maps`) and reads back which ids are in use.
    pub fn open(dir: &Path) -> Result<Self> {
        let ncpus =
            aya::util::nr_cpus().map_err(|(what, e)| DatapathError::io("reading", what)(e))?;
        let services: HashMap<_, ServiceKey, ServiceValue> =
            open_map(dir, maps::SERVICES)?.try_into().map_err(op(maps::SERVICES))?;
        let backends: HashMap<_, BackendKey, Backend> =
            open_map(dir, maps::BACKENDS)?.try_into().map_err(op(maps::BACKENDS))?;
        let mut service_used = Vec::new();
        let mut set_used = Vec::new();
        let mut scoped_count = 0;
        let mut port_counts = StdHashMap::new();
        for entry in services.iter() {
            let (k, v) = entry.map_err(op(maps::SERVICES))?;
            service_used.push(v.id);
            set_used.push(v.set);
            scoped_count += u32::from(k.netns != 0);
            *port_counts.entry(k.port).or_insert(0) += 1;
        }
        let scoped = open_map(dir, maps::SCOPED)?.try_into().map_err(op(maps::SCOPED))?;
        let mut backend_used = Vec::new();
        for entry in backends.iter() {
            let (k, v) = entry.map_err(op(maps::BACKENDS))?;
            set_used.push(k.set);
            backend_used.push(v.id);
        }
        let active: Array<_, u64> =
            open_map(dir, maps::BACKEND_ACTIVE)?.try_into().map_err(op(maps::BACKEND_ACTIVE))?;
        let total: PerCpuArray<_, u64> =
            open_map(dir, maps::BACKEND_TOTAL)?.try_into().map_err(op(maps::BACKEND_TOTAL))?;
        // NB: counters pinned by an older agent keep the size they were made with.
        let backend_max = MAX_BACKENDS.min(active.len()).min(total.len());
        if backend_max < MAX_BACKENDS {
            tracing::warn!(
                pinned = backend_max,
                built = MAX_BACKENDS,
                "backend counters pinned by an older agent are smaller than this one's: \
                 `viking agent --cleanup` (between agents) makes them anew"
            );
        }
        Ok(Self {
            services,
            backends,
            active,
            total,
            stats: open_map(dir, maps::SERVICE_STATS)?
                .try_into()
                .map_err(op(maps::SERVICE_STATS))?,
            rr: open_map(dir, maps::RR_STATE)?.try_into().map_err(op(maps::RR_STATE))?,
            names: open_map(dir, maps::SERVICE_NAMES)?
                .try_into()
                .map_err(op(maps::SERVICE_NAMES))?,
            scoped,
            scoped_count,
            ports: open_map(dir, maps::PORTS)?.try_into().map_err(op(maps::PORTS))?,
            port_counts,
            health_config: open_map(dir, maps::HEALTH_CONFIG)?
                .try_into()
                .map_err(op(maps::HEALTH_CONFIG))?,
            service_health: open_map(dir, maps::SERVICE_HEALTH)?
                .try_into()
                .map_err(op(maps::SERVICE_HEALTH))?,
            backend_health: open_map(dir, maps::BACKEND_HEALTH)?
                .try_into()
                .map_err(op(maps::BACKEND_HEALTH))?,
            stale: open_map(dir, maps::STALE)?.try_into().map_err(op(maps::STALE))?,
            flags: open_map(dir, maps::FLAGS)?.try_into().map_err(op(maps::FLAGS))?,
            ended: open_map(dir, maps::ENDED)?.try_into().map_err(op(maps::ENDED))?,
            conns: open_map(dir, maps::CONNS)?.try_into().map_err(op(maps::CONNS))?,
            conn_fill: open_map(dir, maps::CONN_FILL)?.try_into().map_err(op(maps::CONN_FILL))?,
            conn_stats: open_map(dir, maps::CONN_STATS)?
                .try_into()
                .map_err(op(maps::CONN_STATS))?,
            sweeper: Sweeper::new(dir.parent().unwrap_or(dir).join("links"), None),
            service_ids: IdPool::with_used("service", MAX_SERVICES, service_used),
            // Two sets per service at most: the live one and the one being replaced.
            set_ids: IdPool::with_used("backend set", 2 * MAX_SERVICES + 2, set_used),
            backend_ids: IdPool::with_used("backend", backend_max, backend_used),
            retired: Vec::new(),
            ncpus,
        })
    }

    /// Deletes backend sets no service points at: leftovers of an agent that stopped between
    /// a flip and the deletion of the old set. Call once at agent start, before serving.
    pub fn collect_orphans(&mut self) -> Result<usize> {
        let mut live = std::collections::HashSet::new();
        for entry in self.services.iter() {
            live.insert(entry.map_err(op(maps::SERVICES))?.1.set);
        }
        let mut orphans = Vec::new();
        for key in self.backends.keys() {
            let key = key.map_err(op(maps::BACKENDS))?;
            if !live.contains(&key.set) {
                orphans.push(key);
            }
        }
        for key in &orphans {
            self.backends.remove(key).map_err(op(maps::BACKENDS))?;
            self.set_ids.release(key.set);
        }
        Ok(orphans.len())
    }

    /// Writes the counts the programs read (netns-scoped services, services per port), as
    /// recounted by `open`: the agent does it once at start, before attaching (maps pinned
    /// by an older agent may lack them).
    pub fn repair_counts(&mut self) -> Result<()> {
        self.set_scoped(self.scoped_count)?;
        let counts: Vec<(u16, u32)> = self.port_counts.iter().map(|(p, n)| (*p, *n)).collect();
        for (port, n) in counts {
            self.set_port(port, n)?;
        }
        Ok(())
    }

    /// Sockets of an older agent (tracked without socket storage) may still be open: the
    /// programs then fall back to its maps for them.
    pub fn set_legacy(&mut self, on: bool) -> Result<()> {
        self.flags.set(flags::LEGACY, u32::from(on), 0).map_err(op(maps::FLAGS))
    }

    /// Which cgroup's processes' network namespaces a sweep visits (default: every process).
    pub fn set_sweep_cgroup(&mut self, cgroup: PathBuf) {
        self.sweeper = Sweeper::new(self.sweeper_links(), Some(cgroup));
    }

    fn sweeper_links(&self) -> PathBuf {
        self.sweeper.links().to_owned()
    }

    /// Installs or replaces a service and its whole backend set. A spec equal to what is
    /// installed changes nothing.
    pub fn upsert(&mut self, spec: &ServiceSpec) -> Result<()> {
        self.upsert_limited(spec, 0)
    }

    /// `upsert`, noting that the service has `unprogrammed` more backends than the set
    /// holds (it is at the per-service limit): `viking services` shows it.
    pub fn upsert_limited(&mut self, spec: &ServiceSpec, unprogrammed: usize) -> Result<()> {
        let unprogrammed = u16::try_from(unprogrammed).unwrap_or(u16::MAX);
        self.collect_retired(GRACE)?;
        validate(spec)?;
        let key = service_key(&spec.frontend);
        let existing = match self.services.get(&key, 0) {
            Ok(v) => Some(v),
            Err(MapError::KeyNotFound) => None,
            Err(e) => return Err(op(maps::SERVICES)(e)),
        };
        let old_backends = match existing {
            Some(v) => self.read_set(v.set, v.count)?,
            None => Vec::new(),
        };
        if let Some(v) = existing {
            let same = v.algo == spec.algo.number()
                && old_backends.len() == spec.backends.len()
                && old_backends
                    .iter()
                    .zip(&spec.backends)
                    .all(|(b, want)| backend_addr(b) == *want);
            if same && v.unprogrammed == unprogrammed && self.name_of(v.id)? == spec.name {
                // Only the ejection settings may have changed: no new set for them.
                return self.write_health_config(v.id, spec);
            }
        }

        let mut fresh = Fresh::default();
        let result = self.write(spec, key, existing, &old_backends, unprogrammed, &mut fresh);
        if result.is_err() {
            self.roll_back(fresh);
        }
        result
    }

    /// The writing half of `upsert`: every id it takes and every slot it writes is noted in
    /// `fresh`, so that a failure part way can be undone.
    fn write(
        &mut self,
        spec: &ServiceSpec,
        key: ServiceKey,
        existing: Option<ServiceValue>,
        old_backends: &[Backend],
        unprogrammed: u16,
        fresh: &mut Fresh,
    ) -> Result<()> {
        let name = name_bytes(&spec.name)?;
        let id = match existing {
            Some(v) => v.id,
            None => {
                let id = self.service_ids.alloc().ok_or(DatapathError::IdsExhausted("service"))?;
                fresh.service = Some(id);
                self.reset_service_counters(id)?;
                id
            }
        };
        // Before the flip: a connect to the new entry finds its settings.
        self.write_health_config(id, spec)?;
        let mut keep: StdHashMap<SocketAddr, u32> =
            old_backends.iter().map(|b| (backend_addr(b), b.id)).collect();
        let set = self.set_ids.alloc().ok_or(DatapathError::IdsExhausted("backend set"))?;
        fresh.set = Some(set);
        for (slot, addr) in spec.backends.iter().enumerate() {
            let bid = match keep.remove(addr) {
                Some(bid) => bid,
                None => {
                    let bid = self.new_backend_id()?;
                    fresh.backend_ids.push(bid);
                    bid
                }
            };
            let backend =
                Backend { addr: to_addr(addr.ip()), port: to_port(addr.port()), _pad: 0, id: bid };
            let bkey = BackendKey { set, slot: slot as u32 };
            fresh.slots += 1;
            self.backends.insert(bkey, backend, 0).map_err(op(maps::BACKENDS))?;
        }
        let value = ServiceValue {
            id,
            set,
            count: spec.backends.len() as u32,
            algo: spec.algo.number(),
            _pad: 0,
            unprogrammed,
        };
        let new_scoped = existing.is_none() && key.netns != 0;
        if new_scoped {
            // Counted before the entry exists, so no connect misses it.
            self.set_scoped(self.scoped_count + 1)?;
        }
        if existing.is_none() {
            // The same for its port.
            if let Err(e) = self.add_port(key.port, 1) {
                if new_scoped {
                    self.set_scoped(self.scoped_count - 1)?;
                }
                return Err(e);
            }
        }
        // NB: the commit point. Before it readers see only the old entry; after it, nothing
        // below can fail.
        if let Err(e) = self.services.insert(key, value, 0) {
            if new_scoped {
                self.set_scoped(self.scoped_count - 1)?;
            }
            if existing.is_none() {
                self.add_port(key.port, -1)?;
            }
            return Err(op(maps::SERVICES)(e));
        }
        if let Some(old) = existing {
            self.retired.push((Instant::now(), old.set, old.count));
        }
        let departed: Vec<(SocketAddr, u32)> = keep.iter().map(|(a, b)| (*a, *b)).collect();
        for (_, bid) in keep {
            self.backend_ids.release(bid);
        }
        self.end_sockets(id, &departed, spec.end_tcp);
        // Display only (`viking services`): a failure here is not worth undoing the service.
        if let Err(e) = self.names.insert(id, name, 0) {
            tracing::warn!(service = %spec.name, error = %e, "writing the service's name");
        }
        Ok(())
    }

    /// Undoes a `write` that failed before its commit point: the maps and the id pools are
    /// as they were (best effort on the maps: the failure may be the kernel's).
    fn roll_back(&mut self, fresh: Fresh) {
        if let Some(set) = fresh.set {
            if let Err(e) = self.delete_set(set, fresh.slots) {
                tracing::warn!(set, error = %e, "rolling back a failed upsert");
            }
        }
        for bid in fresh.backend_ids {
            self.backend_ids.release(bid);
        }
        if let Some(id) = fresh.service {
            self.service_ids.release(id);
        }
    }

    /// Removes a service; connections already made keep going. Returns whether it existed.
    pub fn remove(&mut self, frontend: &Frontend) -> Result<bool> {
        self.collect_retired(GRACE)?;
        let key = service_key(frontend);
        let old = match self.services.get(&key, 0) {
            Ok(v) => v,
            Err(MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(op(maps::SERVICES)(e)),
        };
        let backends = self.read_set(old.set, old.count)?;
        let end_tcp = self.health_config.get(&old.id, 0).map(|c| c.end_tcp != 0).unwrap_or(false);
        self.services.remove(&key).map_err(op(maps::SERVICES))?;
        // The service is gone for readers: what it held is given back whatever fails below.
        let departed: Vec<(SocketAddr, u32)> =
            backends.iter().map(|b| (backend_addr(b), b.id)).collect();
        for b in backends {
            self.backend_ids.release(b.id);
        }
        if let Err(e) = self.add_port(key.port, -1) {
            // A count left too high costs a lookup; it is recounted at the next start.
            tracing::warn!(error = %e, "lowering the per-port service count");
        }
        self.end_sockets(old.id, &departed, end_tcp);
        self.service_ids.release(old.id);
        self.retired.push((Instant::now(), old.set, old.count));
        if key.netns != 0 {
            // A count left too high costs a lookup; too low would hide scoped services.
            if let Err(e) = self.set_scoped(self.scoped_count.saturating_sub(1)) {
                tracing::warn!(error = %e, "lowering the scoped-service count");
            }
        }
        match self.names.remove(&old.id) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => tracing::warn!(service = old.id, error = %e, "removing the service's name"),
        }
        Ok(true)
    }

    /// Deletes retired backend sets older than `min_age`.
    pub fn collect_retired(&mut self, min_age: Duration) -> Result<()> {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) =
            self.retired.drain(..).partition(|(at, _, _)| now.duration_since(*at) >= min_age);
        self.retired = keep;
        for (_, set, count) in due {
            self.delete_set(set, count)?;
        }
        Ok(())
    }

    /// Deletes slots `0..count` of a backend set and gives its id back.
    fn delete_set(&mut self, set: u32, count: u32) -> Result<()> {
        for slot in 0..count {
            match self.backends.remove(&BackendKey { set, slot }) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(op(maps::BACKENDS)(e)),
            }
        }
        self.set_ids.release(set);
        Ok(())
    }

    /// Waits out the grace period and deletes every retired set (before a process exits).
    pub fn flush(&mut self) -> Result<()> {
        if !self.retired.is_empty() {
            std::thread::sleep(GRACE);
        }
        self.collect_retired(Duration::ZERO)
    }

    /// Every installed service with its backends and counters, sorted by frontend.
    pub fn list(&self) -> Result<Vec<ServiceStatus>> {
        let mut out = Vec::new();
        for entry in self.services.iter() {
            let (key, value) = entry.map_err(op(maps::SERVICES))?;
            out.push(self.status(&key, &value)?);
        }
        out.sort_by_key(|s| s.frontend);
        Ok(out)
    }

    /// One service, if installed.
    pub fn get(&self, frontend: &Frontend) -> Result<Option<ServiceStatus>> {
        let key = service_key(frontend);
        match self.services.get(&key, 0) {
            Ok(v) => Ok(Some(self.status(&key, &v)?)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(op(maps::SERVICES)(e)),
        }
    }

    fn status(&self, key: &ServiceKey, value: &ServiceValue) -> Result<ServiceStatus> {
        let stats = self.stats.get(&value.id, 0).map_err(op(maps::SERVICE_STATS))?;
        let sum = stats.iter().fold(ServiceStats::default(), |acc, s| ServiceStats {
            conns: acc.conns + s.conns,
            rejects: acc.rejects + s.rejects,
            drops: acc.drops + s.drops,
        });
        let now = health::monotonic_ns();
        let mut backends = Vec::new();
        for b in self.read_set(value.set, value.count)? {
            let active = self.active.get(&b.id, 0).map_err(op(maps::BACKEND_ACTIVE))?;
            let total = self.total.get(&b.id, 0).map_err(op(maps::BACKEND_TOTAL))?;
            let h = self.backend_health.get(&b.id, 0).map_err(op(maps::BACKEND_HEALTH))?;
            let (health, ejected_ms) = health::state(&h, now);
            backends.push(BackendStatus {
                addr: backend_addr(&b),
                id: b.id,
                active,
                total: total.iter().sum(),
                health,
                ejected_ms,
                ejections: h.ejections,
                failed_connects: h.failures,
                failing: h.fails,
            });
        }
        let cfg = self.health_config.get(&value.id, 0).map_err(op(maps::HEALTH_CONFIG))?;
        let counters = self.service_health.get(&value.id, 0).map_err(op(maps::SERVICE_HEALTH))?;
        Ok(ServiceStatus {
            name: self.name_of(value.id)?,
            frontend: Frontend {
                addr: SocketAddr::new(from_addr(&key.addr), from_port(key.port)),
                proto: Proto::from_number(key.proto).unwrap_or(Proto::Tcp),
                netns: key.netns,
            },
            algo: Algo::from_number(value.algo),
            id: value.id,
            backends,
            conns: sum.conns,
            rejects: sum.rejects,
            drops: sum.drops,
            unprogrammed: u32::from(value.unprogrammed),
            ejection: health::ejection_of(&cfg),
            end_tcp: cfg.end_tcp != 0,
            ejections: counters.ejections,
            failed_connects: counters.failures,
        })
    }

    fn read_set(&self, set: u32, count: u32) -> Result<Vec<Backend>> {
        (0..count)
            .map(|slot| self.backends.get(&BackendKey { set, slot }, 0).map_err(op(maps::BACKENDS)))
            .collect()
    }

    fn name_of(&self, id: u32) -> Result<String> {
        match self.names.get(&id, 0) {
            Ok(raw) => {
                let end = raw.iter().position(|&c| c == 0).unwrap_or(raw.len());
                Ok(String::from_utf8_lossy(&raw[..end]).into_owned())
            }
            Err(MapError::KeyNotFound) => Ok(String::new()),
            Err(e) => Err(op(maps::SERVICE_NAMES)(e)),
        }
    }

    /// A backend id whose active count has drained to zero, with its total reset.
    fn new_backend_id(&mut self) -> Result<u32> {
        let active = &self.active;
        let bid = self
            .backend_ids
            .alloc_where(|id| active.get(&id, 0).map(|n| n == 0).unwrap_or(false))
            .ok_or(DatapathError::IdsExhausted(self.backend_ids.what()))?;
        let zeros = per_cpu(0u64, self.ncpus, maps::BACKEND_TOTAL)?;
        self.total.set(bid, zeros, 0).map_err(op(maps::BACKEND_TOTAL))?;
        self.backend_health
            .set(bid, BackendHealth::default(), 0)
            .map_err(op(maps::BACKEND_HEALTH))?;
        Ok(bid)
    }

    fn set_scoped(&mut self, n: u32) -> Result<()> {
        self.scoped.set(0, n, 0).map_err(op(maps::SCOPED))?;
        self.scoped_count = n;
        Ok(())
    }

    fn reset_service_counters(&mut self, id: u32) -> Result<()> {
        let zeros = per_cpu(ServiceStats::default(), self.ncpus, maps::SERVICE_STATS)?;
        self.stats.set(id, zeros, 0).map_err(op(maps::SERVICE_STATS))?;
        let zeros = per_cpu(0u32, self.ncpus, maps::RR_STATE)?;
        self.rr.set(id, zeros, 0).map_err(op(maps::RR_STATE))?;
        self.service_health.set(id, ServiceHealth::default(), 0).map_err(op(maps::SERVICE_HEALTH))
    }

    /// Writes the service's ejection settings where they differ from what is there.
    fn write_health_config(&mut self, id: u32, spec: &ServiceSpec) -> Result<()> {
        let want = health::config_of(&spec.ejection, spec.end_tcp);
        let have = self.health_config.get(&id, 0).map_err(op(maps::HEALTH_CONFIG))?;
        if have != want {
            self.health_config.set(id, want, 0).map_err(op(maps::HEALTH_CONFIG))?;
        }
        Ok(())
    }

    fn set_port(&mut self, port: u16, n: u32) -> Result<()> {
        self.ports.set(u32::from(port), n, 0).map_err(op(maps::PORTS))?;
        if n == 0 {
            self.port_counts.remove(&port);
        } else {
            self.port_counts.insert(port, n);
        }
        Ok(())
    }

    fn add_port(&mut self, port: u16, delta: i32) -> Result<()> {
        let n = self.port_counts.get(&port).copied().unwrap_or(0);
        self.set_port(port, n.saturating_add_signed(delta))
    }

    /// Ends the sockets of service `id` still pinned to backends that left it: connected UDP
    /// always, TCP if `tcp`. A failure is counted (`ended().failed_sweeps`) and logged; the
    /// service change it follows stands.
    fn end_sockets(&mut self, id: u32, departed: &[(SocketAddr, u32)], tcp: bool) {
        if !self.sweeper.available() {
            return;
        }
        // NB: a backend no connection was ever sent to has no socket to end; skipping it keeps
        // a registration churning without traffic from walking every namespace's sockets.
        let used = |bid: u32| self.total.get(&bid, 0).map(|v| v.iter().sum::<u64>() > 0);
        let departed: Vec<SocketAddr> = departed
            .iter()
            .filter(|(_, bid)| used(*bid).unwrap_or(true))
            .map(|(a, _)| *a)
            .collect();
        if departed.is_empty() {
            return;
        }
        let keys: Vec<StaleKey> = departed
            .iter()
            .map(|a| StaleKey {
                service: id,
                port: to_port(a.port()),
                _pad: 0,
                addr: to_addr(a.ip()),
            })
            .collect();
        let mut result = Ok(());
        for k in &keys {
            if let Err(e) = self.stale.insert(k, 1, 0) {
                result = Err(op(maps::STALE)(e));
            }
        }
        let result = result.and_then(|()| self.sweeper.sweep(tcp));
        for k in &keys {
            let _ = self.stale.remove(k);
        }
        match result {
            Ok(swept) => tracing::debug!(
                service = id,
                backends = departed.len(),
                namespaces = swept.namespaces,
                failed = swept.failed,
                "ended sockets pinned to departed backends"
            ),
            Err(e) => {
                tracing::warn!(service = id, error = %e, "ending sockets pinned to departed backends");
                let n = self.ended.get(&ended::FAILED_SWEEPS, 0).unwrap_or(0);
                let _ = self.ended.set(ended::FAILED_SWEEPS, n + 1, 0);
            }
        }
    }

    /// Sockets ended so far, and whether this kernel can.
    pub fn ended(&self) -> Result<EndedSockets> {
        let get = |i| self.ended.get(&i, 0).map_err(op(maps::ENDED));
        Ok(EndedSockets {
            available: self.sweeper.available(),
            udp: get(ended::UDP)?,
            tcp: get(ended::TCP)?,
            failed_sweeps: get(ended::FAILED_SWEEPS)?,
        })
    }
}

impl ServiceTable {
    /// How many redirected sockets are tracked, and how many found the table full: the slots
    /// taken (the programs' per-CPU count) and the entries of the overflow hash, counted one
    /// key at a time (a syscall each; it holds only sockets whose slot was taken).
    pub fn sockets(&self) -> Result<TrackedSockets> {
        let past_table =
            self.conn_stats.get(&conn_stats::PAST_TABLE, 0).map_err(op(maps::CONN_STATS))?;
        let slots = self
            .conn_fill
            .get(&0, 0)
            .map_err(op(maps::CONN_FILL))?
            .iter()
            .fold(0u64, |a, n| a.wrapping_add(*n));
        let overflow = self.conns.keys().filter(std::result::Result::is_ok).count() as u64;
        Ok(TrackedSockets { tracked: slots.wrapping_add(overflow), past_table })
    }
}

fn per_cpu<T: aya::Pod>(value: T, ncpus: usize, name: &'static str) -> Result<PerCpuValues<T>> {
    PerCpuValues::try_from(vec![value; ncpus])
        .map_err(|e| DatapathError::MapOp { name, source: MapError::from(e) })
}

fn validate(spec: &ServiceSpec) -> Result<()> {
    if let Some(reason) = spec.ejection.problem() {
        return Err(DatapathError::BadEjection { service: spec.name.clone(), reason });
    }
    if spec.backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
        return Err(DatapathError::TooManyBackends(spec.name.clone()));
    }
    for b in &spec.backends {
        check_backend(b).map_err(|reason| DatapathError::BadBackend {
            service: spec.name.clone(),
            backend: *b,
            reason,
        })?;
    }
    if spec.frontend.addr.is_ipv4() {
        if let Some(b) = spec.backends.iter().find(|b| b.is_ipv6()) {
            return Err(DatapathError::FamilyMismatch { service: spec.name.clone(), backend: *b });
        }
    }
    name_bytes(&spec.name).map(|_| ())
}

fn name_bytes(name: &str) -> Result<[u8; SERVICE_NAME_LEN]> {
    if name.len() > SERVICE_NAME_LEN {
        return Err(DatapathError::NameTooLong(name.to_owned()));
    }
    let mut out = [0u8; SERVICE_NAME_LEN];
    out[..name.len()].copy_from_slice(name.as_bytes());
    Ok(out)
}

pub(crate) fn service_key(f: &Frontend) -> ServiceKey {
    ServiceKey {
        addr: to_addr(f.addr.ip()),
        port: to_port(f.addr.port()),
        proto: f.proto.number(),
        _pad: [0; 5],
        netns: f.netns,
    }
}

fn backend_addr(b: &Backend) -> SocketAddr {
    SocketAddr::new(from_addr(&b.addr), from_port(b.port))
}
