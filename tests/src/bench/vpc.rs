//! `vk-bench vpc`: the VPC host filter against no filter and against an nftables ruleset that
//! does the same, in one run (docs/benchmarks.md).
//!
//! The world: one bridge; a client member (10.98.0.1), three receivers that differ only in
//! their filter (`none` 10.98.0.11, `vpc` 10.98.0.12, `nftables` 10.98.0.13), and an outsider
//! (10.98.0.100, not a member). The `vpc` receiver's filter is the agent's own loop
//! (`viking::vpc::start`) on an embedded store where the client is a member, with the policy
//! "members may do anything, nobody else anything". The `nftables` receiver has the ruleset a
//! user would write for the same: conntrack, the member set, PMTU ICMP, the overlay port.
//!
//! Measured:
//! - throughput: iperf3 from the client to each receiver, 1 and 4 streams, the three back to
//!   back in rotating order each repetition; ratios to `none` per repetition, then the median;
//! - a bounded SYN burst from the outsider (raw socket, a new source port per SYN, to a port
//!   nobody listens on) at each receiver: how many the filter dropped, how many reached TCP
//!   (the receiver's RSTs), the CPU time the burst cost (the sender's own, which without IRQ
//!   time accounting includes the softirq work its sends run inline: each packet's way
//!   through the receiver's filter; plus the ksoftirqd threads'), and for `vpc` the ingress
//!   program's own run time per packet (BPF_ENABLE_STATS). Other work on the machine does
//!   not enter these numbers.
use std::{
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};
use viking::{
    cluster::{membership, HostInfo},
    store::EmbeddedStore,
    vpc::{AttachMode, VpcHandle, VpcSettings, DEFAULT_OVERLAY_PORT},
};

use super::{
    client::median,
    hooks::StatsOn,
    report::{self, Machine},
    world::run_timeout,
};
use crate::{
    etcd::TempDir,
    guards::{BpfDir, ChildGuard, NetNs},
    unique,
};

pub use super::Options;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
const OUTSIDER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 100);
const IPERF_PORT: u16 = 5201;
/// Where the SYNs go: nobody listens there.
const SYN_PORT: u16 = 9;

/// The three receivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    None,
    Vpc,
    Nftables,
}

const FILTERS: [Filter; 3] = [Filter::None, Filter::Vpc, Filter::Nftables];

impl Filter {
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Vpc => "vpc",
            Self::Nftables => "nftables",
        }
    }
    fn ip(self) -> Ipv4Addr {
        match self {
            Self::None => Ipv4Addr::new(10, 98, 0, 11),
            Self::Vpc => Ipv4Addr::new(10, 98, 0, 12),
            Self::Nftables => Ipv4Addr::new(10, 98, 0, 13),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub iperf_secs: u32,
    pub iperf_reps: usize,
    pub syn_count: u64,
    pub syn_reps: usize,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self { iperf_secs: 1, iperf_reps: 3, syn_count: 200_000, syn_reps: 2 }
        } else {
            // NB: many short repetitions, the receivers in turn: on a shared machine a slow
            // moment then hits one repetition of each, and the per-repetition ratios show it.
            Self { iperf_secs: 2, iperf_reps: 9, syn_count: 1_000_000, syn_reps: 3 }
        }
    }
}

