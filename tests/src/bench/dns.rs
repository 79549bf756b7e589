//! `vk-bench dns`: Viking's DNS responder (agent/src/names/) against dnsmasq serving the same
//! names from a hosts file, in one run, in a network namespace of the benchmark's own (both on
//! its loopback: 127.0.0.53 Viking, 127.0.0.54 dnsmasq). The zone: 1,000 jobs in 10 stacks,
//! each `<job>.<stack>.viking` with a VIP. Clients: closed-loop UDP queries (one outstanding
//! per socket, several sockets over threads) for random names of the zone, the two servers
//! interleaved round by round; queries/s and the latency of each query (p50, p99).
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;
use tokio::sync::watch;
use viking::names::{server, zone::JobNames, Zone};

use super::{
    report::{self, Machine},
    Options,
};
use crate::{
    etcd::TempDir,
    guards::{ChildGuard, NetNs},
};

const VIKING: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 53);
const DNSMASQ: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 54);
const STACKS: usize = 10;
const JOBS_PER_STACK: usize = 100;

/// One server's results over every round.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ServerResult {
    /// Median over rounds.
    pub queries_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// Queries without a good answer (timeouts, wrong id, no record).
    pub failed: u64,
    pub rounds: Vec<Round>,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Round {
    pub queries: u64,
    pub queries_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub failed: u64,
}

#[derive(Debug, Serialize)]
pub struct DnsReport {
    pub benchmark: String,
    pub date: String,
    pub machine: Machine,
    pub quick: bool,
    pub load_before: String,
    pub load_after: String,
    pub names: usize,
    pub clients: usize,
    pub secs_per_round: f64,
    pub viking: ServerResult,
    pub dnsmasq: ServerResult,
    /// viking / dnsmasq queries per second.
    pub ratio: f64,
    pub goal_met: bool,
}

fn names() -> Vec<(String, String, Ipv4Addr)> {
    let mut out = Vec::new();
    for s in 0..STACKS {
        for j in 0..JOBS_PER_STACK {
            let n = s * JOBS_PER_STACK + j + 1;
            let ip = Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8);
            out.push((format!("s{s}"), format!("job{j}"), ip));
        }
    }
    out
}

/// A DNS query for `name` (type A, class IN, recursion desired) with `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Whether `reply` answers query `id` with NOERROR and at least one answer record.
fn good(reply: &[u8], id: u16) -> bool {
    reply.len() >= 12
        && u16::from_be_bytes([reply[0], reply[1]]) == id
        && reply[2] & 0x80 != 0
        && reply[3] & 0x0f == 0
        && u16::from_be_bytes([reply[6], reply[7]]) >= 1
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[i.clamp(1, sorted.len()) - 1]) / 1000.0
}

