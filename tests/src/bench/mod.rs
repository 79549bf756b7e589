//! `vk-bench datapath`: Viking's datapath against the alternatives, all in one run, reported
//! as ratios to a direct connection (docs/benchmarks.md).
//!
//! Paths from the client namespace to the server namespace:
//! - direct: connect to the backend address itself;
//! - viking: connect to the ambassador `127.0.0.1:PORT`, rewritten in connect() by the
//!   datapath attached to the client's cgroup;
//! - iptables DNAT: connect to a VIP that a `-t nat OUTPUT` rule DNATs to the backend (what
//!   kube-proxy's iptables mode programs); the rules exist only while this path is measured;
//! - haproxy: connect to HAProxy (`mode tcp`) on `127.0.0.1:PORT`, which connects on to the
//!   backend: the userspace proxy of ambassadord/embassy.
//!
//! Measured: iperf3 throughput (1 and 4 streams), new connections per second, connect()
//! latency with 1 to 100k services (viking against as many iptables rules), and the time to
//! program 10k services of 4 backends. Speed is reported only as ratios within one run.
pub mod agent;
pub mod client;
pub mod discovery;
pub mod dns;
pub mod failover;
pub mod hooks;
pub mod overlay;
pub mod plot;
pub mod report;
pub mod server;
pub mod vpc;
pub mod world;

use std::{
    net::{SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Instant,
};

use anyhow::{bail, Context as _};
use viking::datapath::{Datapath, DatapathConfig, DatapathError, Frontend, Proto, ServiceTable};

use self::{
    client::{median, stats},
    report::{Machine, Report},
    world::{
        backend, dnat_rules, filler_addr, filler_backend, kube_proxy_rules, program_backend, spec,
        Path, Target, World, WorldConfig, PATHS,
    },
};
use crate::guards::{BpfDir, Cgroup};

/// What `vk-bench datapath` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub json: Option<PathBuf>,
    /// Where to draw the results (SVG charts).
    pub svg: Option<PathBuf>,
    pub quick: bool,
}

/// How long and how large each part runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub iperf_secs: u32,
    pub iperf_reps: usize,
    pub cps_secs: f64,
    pub cps_reps: usize,
    pub cps_threads: usize,
    pub server_workers: usize,
    pub latency_samples_per_round: usize,
    pub latency_rounds: usize,
    pub latency_iptables_rounds: usize,
    pub latency_scales: Vec<usize>,
    pub program_services: usize,
    pub program_backends: usize,
}

impl Plan {
    pub fn new(quick: bool) -> Self {
        if quick {
            Self {
                iperf_secs: 2,
                iperf_reps: 2,
                cps_secs: 1.5,
                cps_reps: 2,
                cps_threads: 4,
                server_workers: 8,
                latency_samples_per_round: 500,
                latency_rounds: 6,
                latency_iptables_rounds: 2,
                latency_scales: vec![1, 1_000, 10_000],
                program_services: 10_000,
                program_backends: 4,
            }
        } else {
            Self {
                iperf_secs: 2,
                iperf_reps: 7,
                cps_secs: 1.5,
                cps_reps: 7,
                cps_threads: 4,
                server_workers: 8,
                latency_samples_per_round: 1000,
                latency_rounds: 15,
                latency_iptables_rounds: 4,
                latency_scales: vec![1, 1_000, 10_000, 100_000],
                program_services: 10_000,
                program_backends: 4,
            }
        }
    }
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What every benchmark does first: refuses to run without root (saying what `needs` it),
/// catches interrupts (below) and makes a tokio runtime of `workers` threads.
pub(crate) fn prepare(
    which: &str,
    needs: &str,
    workers: usize,
) -> anyhow::Result<tokio::runtime::Runtime> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!("vk-bench {which} needs root ({needs})");
    }
    catch_interrupts()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("tokio runtime: {e}"))
}

