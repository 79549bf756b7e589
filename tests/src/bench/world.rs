//! The benchmark's world: a client namespace (its processes in the cgroup where the datapath
//! is attached) joined by veth to a server namespace; iperf3 and the request/reply server in
//! the server namespace; HAProxy and the iptables rules in the client namespace. Everything is
//! removed on Drop (the namespaces take their rules, routes and sysctls with them).
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use viking::datapath::{Algo, Datapath, DatapathConfig, Frontend, Proto, ServiceSpec};

use super::{client::CpsResult, server::RrServer};
use crate::{
    guards::{veth, BpfDir, Cgroup, ChildGuard, NetNs},
    unique,
};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
/// The iptables path's virtual IP (a ClusterIP), routed via the server.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const VIP_ROUTE: &str = "10.96.0.0/12";
pub const IPERF_PORT: u16 = 5201;
pub const RR_PORT: u16 = 8080;
pub const VIKING_IPERF_PORT: u16 = 7201;
pub const VIKING_RR_PORT: u16 = 7080;
pub const HAPROXY_IPERF_PORT: u16 = 8201;
pub const HAPROXY_RR_PORT: u16 = 8081;
/// Frontends of the services (and rules) installed only to fill the table: 10.112.0.0/12,
/// which nothing ever connects to.
pub const FILLER_BASE: Ipv4Addr = Ipv4Addr::new(10, 112, 0, 0);

/// The four ways the client reaches the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Direct,
    Viking,
    Iptables,
    Haproxy,
}

pub const PATHS: [Path; 4] = [Path::Direct, Path::Viking, Path::Iptables, Path::Haproxy];

/// What a path leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Iperf,
    Rr,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Viking => "viking",
            Self::Iptables => "iptables DNAT",
            Self::Haproxy => "haproxy",
        }
    }

    /// The address the client connects to.
    pub fn addr(self, target: Target) -> SocketAddrV4 {
        let (direct, viking, haproxy) = match target {
            Target::Iperf => (IPERF_PORT, VIKING_IPERF_PORT, HAPROXY_IPERF_PORT),
            Target::Rr => (RR_PORT, VIKING_RR_PORT, HAPROXY_RR_PORT),
        };
        match self {
            Self::Direct => SocketAddrV4::new(SERVER_IP, direct),
            Self::Viking => SocketAddrV4::new(Ipv4Addr::LOCALHOST, viking),
            Self::Iptables => SocketAddrV4::new(VIP, direct),
            Self::Haproxy => SocketAddrV4::new(Ipv4Addr::LOCALHOST, haproxy),
        }
    }
}

/// The backend address for a target.
pub fn backend(target: Target) -> SocketAddrV4 {
    Path::Direct.addr(target)
}

/// The i-th filler frontend address (i from 0).
pub fn filler_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FILLER_BASE) + 1 + i as u32)
}

/// A service spec with a TCP frontend.
pub fn spec(name: &str, frontend: SocketAddrV4, backends: &[SocketAddrV4]) -> ServiceSpec {
    ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
        name: name.to_owned(),
        frontend: Frontend { addr: SocketAddr::V4(frontend), proto: Proto::Tcp, netns: 0 },
        algo: Algo::Random,
        backends: backends.iter().map(|b| SocketAddr::V4(*b)).collect(),
    }
}

/// The nat table of the iptables path: one DNAT rule per service in a chain jumped to from
/// OUTPUT, as kube-proxy's KUBE-SERVICES (one rule per service, matched in order). The
/// `filler` rules come first and the measured services last (kube-proxy's worst case).
pub fn dnat_rules(measured: &[(SocketAddrV4, SocketAddrV4)], filler: usize) -> String {
    let mut s = String::with_capacity(120 * (filler + measured.len()) + 200);
    s.push_str("*nat\n:OUTPUT ACCEPT [0:0]\n:VK-SERVICES - [0:0]\n-A OUTPUT -j VK-SERVICES\n");
    let rule = |s: &mut String, vip: SocketAddrV4, to: SocketAddrV4| {
        s.push_str(&format!(
            "-A VK-SERVICES -d {}/32 -p tcp -m tcp --dport {} -j DNAT --to-destination {}\n",
            vip.ip(),
            vip.port(),
            to
        ));
    };
    for i in 0..filler {
        rule(&mut s, SocketAddrV4::new(filler_addr(i), 80), filler_backend(i));
    }
    for &(vip, to) in measured {
        rule(&mut s, vip, to);
    }
    s.push_str("COMMIT\n");
    s
}