/// `clients` threads in the namespace, each querying `server` for `secs`, one query at a time.
fn load(ns: &NetNs, server: Ipv4Addr, names: Arc<Vec<String>>, clients: usize, secs: f64) -> Round {
    let per: Vec<(u64, Vec<u32>)> = ns.enter(move || {
        let threads: Vec<_> = (0..clients)
            .map(|c| {
                let names = names.clone();
                std::thread::spawn(move || -> (u64, Vec<u32>) {
                    let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else {
                        return (1, Vec::new());
                    };
                    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
                    if sock.connect(SocketAddr::from((server, 53))).is_err() {
                        return (1, Vec::new());
                    }
                    let mut seed = 0x9e37_79b9_u64.wrapping_mul(c as u64 + 1) | 1;
                    let (mut failed, mut lat) = (0u64, Vec::new());
                    let mut buf = [0u8; 1500];
                    let end = Instant::now() + Duration::from_secs_f64(secs);
                    let mut id: u16 = (c as u16).wrapping_mul(7919);
                    while Instant::now() < end {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        let name = &names[(seed % names.len() as u64) as usize];
                        id = id.wrapping_add(1);
                        let t = Instant::now();
                        let ok = sock.send(&query(id, name)).is_ok()
                            && sock.recv(&mut buf).is_ok_and(|n| good(&buf[..n], id));
                        if ok {
                            lat.push(u32::try_from(t.elapsed().as_nanos()).unwrap_or(u32::MAX));
                        } else {
                            failed += 1;
                        }
                    }
                    (failed, lat)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap_or((1, Vec::new()))).collect()
    });
    let failed = per.iter().map(|(f, _)| f).sum();
    let mut lat: Vec<u32> = per.into_iter().flat_map(|(_, l)| l).collect();
    lat.sort_unstable();
    Round {
        queries: lat.len() as u64,
        queries_per_sec: lat.len() as f64 / secs,
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        failed,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn summarize(rounds: Vec<Round>) -> ServerResult {
    ServerResult {
        queries_per_sec: median(rounds.iter().map(|r| r.queries_per_sec).collect()),
        p50_us: median(rounds.iter().map(|r| r.p50_us).collect()),
        p99_us: median(rounds.iter().map(|r| r.p99_us).collect()),
        failed: rounds.iter().map(|r| r.failed).sum(),
        rounds,
    }
}

/// Waits until `server` answers a query for `name` from inside the namespace.
fn wait_answering(ns: &NetNs, server: Ipv4Addr, name: String) -> anyhow::Result<()> {
    let asked = name.clone();
    let ok = ns.enter(move || {
        let Ok(sock) = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)) else { return false };
        let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
        let mut buf = [0u8; 1500];
        for id in 1..50u16 {
            let _ = sock.send_to(&query(id, &asked), (server, 53));
            if sock.recv(&mut buf).is_ok_and(|n| good(&buf[..n], id)) {
                return true;
            }
        }
        false
    });
    if !ok {
        bail!("{server}:53 did not answer {name:?} within 10 s");
    }
    Ok(())
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let rt = super::prepare("dns", "a network namespace of its own", 1)?;
    let which = Command::new("dnsmasq").arg("--version").output();
    if !which.is_ok_and(|o| o.status.success()) {
        bail!("dnsmasq is not installed (cargo xtask setup installs dnsmasq-base)");
    }
    let (rounds, secs, clients) = if opts.quick { (3, 1.0, 2) } else { (5, 3.0, 4) };
    let load_before = report::loadavg();
    let ns = NetNs::new("vkdns");
    ns.ip(&["addr", "add", &format!("{VIKING}/8"), "dev", "lo"]);
    ns.ip(&["addr", "add", &format!("{DNSMASQ}/8"), "dev", "lo"]);

    // The same names for both: Viking's zone, and dnsmasq's hosts file.
    let all = names();
    let mut zone = Zone::new("viking").map_err(anyhow::Error::msg)?;
    let dir = TempDir::new("vk-bench-dns");
    let mut hosts = String::new();
    for (stack, job, ip) in &all {
        zone.jobs.insert(
            (stack.clone(), job.clone()),
            JobNames { vip: Some(*ip), ..JobNames::default() },
        );
        hosts.push_str(&format!("{ip} {job}.{stack}.viking\n"));
    }
    let hosts_file = dir.path.join("hosts");
    std::fs::write(&hosts_file, hosts).context("writing dnsmasq's hosts file")?;
    let qnames: Arc<Vec<String>> =
        Arc::new(all.iter().map(|(s, j, _)| format!("{j}.{s}.viking")).collect());

    let mut dnsmasq = Command::new("ip");
    dnsmasq
        .args(["netns", "exec", &ns.name, "dnsmasq", "--keep-in-foreground", "--no-resolv"])
        .args(["--no-hosts", "--bind-interfaces", "--port=53", "--user=root"])
        .args(["--cache-size=10000", "--log-facility=-", "--pid-file="])
        .arg(format!("--listen-address={DNSMASQ}"))
        .arg(format!("--addn-hosts={}", hosts_file.display()));
    let _dnsmasq = ChildGuard::spawn(dnsmasq);

    let (stop_tx, stop) = watch::channel(false);
    let (_zone_tx, zone_rx) = watch::channel(Arc::new(zone));
    let listen = SocketAddr::from((VIKING, 53));
    let path = ns.path();
    let responder = rt.block_on(async {
        let (sock, up) = server::bind(listen, Some(&path)).await?;
        anyhow::Ok(tokio::spawn(server::serve(sock, up, Vec::new(), zone_rx, stop)))
    })?;

    let probe = qnames[0].clone();
    wait_answering(&ns, VIKING, probe.clone())?;
    wait_answering(&ns, DNSMASQ, probe)?;
    println!(
        "{} names, {clients} clients, {rounds} rounds of {secs} s per server (interleaved)",
        all.len()
    );
    let (mut v, mut d) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let rv = load(&ns, VIKING, qnames.clone(), clients, secs);
        let rd = load(&ns, DNSMASQ, qnames.clone(), clients, secs);
        println!(
            "round {r}: viking {:.0} q/s p50 {:.1} µs p99 {:.1} µs | dnsmasq {:.0} q/s p50 {:.1} µs p99 {:.1} µs",
            rv.queries_per_sec, rv.p50_us, rv.p99_us, rd.queries_per_sec, rd.p50_us, rd.p99_us
        );
        v.push(rv);
        d.push(rd);
    }
    let _ = stop_tx.send(true);
    let _ = rt.block_on(responder);
    let (viking, dnsmasq) = (summarize(v), summarize(d));
    let ratio = if dnsmasq.queries_per_sec > 0.0 {
        viking.queries_per_sec / dnsmasq.queries_per_sec
    } else {
        0.0
    };
    let report = DnsReport {
        benchmark: "dns".into(),
        date: report::now_utc(),
        machine: Machine::read(),
        quick: opts.quick,
        load_before,
        load_after: report::loadavg(),
        names: all.len(),
        clients,
        secs_per_round: secs,
        goal_met: ratio >= 1.0 && viking.p99_us < 1000.0 && viking.failed == 0,
        viking,
        dnsmasq,
        ratio,
    };
    println!("\n| server | queries/s | p50 | p99 | failed |\n| --- | ---: | ---: | ---: | ---: |");
    for (name, r) in [("viking", &report.viking), ("dnsmasq", &report.dnsmasq)] {
        println!(
            "| {name} | {:.0} | {:.1} µs | {:.1} µs | {} |",
            r.queries_per_sec, r.p50_us, r.p99_us, r.failed
        );
    }
    println!(
        "\nviking / dnsmasq queries/s: {:.3}; goal (>= dnsmasq's queries/s, p99 < 1 ms, no failure): {}",
        report.ratio,
        if report.goal_met { "met" } else { "not met" }
    );
    println!("load average before {}, after {}", report.load_before, report.load_after);
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_well_formed_and_a_reply_is_checked() {
        let q = query(0x1234, "job1.s0.viking");
        assert_eq!(&q[..2], &[0x12, 0x34]);
        assert_eq!(q.len(), 12 + 1 + 4 + 1 + 2 + 1 + 6 + 1 + 4);
        let mut reply = q.clone();
        reply[2] |= 0x80;
        assert!(!good(&reply, 0x1234), "no answer record");
        reply[7] = 1;
        assert!(good(&reply, 0x1234));
        assert!(!good(&reply, 0x1235), "another id");
        reply[3] = 3;
        assert!(!good(&reply, 0x1234), "NXDOMAIN");
        assert_eq!(percentile(&[1000, 2000, 3000, 4000], 50.0), 2.0);
        assert_eq!(percentile(&[1000, 2000, 3000, 4000], 99.0), 4.0);
    }
}