/// One receiver's results (medians over the repetitions).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FilterResult {
    pub throughput_1_stream_gbps: f64,
    pub throughput_4_streams_gbps: f64,
    /// Median of the per-repetition ratios to `none`.
    pub ratio_1_stream_to_none: Option<f64>,
    pub ratio_4_streams_to_none: Option<f64>,
    /// CPU time per GB moved (iperf3's client and server processes, which without IRQ time
    /// accounting carry the softirq work of the veths, bridge and filters, plus ksoftirqd):
    /// the cost of the path, less exposed than throughput to what else the machine runs.
    pub cpu_ms_per_gb_1_stream: f64,
    pub cpu_ms_per_gb_4_streams: f64,
    pub cpu_ratio_1_stream_to_none: Option<f64>,
    pub cpu_ratio_4_streams_to_none: Option<f64>,
    pub syn: Option<SynResult>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SynResult {
    pub sent: u64,
    pub send_secs: f64,
    /// Counted dropped by the filter itself (its counters).
    pub dropped: u64,
    pub drop_rate: f64,
    /// SYNs that reached TCP (the receiver's RSTs: nobody listens).
    pub reached_tcp: u64,
    /// CPU time of the burst per million SYNs: the sender process (its send calls and the
    /// softirq work run inline in them, which carries each packet through the receiver's
    /// filter) plus the ksoftirqd threads (softirq work deferred to them). The sender's own
    /// share is the same for every receiver; the rest is the receiving path's.
    pub cpu_ms_per_million: f64,
    /// The ingress program's own time per packet (vpc only).
    pub filter_ns_per_packet: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    pub filter: String,
    pub metric: String,
    pub rep: usize,
    pub value: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpcReport {
    pub benchmark: String,
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub load_before: String,
    pub load_after: String,
    pub settings: Plan,
    pub none: FilterResult,
    pub vpc: FilterResult,
    pub nftables: FilterResult,
    pub goals: Vec<report::Goal>,
    pub runs: Vec<Run>,
    pub notes: Vec<String>,
}

/// What `vk-bench synburst` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Burst {
    pub sent: u64,
    pub secs: f64,
    /// The sender's own CPU time (user + system). Without IRQ time accounting (this kernel),
    /// the softirq work done inline in its send calls (veth, bridge, the receiver's TC and
    /// netfilter hooks, TCP) is charged to it too.
    pub cpu_secs: f64,
}

struct Receiver {
    ns: NetNs,
    iface: String,
    _iperf: ChildGuard,
}

struct World {
    // NB: the VPC loop and its pins go before the namespaces.
    vpc: VpcHandle,
    _stop: tokio::sync::watch::Sender<bool>,
    bpf: BpfDir,
    _store_dir: TempDir,
    _rules: TempDir,
    receivers: Vec<Receiver>,
    client: NetNs,
    outsider: NetNs,
    _lan: NetNs,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output().context("ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A namespace on the bridge with `addr`/24; returns it and its interface's name.
fn plug(lan: &NetNs, prefix: &str, addr: Ipv4Addr) -> anyhow::Result<(NetNs, String)> {
    let ns = NetNs::new(prefix);
    let (a, b) = (unique("vbv"), unique("vbb"));
    ip(&[
        "link", "add", &a, "netns", &ns.name, "type", "veth", "peer", "name", &b, "netns",
        &lan.name,
    ])?;
    lan.ip(&["link", "set", &b, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &a]);
    ns.ip(&["link", "set", &a, "up"]);
    Ok((ns, a))
}

fn nft_ruleset(iface: &str) -> String {
    format!(
        "table inet vkbench {{
  set members4 {{ type ipv4_addr; elements = {{ {CLIENT} }} }}
  counter dropped {{ }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname \"{iface}\" jump vpc
  }}
  chain vpc {{
    ct state established,related accept
    icmp type destination-unreachable icmp code frag-needed accept
    icmpv6 type {{ packet-too-big, nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert }} accept
    udp dport {DEFAULT_OVERLAY_PORT} ip saddr @members4 accept
    udp dport {DEFAULT_OVERLAY_PORT} counter name dropped drop
    ip saddr @members4 accept
    counter name dropped drop
  }}
}}
"
    )
}