/// The backend of the i-th filler service (the server address, a port nobody listens on).
pub fn filler_backend(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(SERVER_IP, 9000 + (i % 1000) as u16)
}

/// What kube-proxy's iptables mode programs for `services` ClusterIP services of `endpoints`
/// endpoints each: a KUBE-SERVICES rule per service, a service chain choosing an endpoint by
/// `statistic` probabilities, and an endpoint chain per endpoint doing the DNAT.
pub fn kube_proxy_rules(services: usize, endpoints: usize) -> String {
    let mut chains = String::from(":OUTPUT ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n");
    let mut rules = String::from("-A OUTPUT -j KUBE-SERVICES\n");
    for i in 0..services {
        let vip = filler_addr(i);
        chains.push_str(&format!(":KUBE-SVC-{i} - [0:0]\n"));
        rules.push_str(&format!(
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"svc-{i}\" -m tcp \
             --dport 80 -j KUBE-SVC-{i}\n"
        ));
        for e in 0..endpoints {
            chains.push_str(&format!(":KUBE-SEP-{i}-{e} - [0:0]\n"));
            let left = endpoints - e;
            if left > 1 {
                rules.push_str(&format!(
                    "-A KUBE-SVC-{i} -m statistic --mode random --probability {:.11} \
                     -j KUBE-SEP-{i}-{e}\n",
                    1.0 / left as f64
                ));
            } else {
                rules.push_str(&format!("-A KUBE-SVC-{i} -j KUBE-SEP-{i}-{e}\n"));
            }
            rules.push_str(&format!(
                "-A KUBE-SEP-{i}-{e} -p tcp -m tcp -j DNAT --to-destination {}\n",
                program_backend(i, e)
            ));
        }
    }
    format!("*nat\n{chains}{rules}COMMIT\n")
}

/// Backend `e` of the i-th service of the programming benchmark.
pub fn program_backend(i: usize, e: usize) -> SocketAddrV4 {
    let n = (i * 4 + e) as u32;
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 202, 0, 0)) + n / 16);
    SocketAddrV4::new(ip, 8000 + (n % 16) as u16)
}

/// Runs a command to completion, killing it (by its PID) if it outlives `timeout`.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> anyhow::Result<Output> {
    run_timeout_input(cmd, None, timeout)
}

