//! `vk-bench overlay`: instance-to-instance across two routed hosts through the overlay,
//! against host-to-host on the underlay, in one run (docs/benchmarks.md).
//!
//! The data path: two hosts (namespaces on subnets of their own, a router namespace between
//! them, as `tests/src/cluster.rs` makes them) with a real etcd and a `viking agent` each. On
//! host B an iperf3 server and a vk-probe echo server run as exec instances (reached at their
//! allocated addresses through the overlay) and as plain processes in B's namespace (reached at
//! B's address: the underlay). From an instance on host A, and from A's namespace, iperf3 with 1
//! and 4 streams, and request/response round trips (one byte line each way on one TCP
//! connection, like netperf's TCP_RR). Reported as overlay / underlay ratios; runs interleave.
//!
//! The control plane: the agent's own overlay loop, in-process, on a host namespace of its own
//! and a fresh etcd holding 10 members and 1,000 instance addresses (900 on the other nine
//! hosts): how many kernel entries that makes, how long the first sync takes, what a pass costs
//! when nothing changed, and how long a member joining or leaving takes to reach the kernel.
//! Nothing is sent to the members' made-up underlay addresses.
use std::{
    net::{Ipv4Addr, SocketAddr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;
use viking::{
    cluster::membership::{HostInfo, Vtep},
    netlink::{in_netns, Mac},
    overlay::{self, kernel, run::Overlay, Mode},
    store::{EtcdStore, Store},
};

use super::{
    client::{median, stats, LatencyStats},
    interrupted,
    report::{self, Machine},
    Options,
};
use crate::{
    cluster::{bin, Cluster, Host, Options as ClusterOptions},
    etcd::Etcd,
    guards::{veth, ChildGuard, NetNs},
};

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub iperf_secs: u32,
    pub reps: usize,
    pub rr_samples: usize,
    pub hosts: usize,
    pub instances: usize,
    pub membership_changes: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        Self {
            iperf_secs: if quick { 2 } else { 4 },
            reps: if quick { 2 } else { 5 },
            rr_samples: if quick { 2_000 } else { 10_000 },
            hosts: 10,
            instances: 1_000,
            membership_changes: if quick { 5 } else { 20 },
        }
    }
}

/// One path's numbers (medians over the runs, and every run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PathResult {
    pub gbps_1_stream: f64,
    pub gbps_4_streams: f64,
    pub rr: LatencyStats,
    pub runs_gbps_1_stream: Vec<f64>,
    pub runs_gbps_4_streams: Vec<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Ratios {
    /// overlay / underlay throughput.
    pub throughput_1_stream: f64,
    pub throughput_4_streams: f64,
    /// overlay / underlay round-trip time, median.
    pub rr_p50: f64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Control {
    pub hosts: usize,
    pub instances: usize,
    /// Routes on one host (its peers' instances and the peers' own overlay addresses).
    pub routes: usize,
    pub fdb_entries: usize,
    pub neighbours: usize,
    pub first_sync_ms: f64,
    /// Dumping the kernel's overlay state and diffing it when nothing changed.
    pub idle_pass_ms: f64,
    /// A member's record written -> its FDB entry and route in the kernel (median, max).
    pub join_to_kernel_ms: (f64, f64),
    /// A member's record deleted -> its entries gone (median, max).
    pub leave_to_kernel_ms: (f64, f64),
}

#[derive(Debug, Clone, Serialize)]
pub struct OverlayReport {
    pub benchmark: String,
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub plan: Plan,
    pub load_before: String,
    pub load_after: String,
    pub overlay: PathResult,
    pub underlay: PathResult,
    pub ratios: Ratios,
    /// The goal: overlay throughput at least 0.90 of the underlay's (both stream counts).
    pub goal_met: bool,
    pub overlay_mtu: u32,
    pub control: Control,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let rt = super::prepare("overlay", "network namespaces, cgroups, eBPF", 2)?;
    let report = rt.block_on(measure(Plan::new(opts.quick), opts.quick))?;
    print(&report);
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).context("serialising the report")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    Ok(())
}