/// Turns SIGINT, SIGTERM and SIGHUP into an error at the next measurement, so that the Drop
/// guards remove the namespaces, cgroups, pins and processes. Call before any thread starts:
/// threads inherit the blocked mask (and std resets it in spawned commands).
pub(crate) fn catch_interrupts() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(sig);
    }
    set.thread_block().context("blocking SIGINT/SIGTERM")?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("vk-bench: {sig}: stopping after the current step and cleaning up");
            INTERRUPTED.store(true, Ordering::Relaxed);
        }
    });
    Ok(())
}

/// Fails once a signal asked the benchmark to stop.
pub fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("vk-bench datapath needs root (network namespaces, cgroups, eBPF)");
    }
    catch_interrupts()?;
    let plan = Plan::new(opts.quick);
    let mut report = Report {
        benchmark: "datapath".into(),
        date: report::now_utc(),
        machine: Machine::read(),
        quick: opts.quick,
        load_before: report::loadavg(),
        load_after: String::new(),
        settings: serde_json::to_value(&plan).context("plan")?,
        rows: Vec::new(),
        goals: Vec::new(),
        runs: Vec::new(),
        latency: Vec::new(),
        hooks: Vec::new(),
        failover: Vec::new(),
        notes: Vec::new(),
    };
    let started = Instant::now();
    step("world: client + server namespaces over veth, cgroup, datapath, iperf3, haproxy");
    let mut world = World::new(&WorldConfig {
        server_workers: plan.server_workers,
        haproxy_threads: report.machine.cpus.max(1),
    })?;
    preflight(&world)?;

    // NB: the connection-rate runs come after the latency runs: they leave the client with
    // tens of thousands of TIME_WAIT sockets, which slow every later connect() (the port
    // search), whatever the path.
    step("throughput (iperf3)");
    throughput(&world, &plan, &mut report)?;
    step("connect latency against the number of services");
    latency(&mut world, &plan, &mut report)?;
    step("new connections per second");
    connection_rate(&mut world, &plan, &mut report)?;
    step("programming services");
    programming(&world, &plan, &mut report)?;
    step("one of three backends dies mid-run: viking with ejection and without");
    failover::run(&mut world, &failover::FailoverPlan::new(opts.quick), &mut report)?;
    drop(world);
    report.load_after = report::loadavg();

    goals(&plan, &mut report);
    println!("    whole run: {:.0} s", started.elapsed().as_secs_f64());
    report.print();
    if let Some(path) = &opts.json {
        report.write_json(path)?;
        println!("\nJSON: {}", path.display());
    }
    if let Some(dir) = &opts.svg {
        for file in plot::datapath(&report, dir)? {
            println!("SVG: {}", file.display());
        }
    }
    Ok(())
}

fn step(what: &str) {
    println!("==> {what}");
}

/// Every path answers a request before anything is measured, and viking's really went
/// through the datapath.
fn preflight(w: &World) -> anyhow::Result<()> {
    for path in PATHS {
        let r = with_nat(w, path, || w.cps(path, 0.0, 1))?;
        if r.conns == 0 || r.errors > 0 {
            bail!(
                "{} ({}) does not answer: {} ok, {} failed ({})",
                path.name(),
                path.addr(Target::Rr),
                r.conns,
                r.errors,
                r.first_error.unwrap_or_default()
            );
        }
    }
    let conns = viking_conns(w, Target::Rr)?;
    if conns == 0 {
        bail!("the viking path answered but the datapath counted no connection");
    }
    println!("    all four paths answer (viking counted {conns} connections)");
    Ok(())
}

/// Connections the datapath sent through the service of `target`.
fn viking_conns(w: &World, target: Target) -> anyhow::Result<u64> {
    service_conns(&w.datapath.table, target)
}

fn service_conns(table: &ServiceTable, target: Target) -> anyhow::Result<u64> {
    let frontend =
        Frontend { addr: SocketAddr::V4(Path::Viking.addr(target)), proto: Proto::Tcp, netns: 0 };
    Ok(table.get(&frontend).context("reading the service")?.map_or(0, |s| s.conns))
}

