//! The agent's VPC loop: policy files -> kernel, membership -> the member set.
//!
//! Each second it reads `--vpc-rules DIR`; when the files change it parses them, compiles them
//! for this host (tags, interfaces), asks the lockout guard, and applies them in one flip. A
//! change that fails keeps the running policy in force and says why (log and `viking vpc
//! status`); it is tried again when the files change, or at once with `viking vpc reload`.
//! Membership (`HostWatcher`) keeps the member set current as hosts join and leave.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};
use viking_common::vpc::rule;

use super::{
    attach::{self, AttachMode, Dirs},
    compile::{compile, Compiled, HostView},
    error::{PolicyError, VpcError},
    guard::{self, Offender},
    host::{self, HostNet},
    maps::{VpcMaps, GRACE},
    policy,
    state::{assign_ids, fingerprint, Attached, FileText, Running},
    status::{
        builtins, ErrorKind, ErrorStatus, IfaceStatus, PolicyStatus, ReloadAnswer, RuleStatus,
        VpcStatus,
    },
};
use crate::{
    cluster::{HostInfo, HostWatcher},
    store::Store,
};

/// The overlay's VXLAN port when nothing else is said (IANA's).
pub use crate::cluster::membership::DEFAULT_VXLAN_PORT as DEFAULT_OVERLAY_PORT;

/// How often the policy folder is read.
const POLL: Duration = Duration::from_secs(1);
/// How soon a change the kernel or the host refused (not the files) is tried again.
const RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct VpcSettings {
    /// The policy folder (`--vpc-rules`).
    pub rules_dir: PathBuf,
    /// The overlay's UDP port: accepted from members only.
    pub overlay_port: u16,
    pub attach: AttachMode,
    /// The host's network namespace when the agent runs outside it.
    pub host_netns: Option<PathBuf>,
    /// The agent's bpffs directory (the filter pins under `vpc/`).
    pub bpffs: PathBuf,
    /// Where the running policy is recorded (`<run dir>/vpc`).
    pub state_dir: PathBuf,
    /// This host's tags (rules with `hosts:` apply where the tags are).
    pub tags: Vec<String>,
    /// This host's cluster address: its interface is the default one to filter.
    pub address: IpAddr,
}

#[derive(Debug, Clone, Default)]
struct Snapshot {
    policy: Option<PolicyStatus>,
    interfaces: Vec<IfaceStatus>,
    rules: Vec<RuleStatus>,
    error: Option<ErrorStatus>,
}

struct Reload {
    force: bool,
    reply: oneshot::Sender<ReloadAnswer>,
}

/// The API's and the CLI's way to the loop.
#[derive(Clone)]
pub struct VpcHandle {
    settings: Arc<VpcSettings>,
    snapshot: watch::Receiver<Snapshot>,
    reloads: mpsc::Sender<Reload>,
}

impl VpcHandle {
    /// The status, with counters, members and connections read from the maps now.
    pub fn status(&self) -> VpcStatus {
        let snap = self.snapshot.borrow().clone();
        let s = &self.settings;
        let mut st = VpcStatus {
            enabled: true,
            rules_dir: Some(s.rules_dir.display().to_string()),
            overlay_port: s.overlay_port,
            policy: snap.policy,
            error: snap.error,
            ..Default::default()
        };
        let mut rules = builtins(&snap.interfaces, s.overlay_port);
        rules.extend(snap.rules);
        st.interfaces = snap.interfaces;
        match VpcMaps::open(&Dirs::new(&s.bpffs).maps()) {
            Ok(maps) => {
                st.rules = rules
                    .into_iter()
                    .map(|r| {
                        let id = r.id;
                        r.with_stats(maps.stats(id))
                    })
                    .collect();
                st.members = maps.members().into_iter().collect();
                st.connections = maps.connections();
            }
            Err(e) => {
                st.rules = rules;
                st.error.get_or_insert(ErrorStatus {
                    at: unix_now(),
                    kind: ErrorKind::Kernel,
                    message: format!("the filter's maps cannot be read: {e}"),
                    fingerprint: None,
                    offenders: Vec::new(),
                });
            }
        }
        st
    }