/// `vk-bench rr ADDR SAMPLES`: round trips of one line on one connection to a vk-probe
/// server (its greeting read first), after a warm-up; prints the stats as JSON.
pub fn rr(addr: SocketAddr, samples: usize) -> anyhow::Result<LatencyStats> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut w = s.try_clone()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).context("the greeting")?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples + samples / 10 {
        line.clear();
        let t = Instant::now();
        w.write_all(b"x\n")?;
        r.read_line(&mut line)?;
        if i >= samples / 10 {
            out.push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(stats(&out))
}

fn iperf(mut cmd: Command, streams: u32) -> anyhow::Result<f64> {
    let out = cmd.output().context("iperf3")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("iperf3 -P {streams}: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    if let Some(e) = v.get("error") {
        bail!("iperf3 -P {streams}: {e}");
    }
    let bps = v["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3's result")?;
    Ok(bps / 1e9)
}

/// A command run from instance `name` of `host` (overlay) or from `host`'s namespace
/// (underlay).
fn from(host: &Host, instance: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = match instance {
        Some(name) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/viking/{}/netns/{name}", host.agent.node));
            c
        }
        None => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &host.ns.name]);
            c
        }
    };
    cmd.args(args);
    cmd
}

async fn data_path(plan: &Plan) -> anyhow::Result<(PathResult, PathResult, u32)> {
    println!("==> two hosts on subnets of their own behind a router, etcd, an agent each");
    let c = Cluster::start_with(ClusterOptions { hosts: 2, ..ClusterOptions::default() }).await;
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let probe = bin("vk-probe");
    let stack = format!(
        "iperf:\n  type: job\n  host: {b}\n  command: exec iperf3 -s -p 5201\n  ports:\n    - 5201\n\
         echo:\n  type: job\n  host: {b}\n  command: exec {probe} serve 0.0.0.0:7000 echo\n  ports:\n    - 7000\n\
         box:\n  type: job\n  host: {a}\n  daemonize: true\n  command: exec sleep 1000000\n",
        a = a.agent.node,
        b = b.agent.node
    );
    c.deploy("ov", &stack).await;
    let rows = c
        .wait_ps("the instances", |r| r.len() == 3 && r.iter().all(|r| r.state == "running"))
        .await;
    let srv = rows
        .iter()
        .find(|r| r.job == "iperf")
        .and_then(|r| r.address)
        .context("iperf's address")?
        .to_string();
    // Underlay servers: plain processes in B's namespace.
    let mut iperf_u = b.ns.command("iperf3", None);
    iperf_u.args(["-s", "-p", "5202"]).stdout(Stdio::null()).stderr(Stdio::null());
    let _iperf_u = ChildGuard::spawn(iperf_u);
    let mut echo_u = b.ns.command(&probe, None);
    echo_u.args(["serve", &format!("{}:7001", b.ip), "echo"]).stdout(Stdio::null());
    let _echo_u = ChildGuard::spawn(echo_u);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, mtu) = a.run("cat", &["/sys/class/net/vk-vxlan/mtu"]);
    let mtu: u32 = mtu.trim().parse().unwrap_or(0);

    let secs = plan.iperf_secs.to_string();
    let mut overlay = PathResult::default();
    let mut underlay = PathResult::default();
    println!(
        "==> iperf3, {} s per run, {} runs, overlay and underlay interleaved",
        plan.iperf_secs, plan.reps
    );
    for rep in 0..plan.reps {
        for streams in [1u32, 4] {
            interrupted()?;
            let p = streams.to_string();
            let o = iperf(
                from(
                    a,
                    Some("ov_box_0"),
                    &["iperf3", "-c", &srv, "-p", "5201", "-t", &secs, "-P", &p, "-J"],
                ),
                streams,
            )?;
            let u = iperf(
                from(a, None, &["iperf3", "-c", &b.ip, "-p", "5202", "-t", &secs, "-P", &p, "-J"]),
                streams,
            )?;
            println!("    run {rep} -P {streams}: overlay {o:.2} Gbit/s, underlay {u:.2} Gbit/s");
            let (ov, un) = if streams == 1 {
                (&mut overlay.runs_gbps_1_stream, &mut underlay.runs_gbps_1_stream)
            } else {
                (&mut overlay.runs_gbps_4_streams, &mut underlay.runs_gbps_4_streams)
            };
            ov.push(o);
            un.push(u);
        }
    }
    for r in [&mut overlay, &mut underlay] {
        r.gbps_1_stream = median(&r.runs_gbps_1_stream);
        r.gbps_4_streams = median(&r.runs_gbps_4_streams);
    }
    println!("==> request/response, {} round trips each", plan.rr_samples);
    let vk_bench = bin("vk-bench");
    let n = plan.rr_samples.to_string();
    let echo =
        rows.iter().find(|r| r.job == "echo").and_then(|r| r.address).context("echo's address")?;
    for (path, cmd) in [
        ("overlay", from(a, Some("ov_box_0"), &[&vk_bench, "rr", &format!("{echo}:7000"), &n])),
        ("underlay", from(a, None, &[&vk_bench, "rr", &format!("{}:7001", b.ip), &n])),
    ] {
        interrupted()?;
        let mut cmd = cmd;
        let out = cmd.output().context("vk-bench rr")?;
        let s: LatencyStats = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("rr {path}: {}", String::from_utf8_lossy(&out.stderr)))?;
        println!("    {path}: p50 {:.1} µs, p99 {:.1} µs", s.p50_us, s.p99_us);
        if path == "overlay" {
            overlay.rr = s;
        } else {
            underlay.rr = s;
        }
    }
    Ok((overlay, underlay, mtu))
}