/// Runs `f` with the iptables rules of the throughput/connection runs in place when `path` is
/// the iptables path, and with the nat table empty otherwise.
fn with_nat<T>(w: &World, path: Path, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    if path != Path::Iptables {
        return f();
    }
    w.nat_restore(World::nat_paths_rules())?;
    let r = f();
    w.nat_flush()?;
    r
}

/// The order of the paths in repetition `rep`: direct and viking always back to back (their
/// ratio is the one the goals are about), and every path in turn first and last.
fn order(rep: usize) -> [Path; 4] {
    use Path::*;
    match rep % 4 {
        0 => [Direct, Viking, Iptables, Haproxy],
        1 => [Haproxy, Iptables, Viking, Direct],
        2 => [Iptables, Direct, Viking, Haproxy],
        _ => [Viking, Direct, Haproxy, Iptables],
    }
}

/// Rows for a repeated metric: each path's median over the repetitions, and the median of its
/// per-repetition ratios to direct (paths of one repetition ran within seconds of each other,
/// so a slower or faster moment of the machine cancels out of the ratio).
fn summarize(report: &mut Report, metric: &str, unit: &str) {
    for path in PATHS {
        let values: Vec<f64> = report
            .runs
            .iter()
            .filter(|r| r.metric == metric && r.path == path.name())
            .map(|r| r.value)
            .collect();
        let ratios = report.per_run_ratios(metric, path.name());
        let ratio = (path != Path::Direct && !ratios.is_empty()).then(|| median(&ratios));
        report.row_with_ratio(path.name(), metric, median(&values), unit, ratio);
    }
}

fn run_record(report: &mut Report, path: Path, metric: &str, rep: usize, value: f64) {
    report.runs.push(report::Run { path: path.name().into(), metric: metric.into(), rep, value });
}

fn throughput_metric(streams: usize) -> String {
    if streams == 1 {
        "throughput, 1 stream".to_owned()
    } else {
        format!("throughput, {streams} streams")
    }
}

fn throughput(w: &World, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    for rep in 0..plan.iperf_reps {
        for streams in [1, 4] {
            for path in order(rep) {
                let bps = with_nat(w, path, || w.iperf(path, streams, plan.iperf_secs))?;
                println!(
                    "    run {}/{}: {:<13} {streams} stream(s): {:>7.2} Gbit/s",
                    rep + 1,
                    plan.iperf_reps,
                    path.name(),
                    bps / 1e9
                );
                run_record(report, path, &throughput_metric(streams), rep, bps / 1e9);
            }
        }
    }
    if viking_conns(w, Target::Iperf)? == 0 {
        bail!("iperf3 via viking: the datapath counted no connection");
    }
    for streams in [1, 4] {
        summarize(report, &throughput_metric(streams), "Gbit/s");
    }
    Ok(())
}

fn connection_rate(w: &mut World, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let metric = "new connections/s";
    for rep in 0..plan.cps_reps {
        for path in order(rep) {
            let before = viking_conns(w, Target::Rr)?;
            let r = with_nat(w, path, || w.cps(path, plan.cps_secs, plan.cps_threads))?;
            if r.conns == 0 {
                bail!(
                    "{}: no connection completed ({})",
                    path.name(),
                    r.first_error.unwrap_or_default()
                );
            }
            if r.errors > 0 {
                report.notes.push(format!(
                    "connection rate via {}: {} of {} connections failed ({})",
                    path.name(),
                    r.errors,
                    r.conns + r.errors,
                    r.first_error.clone().unwrap_or_default()
                ));
            }
            if path == Path::Viking {
                let counted = viking_conns(w, Target::Rr)? - before;
                if counted < r.conns {
                    bail!("viking counted {counted} connections, the client made {}", r.conns);
                }
            }
            println!(
                "    run {}/{}: {:<13} {:>8.0} connections/s",
                rep + 1,
                plan.cps_reps,
                path.name(),
                r.rate()
            );
            run_record(report, path, metric, rep, r.rate());
        }
    }
    summarize(report, metric, "conn/s");
    // Every viking connection so far left a REVNAT entry (the map is an LRU, nothing deletes
    // them at close): the hooks again, now that the map is full or nearly.
    hook_cost(w, "after the connection-rate runs", plan.latency_samples_per_round, report)?;
    Ok(())
}