impl World {
    async fn new() -> anyhow::Result<Self> {
        let lan = NetNs::new("vkbl");
        lan.ip(&["link", "add", "br0", "type", "bridge"]);
        lan.ip(&["link", "set", "br0", "up"]);
        let (client, _) = plug(&lan, "vkbc", CLIENT)?;
        let (outsider, _) = plug(&lan, "vkbo", OUTSIDER)?;
        let mut receivers = Vec::new();
        for f in FILTERS {
            let (ns, iface) = plug(&lan, "vkbr", f.ip())?;
            let mut iperf = ns.command("iperf3", None);
            iperf
                .args(["-s", "-B", &f.ip().to_string(), "-p", &IPERF_PORT.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let iperf = ChildGuard(iperf.spawn().context("starting iperf3 -s")?);
            receivers.push(Receiver { ns, iface, _iperf: iperf });
        }
        // nftables on its receiver.
        let nft = &receivers[2];
        let mut cmd = nft.ns.command("nft", None);
        cmd.arg("-f").arg("-");
        let out = super::world::run_timeout_input(
            &mut cmd,
            Some(nft_ruleset(&nft.iface)),
            Duration::from_secs(30),
        )
        .context("nft (is nftables installed? cargo xtask setup)")?;
        if !out.status.success() {
            bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
        }
        // The VPC filter on its receiver: the agent's loop, on a store where the client is a
        // member.
        let store_dir = TempDir::new("vk-bench-vpc-store");
        let rules = TempDir::new("vk-bench-vpc-rules");
        std::fs::write(rules.path.join("policy.yml"), "default: deny\nallow:\n  - from: cluster\n")
            .context("writing the policy")?;
        let store = EmbeddedStore::open(&store_dir.path).await.context("embedded store")?;
        let member = |name: &str, address: Ipv4Addr| HostInfo::new(name, IpAddr::V4(address));
        for (name, addr) in [("client", CLIENT), ("receiver", Filter::Vpc.ip())] {
            let m = membership::join(&store, member(name, addr), membership::DEFAULT_TTL)
                .await
                .context("joining the bench store")?;
            // NB: kept registered for the whole run (its lease is kept alive by its task).
            std::mem::forget(m);
        }
        let bpf = BpfDir::new();
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let settings = VpcSettings {
            rules_dir: rules.path.clone(),
            overlay_port: DEFAULT_OVERLAY_PORT,
            attach: AttachMode::Auto,
            host_netns: Some(receivers[1].ns.path()),
            bpffs: bpf.path.clone(),
            state_dir: store_dir.path.join("vpc-state"),
            tags: Vec::new(),
            address: IpAddr::V4(Filter::Vpc.ip()),
        };
        let vpc = viking::vpc::start(settings, store, stop).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = vpc.status();
            if s.policy.is_some() && s.members.contains(&IpAddr::V4(CLIENT)) {
                break;
            }
            if Instant::now() > deadline {
                bail!("the VPC filter did not come up: {s:#?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Self {
            vpc,
            _stop: stop_tx,
            bpf,
            _store_dir: store_dir,
            _rules: rules,
            receivers,
            client,
            outsider,
            _lan: lan,
        })
    }

    fn receiver(&self, f: Filter) -> &Receiver {
        &self.receivers[f as usize]
    }

    /// (bits/s received, CPU ms per GB moved: iperf3's client and server plus ksoftirqd).
    fn iperf(&self, f: Filter, streams: usize, secs: u32) -> anyhow::Result<(f64, f64)> {
        super::interrupted()?;
        let k0 = ksoftirqd_ticks();
        let mut cmd = self.client.command("iperf3", None);
        cmd.args(["-c", &f.ip().to_string(), "-p", &IPERF_PORT.to_string()]).args([
            "-P",
            &streams.to_string(),
            "-t",
            &secs.to_string(),
            "--json",
        ]);
        let out = run_timeout(&mut cmd, Duration::from_secs(u64::from(secs) + 60))?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr).trim())
        })?;
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            bail!("iperf3 to {} ({}): {e}", f.name(), f.ip());
        }
        let k1 = ksoftirqd_ticks();
        let num = |p: &str| {
            v.pointer(p)
                .and_then(serde_json::Value::as_f64)
                .with_context(|| format!("iperf3: no {p}"))
        };
        let bps = num("/end/sum_received/bits_per_second")?;
        let bytes = num("/end/sum_received/bytes")?;
        let wall = num("/end/sum_received/seconds")?;
        // NB: iperf3's CPU figures are its processes' CPU time over the test's wall time.
        let cpu_pct = num("/end/cpu_utilization_percent/host_total")?
            + num("/end/cpu_utilization_percent/remote_total")?;
        let cpu_ms = cpu_pct / 100.0 * wall * 1000.0 + (k1 - k0) as f64 * jiffy_ms();
        Ok((bps, cpu_ms / (bytes / 1e9).max(1e-9)))
    }

    /// Packets the receiver's filter has dropped so far.
    fn dropped(&self, f: Filter) -> anyhow::Result<u64> {
        match f {
            Filter::None => Ok(0),
            Filter::Vpc => {
                let s = self.vpc.status();
                Ok(s.rules.iter().filter(|r| r.builtin).map(|r| r.drop_packets).sum())
            }
            Filter::Nftables => {
                let mut cmd = self.receiver(f).ns.command("nft", None);
                cmd.args(["-j", "list", "counter", "inet", "vkbench", "dropped"]);
                let out = run_timeout(&mut cmd, Duration::from_secs(30))?;
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).context("nft -j list counter")?;
                v.pointer("/nftables/1/counter/packets")
                    .and_then(serde_json::Value::as_u64)
                    .context("nft counter packets")
            }
        }
    }

    /// TCP resets the receiver sent (a SYN to a port nobody listens on gets one).
    fn resets(&self, f: Filter) -> anyhow::Result<u64> {
        let mut cmd = self.receiver(f).ns.command("cat", None);
        cmd.arg("/proc/net/snmp");
        let out = run_timeout(&mut cmd, Duration::from_secs(30))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
        let (names, values) = (tcp.next().unwrap_or(""), tcp.next().unwrap_or(""));
        let i = names.split_whitespace().position(|n| n == "OutRsts").context("Tcp OutRsts")?;
        values.split_whitespace().nth(i).and_then(|v| v.parse().ok()).context("OutRsts value")
    }

    fn burst(&self, f: Filter, count: u64) -> anyhow::Result<Burst> {
        super::interrupted()?;
        let exe = std::env::current_exe().context("current_exe")?;
        let mut cmd = self.outsider.command(exe, None);
        cmd.args(["synburst", &OUTSIDER.to_string(), &f.ip().to_string()])
            .args([&SYN_PORT.to_string(), &count.to_string()]);
        let out = run_timeout(&mut cmd, Duration::from_secs(120))?;
        if !out.status.success() {
            bail!("synburst: {}", String::from_utf8_lossy(&out.stderr));
        }
        serde_json::from_slice(&out.stdout).context("synburst output")
    }

    fn vpc_program(&self) -> anyhow::Result<(u64, u64)> {
        let path = self.bpf.path.join("vpc/progs").join(viking_common::vpc::programs::INGRESS);
        let prog = aya::programs::SchedClassifier::from_pin(&path)
            .with_context(|| format!("{}", path.display()))?;
        let info = prog.info().context("program info")?;
        Ok((info.run_time().as_nanos() as u64, info.run_count()))
    }
}

