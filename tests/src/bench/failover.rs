//! One of three backends dies mid-run: how many connections still succeed, and how long
//! connects take, through Viking with passive health (ejection) and without.
//!
//! Three request/reply servers in the server namespace (one address, three ports) behind one
//! service; `vk-bench failover` loops of connect (with an application's timeout), request,
//! reply, close run in the client namespace and cgroup. One second in, backend 2 dies:
//! - killed: its listener is closed, so the server's kernel answers its SYNs with RST (a
//!   crashed process on a live host);
//! - unplugged: an iptables DROP rule swallows its SYNs (a host that went away).
//!
//! Each case runs twice on fresh servers and a fresh service: default ejection settings, and
//! ejection off (every backend keeps its share, as before passive health).
use std::{
    net::{SocketAddr, SocketAddrV4},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use viking::datapath::{Ejection, Frontend, Proto};

use super::{
    client::{stats, LatencyStats},
    report::Report,
    server::RrServer,
    world::{check, spec, World, SERVER_IP},
};

/// How a backend dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Death {
    Killed,
    Unplugged,
}

impl Death {
    pub fn label(self) -> &'static str {
        match self {
            Self::Killed => "one of 3 backends killed (RST)",
            Self::Unplugged => "one of 3 backends unplugged (SYNs dropped)",
        }
    }
}

/// Lengths of a failover run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct FailoverPlan {
    pub secs: f64,
    pub kill_after_secs: f64,
    pub threads: usize,
    /// The client's connect timeout (an application's).
    pub timeout_ms: u64,
}

impl FailoverPlan {
    pub fn new(quick: bool) -> Self {
        Self {
            secs: if quick { 4.0 } else { 6.0 },
            kill_after_secs: 1.0,
            threads: 4,
            timeout_ms: 1500,
        }
    }
}

/// What `vk-bench failover` prints: every attempt's connect time and outcome.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverResult {
    pub ok: u64,
    pub failed: u64,
    /// connect() time of every attempt (to success or to its error), ns.
    pub connect_ns: Vec<u64>,
    /// When each failed attempt started, ms after the run began.
    pub failed_at_ms: Vec<u32>,
    /// Successful connections in each 100 ms of the run (by when they started).
    pub ok_per_100ms: Vec<u32>,
    pub secs: f64,
    pub first_error: Option<String>,
}

/// One case as the report keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverDetail {
    pub death: Death,
    pub ejection: bool,
    pub ok: u64,
    pub failed: u64,
    pub success_rate: f64,
    pub connect: LatencyStats,
    /// Failed attempts in each 100 ms of the run.
    pub failed_per_100ms: Vec<u32>,
    /// Successful connections in each 100 ms of the run.
    #[serde(default)]
    pub ok_per_100ms: Vec<u32>,
    /// Connections completed per second from the backend's death to the end of the run.
    #[serde(default)]
    pub ok_per_sec_after: f64,
    pub kill_after_ms: u32,
}

/// The client loop (`vk-bench failover ADDR SECS THREADS TIMEOUT_MS`).
pub fn client(addr: SocketAddr, secs: f64, threads: usize, timeout: Duration) -> FailoverResult {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| std::thread::spawn(move || client_loop(addr, start, deadline, timeout)))
        .collect();
    let mut total = FailoverResult::default();
    for h in handles {
        let Ok(r) = h.join() else {
            total.failed += 1;
            continue;
        };
        total.ok += r.ok;
        total.failed += r.failed;
        total.connect_ns.extend(r.connect_ns);
        total.failed_at_ms.extend(r.failed_at_ms);
        if total.ok_per_100ms.len() < r.ok_per_100ms.len() {
            total.ok_per_100ms.resize(r.ok_per_100ms.len(), 0);
        }
        for (t, n) in total.ok_per_100ms.iter_mut().zip(&r.ok_per_100ms) {
            *t += n;
        }
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
    }
    total.secs = start.elapsed().as_secs_f64();
    total
}