fn scale_name(n: usize) -> String {
    let n_str =
        if n >= 1000 && n.is_multiple_of(1000) { format!("{}k", n / 1000) } else { n.to_string() };
    format!("{n_str} service{}", if n == 1 { "" } else { "s" })
}

fn latency(w: &mut World, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    // Only the measured service (bench-rr) stays installed: "1 service" means one.
    let iperf = Frontend {
        addr: SocketAddr::V4(Path::Viking.addr(Target::Iperf)),
        proto: Proto::Tcp,
        netns: 0,
    };
    w.datapath.table.remove(&iperf).context("removing the iperf service")?;
    let measured = [(Path::Iptables.addr(Target::Rr), backend(Target::Rr))];
    let (rounds, samples) = (plan.latency_rounds, plan.latency_samples_per_round);
    let mut installed = 0; // filler services in the datapath
    let mut vs_one_service = Vec::new();
    let mut without_backend = 0;
    for &n in &plan.latency_scales {
        let t = Instant::now();
        let from = installed;
        while installed + 1 < n {
            let i = installed;
            if i % 1000 == 0 {
                interrupted()?;
            }
            let frontend = SocketAddrV4::new(filler_addr(i), 80);
            let name = format!("filler-{i}");
            let backends = if without_backend == 0 { vec![filler_backend(i)] } else { Vec::new() };
            match w.datapath.table.upsert(&spec(&name, frontend, &backends)) {
                Ok(()) if backends.is_empty() => without_backend += 1,
                Ok(()) => {}
                Err(DatapathError::IdsExhausted("backend")) => {
                    // The backend id space is smaller than the service id space: the rest of
                    // the filler services get no backend (a lookup finds them all the same).
                    w.datapath
                        .table
                        .upsert(&spec(&name, frontend, &[]))
                        .with_context(|| format!("installing {name} without backend"))?;
                    without_backend += 1;
                }
                Err(e) => return Err(e).with_context(|| format!("installing {name}")),
            }
            installed += 1;
        }
        if installed > from {
            let secs = t.elapsed().as_secs_f64();
            println!(
                "    viking: {} filler services installed in {secs:.2} s ({:.0}/s)",
                installed - from,
                (installed - from) as f64 / secs
            );
        }
        // Rounds of direct, viking (n services) and viking on the 1-service datapath, in
        // turn: drift on the machine hits all three alike.
        let (mut direct, mut viking, mut base) = (Vec::new(), Vec::new(), Vec::new());
        let mut per_round = Vec::new();
        for round in 0..rounds {
            let mut means = [0.0; 2];
            for k in 0..3 {
                match (round + k) % 3 {
                    0 => direct.extend(w.latency(Path::Direct, samples)?),
                    1 => {
                        let s = w.latency(Path::Viking, samples)?;
                        means[0] = stats(&s).mean_us;
                        viking.extend(s);
                    }
                    _ => {
                        let s = w.latency_in(Path::Viking, samples, &w.baseline.cgroup)?;
                        means[1] = stats(&s).mean_us;
                        base.extend(s);
                    }
                }
            }
            if means[1] > 0.0 {
                per_round.push(means[0] / means[1]);
            }
        }
        let restore = w.nat_restore(dnat_rules(&measured, n - 1))?;
        println!("    iptables: {n} rules restored in {:.2} s", restore.as_secs_f64());
        let mut ipt = Vec::new();
        // NB: a connect through 100k rules takes milliseconds; fewer samples bound the time.
        let ipt_samples = if n >= 50_000 { samples / 4 } else { samples };
        let measured_ipt = (0..plan.latency_iptables_rounds).try_for_each(|_| {
            ipt.extend(w.latency(Path::Iptables, ipt_samples.max(1))?);
            anyhow::Ok(())
        });
        w.nat_flush()?;
        measured_ipt?;

        let scale = scale_name(n);
        let (d, v, i) = (stats(&direct), stats(&viking), stats(&ipt));
        let b = stats(&base);
        // The median of the per-round ratios: a round that a burst of other work on the
        // machine hit (milliseconds-long outliers move a mean) does not decide it.
        let vs_one = median(&per_round);
        report.latency.push(report::LatencyDetail {
            services: 1,
            path: format!("viking, 1-service table, interleaved with {scale}"),
            stats: b,
        });
        if Some(&n) == plan.latency_scales.last() && b.p50_us > 0.0 && b.mean_us > 0.0 {
            report.notes.push(format!(
                "viking at {scale} against the 1-service datapath, all samples pooled: mean \
                 {:.3}, p50 {:.3}, p99 {:.3}",
                v.mean_us / b.mean_us,
                v.p50_us / b.p50_us,
                v.p99_us / b.p99_us
            ));
        }
        vs_one_service.push((n, vs_one, per_round.clone()));
        for (path, s) in [(Path::Direct, d), (Path::Viking, v), (Path::Iptables, i)] {
            report.latency.push(report::LatencyDetail {
                services: n,
                path: path.name().into(),
                stats: s,
            });
            println!(
                "    {scale:>14}: {:<13} mean {:>6.1} µs  p50 {:>6.1} µs  p99 {:>6.1} µs  max {:>8.1} µs",
                path.name(),
                s.mean_us,
                s.p50_us,
                s.p99_us,
                s.max_us
            );
        }
        for (metric, pick) in [
            (
                format!("connect mean, {scale}"),
                (|s: &client::LatencyStats| s.mean_us) as fn(_) -> _,
            ),
            (format!("connect p99, {scale}"), |s: &client::LatencyStats| s.p99_us),
        ] {
            report.row(Path::Direct.name(), &metric, pick(&d), "µs", None);
            report.row(Path::Viking.name(), &metric, pick(&v), "µs", Some(pick(&d)));
            report.row(Path::Iptables.name(), &metric, pick(&i), "µs", Some(pick(&d)));
        }
        report.row(
            Path::Viking.name(),
            &format!("connect mean, {scale} / 1 service (interleaved)"),
            vs_one,
            "×",
            None,
        );
        println!(
            "    {scale:>14}: {:<13} mean {:>6.1} µs  p50 {:>6.1} µs  p99 {:>6.1} µs  max {:>8.1} µs",
            "viking @1 svc", b.mean_us, b.p50_us, b.p99_us, b.max_us
        );
        println!(
            "    {scale:>14}: viking mean / viking @1 svc, median over {} rounds: {vs_one:.3}",
            per_round.len()
        );
        // The in-kernel cost, at the smallest and the largest table.
        if Some(&n) == plan.latency_scales.first() || Some(&n) == plan.latency_scales.last() {
            hook_cost(w, &scale, samples, report)?;
        }
    }
    if service_conns(&w.baseline.datapath.table, Target::Rr)? == 0 {
        bail!("the 1-service datapath counted no connection: its cgroup was not used");
    }
    // Back to the one measured service for the connection-rate runs.
    let t = Instant::now();
    for i in 0..installed {
        let frontend = Frontend {
            addr: SocketAddr::V4(SocketAddrV4::new(filler_addr(i), 80)),
            proto: Proto::Tcp,
            netns: 0,
        };
        w.datapath.table.remove(&frontend).with_context(|| format!("removing filler-{i}"))?;
    }
    w.datapath.table.flush().context("deleting retired backend sets")?;
    if installed > 0 {
        let secs = t.elapsed().as_secs_f64();
        println!("    viking: {installed} filler services removed in {secs:.2} s");
        let metric = format!("remove {}: time", scale_name(installed));
        report.row(Path::Viking.name(), &metric, secs, "s", None);
    }
    if let Some((n, ratio, per_round)) = vs_one_service.pop() {
        report.goal(
            &format!(
                "viking connect mean, {} / 1 service (interleaved, second datapath)",
                scale_name(n)
            ),
            ratio,
            "<= 1.10",
            ratio > 0.0 && ratio <= 1.10,
            per_round,
        );
    }
    if without_backend > 0 {
        report.notes.push(format!(
            "{without_backend} of the filler services were installed without a backend: the \
             datapath ran out of backend ids (its backend id space is smaller than its service \
             id space)"
        ));
    }
    Ok(())
}

