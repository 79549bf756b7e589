//! `vk-bench discovery`: how long a registration change in the store takes to reach the
//! datapath, with 1k services registered, against a real etcd (docs/benchmarks.md).
//!
//! For each change (a registration's value rewritten to a new `host_port`, one service at a
//! time, round the 1k services), three instants after the `put` is sent:
//! - **put acknowledged**: etcd answered the put;
//! - **watch delivered** (the baseline): a plain `Store::watch` on `/services/`, on its own
//!   connection in the same process (read by the measuring future itself), received the
//!   event: what any watcher pays;
//! - **datapath changed**: a thread polling the pinned SERVICES/BACKENDS maps (its own
//!   `ServiceTable` handle, every 25 µs with 1 µs timer slack) sees the new backend set.
//!
//! The result is "sync adds X over the raw watch" (per change: datapath - watch). The loop is
//! the agent's own `discovery::sync::run` on a datapath attached to a cgroup of its own; no
//! traffic is sent. After the loop stops, the cost of one programming pass is timed
//! in-process: a full reconcile of the 1k services against the table (what every change cost
//! before the loop learned to diff) and an incremental pass with one changed service.
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use viking::{
    cluster::ports::PortAllocation,
    cluster::DEFAULT_PORT_RANGE,
    datapath::{maps_dir, Algo, Datapath, DatapathConfig, Frontend, Proto, ServiceTable},
    discovery::{embassy::Containers, endpoints::Endpoints, registration::Endpoint, sync},
    store::{EtcdStore, Store, WatchEvent},
};

use super::{
    client::{median, stats, LatencyStats},
    report::{self, Machine},
};
use crate::{
    etcd::Etcd,
    guards::{BpfDir, Cgroup},
};

/// What `vk-bench discovery` was asked for (the same as the datapath benchmark).
pub use super::Options;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub services: usize,
    pub changes: usize,
    /// Pause between changes (the loop is idle when the next one comes).
    pub gap_ms: u64,
    pub poll_us: u64,
    pub pass_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        Self {
            services: 1_000,
            changes: if quick { 200 } else { 1_000 },
            gap_ms: 5,
            poll_us: 25,
            pass_reps: if quick { 20 } else { 50 },
        }
    }
}

/// One change's instants, in µs after the put was sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub service: usize,
    pub put_us: f64,
    pub watch_us: f64,
    pub datapath_us: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub what: String,
    pub stats: LatencyStats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiscoveryReport {
    pub benchmark: String,
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub load_before: String,
    pub load_after: String,
    pub plan: Plan,
    pub rows: Vec<Row>,
    /// Datapath over watch, p50 and p99 of the per-change values.
    pub ratio_p50: f64,
    pub ratio_p99: f64,
    /// Median time of `sync::desired()` over every service.
    pub desired_us: f64,
    /// Median time of one full pass (desired + reconcile against the table).
    pub full_pass_us: f64,
    /// Median time of one incremental pass after one registration changed (that service's
    /// specs + one upsert).
    pub diff_pass_us: f64,
    /// How often the poller really looked (mean period).
    pub poll_period_us: f64,
    pub changes: Vec<Change>,
}

fn service_name(i: usize) -> String {
    format!("bench_s{i}")
}

fn registration_key(i: usize) -> String {
    format!("/services/bench/{}/80/30000/r{i}", service_name(i))
}

fn backend(i: usize, host_port: u16) -> SocketAddr {
    let i = i as u32;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 210, (i >> 8) as u8, i as u8)), host_port)
}

fn registration(i: usize, host_port: u16) -> Vec<u8> {
    let b = backend(i, host_port);
    serde_json::json!({
        "id": format!("r{i}"), "host": "bench", "ipaddress": b.ip().to_string(),
        "host_port": host_port.to_string(), "port": "80", "proto": "tcp",
        "tags": [], "name": format!("r{i}"), "image": "bench",
    })
    .to_string()
    .into_bytes()
}

fn frontend(i: usize) -> Frontend {
    Frontend {
        addr: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT_RANGE.first + i as u16),
        proto: Proto::Tcp,
        netns: 0,
    }
}

/// What the poller is asked: until `frontend` holds exactly `backend`.
struct Wait {
    frontend: Frontend,
    backend: SocketAddr,
}