    /// Reads the policy folder now and applies it; `force` applies it over the lockout guard.
    pub async fn reload(&self, force: bool) -> ReloadAnswer {
        let (reply, rx) = oneshot::channel();
        let stopped = ReloadAnswer {
            applied: false,
            kind: Some(ErrorKind::Kernel),
            message: VpcError::Stopped.to_string(),
            offenders: Vec::new(),
        };
        if self.reloads.send(Reload { force, reply }).await.is_err() {
            return stopped;
        }
        rx.await.unwrap_or(stopped)
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Starts the filter: loads it (keeping what an earlier agent pinned), applies the policy
/// folder, and runs the loop until `stop`. It never fails the agent: what goes wrong is in
/// the handle's status.
pub async fn start<S: Store>(
    settings: VpcSettings,
    store: S,
    stop: watch::Receiver<bool>,
) -> VpcHandle {
    let (snap_tx, snapshot) = watch::channel(Snapshot::default());
    let (reloads, rx) = mpsc::channel(4);
    let settings = Arc::new(settings);
    let mut lp = Loop {
        dirs: Dirs::new(&settings.bpffs),
        state_path: settings.state_dir.join("running.json"),
        s: settings.clone(),
        maps: None,
        running: None,
        compiled: None,
        tried: None,
        retry_at: None,
        error: None,
        members: BTreeSet::new(),
        snap: snap_tx,
    };
    lp.init().await;
    tokio::spawn(lp.run(store, rx, stop));
    VpcHandle { settings, snapshot, reloads }
}

/// Takes an earlier agent's filter off the host (the agent now runs without `--vpc-rules`).
pub async fn remove_if_present(
    bpffs: PathBuf,
    host_netns: Option<PathBuf>,
    state_dir: PathBuf,
) -> Result<bool, VpcError> {
    let dirs = Dirs::new(&bpffs);
    if !dirs.exists() {
        return Ok(false);
    }
    host::on_host(host_netns.as_deref(), move || attach::remove(&dirs)).await?;
    let _ = std::fs::remove_dir_all(state_dir);
    Ok(true)
}

struct Loop {
    s: Arc<VpcSettings>,
    dirs: Dirs,
    state_path: PathBuf,
    maps: Option<VpcMaps>,
    running: Option<Running>,
    /// The running policy, compiled for this host as it is now (for the guard).
    compiled: Option<Compiled>,
    /// The fingerprint of the files last tried.
    tried: Option<String>,
    /// When a change that failed for want of the kernel or the host is tried again.
    retry_at: Option<Instant>,
    error: Option<ErrorStatus>,
    members: BTreeSet<IpAddr>,
    snap: watch::Sender<Snapshot>,
}

type Files = Vec<(PathBuf, String)>;

impl Loop {
    async fn init(&mut self) {
        let existed = self.dirs.exists();
        let loaded = attach::load(&self.dirs).and_then(|()| VpcMaps::open(&self.dirs.maps()));
        let mut maps = match loaded {
            Ok(m) => m,
            Err(e) => {
                self.fail(ErrorKind::Kernel, e.to_string(), None, Vec::new());
                return;
            }
        };
        if let Err(e) = maps.set_overlay_port(self.s.overlay_port) {
            tracing::warn!(error = %e, "setting the overlay port of the VPC filter");
        }
        self.members = maps.members();
        self.maps = Some(maps);
        self.running = if existed { Running::load(&self.state_path) } else { None };
        if let Some(r) = self.running.clone() {
            // The programs just loaded replace the earlier agent's on every interface.
            let dirs = self.dirs.clone();
            let attached = r.attached.clone();
            let swapped = host::on_host(self.s.host_netns.as_deref(), move || {
                for (iface, a) in &attached {
                    attach::attach(&dirs, iface, a.ifindex, a.via)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = swapped {
                tracing::warn!(error = %e, "swapping the VPC programs of the running policy");
            }
            self.compiled = self.compile_running(&r).await;
            tracing::info!(
                files = r.files.len(),
                interfaces = r.attached.len(),
                "VPC filter adopted from the previous agent"
            );
        }
        self.publish();
        let files = policy::read_dir(&self.s.rules_dir);
        self.attempt(files, false).await;
    }

    async fn compile_running(&self, r: &Running) -> Option<Compiled> {
        let files: Files = r.files.iter().map(|f| (f.path.clone(), f.text.clone())).collect();
        let parsed = policy::parse_all(&files).ok()?;
        let net = host::probe(self.s.host_netns.clone()).await.ok()?;
        compile(&parsed, &self.view(&net), &r.slots).ok()
    }

    async fn run<S: Store>(
        mut self,
        store: S,
        mut reloads: mpsc::Receiver<Reload>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut watcher: Option<HostWatcher> = None;
        // When to try watching membership again, and how long to wait after that.
        let (mut watch_at, mut backoff) = (Instant::now(), POLL);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if watcher.is_none() && self.maps.is_some() && Instant::now() >= watch_at {
                        match HostWatcher::start(&store).await {
                            Ok(w) => {
                                self.sync_members(w.hosts());
                                watcher = Some(w);
                                backoff = POLL;
                            }
                            Err(e) => {
                                tracing::warn!(
                                    error = %e,
                                    retry_in = ?backoff,
                                    "VPC: watching membership (the member set stays as it is)"
                                );
                                watch_at = Instant::now() + backoff;
                                backoff = (backoff * 2).min(Duration::from_secs(30));
                            }
                        }
                    }
                    self.poll().await;
                }
                req = reloads.recv() => {
                    let Some(req) = req else { return };
                    let files = policy::read_dir(&self.s.rules_dir);
                    let answer = self.attempt(files, req.force).await;
                    let _ = req.reply.send(answer);
                }
                ev = next_host_event(&mut watcher) => {
                    match (ev, watcher.as_ref()) {
                        (Some(_), Some(w)) => {
                            let hosts: Vec<HostInfo> = w.hosts().cloned().collect();
                            self.sync_members(hosts.iter());
                        }
                        _ => watcher = None,
                    }
                }
                _ = stop.changed() => return,
            }
        }
    }

    /// Applies the folder if its files changed since they were last tried.
    async fn poll(&mut self) {
        if self.maps.is_none() {
            return;
        }
        let files = policy::read_dir(&self.s.rules_dir);
        let fp = match &files {
            Ok(f) => fingerprint(f),
            Err(e) => format!("error: {e}"),
        };
        let due = self.retry_at.is_some_and(|t| Instant::now() >= t);
        if self.tried.as_deref() == Some(fp.as_str()) && !due {
            return;
        }
        self.attempt(files, false).await;
    }

    fn view(&self, net: &HostNet) -> HostView {
        HostView {
            tags: self.s.tags.clone(),
            cluster_iface: net.link_with(self.s.address).map(|l| l.name.clone()),
            ifaces: net.links.iter().map(|l| (l.name.clone(), l.index)).collect(),
        }
    }

    async fn attempt(&mut self, files: Result<Files, PolicyError>, force: bool) -> ReloadAnswer {
        self.retry_at = None;
        let files = match files {
            Ok(f) => f,
            Err(e) => {
                self.tried = Some(format!("error: {e}"));
                return self.fail(ErrorKind::Invalid, e.to_string(), None, Vec::new());
            }
        };
        let fp = fingerprint(&files);
        self.tried = Some(fp.clone());
        if self.maps.is_none() {
            let msg = "the filter is not loaded (see the error before)".to_owned();
            return ReloadAnswer {
                applied: false,
                kind: Some(ErrorKind::Kernel),
                message: msg,
                offenders: Vec::new(),
            };
        }
        let parsed = match policy::parse_all(&files) {
            Ok(p) => p,
            Err(e) => return self.fail(ErrorKind::Invalid, e.to_string(), Some(fp), Vec::new()),
        };
        let net = match host::probe(self.s.host_netns.clone()).await {
            Ok(n) => n,
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY);
                return self.fail(ErrorKind::Kernel, e.to_string(), Some(fp), Vec::new());
            }
        };
        let prev_slots = self.running.as_ref().map(|r| r.slots.clone()).unwrap_or_default();
        let compiled = match compile(&parsed, &self.view(&net), &prev_slots) {
            Ok(c) => c,
            Err(e) => {
                // The host may change (an interface that comes later): try again now and then.
                self.retry_at = Some(Instant::now() + RETRY);
                return self.fail(ErrorKind::Invalid, e.to_string(), Some(fp), Vec::new());
            }
        };
        if let Some(s) =
            compiled.slots.iter().find(|s| !net.links.iter().any(|l| l.name == s.iface && l.ether))
        {
            let msg = format!(
                "interface {} is not an Ethernet-type link; the filter reads Ethernet frames",
                s.iface
            );
            return self.fail(ErrorKind::Invalid, msg, Some(fp), Vec::new());
        }
        let unchanged = self.running.as_ref().is_some_and(|r| r.fingerprint() == fp)
            && self.compiled.as_ref() == Some(&compiled);
        if unchanged {
            // The files are the ones in force again (a bad edit undone): nothing to write.
            self.error = None;
            self.publish();
            let msg = format!("unchanged: the policy in force ({fp})");
            return ReloadAnswer { applied: true, kind: None, message: msg, offenders: Vec::new() };
        }
        let offenders =
            guard::check(self.compiled.as_ref(), &compiled, &net.conns, &net, &self.members);
        if !offenders.is_empty() && !force {
            let list: Vec<String> = offenders.iter().map(ToString::to_string).collect();
            let msg = format!(
                "the policy would shut out connections established now (one may be the \
                 session it was applied over): {}; `viking vpc reload --force` applies it anyway",
                list.join("; ")
            );
            return self.fail(ErrorKind::Refused, msg, Some(fp), offenders);
        }
        if !offenders.is_empty() {
            let list: Vec<String> = offenders.iter().map(ToString::to_string).collect();
            tracing::warn!(connections = %list.join("; "), "VPC policy forced over the lockout guard");
        }
        let forced = !offenders.is_empty();
        match self.apply(files, &compiled, &net, forced).await {
            Ok(()) => {
                let n = compiled.rules.len();
                self.compiled = Some(compiled);
                self.error = None;
                self.publish();
                let msg = format!("applied: {n} rules ({fp})");
                tracing::info!(rules = n, fingerprint = %fp, forced, "VPC policy applied");
                ReloadAnswer { applied: true, kind: None, message: msg, offenders }
            }
            Err(e) => {
                self.retry_at = Some(Instant::now() + RETRY);
                self.fail(ErrorKind::Kernel, e.to_string(), Some(fp), Vec::new())
            }
        }
    }