/// Time spent in the datapath's programs per connection, direct (connect4 finds no service)
/// and through viking (a hit: backend chosen, address rewritten, socket tracked), from the
/// kernel's per-program counters. Programs that only return run beside them on the same
/// hooks (`Datapath::floor`): what a run costs here before any work.
fn hook_cost(
    w: &mut World,
    label: &str,
    samples: usize,
    report: &mut Report,
) -> anyhow::Result<()> {
    let bpffs = w.bpf.path.clone();
    let revnat = hooks::revnat_entries(&bpffs)?;
    let floor = w.datapath.floor(&w.cgroup.path).context("attaching the no-op programs")?;
    let _on = hooks::StatsOn::new()?;
    let read = || -> anyhow::Result<(Vec<hooks::Counters>, hooks::Counters)> {
        let floor = floor
            .ids
            .iter()
            .try_fold(hooks::Counters::default(), |a, id| anyhow::Ok(a + hooks::by_id(*id)?))?;
        Ok((hooks::read_all(&bpffs)?, floor))
    };
    let before = read()?;
    w.latency(Path::Direct, samples)?;
    let mid = read()?;
    w.latency(Path::Viking, samples)?;
    let after = read()?;
    drop(floor);
    let metric = format!("in-kernel hook time per connect, {label}");
    let floor_metric = format!("in-kernel hook floor per connect, {label}");
    let mut direct_ns = None;
    for (path, from, to) in [(Path::Direct, &before, &mid), (Path::Viking, &mid, &after)] {
        let runs: Vec<_> = to.0.iter().zip(&from.0).map(|(t, f)| *t - *f).collect();
        let c4 = runs[0];
        let connects = c4.runs.max(1);
        let per = |x: u64| x as f64 / connects as f64;
        let others = runs[1..].iter().fold(hooks::Counters::default(), |a, c| a + *c);
        let floor = to.1 - from.1;
        let detail = report::HookDetail {
            when: label.to_owned(),
            revnat_entries: revnat,
            path: path.name().into(),
            connects: c4.runs,
            connect4_ns: per(c4.run_ns),
            socket_ns: per(others.run_ns),
            socket_calls: per(others.runs),
            floor_ns: Some(per(floor.run_ns)),
        };
        let total = detail.connect4_ns + detail.socket_ns;
        let each: Vec<_> = hooks::PROGRAMS
            .iter()
            .zip(&runs)
            .map(|(name, c)| format!("{name} {:.0} ns/{:.2} runs", per(c.run_ns), per(c.runs)))
            .collect();
        println!(
            "    {label}: {:<13} {total:.0} ns per connect: {} (REVNAT: {revnat} entries); \
             no-op floor {:.0} ns/{:.2} runs",
            path.name(),
            each.join(", "),
            per(floor.run_ns),
            per(floor.runs),
        );
        report.row(path.name(), &metric, total, "ns", direct_ns);
        report.row(path.name(), &floor_metric, per(floor.run_ns), "ns", None);
        direct_ns.get_or_insert(total);
        report.hooks.push(detail);
    }
    Ok(())
}