/// The polling thread: answers each `Wait` with the instant the table showed it, and the
/// number of looks it took.
fn poller(
    maps: PathBuf,
    poll: Duration,
    asks: mpsc::Receiver<Wait>,
    answers: mpsc::Sender<anyhow::Result<(Instant, u64)>>,
) {
    // SAFETY: prctl(PR_SET_TIMERSLACK) on the calling thread only.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64);
    }
    let table = match ServiceTable::open(&maps) {
        Ok(t) => t,
        Err(e) => {
            let _ = answers.send(Err(e.into()));
            return;
        }
    };
    let deadline = Duration::from_secs(10);
    for w in asks {
        let started = Instant::now();
        let mut looks = 0u64;
        let result = loop {
            looks += 1;
            match table.get(&w.frontend) {
                Ok(Some(s)) if s.backends.len() == 1 && s.backends[0].addr == w.backend => {
                    break Ok((Instant::now(), looks));
                }
                Ok(_) => {}
                Err(e) => break Err(anyhow::Error::from(e)),
            }
            if started.elapsed() > deadline {
                break Err(anyhow::anyhow!("{} never got {}", w.frontend, w.backend));
            }
            std::thread::sleep(poll);
        };
        if answers.send(result).is_err() {
            return;
        }
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let rt = super::prepare("discovery", "cgroups, eBPF", 2)?;
    let report = rt.block_on(measure(Plan::new(opts.quick), opts.quick))?;
    report.print();
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    if let Some(dir) = &opts.svg {
        for file in super::plot::discovery(&report, dir)? {
            println!("SVG: {}", file.display());
        }
    }
    Ok(())
}

async fn measure(plan: Plan, quick: bool) -> anyhow::Result<DiscoveryReport> {
    let load_before = report::loadavg();
    println!("==> etcd (one member on loopback), a cgroup and bpffs of our own, the datapath");
    let etcd = Etcd::start().await;
    let store = etcd.store().await;
    let bpf = BpfDir::new();
    let cgroup = Cgroup::new();
    let config = DatapathConfig { cgroup: cgroup.path.clone(), bpffs: bpf.path.clone() };
    let datapath = Datapath::start(&config).context("starting the datapath")?;

    println!("==> {} allocated ambassador ports, one registration each", plan.services);
    for i in 0..plan.services {
        let port = DEFAULT_PORT_RANGE.first + i as u16;
        store
            .put(
                &format!("/viking/alloc/ports/{}/80", service_name(i)),
                port.to_string().into_bytes(),
                None,
            )
            .await?;
        store.put(&registration_key(i), registration(i, 30000), None).await?;
    }
    super::interrupted()?;

    let (containers_tx, containers) = tokio::sync::watch::channel(Containers::new());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sync = tokio::spawn(sync::run(
        etcd.store().await,
        datapath,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        DEFAULT_PORT_RANGE,
        Algo::Random,
        containers,
        stop,
    ));

    let (ask_tx, ask_rx) = mpsc::channel();
    let (answer_tx, answer_rx) = mpsc::channel();
    let maps = maps_dir(&bpf.path);
    let poll = Duration::from_micros(plan.poll_us);
    let poller = std::thread::spawn(move || poller(maps, poll, ask_rx, answer_tx));
    // NB: the poller is asked before the put is sent, so it is already looking when the
    // change lands.
    let ask = |i: usize, host_port: u16| -> anyhow::Result<()> {
        ask_tx
            .send(Wait { frontend: frontend(i), backend: backend(i, host_port) })
            .context("poller gone")
    };
    let answer = || -> anyhow::Result<(Instant, u64)> { answer_rx.recv().context("poller gone")? };
    // Every service programmed before anything is measured.
    let all = Instant::now();
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        for i in 0..plan.services {
            ask(i, 30000)?;
            answer()?;
        }
        Ok(())
    })?;
    println!(
        "    the loop programmed {} services in {:.2} s",
        plan.services,
        all.elapsed().as_secs_f64()
    );

    // The baseline: a watch of our own on its own connection.
    let watcher: EtcdStore = etcd.store().await;
    let mut watch = watcher.watch("/services/", None).await?;

    println!("==> {} registration changes, one at a time, {} ms apart", plan.changes, plan.gap_ms);
    let mut changes = Vec::with_capacity(plan.changes);
    let mut looks = 0u64;
    let measuring = Instant::now();
    for k in 0..plan.changes {
        super::interrupted()?;
        let i = k % plan.services;
        let host_port = 31000 + k as u16;
        ask(i, host_port)?;
        let sent = Instant::now();
        store.put(&registration_key(i), registration(i, host_port), None).await?;
        let acked = Instant::now();
        let seen = loop {
            match watch.next_within(Duration::from_secs(10)).await {
                Some(WatchEvent::Put(kv)) if kv.key == registration_key(i) => break Instant::now(),
                Some(_) => {}
                None => bail!("the baseline watch delivered nothing for change {k}"),
            }
        };
        let (programmed, n) = tokio::task::block_in_place(answer)?;
        looks += n;
        let us = |t: Instant| t.duration_since(sent).as_secs_f64() * 1e6;
        changes.push(Change {
            service: i,
            put_us: us(acked),
            watch_us: us(seen),
            datapath_us: us(programmed),
        });
        tokio::time::sleep(Duration::from_millis(plan.gap_ms)).await;
    }
    let total = measuring.elapsed();
    drop(ask_tx);
    let _ = poller.join();
    let _ = stop_tx.send(true);
    let mut datapath = sync.await.context("the sync loop")?.context("the sync loop")?;
    drop(containers_tx);

    println!("==> one programming pass, in-process: full reconcile against diff");
    let (desired_us, full_pass_us, diff_pass_us) =
        passes(&mut datapath, plan.services, plan.pass_reps)?;
    datapath.table.flush().context("flushing retired sets")?;
    drop(datapath);

    let ns = |f: fn(&Change) -> f64| -> Vec<u64> {
        changes.iter().map(|c| (f(c) * 1e3) as u64).collect()
    };
    let added: Vec<u64> =
        changes.iter().map(|c| ((c.datapath_us - c.watch_us).max(0.0) * 1e3) as u64).collect();
    let rows = vec![
        Row { what: "put acknowledged by etcd".into(), stats: stats(&ns(|c| c.put_us)) },
        Row { what: "etcd watch delivered (baseline)".into(), stats: stats(&ns(|c| c.watch_us)) },
        Row { what: "datapath changed (viking sync)".into(), stats: stats(&ns(|c| c.datapath_us)) },
        Row { what: "sync's own share (datapath - watch)".into(), stats: stats(&added) },
    ];
    let ratio = |p: fn(&LatencyStats) -> f64| p(&rows[2].stats) / p(&rows[1].stats).max(1e-9);
    let poll_period_us = total.as_secs_f64() * 1e6 / looks.max(1) as f64;
    Ok(DiscoveryReport {
        benchmark: "discovery".into(),
        date: report::now_utc(),
        machine: Machine::read(),
        quick,
        load_before,
        load_after: report::loadavg(),
        ratio_p50: ratio(|s| s.p50_us),
        ratio_p99: ratio(|s| s.p99_us),
        plan,
        rows,
        desired_us,
        full_pass_us,
        diff_pass_us,
        poll_period_us,
        changes,
    })
}