fn client_loop(
    addr: SocketAddr,
    start: Instant,
    deadline: Instant,
    timeout: Duration,
) -> FailoverResult {
    let mut r = FailoverResult::default();
    while Instant::now() < deadline {
        let t = Instant::now();
        let outcome = std::net::TcpStream::connect_timeout(&addr, timeout);
        r.connect_ns.push(t.elapsed().as_nanos() as u64);
        let outcome = outcome.and_then(super::client::exchange);
        match outcome {
            Ok(()) => {
                r.ok += 1;
                let i = (t.duration_since(start).as_millis() / 100) as usize;
                if r.ok_per_100ms.len() <= i {
                    r.ok_per_100ms.resize(i + 1, 0);
                }
                r.ok_per_100ms[i] += 1;
            }
            Err(e) => {
                r.failed += 1;
                r.failed_at_ms.push(t.duration_since(start).as_millis() as u32);
                r.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    r
}

/// Runs every case and adds its rows to the report.
pub fn run(w: &mut World, plan: &FailoverPlan, report: &mut Report) -> anyhow::Result<()> {
    let mut port = 8090;
    let mut frontend_port = 7090;
    for death in [Death::Killed, Death::Unplugged] {
        for ejection in [true, false] {
            super::interrupted()?;
            let d = case(w, plan, death, ejection, port, frontend_port)?;
            port += 3;
            frontend_port += 1;
            let path = if ejection { "viking, ejection" } else { "viking, no ejection" };
            println!(
                "    {}: {:<20} {} ok, {} failed ({:.3}%), connect p50 {:.0} µs p99 {:.0} µs max {:.0} µs, {:.0} conn/s after",
                death.label(),
                path,
                d.ok,
                d.failed,
                100.0 * d.success_rate,
                d.connect.p50_us,
                d.connect.p99_us,
                d.connect.max_us,
                d.ok_per_sec_after
            );
            report.row(
                path,
                &format!("{}: success rate", death.label()),
                100.0 * d.success_rate,
                "%",
                None,
            );
            report.row(
                path,
                &format!("{}: connect p99", death.label()),
                d.connect.p99_us,
                "µs",
                None,
            );
            report.row(
                path,
                &format!("{}: connections completed/s after", death.label()),
                d.ok_per_sec_after,
                "conn/s",
                None,
            );
            report.failover.push(d);
        }
    }
    for death in [Death::Killed, Death::Unplugged] {
        let get = |ej: bool| report.failover.iter().find(|d| d.death == death && d.ejection == ej);
        if let (Some(on), Some(off)) = (get(true), get(false)) {
            let (on_fail, off_fail) = (1.0 - on.success_rate, 1.0 - off.success_rate);
            report.notes.push(format!(
                "{}: failed connections {:.3}% with ejection, {:.3}% without; connect p99 {:.0} µs against {:.0} µs; after the failure {:.0} connections/s against {:.0} ({:.2}x)",
                death.label(),
                100.0 * on_fail,
                100.0 * off_fail,
                on.connect.p99_us,
                off.connect.p99_us,
                on.ok_per_sec_after,
                off.ok_per_sec_after,
                on.ok_per_sec_after / off.ok_per_sec_after.max(1e-9)
            ));
        }
    }
    Ok(())
}

fn case(
    w: &mut World,
    plan: &FailoverPlan,
    death: Death,
    ejection: bool,
    port: u16,
    frontend_port: u16,
) -> anyhow::Result<FailoverDetail> {
    let addrs: Vec<SocketAddrV4> = (0..3).map(|i| SocketAddrV4::new(SERVER_IP, port + i)).collect();
    let mut servers = Vec::new();
    for a in &addrs {
        servers.push(Some(RrServer::start(&w.server, SocketAddr::V4(*a), 4)?));
    }
    let frontend = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, frontend_port);
    let mut s = spec(&format!("failover-{frontend_port}"), frontend, &addrs);
    s.ejection = if ejection { Ejection::default() } else { Ejection::OFF };
    w.datapath.table.upsert(&s).context("installing the failover service")?;

    let mut cmd = w.client_cmd(std::env::current_exe().context("vk-bench binary")?);
    cmd.args([
        "failover".to_owned(),
        frontend.to_string(),
        plan.secs.to_string(),
        plan.threads.to_string(),
        plan.timeout_ms.to_string(),
    ]);
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().context("starting vk-bench failover")?;
    std::thread::sleep(Duration::from_secs_f64(plan.kill_after_secs));
    match death {
        Death::Killed => drop(servers[1].take()),
        Death::Unplugged => drop_syns(w, addrs[1], "-A")?,
    }
    let out = child.wait_with_output().context("vk-bench failover")?;
    if death == Death::Unplugged {
        drop_syns(w, addrs[1], "-D")?;
    }
    w.datapath
        .table
        .remove(&Frontend { addr: SocketAddr::V4(frontend), proto: Proto::Tcp, netns: 0 })
        .context("removing the failover service")?;
    let out = check("vk-bench failover", out)?;
    let r: FailoverResult =
        serde_json::from_slice(&out.stdout).context("vk-bench failover output")?;
    if r.ok == 0 {
        bail!("failover run: no connection succeeded ({})", r.first_error.unwrap_or_default());
    }
    let buckets = (plan.secs * 10.0).ceil() as usize;
    let mut per = vec![0u32; buckets];
    for &ms in &r.failed_at_ms {
        let i = (ms / 100) as usize;
        if let Some(b) = per.get_mut(i.min(buckets - 1)) {
            *b += 1;
        }
    }
    let kill_bucket = (plan.kill_after_secs * 10.0) as usize;
    let after: u32 = r.ok_per_100ms.iter().skip(kill_bucket).sum();
    let after_secs = (r.secs - plan.kill_after_secs).max(1e-3);
    Ok(FailoverDetail {
        death,
        ejection,
        ok: r.ok,
        failed: r.failed,
        success_rate: r.ok as f64 / (r.ok + r.failed) as f64,
        connect: stats(&r.connect_ns),
        failed_per_100ms: per,
        ok_per_100ms: r.ok_per_100ms,
        ok_per_sec_after: f64::from(after) / after_secs,
        kill_after_ms: (plan.kill_after_secs * 1000.0) as u32,
    })
}

/// Adds (`-A`) or deletes (`-D`) a rule in the server namespace that drops SYNs to `addr`.
fn drop_syns(w: &World, addr: SocketAddrV4, op: &str) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", &w.server.name, "iptables", op, "INPUT", "-p", "tcp"])
        .args(["-d", &addr.ip().to_string(), "--dport", &addr.port().to_string()])
        .args(["--syn", "-j", "DROP"])
        .output()
        .context("iptables in the server namespace")?;
    check("iptables (dropping SYNs)", out).map(|_| ())
}