fn programming(w: &World, plan: &Plan, report: &mut Report) -> anyhow::Result<()> {
    let (n, per) = (plan.program_services, plan.program_backends);
    let label =
        format!("program {} services × {per} backends", scale_name(n).replace(" services", ""));
    let specs: Vec<_> = (0..n)
        .map(|i| {
            let backends: Vec<_> = (0..per).map(|e| program_backend(i, e)).collect();
            spec(&format!("svc-{i}"), SocketAddrV4::new(filler_addr(i), 80), &backends)
        })
        .collect();
    {
        // A fresh datapath of its own: an empty table, as a new node's agent would see.
        let cgroup = Cgroup::new();
        let bpf = BpfDir::new();
        let mut dp = Datapath::start(&DatapathConfig {
            cgroup: cgroup.path.clone(),
            bpffs: bpf.path.clone(),
        })
        .context("starting a second datapath")?;
        let t = Instant::now();
        for s in &specs {
            dp.table.upsert(s).with_context(|| format!("installing {}", s.name))?;
        }
        let secs = t.elapsed().as_secs_f64();
        let listed = dp.table.list().context("listing")?;
        if listed.len() != n || listed.iter().any(|s| s.backends.len() != per) {
            bail!("programmed {n} services, read back {}", listed.len());
        }
        println!(
            "    viking: {n} services × {per} backends in {secs:.3} s ({:.0}/s)",
            n as f64 / secs
        );
        report.row(Path::Viking.name(), &format!("{label}: time"), secs, "s", None);
        report.row(
            Path::Viking.name(),
            &format!("{label}: rate"),
            n as f64 / secs,
            "services/s",
            None,
        );
        // NB: drops in reverse order: the datapath, the pins, the cgroup.
        drop(dp);
    }
    let restore = w.nat_restore(kube_proxy_rules(n, per))?;
    w.nat_flush()?;
    let secs = restore.as_secs_f64();
    println!(
        "    iptables-restore (kube-proxy layout): {n} services × {per} endpoints in {secs:.3} s"
    );
    report.row(Path::Iptables.name(), &format!("{label}: time"), secs, "s", None);
    report.row(
        Path::Iptables.name(),
        &format!("{label}: rate"),
        n as f64 / secs,
        "services/s",
        None,
    );
    Ok(())
}