/// CPU ticks (user + system) of the ksoftirqd threads, from /proc/<pid>/stat.
fn ksoftirqd_ticks() -> u64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0 };
    let mut sum = 0;
    for e in dir.flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.starts_with("ksoftirqd/") {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // NB: fields after the parenthesised comm; utime and stime are the 14th and 15th.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        sum += f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    }
    sum
}

fn jiffy_ms() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1000.0 / if hz > 0 { hz as f64 } else { 100.0 }
}

fn order(rep: usize) -> [Filter; 3] {
    use Filter::*;
    match rep % 3 {
        0 => [None, Vpc, Nftables],
        1 => [Nftables, None, Vpc],
        _ => [Vpc, Nftables, None],
    }
}

fn step(what: &str) {
    println!("==> {what}");
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let rt = super::prepare("vpc", "network namespaces, eBPF, nftables", 1)?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &Options) -> anyhow::Result<()> {
    let plan = Plan::new(opts.quick);
    let mut report = VpcReport {
        benchmark: "vpc".into(),
        date: report::now_utc(),
        machine: Machine::read(),
        quick: opts.quick,
        load_before: report::loadavg(),
        load_after: String::new(),
        settings: plan.clone(),
        none: FilterResult::default(),
        vpc: FilterResult::default(),
        nftables: FilterResult::default(),
        goals: Vec::new(),
        runs: Vec::new(),
        notes: Vec::new(),
    };
    let started = Instant::now();
    step("world: a client member, receivers with no filter, the VPC filter, nftables; an outsider");
    let w = World::new().await?;
    // Every receiver answers its member; the outsider reaches only the unfiltered one.
    for f in FILTERS {
        w.iperf(f, 1, 1).with_context(|| format!("preflight iperf3 to {}", f.name()))?;
    }
    println!("    the three receivers answer iperf3 from the member");

    step("throughput (iperf3, member -> receiver)");
    for rep in 0..plan.iperf_reps {
        for streams in [1usize, 4] {
            for f in order(rep) {
                let (bps, cpu_per_gb) = w.iperf(f, streams, plan.iperf_secs)?;
                let gbps = bps / 1e9;
                println!(
                    "    run {}/{}: {:<9} {streams} stream(s): {gbps:>7.2} Gbit/s, {cpu_per_gb:>5.0} CPU ms/GB",
                    rep + 1,
                    plan.iperf_reps,
                    f.name()
                );
                report.runs.push(Run {
                    filter: f.name().into(),
                    metric: format!("throughput, {streams} streams"),
                    rep,
                    value: gbps,
                });
                report.runs.push(Run {
                    filter: f.name().into(),
                    metric: format!("cpu ms per GB, {streams} streams"),
                    rep,
                    value: cpu_per_gb,
                });
            }
        }
    }

    step("SYN burst from the outsider (a port nobody listens on)");
    let _stats = StatsOn::new()?;
    let mut syn: [Vec<SynResult>; 3] = Default::default();
    for rep in 0..plan.syn_reps {
        for f in order(rep) {
            let (d0, r0, p0) = (w.dropped(f)?, w.resets(f)?, w.vpc_program()?);
            let j0 = ksoftirqd_ticks();
            let b = w.burst(f, plan.syn_count)?;
            // The last packets are still in flight for a moment.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let j1 = ksoftirqd_ticks();
            let cpu_ms = b.cpu_secs * 1000.0 + (j1 - j0) as f64 * jiffy_ms();
            let (d1, r1, p1) = (w.dropped(f)?, w.resets(f)?, w.vpc_program()?);
            let dropped = d1 - d0;
            let runs = p1.1 - p0.1;
            let r = SynResult {
                sent: b.sent,
                send_secs: b.secs,
                dropped,
                drop_rate: dropped as f64 / b.sent.max(1) as f64,
                reached_tcp: r1.saturating_sub(r0),
                cpu_ms_per_million: cpu_ms * 1e6 / b.sent.max(1) as f64,
                filter_ns_per_packet: (f == Filter::Vpc && runs > 0)
                    .then(|| (p1.0 - p0.0) as f64 / runs as f64),
            };
            println!(
                "    run {}/{}: {:<9} sent {} in {:.2} s, dropped {} ({:.4}), reached TCP {}, \
                 CPU {:.0} ms per million{}",
                rep + 1,
                plan.syn_reps,
                f.name(),
                r.sent,
                r.send_secs,
                r.dropped,
                r.drop_rate,
                r.reached_tcp,
                r.cpu_ms_per_million,
                r.filter_ns_per_packet
                    .map(|n| format!(", filter {n:.0} ns/packet"))
                    .unwrap_or_default()
            );
            report.runs.push(Run {
                filter: f.name().into(),
                metric: "syn cpu ms per million".into(),
                rep,
                value: r.cpu_ms_per_million,
            });
            syn[f as usize].push(r);
        }
    }
    report.load_after = report::loadavg();
    summarize(&mut report, &syn);
    println!("    whole run: {:.0} s", started.elapsed().as_secs_f64());
    print_report(&report);
    if let Some(dir) = &opts.svg {
        for file in super::plot::vpc(&report, dir)? {
            println!("SVG: {}", file.display());
        }
    }
    if let Some(path) = &opts.json {
        let text = serde_json::to_string_pretty(&report).context("serialising")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("\nJSON: {}", path.display());
    }
    drop(w);
    Ok(())
}