fn member(i: usize) -> (String, HostInfo) {
    let name = format!("bench-h{i}");
    let mut h =
        HostInfo::new(name.clone(), std::net::IpAddr::V4(Ipv4Addr::new(10, 96, i as u8, 2)));
    h.set_vtep(&Vtep {
        mac: Mac::derived(&name).to_string(),
        vni: overlay::DEFAULT_VNI,
        port: overlay::DEFAULT_VXLAN_PORT,
        address: Some(Ipv4Addr::new(10, 47, 255, i as u8 + 2)),
    });
    (name, h)
}

fn intent(ip: Ipv4Addr) -> Vec<u8> {
    serde_json::json!({ "spec": { "address": ip.to_string() } }).to_string().into_bytes()
}

/// Waits until `f` holds for what the loop last published.
async fn until(
    reach: &mut tokio::sync::watch::Receiver<overlay::Reach>,
    f: impl Fn(&overlay::Reach) -> bool,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if f(&reach.borrow_and_update()) {
                return;
            }
            if reach.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .context("the overlay loop did not get there in 30 s")?;
    Ok(t.elapsed())
}

async fn control_plane(plan: &Plan) -> anyhow::Result<Control> {
    println!(
        "==> the overlay loop: {} members, {} instance addresses (etcd, a host namespace of its own)",
        plan.hosts, plan.instances
    );
    let etcd = Etcd::start().await;
    let store: EtcdStore = etcd.store().await;
    let (host, peer) = (NetNs::new("vkbh"), NetNs::new("vkbp"));
    veth(&host, &["10.96.0.2/24"], &peer, &["10.96.0.1/24"]);
    let me = "bench-h0";
    let prepared = overlay::prepare(
        &store,
        overlay::Config {
            node: me.into(),
            mode: Mode::Vxlan,
            vni: overlay::DEFAULT_VNI,
            port: overlay::DEFAULT_VXLAN_PORT,
            address: "10.96.0.2".parse()?,
            pool: viking::cluster::DEFAULT_POOL.parse()?,
            host_netns: Some(host.path()),
        },
    )
    .await?;
    for i in 1..plan.hosts {
        let (name, h) = member(i);
        store.put(&format!("/viking/hosts/{name}"), serde_json::to_vec(&h)?, None).await?;
    }
    for n in 0..plan.instances {
        let host = if n % plan.hosts == 0 { me.to_owned() } else { member(n % plan.hosts).0 };
        let ip = Ipv4Addr::from(0x0a20_1000 + n as u32);
        store.put(&format!("/viking/proc/{host}/bench/j/{n}"), intent(ip), None).await?;
    }
    let remote = plan.instances - plan.instances / plan.hosts;
    let (ov, mut reach) = Overlay::new(store.clone(), prepared);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(ov.run(stop, true));
    let first = until(&mut reach, |r| r.routed.len() >= remote + plan.hosts - 1).await?;
    let (state, _) = in_netns(&host.path(), |nl| async move { kernel::dump(&nl).await }).await?;
    let mut idle = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        let s = in_netns(&host.path(), |nl| async move { kernel::dump(&nl).await }).await?;
        let _ = overlay::diff::diff(&state, &s.0);
        idle.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "    {} routes, {} FDB entries, {} neighbours; first sync {:.0} ms; idle pass {:.1} ms",
        state.routes.len(),
        state.fdb.len(),
        state.neighbours.len(),
        first.as_secs_f64() * 1e3,
        median(&idle)
    );
    let (mut joins, mut leaves) = (Vec::new(), Vec::new());
    for k in 0..plan.membership_changes {
        interrupted()?;
        let (name, h) = member(100 + k);
        let ip = Ipv4Addr::new(10, 33, 0, k as u8 + 2);
        store.put(&format!("/viking/proc/{name}/bench/j/0"), intent(ip), None).await?;
        let t = Instant::now();
        store.put(&format!("/viking/hosts/{name}"), serde_json::to_vec(&h)?, None).await?;
        until(&mut reach, |r| r.routed.contains(&ip)).await?;
        joins.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        store.delete(&format!("/viking/hosts/{name}")).await?;
        until(&mut reach, |r| !r.routed.contains(&ip)).await?;
        leaves.push(t.elapsed().as_secs_f64() * 1e3);
        store.delete(&format!("/viking/proc/{name}/bench/j/0")).await?;
    }
    let _ = stop_tx.send(true);
    let _ = task.await;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let c = Control {
        hosts: plan.hosts,
        instances: plan.instances,
        routes: state.routes.len(),
        fdb_entries: state.fdb.len(),
        neighbours: state.neighbours.len(),
        first_sync_ms: first.as_secs_f64() * 1e3,
        idle_pass_ms: median(&idle),
        join_to_kernel_ms: (median(&joins), max(&joins)),
        leave_to_kernel_ms: (median(&leaves), max(&leaves)),
    };
    println!(
        "    join -> kernel: median {:.1} ms, max {:.1} ms; leave -> kernel: median {:.1} ms, max {:.1} ms",
        c.join_to_kernel_ms.0, c.join_to_kernel_ms.1, c.leave_to_kernel_ms.0, c.leave_to_kernel_ms.1
    );
    Ok(c)
}