/// The loop's own work for one change, in-process on the table the loop left (median µs):
/// `desired()` over every service; a full pass (desired + reconcile against the table, each
/// service upserted equal to what is installed); an incremental pass after one registration
/// changed (that service's specs + the one upsert, as the loop does it).
fn passes(
    datapath: &mut Datapath,
    services: usize,
    reps: usize,
) -> anyhow::Result<(f64, f64, f64)> {
    let ambassador = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let allocations: Vec<PortAllocation> = (0..services)
        .map(|i| PortAllocation {
            service: service_name(i),
            port: 80,
            ambassador_port: DEFAULT_PORT_RANGE.first + i as u16,
            balance: Algo::Random,
            variant: None,
        })
        .collect();
    let mut endpoints = Endpoints::default();
    let mut host_ports = vec![30000u16; services];
    for (i, hp) in host_ports.iter().enumerate() {
        endpoints.insert(Endpoint::parse(&registration_key(i), &registration(i, *hp))?);
    }
    let mut p = sync::Programmer::new(ambassador, DEFAULT_PORT_RANGE);
    let (mut desired, mut full, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
    for r in 0..reps {
        let t = Instant::now();
        let want = sync::desired(&allocations, &endpoints, ambassador);
        desired.push(us(t));
        drop(want);

        p.resync();
        let t = Instant::now();
        let want = sync::desired(&allocations, &endpoints, ambassador);
        let done = p.program(&mut datapath.table, want);
        full.push(us(t));
        if done.failed > 0 || !done.full {
            bail!("a full pass failed: {done:?}");
        }

        let i = (r * 7) % services.max(1);
        host_ports[i] = host_ports[i].wrapping_add(1).max(1);
        endpoints.insert(Endpoint::parse(&registration_key(i), &registration(i, host_ports[i]))?);
        // What the loop does for one changed registration: that service's specs, patched.
        let t = Instant::now();
        let want = sync::desired(&allocations[i..=i], &endpoints, ambassador);
        let done = p.patch(&mut datapath.table, want.into_iter().map(|s| (s.frontend, Some(s))));
        diff.push(us(t));
        if done.upserted != 1 || done.full || done.failed > 0 {
            bail!("a diff pass did not upsert exactly one service: {done:?}");
        }
    }
    Ok((median(&desired), median(&full), median(&diff)))
}

impl DiscoveryReport {
    pub fn print(&self) {
        super::report::print_header(
            "discovery",
            &self.date,
            &self.machine,
            self.quick,
            (&self.load_before, &self.load_after),
        );
        println!(
            "{} services, {} changes; the poller looked every {:.0} µs on average",
            self.plan.services, self.plan.changes, self.poll_period_us
        );
        println!();
        println!("| from the put being sent to | p50 | p99 | mean | max |");
        println!("| --- | ---: | ---: | ---: | ---: |");
        for r in &self.rows {
            let s = &r.stats;
            println!(
                "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
                r.what, s.p50_us, s.p99_us, s.mean_us, s.max_us
            );
        }
        println!();
        println!("datapath / watch: p50 {:.2}x, p99 {:.2}x", self.ratio_p50, self.ratio_p99);
        println!(
            "the loop's work for one change, {} services: desired() {:.0} µs; full pass {:.0} µs; incremental pass (1 upsert) {:.0} µs ({:.0}x less)",
            self.plan.services,
            self.desired_us,
            self.full_pass_us,
            self.diff_pass_us,
            self.full_pass_us / self.diff_pass_us.max(1e-9)
        );
    }
}