fn values(report: &VpcReport, f: Filter, metric: &str) -> Vec<f64> {
    report
        .runs
        .iter()
        .filter(|r| r.filter == f.name() && r.metric == metric)
        .map(|r| r.value)
        .collect()
}

fn ratios(report: &VpcReport, f: Filter, metric: &str) -> Vec<f64> {
    let mine = values(report, f, metric);
    let base = values(report, Filter::None, metric);
    mine.iter().zip(&base).filter(|(_, b)| **b > 0.0).map(|(m, b)| m / b).collect()
}

fn summarize(report: &mut VpcReport, syn: &[Vec<SynResult>; 3]) {
    for f in FILTERS {
        let one = "throughput, 1 streams";
        let four = "throughput, 4 streams";
        let (cpu1, cpu4) = ("cpu ms per GB, 1 streams", "cpu ms per GB, 4 streams");
        let mut r = FilterResult {
            throughput_1_stream_gbps: median(&values(report, f, one)),
            throughput_4_streams_gbps: median(&values(report, f, four)),
            cpu_ms_per_gb_1_stream: median(&values(report, f, cpu1)),
            cpu_ms_per_gb_4_streams: median(&values(report, f, cpu4)),
            ..Default::default()
        };
        if f != Filter::None {
            r.ratio_1_stream_to_none = Some(median(&ratios(report, f, one)));
            r.ratio_4_streams_to_none = Some(median(&ratios(report, f, four)));
            r.cpu_ratio_1_stream_to_none = Some(median(&ratios(report, f, cpu1)));
            r.cpu_ratio_4_streams_to_none = Some(median(&ratios(report, f, cpu4)));
        }
        let runs = &syn[f as usize];
        if !runs.is_empty() {
            let med = |g: fn(&SynResult) -> f64| median(&runs.iter().map(g).collect::<Vec<_>>());
            r.syn = Some(SynResult {
                sent: runs.iter().map(|s| s.sent).sum(),
                send_secs: med(|s| s.send_secs),
                dropped: runs.iter().map(|s| s.dropped).sum(),
                drop_rate: med(|s| s.drop_rate),
                reached_tcp: runs.iter().map(|s| s.reached_tcp).sum(),
                cpu_ms_per_million: med(|s| s.cpu_ms_per_million),
                filter_ns_per_packet: {
                    let ns: Vec<f64> = runs.iter().filter_map(|s| s.filter_ns_per_packet).collect();
                    (!ns.is_empty()).then(|| median(&ns))
                },
            });
        }
        match f {
            Filter::None => report.none = r,
            Filter::Vpc => report.vpc = r,
            Filter::Nftables => report.nftables = r,
        }
    }
    for (metric, streams) in [("throughput, 1 streams", 1), ("throughput, 4 streams", 4)] {
        let per_run = ratios(report, Filter::Vpc, metric);
        let x = median(&per_run);
        report.goal_push(
            format!("vpc throughput, {streams} stream(s) / none"),
            x,
            ">= 0.97",
            x >= 0.97,
            per_run,
        );
    }
}