/// As `run_timeout`, writing `input` to the command's stdin first.
pub fn run_timeout_input(
    cmd: &mut Command,
    input: Option<String>,
    timeout: Duration,
) -> anyhow::Result<Output> {
    let shown = format!("{:?}", cmd.get_program());
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().with_context(|| format!("starting {shown}"))?);
    let writer = match (input, child.0.stdin.take()) {
        (Some(text), Some(mut stdin)) => {
            Some(std::thread::spawn(move || stdin.write_all(text.as_bytes())))
        }
        _ => None,
    };
    let mut readers = Vec::new();
    for pipe in [child.0.stdout.take().map(Pipe::Out), child.0.stderr.take().map(Pipe::Err)] {
        readers.push(pipe.map(|p| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let _ = match p {
                    Pipe::Out(mut o) => o.read_to_end(&mut buf),
                    Pipe::Err(mut e) => e.read_to_end(&mut buf),
                };
                buf
            })
        }));
    }
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.0.try_wait().context("waiting for a child")? {
            break status;
        }
        if Instant::now() > deadline {
            // Dropping the guard kills and reaps the child.
            bail!("{shown} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    let mut outs = readers.into_iter().map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    let stdout = outs.next().unwrap_or_default();
    let stderr = outs.next().unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

enum Pipe {
    Out(std::process::ChildStdout),
    Err(std::process::ChildStderr),
}

/// Fails with the command's stderr unless it exited 0.
pub fn check(what: &str, out: Output) -> anyhow::Result<Output> {
    if !out.status.success() {
        bail!("{what}: {}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// A file removed on drop.
pub struct TempFile(pub PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Sizes of the world's pieces.
pub struct WorldConfig {
    pub server_workers: usize,
    pub haproxy_threads: usize,
}

/// A datapath attached to a cgroup of its own, with its own pins.
pub struct Attached {
    // NB: drops in this order: the handles, the pins (detaching the programs), the cgroup.
    pub datapath: Datapath,
    pub bpf: BpfDir,
    pub cgroup: Cgroup,
}

impl Attached {
    pub fn start(services: &[ServiceSpec]) -> anyhow::Result<Self> {
        let cgroup = Cgroup::new();
        let bpf = BpfDir::new();
        let mut datapath = Datapath::start(&DatapathConfig {
            cgroup: cgroup.path.clone(),
            bpffs: bpf.path.clone(),
        })
        .context("starting a datapath")?;
        for spec in services {
            datapath
                .table
                .upsert(spec)
                .with_context(|| format!("installing service {}", spec.name))?;
        }
        Ok(Self { datapath, bpf, cgroup })
    }
}

pub struct World {
    // NB: fields drop in declaration order: proxies and servers first, then the datapath's
    // handles, the pins (which detaches the programs), the cgroup, the namespaces.
    _haproxy: ChildGuard,
    _iperf: ChildGuard,
    _rr: RrServer,
    /// A second datapath on a cgroup of its own that only ever holds the measured service:
    /// the 1-service reference the connect latency at N services is interleaved with.
    pub baseline: Attached,
    pub datapath: Datapath,
    _haproxy_cfg: TempFile,
    haproxy_log: TempFile,
    pub bpf: BpfDir,
    pub cgroup: Cgroup,
    pub server: NetNs,
    pub client: NetNs,
}

impl World {
    pub fn new(cfg: &WorldConfig) -> anyhow::Result<Self> {
        let client = NetNs::new("vkbc");
        let server = NetNs::new("vkbs");
        veth(&client, &[&format!("{CLIENT_IP}/24")], &server, &[&format!("{SERVER_IP}/24")]);
        client.ip(&["route", "add", VIP_ROUTE, "via", &SERVER_IP.to_string()]);
        // Every path opens tens of thousands of connections to one server address; the
        // client closes first and keeps TIME_WAIT. Same for every path: reuse TIME_WAIT ports
        // (after 1 s) and use a wide ephemeral range. Both sysctls are per namespace.
        for (key, value) in
            [("net.ipv4.tcp_tw_reuse", "1"), ("net.ipv4.ip_local_port_range", "1024 65000")]
        {
            let out = run_timeout(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &client.name,
                    "sysctl",
                    "-q",
                    "-w",
                    &format!("{key}={value}"),
                ]),
                Duration::from_secs(10),
            )?;
            check(&format!("sysctl {key}"), out)?;
        }

        let cgroup = Cgroup::new();
        let bpf = BpfDir::new();
        let mut datapath = Datapath::start(&DatapathConfig {
            cgroup: cgroup.path.clone(),
            bpffs: bpf.path.clone(),
        })
        .context("starting the datapath")?;
        for target in [Target::Iperf, Target::Rr] {
            let name = match target {
                Target::Iperf => "bench-iperf",
                Target::Rr => "bench-rr",
            };
            datapath
                .table
                .upsert(&spec(name, Path::Viking.addr(target), &[backend(target)]))
                .with_context(|| format!("installing service {name}"))?;
        }

        let baseline = Attached::start(&[spec(
            "bench-rr",
            Path::Viking.addr(Target::Rr),
            &[backend(Target::Rr)],
        )])?;

        let rr = RrServer::start(&server, SocketAddr::V4(backend(Target::Rr)), cfg.server_workers)?;
        let mut iperf = server.command("iperf3", None);
        iperf
            .args(["-s", "-B", &SERVER_IP.to_string(), "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let iperf = ChildGuard(iperf.spawn().context("starting iperf3 -s (is iperf3 installed?)")?);

        let cfg_path = std::env::temp_dir().join(format!("{}.haproxy.cfg", unique("vk-bench-")));
        std::fs::write(&cfg_path, haproxy_config(cfg.haproxy_threads))
            .with_context(|| format!("writing {}", cfg_path.display()))?;
        let haproxy_cfg = TempFile(cfg_path);
        let haproxy_log = TempFile(haproxy_cfg.0.with_extension("log"));
        let out = run_timeout(
            Command::new("haproxy").arg("-c").arg("-q").arg("-f").arg(&haproxy_cfg.0),
            Duration::from_secs(30),
        )
        .context("haproxy -c (is haproxy installed?)")?;
        check("haproxy -c (the generated configuration)", out)?;
        // HAProxy runs in the client namespace but not in the datapath's cgroup: it is the
        // alternative, not a client.
        let mut haproxy = client.command("haproxy", None);
        haproxy
            .arg("-db")
            .arg("-f")
            .arg(&haproxy_cfg.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&haproxy_log.0).context("creating the haproxy log")?);
        let haproxy = ChildGuard(haproxy.spawn().context("starting haproxy")?);

        let world = Self {
            _haproxy: haproxy,
            _iperf: iperf,
            _rr: rr,
            baseline,
            datapath,
            _haproxy_cfg: haproxy_cfg,
            haproxy_log,
            bpf,
            cgroup,
            server,
            client,
        };
        world.wait_listening(&world.server, IPERF_PORT)?;
        for port in [HAPROXY_IPERF_PORT, HAPROXY_RR_PORT] {
            world.wait_listening(&world.client, port).with_context(|| {
                let log = std::fs::read_to_string(&world.haproxy_log.0).unwrap_or_default();
                format!("haproxy: {}", log.trim())
            })?;
        }
        Ok(world)
    }

    /// Waits until a TCP listener on `port` shows up in `ns`.
    fn wait_listening(&self, ns: &NetNs, port: u16) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = run_timeout(
                Command::new("ip").args([
                    "netns",
                    "exec",
                    &ns.name,
                    "ss",
                    "-Hltn",
                    &format!("sport = :{port}"),
                ]),
                Duration::from_secs(10),
            )?;
            if out.status.success() && !out.stdout.trim_ascii().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nothing listens on port {port} in {} after 10 s", ns.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A command run inside the client namespace and the datapath's cgroup.
    pub fn client_cmd(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.client.command(program, Some(&self.cgroup))
    }

    /// Replaces the client namespace's nat table; returns how long iptables-restore took.
    pub fn nat_restore(&self, rules: String) -> anyhow::Result<Duration> {
        super::interrupted()?;
        let t = Instant::now();
        let out = run_timeout_input(
            &mut self.client.command("iptables-restore", None),
            Some(rules),
            Duration::from_secs(300),
        )?;
        check("iptables-restore in the client namespace", out)?;
        Ok(t.elapsed())
    }

    /// Empties the client namespace's nat table. With iptables-nft this also unhooks
    /// conntrack, so the other paths are measured without it.
    pub fn nat_flush(&self) -> anyhow::Result<()> {
        for args in [["-t", "nat", "-F"], ["-t", "nat", "-X"]] {
            let out = run_timeout(
                self.client.command("iptables", None).args(args),
                Duration::from_secs(120),
            )?;
            check("iptables flush in the client namespace", out)?;
        }
        Ok(())
    }

    /// The nat table the throughput and connection-rate runs use: the two VIPs.
    pub fn nat_paths_rules() -> String {
        let measured: Vec<_> = [Target::Iperf, Target::Rr]
            .into_iter()
            .map(|t| (Path::Iptables.addr(t), backend(t)))
            .collect();
        dnat_rules(&measured, 0)
    }

    /// Runs iperf3 from the client namespace and cgroup; returns received bits per second.
    pub fn iperf(&self, path: Path, streams: usize, secs: u32) -> anyhow::Result<f64> {
        super::interrupted()?;
        let addr = path.addr(Target::Iperf);
        let mut cmd = self.client_cmd("iperf3");
        cmd.args(["-c", &addr.ip().to_string(), "-p", &addr.port().to_string()]).args([
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
            bail!("iperf3 via {} ({addr}): {e}", path.name());
        }
        v.pointer("/end/sum_received/bits_per_second")
            .and_then(serde_json::Value::as_f64)
            .with_context(|| format!("iperf3 via {}: no end.sum_received", path.name()))
    }

    /// Runs `vk-bench cps` in the client namespace and cgroup.
    pub fn cps(&self, path: Path, secs: f64, threads: usize) -> anyhow::Result<CpsResult> {
        super::interrupted()?;
        let mut cmd = self.client_cmd(self_exe()?);
        cmd.args([
            "cps".to_owned(),
            path.addr(Target::Rr).to_string(),
            secs.to_string(),
            threads.to_string(),
        ]);
        let out = run_timeout(&mut cmd, Duration::from_secs_f64(secs + 60.0))?;
        let out = check("vk-bench cps", out)?;
        serde_json::from_slice(&out.stdout).context("vk-bench cps output")
    }

    /// Runs `vk-bench latency` in the client namespace and cgroup; returns the samples (ns).
    pub fn latency(&self, path: Path, samples: usize) -> anyhow::Result<Vec<u64>> {
        self.latency_in(path, samples, &self.cgroup)
    }

    /// As `latency`, with the client in `cgroup` (that of `baseline`, say).
    pub fn latency_in(
        &self,
        path: Path,
        samples: usize,
        cgroup: &Cgroup,
    ) -> anyhow::Result<Vec<u64>> {
        super::interrupted()?;
        let mut cmd = self.client.command(self_exe()?, Some(cgroup));
        cmd.args(["latency".to_owned(), path.addr(Target::Rr).to_string(), samples.to_string()]);
        let out = run_timeout(&mut cmd, Duration::from_secs(300))?;
        let out = check("vk-bench latency", out)?;
        let r: super::client::LatencyResult =
            serde_json::from_slice(&out.stdout).context("vk-bench latency output")?;
        if r.errors > 0 {
            bail!(
                "connect latency via {}: {} failed connects ({})",
                path.name(),
                r.errors,
                r.first_error.unwrap_or_default()
            );
        }
        Ok(r.samples_ns)
    }
}

fn self_exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the vk-bench binary")
}

fn haproxy_config(threads: usize) -> String {
    let mut s = format!(
        "global\n    maxconn 8000\n    nbthread {threads}\n\ndefaults\n    mode tcp\n    \
         timeout connect 5s\n    timeout client 120s\n    timeout server 120s\n"
    );
    for (name, listen, to) in [
        ("iperf", Path::Haproxy.addr(Target::Iperf), backend(Target::Iperf)),
        ("rr", Path::Haproxy.addr(Target::Rr), backend(Target::Rr)),
    ] {
        s.push_str(&format!(
            "\nfrontend {name}\n    bind {listen}\n    default_backend {name}\n\n\
             backend {name}\n    server s1 {to}\n"
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnat_rules_put_measured_last() {
        let r = dnat_rules(&[(SocketAddrV4::new(VIP, 80), SocketAddrV4::new(SERVER_IP, 8080))], 2);
        let rules: Vec<&str> = r.lines().filter(|l| l.starts_with("-A VK-SERVICES")).collect();
        assert_eq!(rules.len(), 3);
        assert!(rules[0].contains("-d 10.112.0.1/32"));
        assert!(rules[2].contains("-d 10.96.0.10/32 -p tcp -m tcp --dport 80"));
        assert!(rules[2].ends_with("--to-destination 10.201.0.2:8080"));
        assert!(r.ends_with("COMMIT\n"));
    }

    #[test]
    fn kube_proxy_layout() {
        let r = kube_proxy_rules(2, 4);
        assert_eq!(r.lines().filter(|l| l.starts_with("-A KUBE-SERVICES")).count(), 2);
        assert_eq!(r.lines().filter(|l| l.starts_with("-A KUBE-SVC-0 ")).count(), 4);
        assert_eq!(r.lines().filter(|l| l.contains("-j DNAT")).count(), 8);
        assert!(r.contains("--probability 0.25000000000 -j KUBE-SEP-0-0"));
    }

    #[test]
    fn addresses() {
        assert_eq!(filler_addr(0), Ipv4Addr::new(10, 112, 0, 1));
        assert_eq!(filler_addr(99_999), Ipv4Addr::new(10, 113, 134, 160));
        assert_eq!(Path::Viking.addr(Target::Rr).to_string(), "127.0.0.1:7080");
        assert_ne!(program_backend(0, 0), program_backend(0, 1));
    }
}
