//! `vk-bench agent`: a real `viking agent` process (the release build next to vk-bench) on a
//! real etcd holding 10,000 allocated ambassador ports with 4 registrations each: how long a
//! cold agent (fresh bpffs: programs loaded, maps made) takes from its start to every service
//! programmed (`/v1/ready`: the first sync is a full pass over the store's view), its memory
//! then (VmRSS, VmHWM from /proc), and the same for an idle agent (nothing in the store) and
//! a warm restart (maps pinned, nothing to write). Goals (issue 14): RSS <= 40 MiB with the
//! 10k services, cold start < 2 s. Nothing is sent anywhere but loopback.
use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;
use viking::{
    cluster::DEFAULT_PORT_RANGE,
    datapath::{maps_dir, ServiceTable},
    store::{Op, Store, Txn},
};

use super::report::{self, Machine};
use crate::{
    agent::free_port,
    etcd::{Etcd, TempDir},
    guards::{BpfDir, Cgroup, ChildGuard},
    unique,
};

pub use super::Options;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub services: usize,
    pub backends_per_service: usize,
    /// How long the agent is left alone before its memory is read.
    pub settle_ms: u64,
}

/// Memory of a process, from /proc/PID/status, in MiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Memory {
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
    /// Anonymous memory (heap, stacks): RSS less the binary's mapped pages.
    pub anon_mib: f64,
}

impl Memory {
    fn of(pid: i32) -> anyhow::Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kib = |field: &str| -> f64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Self {
            rss_mib: kib("VmRSS:") / 1024.0,
            peak_rss_mib: kib("VmHWM:") / 1024.0,
            anon_mib: kib("RssAnon:") / 1024.0,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub benchmark: String,
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub load_before: String,
    pub load_after: String,
    pub plan: Plan,
    /// An agent with nothing in the store, after it settled.
    pub idle: Memory,
    /// From spawning the process to its API answering (programs attached, store opened).
    pub api_up_s: f64,
    /// From spawning the process to every service programmed.
    pub cold_start_s: f64,
    /// With the 10k services programmed, after it settled.
    pub loaded: Memory,
    /// One `/metrics` scrape of the loaded agent: how long, how large, memory after it.
    pub scrape_s: f64,
    pub scrape_bytes: usize,
    pub after_scrape: Memory,
    /// A new agent on the same pins (a restart or upgrade): spawn to ready.
    pub warm_restart_s: f64,
    pub rss_goal_met: bool,
    pub cold_start_goal_met: bool,
}

fn viking_release() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("current_exe")?;
    let bin = exe.parent().context("vk-bench's folder")?.join("viking");
    if !bin.exists() {
        bail!("{} missing: cargo build --release -p viking", bin.display());
    }
    Ok(bin)
}

/// One agent process on `etcd`, its own cgroup (given), bpffs dir (given), data dir and port.
struct Agent {
    child: ChildGuard,
    api: String,
    started: Instant,
    _dir: TempDir,
}

impl Agent {
    fn spawn(etcd: &Etcd, cgroup: &Cgroup, bpf: &BpfDir) -> anyhow::Result<Self> {
        let dir = TempDir::new("vk-bench-agent-");
        let api = format!("127.0.0.1:{}", free_port());
        let mut cmd = Command::new(viking_release()?);
        cmd.args(["agent", "--node", &unique("bench"), "--store", &etcd.spec(), "--api", &api])
            .args(["--runtime", "exec", "--address", "127.0.0.1"])
            .arg("--cgroup")
            .arg(&cgroup.path)
            .arg("--bpffs")
            .arg(&bpf.path)
            .arg("--token-file")
            .arg(dir.path.join("token"))
            .arg("--data-dir")
            .arg(dir.path.join("data"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path.join("agent.log"))?);
        let started = Instant::now();
        Ok(Self { child: ChildGuard::spawn(cmd), api, started, _dir: dir })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path.join("agent.log")).unwrap_or_default()
    }

    /// Seconds from the spawn until `path` answers 200 (polled every 5 ms).
    async fn until_ok(&self, path: &str, within: Duration) -> anyhow::Result<f64> {
        let http = reqwest::Client::new();
        let url = format!("http://{}{path}", self.api);
        loop {
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success()) {
                return Ok(self.started.elapsed().as_secs_f64());
            }
            if self.started.elapsed() > within {
                bail!("{path} not OK after {within:?}:\n{}", self.log());
            }
            super::interrupted()?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn memory(&self) -> anyhow::Result<Memory> {
        Memory::of(self.child.pid())
    }
}

fn registration(i: usize, j: usize) -> (String, Vec<u8>) {
    let ip = Ipv4Addr::new(10, 211, (i >> 6) as u8, ((i & 63) << 2 | j) as u8);
    let port = 31000 + j as u16;
    let key = format!("/services/bench/bench_s{i}/80/{port}/bench_s{i}_{j}");
    let value = serde_json::json!({
        "id": format!("bench_s{i}_{j}"), "host": "bench", "ipaddress": ip.to_string(),
        "host_port": port, "port": 80, "proto": "tcp", "name": format!("bench_s{i}_{j}"),
        "image": "bench", "tags": [],
    });
    (key, value.to_string().into_bytes())
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let rt = super::prepare("agent", "cgroups, eBPF", 2)?;
    let plan = Plan {
        services: if opts.quick { 2_000 } else { 10_000 },
        backends_per_service: 4,
        settle_ms: if opts.quick { 1_000 } else { 3_000 },
    };
    let report = rt.block_on(measure(plan, opts.quick))?;
    report.print();
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    Ok(())
}