impl VpcReport {
    fn goal_push(
        &mut self,
        goal: String,
        measured: f64,
        target: &str,
        met: bool,
        per_run: Vec<f64>,
    ) {
        self.goals.push(report::Goal { goal, measured, target: target.into(), met, per_run });
    }
}

fn print_report(r: &VpcReport) {
    report::print_header(
        &r.benchmark,
        &r.date,
        &r.machine,
        r.quick,
        (&r.load_before, &r.load_after),
    );
    println!();
    println!("| receiver | 1 stream Gbit/s | / none | 4 streams Gbit/s | / none | CPU ms/GB 1 stream | / none | CPU ms/GB 4 streams | / none |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, f) in [("none", &r.none), ("vpc", &r.vpc), ("nftables", &r.nftables)] {
        let ratio = |x: Option<f64>| x.map_or("-".into(), |x| format!("{x:.3}"));
        println!(
            "| {name} | {:.2} | {} | {:.2} | {} | {:.0} | {} | {:.0} | {} |",
            f.throughput_1_stream_gbps,
            ratio(f.ratio_1_stream_to_none),
            f.throughput_4_streams_gbps,
            ratio(f.ratio_4_streams_to_none),
            f.cpu_ms_per_gb_1_stream,
            ratio(f.cpu_ratio_1_stream_to_none),
            f.cpu_ms_per_gb_4_streams,
            ratio(f.cpu_ratio_4_streams_to_none),
        );
    }
    println!();
    println!("| receiver | SYNs sent | dropped (rate) | reached TCP | CPU ms / M SYN | filter ns / packet |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for (name, f) in [("none", &r.none), ("vpc", &r.vpc), ("nftables", &r.nftables)] {
        if let Some(s) = &f.syn {
            println!(
                "| {name} | {} | {} ({:.4}) | {} | {:.0} | {} |",
                s.sent,
                s.dropped,
                s.drop_rate,
                s.reached_tcp,
                s.cpu_ms_per_million,
                s.filter_ns_per_packet.map_or("-".into(), |n| format!("{n:.0}")),
            );
        }
    }
    println!();
    println!("| goal | measured | target | met | per repetition |");
    println!("| --- | ---: | --- | --- | --- |");
    for g in &r.goals {
        let per: Vec<String> = g.per_run.iter().map(|x| format!("{x:.3}")).collect();
        println!(
            "| {} | {:.3} | {} | {} | {} |",
            g.goal,
            g.measured,
            g.target,
            if g.met { "yes" } else { "no" },
            per.join(", ")
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

/// `vk-bench synburst SRC DST PORT COUNT`: COUNT TCP SYNs from SRC (this namespace's own
/// address) to DST:PORT through a raw socket, each from a new source port.
pub fn syn_burst(src: Ipv4Addr, dst: Ipv4Addr, port: u16, count: u64) -> anyhow::Result<Burst> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw socket");
    }
    // SAFETY: a fresh fd we own.
    let _owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(dst.octets()) },
        sin_zero: [0; 8],
    };
    let started = Instant::now();
    let mut sent = 0;
    let mut seg = [0u8; 20];
    for i in 0..count {
        let sport = 1024 + (i % 64_000) as u16;
        let seq = (i as u32).wrapping_mul(2_654_435_761);
        seg[0..2].copy_from_slice(&sport.to_be_bytes());
        seg[2..4].copy_from_slice(&port.to_be_bytes());
        seg[4..8].copy_from_slice(&seq.to_be_bytes());
        seg[8..12].copy_from_slice(&[0; 4]);
        seg[12] = 5 << 4;
        seg[13] = 0x02;
        seg[14..16].copy_from_slice(&64240u16.to_be_bytes());
        seg[16..18].copy_from_slice(&[0, 0]);
        seg[18..20].copy_from_slice(&[0, 0]);
        let sum = tcp_checksum(src, dst, &seg);
        seg[16..18].copy_from_slice(&sum.to_be_bytes());
        // SAFETY: a valid buffer and address for the duration of the call.
        let n = unsafe {
            libc::sendto(
                fd,
                seg.as_ptr().cast(),
                seg.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n == seg.len() as isize {
            sent += 1;
        }
    }
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Burst {
        sent,
        secs: started.elapsed().as_secs_f64(),
        cpu_secs: tv(ru.ru_utime) + tv(ru.ru_stime),
    })
}

fn tcp_checksum(src: Ipv4Addr, dst: Ipv4Addr, seg: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            let w =
                if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
            sum += u32::from(w);
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 6]);
    add(&(seg.len() as u16).to_be_bytes());
    add(seg);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