    async fn apply(
        &mut self,
        files: Files,
        c: &Compiled,
        net: &HostNet,
        forced: bool,
    ) -> Result<(), VpcError> {
        let maps = self.maps.as_mut().ok_or(VpcError::Stopped)?;
        let prev = self.running.clone().unwrap_or_default();
        let assigned = assign_ids(&c.rules, &prev.ids)?;
        let (ids, id_map) = (assigned.ids, assigned.map);
        for id in &assigned.fresh {
            maps.reset_stats(*id)?;
        }
        let gen = maps.stage(c, &ids)?;
        // New interfaces get their slot and the programs (which see the old generation, with
        // nothing for the new slot, until the flip).
        let new: Vec<(String, u32)> = c
            .slots
            .iter()
            .filter(|s| prev.attached.get(&s.iface).is_none_or(|a| a.ifindex != s.ifindex))
            .map(|s| (s.iface.clone(), s.ifindex))
            .collect();
        let mut slot_set = Vec::new();
        for s in &c.slots {
            if let Err(e) = maps.set_iface(s.ifindex, s.slot) {
                let _ = maps.abandon(gen);
                return Err(e);
            }
            slot_set.push(s.ifindex);
        }
        let (dirs, mode) = (self.dirs.clone(), self.s.attach);
        let todo = new.clone();
        let done = host::on_host(self.s.host_netns.as_deref(), move || {
            let mut done = Vec::new();
            for (iface, ifindex) in &todo {
                match attach::attach(&dirs, iface, *ifindex, mode) {
                    Ok(via) => done.push((iface.clone(), Attached { ifindex: *ifindex, via })),
                    Err(e) => {
                        for (iface, a) in &done {
                            let _ = attach::detach(&dirs, iface, a.ifindex, a.via);
                        }
                        return Err(e);
                    }
                }
            }
            Ok(done)
        })
        .await;
        let done = match done {
            Ok(d) => d,
            Err(e) => {
                let _ = maps.abandon(gen);
                for (_, ifindex) in &new {
                    if !prev.attached.values().any(|a| a.ifindex == *ifindex) {
                        let _ = maps.remove_iface(*ifindex);
                    }
                }
                return Err(e);
            }
        };
        maps.flip(gen)?;
        tokio::time::sleep(GRACE).await;
        let maps = self.maps.as_mut().ok_or(VpcError::Stopped)?;
        maps.retire()?;
        let mut attached: BTreeMap<String, Attached> = prev
            .attached
            .iter()
            .filter(|(iface, a)| c.slot(iface).is_some_and(|s| s.ifindex == a.ifindex))
            .map(|(i, a)| (i.clone(), *a))
            .collect();
        attached.extend(done);
        let gone: Vec<(String, Attached)> = prev
            .attached
            .iter()
            .filter(|(iface, a)| attached.get(*iface) != Some(a))
            .map(|(i, a)| (i.clone(), *a))
            .collect();
        if !gone.is_empty() {
            let dirs = self.dirs.clone();
            // NB: a clsact filter is found by interface name: one of the same name was just
            // attached (the interface was made again) and stays.
            let list: Vec<(String, Attached)> = gone
                .into_iter()
                .filter(|(iface, a)| a.via != AttachMode::Netlink || !attached.contains_key(iface))
                .collect();
            let r = host::on_host(self.s.host_netns.as_deref(), move || {
                for (iface, a) in &list {
                    attach::detach(&dirs, iface, a.ifindex, a.via)?;
                }
                Ok(())
            })
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "VPC: taking the filter off interfaces no policy names");
            }
        }
        for (ifindex, _) in maps.ifaces() {
            if !slot_set.contains(&ifindex) {
                maps.remove_iface(ifindex)?;
            }
        }
        let seeded = maps.seed(&net.conns, rule::REPLY)?;
        if seeded > 0 {
            tracing::debug!(seeded, "VPC: established connections put in the connection table");
        }
        let running = Running {
            files: files.into_iter().map(|(path, text)| FileText { path, text }).collect(),
            applied_at: unix_now(),
            forced,
            ids: id_map,
            slots: c.slot_map(),
            attached,
        };
        if let Err(e) = running.save(&self.state_path) {
            tracing::warn!(error = %e, "VPC: recording the running policy");
        }
        self.running = Some(running);
        Ok(())
    }

    fn fail(
        &mut self,
        kind: ErrorKind,
        message: String,
        fingerprint: Option<String>,
        offenders: Vec<Offender>,
    ) -> ReloadAnswer {
        // NB: a retry that fails the same way (every RETRY) is not logged again.
        let again = self.error.as_ref().is_some_and(|e| e.message == message);
        match kind {
            _ if again => tracing::debug!(%message, "VPC policy still not applied"),
            ErrorKind::Refused => {
                tracing::warn!(%message, "VPC policy refused; the running one stays")
            }
            _ => tracing::error!(%message, "VPC policy not applied; the running one stays"),
        }
        self.error = Some(ErrorStatus {
            at: unix_now(),
            kind,
            message: message.clone(),
            fingerprint,
            offenders: offenders.clone(),
        });
        self.publish();
        ReloadAnswer { applied: false, kind: Some(kind), message, offenders }
    }

    fn publish(&self) {
        let mut snap = Snapshot { error: self.error.clone(), ..Default::default() };
        if let Some(r) = &self.running {
            snap.policy = Some(PolicyStatus {
                files: r.files.iter().map(|f| f.path.display().to_string()).collect(),
                fingerprint: r.fingerprint(),
                applied_at: r.applied_at,
                forced: r.forced,
                elsewhere: self.compiled.as_ref().map_or(0, |c| c.elsewhere),
            });
            if let Some(c) = &self.compiled {
                snap.interfaces = c
                    .slots
                    .iter()
                    .map(|s| IfaceStatus {
                        name: s.iface.clone(),
                        ifindex: s.ifindex,
                        slot: s.slot,
                        attach: r.attached.get(&s.iface).map_or(AttachMode::Auto, |a| a.via),
                        default: s.default,
                    })
                    .collect();
                if let Ok(a) = assign_ids(&c.rules, &r.ids) {
                    snap.rules = c
                        .rules
                        .iter()
                        .zip(a.ids)
                        .map(|(info, id)| RuleStatus::policy(id, info))
                        .collect();
                }
            }
        }
        self.snap.send_replace(snap);
    }

    fn sync_members<'a>(&mut self, hosts: impl Iterator<Item = &'a HostInfo>) {
        let want: BTreeSet<IpAddr> =
            hosts.map(|h| h.address).filter(|a| !a.is_loopback() && !a.is_unspecified()).collect();
        if want == self.members {
            return;
        }
        let Some(maps) = self.maps.as_mut() else { return };
        match maps.set_members(&want) {
            Ok((added, removed)) => {
                tracing::info!(added, removed, members = want.len(), "VPC member set updated");
                self.members = want;
            }
            Err(e) => tracing::error!(error = %e, "VPC: updating the member set"),
        }
    }
}

async fn next_host_event(w: &mut Option<HostWatcher>) -> Option<crate::cluster::HostEvent> {
    match w {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