async fn measure(plan: Plan, quick: bool) -> anyhow::Result<OverlayReport> {
    let load_before = report::loadavg();
    let (overlay, underlay, overlay_mtu) = data_path(&plan).await?;
    let control = control_plane(&plan).await?;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    let ratios = Ratios {
        throughput_1_stream: ratio(overlay.gbps_1_stream, underlay.gbps_1_stream),
        throughput_4_streams: ratio(overlay.gbps_4_streams, underlay.gbps_4_streams),
        rr_p50: ratio(overlay.rr.p50_us, underlay.rr.p50_us),
    };
    Ok(OverlayReport {
        benchmark: "overlay".into(),
        date: report::now_utc(),
        machine: Machine::read(),
        quick,
        goal_met: ratios.throughput_1_stream >= 0.90 && ratios.throughput_4_streams >= 0.90,
        plan,
        load_before,
        load_after: report::loadavg(),
        overlay,
        underlay,
        ratios,
        overlay_mtu,
        control,
    })
}

fn print(r: &OverlayReport) {
    report::print_header("overlay", &r.date, &r.machine, r.quick, (&r.load_before, &r.load_after));
    println!("overlay MTU {} (underlay 1500)", r.overlay_mtu);
    println!("{:<26} {:>10} {:>10} {:>8}", "", "overlay", "underlay", "ratio");
    let row = |what: &str, o: f64, u: f64, unit: &str| {
        println!(
            "{:<26} {:>10.2} {:>10.2} {:>8.3}  {unit}",
            what,
            o,
            u,
            if u > 0.0 { o / u } else { 0.0 }
        );
    };
    row("iperf3, 1 stream", r.overlay.gbps_1_stream, r.underlay.gbps_1_stream, "Gbit/s");
    row("iperf3, 4 streams", r.overlay.gbps_4_streams, r.underlay.gbps_4_streams, "Gbit/s");
    row("request/response p50", r.overlay.rr.p50_us, r.underlay.rr.p50_us, "µs");
    row("request/response p99", r.overlay.rr.p99_us, r.underlay.rr.p99_us, "µs");
    println!(
        "goal: overlay throughput >= 0.90 of the underlay's: {} ({:.3}, {:.3})",
        if r.goal_met { "met" } else { "NOT met" },
        r.ratios.throughput_1_stream,
        r.ratios.throughput_4_streams
    );
    let c = &r.control;
    println!(
        "control plane, {} hosts and {} instances: {} routes, {} FDB entries, {} neighbours on one host; \
         first sync {:.0} ms, idle pass {:.1} ms, join -> kernel {:.1} ms (max {:.1}), leave -> kernel {:.1} ms (max {:.1})",
        c.hosts, c.instances, c.routes, c.fdb_entries, c.neighbours, c.first_sync_ms, c.idle_pass_ms,
        c.join_to_kernel_ms.0, c.join_to_kernel_ms.1, c.leave_to_kernel_ms.0, c.leave_to_kernel_ms.1
    );
}