async fn measure(plan: Plan, quick: bool) -> anyhow::Result<AgentReport> {
    let load_before = report::loadavg();
    let settle = Duration::from_millis(plan.settle_ms);
    println!("==> etcd (one member on loopback); an idle agent");
    let etcd = Etcd::start().await;
    let idle = {
        let (cgroup, bpf) = (Cgroup::new(), BpfDir::new());
        let a = Agent::spawn(&etcd, &cgroup, &bpf)?;
        a.until_ok("/v1/ready", Duration::from_secs(30)).await?;
        tokio::time::sleep(settle).await;
        a.memory()?
    };

    let n = plan.services * plan.backends_per_service;
    println!("==> {} allocated ambassador ports, {n} registrations", plan.services);
    let store = etcd.store().await;
    let mut ops = Vec::new();
    for i in 0..plan.services {
        let port = DEFAULT_PORT_RANGE.first + i as u16;
        ops.push(Op::put(format!("/viking/alloc/ports/bench_s{i}/80"), port.to_string()));
        for j in 0..plan.backends_per_service {
            let (k, v) = registration(i, j);
            ops.push(Op::put(k, v));
        }
    }
    // NB: etcd takes 128 operations per transaction.
    for chunk in ops.chunks(128) {
        store.txn(Txn::when([]).then(chunk.to_vec())).await?;
        super::interrupted()?;
    }

    println!("==> a cold agent (fresh bpffs) until every service is programmed");
    let (cgroup, bpf) = (Cgroup::new(), BpfDir::new());
    let a = Agent::spawn(&etcd, &cgroup, &bpf)?;
    let api_up_s = a.until_ok("/v1/health", Duration::from_secs(60)).await?;
    let cold_start_s = a.until_ok("/v1/ready", Duration::from_secs(120)).await?;
    let table = ServiceTable::open(&maps_dir(&bpf.path))?;
    let services = table.list()?;
    let backends: usize = services.iter().map(|s| s.backends.len()).sum();
    if services.len() != plan.services || backends != n {
        bail!("ready with {} services and {backends} backends programmed", services.len());
    }
    drop(table);
    tokio::time::sleep(settle).await;
    let loaded = a.memory()?;

    println!("==> one /metrics scrape");
    let t = Instant::now();
    let text = reqwest::get(format!("http://{}/metrics", a.api)).await?.text().await?;
    let scrape_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let after_scrape = a.memory()?;
    drop(a);

    println!("==> a new agent on the same pins");
    let b = Agent::spawn(&etcd, &cgroup, &bpf)?;
    let warm_restart_s = b.until_ok("/v1/ready", Duration::from_secs(120)).await?;
    drop(b);

    Ok(AgentReport {
        benchmark: "agent".into(),
        date: report::now_utc(),
        machine: Machine::read(),
        quick,
        load_before,
        load_after: report::loadavg(),
        rss_goal_met: loaded.rss_mib <= 40.0,
        cold_start_goal_met: cold_start_s < 2.0,
        plan,
        idle,
        api_up_s,
        cold_start_s,
        loaded,
        scrape_s,
        scrape_bytes: text.len(),
        after_scrape,
        warm_restart_s,
    })
}

impl AgentReport {
    pub fn print(&self) {
        report::print_header(
            "agent",
            &self.date,
            &self.machine,
            self.quick,
            (&self.load_before, &self.load_after),
        );
        let p = &self.plan;
        println!(
            "{} services of {} backends each in etcd; the release agent, RUST_LOG=warn",
            p.services, p.backends_per_service
        );
        println!();
        println!("| measured | value | goal |");
        println!("| --- | ---: | --- |");
        let mem = |m: &Memory| {
            format!("{:.1} MiB (anon {:.1}, peak {:.1})", m.rss_mib, m.anon_mib, m.peak_rss_mib)
        };
        let met = |ok: bool| if ok { "met" } else { "NOT met" };
        println!("| RSS, idle agent | {} | |", mem(&self.idle));
        println!(
            "| RSS, {} services programmed | {} | <= 40 MiB: {} |",
            p.services,
            mem(&self.loaded),
            met(self.rss_goal_met)
        );
        println!("| spawn -> API up | {:.3} s | |", self.api_up_s);
        println!(
            "| spawn -> every service programmed (cold) | {:.3} s | < 2 s: {} |",
            self.cold_start_s,
            met(self.cold_start_goal_met)
        );
        println!("| spawn -> ready on the same pins (warm) | {:.3} s | |", self.warm_restart_s);
        println!(
            "| one /metrics scrape | {:.3} s, {:.1} MiB of text | |",
            self.scrape_s,
            self.scrape_bytes as f64 / 1048576.0
        );
        println!("| RSS after the scrape | {} | |", mem(&self.after_scrape));
    }
}