fn goals(plan: &Plan, report: &mut Report) {
    let ratio = |r: &Report, metric: &str| {
        r.rows
            .iter()
            .find(|row| row.path == Path::Viking.name() && row.metric == metric)
            .and_then(|row| row.ratio_to_direct)
            .unwrap_or(0.0)
    };
    // NB: the latency goal was recorded by `latency`; these go before it.
    let latency_goals = std::mem::take(&mut report.goals);
    for (metric, target) in [
        ("throughput, 1 stream", 0.95),
        ("throughput, 4 streams", 0.95),
        ("new connections/s", 0.97),
    ] {
        let x = ratio(report, metric);
        let per_run = report.per_run_ratios(metric, Path::Viking.name());
        report.goal(
            &format!("viking {metric} / direct"),
            x,
            &format!(">= {target:.2}"),
            x >= target,
            per_run,
        );
    }
    // The hooks' own cost per connect at 1 service (BPF_ENABLE_STATS, same run).
    let metric = format!("in-kernel hook time per connect, {}", scale_name(1));
    for (path, max) in [(Path::Direct, 150.0), (Path::Viking, 900.0)] {
        if let Some(ns) = report.value(path.name(), &metric) {
            report.goal(
                &format!("{metric}, {} (ns)", path.name()),
                ns,
                &format!("<= {max:.0}"),
                ns <= max,
                Vec::new(),
            );
        }
    }
    report.goals.extend(latency_goals);
    if let (Some(&first), Some(&last)) = (plan.latency_scales.first(), plan.latency_scales.last()) {
        let at = |r: &Report, path: Path, n: usize| {
            r.value(path.name(), &format!("connect mean, {}", scale_name(n))).unwrap_or(0.0)
        };
        for path in [Path::Direct, Path::Viking, Path::Iptables] {
            let (a, b) = (at(report, path, first), at(report, path, last));
            if a > 0.0 {
                report.notes.push(format!(
                    "{} connect mean, {} / {} (measured minutes apart): {:.3}",
                    path.name(),
                    scale_name(last),
                    scale_name(first),
                    b / a
                ));
            }
        }
    }
}
