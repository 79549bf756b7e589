//! `cargo xtask demo`: Viking at work on this one machine, with readable output.
//!
//! Three "hosts" (alpha, bravo, charlie) are network namespaces on subnets of their own, joined
//! only by a router namespace (no shared L2 segment, as between real hosts in different racks),
//! so no traffic leaves what the demo created. Instances reach each other across hosts through
//! the overlay (a VXLAN device per host); the demo prints each host's peers. One etcd holds the
//! cluster's state; each host has an agent (its own cgroup, bpffs dir, API and exec runtime
//! plumbing instances into the host's namespace). The seed 000 stacks, with real workloads
//! (examples/demo: redis-server for mongo, busybox httpd for auth and middleware, a client
//! loop for web), are deployed through the API: the leader places every instance, each agent
//! starts its own, registers them, and programs its kernel. web's log shows its requests
//! through its ambassador ports reaching instances on other hosts. Then a host fails: its
//! instances are placed elsewhere after its lease expires, and web keeps being answered.
//! Everything the demo creates is removed at the end, also when a step fails; a failed check
//! makes it exit non-zero (`cargo xtask test` runs it last).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::{setup, util::root};

const ROUTER: &str = "vkdemo-router";
const HOSTS: [(&str, &str, u16); 3] =
    [("alpha", "10.77.1.2", 7711), ("bravo", "10.77.2.2", 7712), ("charlie", "10.77.3.2", 7713)];
const ETCD_CLIENT: u16 = 23791;
const ETCD_PEER: u16 = 23792;

fn ns(host: &str) -> String {
    format!("vkdemo-{host}")
}

fn bpffs(host: &str) -> String {
    format!("/sys/fs/bpf/viking/demo-{host}")
}

/// How the demo gets its `viking` binary.
pub struct Options {
    /// Build it (release) first; else use `viking` as it is.
    pub build: bool,
    pub viking: PathBuf,
}

impl Default for Options {
    fn default() -> Self {
        Self { build: true, viking: root().join("target/release/viking") }
    }
}

struct World {
    /// By name, so a host's processes can be stopped on their own.
    children: Vec<(String, Child)>,
    cgroups: Vec<(String, PathBuf)>,
    dir: PathBuf,
    viking: PathBuf,
}

impl World {
    /// A host fails: its agent and every process it started (its cgroup) end at once.
    fn fail(&mut self, host: &str) {
        // Only processes this demo started, by PID, and the cgroup it made.
        for (_, c) in self.children.iter_mut().filter(|(n, _)| n == host) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.retain(|(n, _)| n != host);
        for (_, cg) in self.cgroups.iter().filter(|(n, _)| n == host) {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
        }
    }
}

fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        sleep(Duration::from_millis(20));
    }
}

impl Drop for World {
    fn drop(&mut self) {
        println!("\n==> cleaning up");
        for (_, c) in &mut self.children {
            // SIGTERM first: an agent started with --drain stops its instances.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (_, c) in &mut self.children {
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, cg) in &self.cgroups {
            let _ = std::fs::write(cg.join("cgroup.kill"), "1");
            remove_cgroup_tree(cg);
        }
        for (host, _, _) in HOSTS {
            let _ = Command::new(&self.viking)
                .args(["agent", "--node", host, "--bpffs", &bpffs(host), "--cleanup"])
                .output();
            let run = PathBuf::from("/run/viking").join(host);
            if let Ok(entries) = std::fs::read_dir(run.join("netns")) {
                for e in entries.flatten() {
                    let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
                }
            }
            let _ = std::fs::remove_dir_all(&run);
            let _ = Command::new("ip").args(["netns", "del", &ns(host)]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", ROUTER]).status();
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("    removed namespaces, cgroups, pins, instances, etcd data and processes");
    }
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| args.join(" "))?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
}

fn cgroup2() -> anyhow::Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        })
        .context("no cgroup v2 mount")
}

fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if ok() {
            return Ok(());
        }
        sleep(Duration::from_millis(200));
    }
    bail!("timed out waiting for {what}")
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// Rows of `viking ps --json` for one job.
fn job<'a>(ps: &'a [Value], stack: &str, name: &str) -> Vec<&'a Value> {
    ps.iter().filter(|r| r["stack"] == stack && r["job"] == name).collect()
}

/// The hosts named in web's answers from middleware (`... on <host>`).
fn answered_by(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| l.split(" on ").nth(1)?.split_whitespace().next().map(str::to_owned))
        .collect()
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.build {
        setup::run()?;
        println!("==> building viking (eBPF programs embedded)");
        crate::util::exec(Command::new("cargo").args(["build", "--release", "-p", "viking"]))?;
    }
    let viking = opts.viking.clone();
    let dir = std::env::temp_dir().join(format!("vkdemo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut w = World {
        children: Vec::new(),
        cgroups: Vec::new(),
        viking: viking.clone(),
        dir: dir.clone(),
    };

    println!("\n==> three hosts on three subnets, joined only by a router");
    sh(&["ip", "netns", "add", ROUTER])?;
    sh(&["ip", "netns", "exec", ROUTER, "sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    let cg_root = cgroup2()?;
    for (i, (host, ip, _)) in HOSTS.iter().enumerate() {
        let n = ns(host);
        sh(&["ip", "netns", "add", &n])?;
        let (a, b) = (format!("vkd{i}"), format!("vkd{i}p"));
        sh(&[
            "ip", "link", "add", &a, "netns", &n, "type", "veth", "peer", "name", &b, "netns",
            ROUTER,
        ])?;
        let gateway = ip.rsplit_once('.').map(|(net, _)| format!("{net}.1")).unwrap_or_default();
        sh(&["ip", "-n", ROUTER, "addr", "add", &format!("{gateway}/24"), "dev", &b])?;
        sh(&["ip", "-n", ROUTER, "link", "set", &b, "up"])?;
        sh(&["ip", "-n", &n, "addr", "add", &format!("{ip}/24"), "dev", &a])?;
        sh(&["ip", "-n", &n, "link", "set", &a, "up"])?;
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", &n, "route", "add", "default", "via", &gateway])?;
        let cg = cg_root.join(&n);
        std::fs::create_dir_all(&cg)?;
        w.cgroups.push((host.to_string(), cg));
        println!("    {host:<8} {ip}/24, via the router's {gateway}");
    }

    println!("\n==> etcd: the cluster's state (127.0.0.1:{ETCD_CLIENT})");
    let etcd = Command::new("etcd")
        .args(["--name", "demo", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &format!("http://127.0.0.1:{ETCD_CLIENT}")])
        .args(["--advertise-client-urls", &format!("http://127.0.0.1:{ETCD_CLIENT}")])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{ETCD_PEER}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{ETCD_PEER}")])
        .args(["--initial-cluster", &format!("demo=http://127.0.0.1:{ETCD_PEER}")])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log"))?)
        .spawn()?;
    w.children.push(("etcd".into(), etcd));
    let store = format!("etcd://127.0.0.1:{ETCD_CLIENT}");

    println!("\n==> an agent per host: eBPF on the host's cgroup, exec runtime, API, membership, election");
    let token = dir.join("api-token");
    for (host, ip, api) in HOSTS {
        let log = std::fs::File::create(dir.join(format!("agent-{host}.log")))?;
        let agent = Command::new(&viking)
            .args(["agent", "--node", host, "--store", &store, "--bpffs", &bpffs(host)])
            .args(["--api", &format!("127.0.0.1:{api}"), "--address", ip])
            .args([
                "--runtime",
                "exec",
                "--drain",
                "--host-netns",
                &format!("/run/netns/{}", ns(host)),
            ])
            .arg("--cgroup")
            .arg(cg_root.join(ns(host)))
            .arg("--data-dir")
            .arg(dir.join(format!("data-{host}")))
            .arg("--token-file")
            .arg(&token)
            .env("RUST_LOG", "warn,viking=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        w.children.push((host.into(), agent));
        wait_for(&format!("agent {host}"), 20, || {
            Command::new(&viking)
                .args(["stacks", "--server", &format!("127.0.0.1:{api}"), "--token-file"])
                .arg(&token)
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
        println!("    {host:<8} API 127.0.0.1:{api}");
    }
    let server = std::cell::RefCell::new(format!("127.0.0.1:{}", HOSTS[0].2));
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&viking)
            .args(args)
            .args(["--server", server.borrow().as_str(), "--token-file"])
            .arg(&token)
            .output()?;
        if !out.status.success() {
            bail!("viking {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    };
    let ps =
        || -> anyhow::Result<Vec<Value>> { Ok(serde_json::from_str(&cli(&["ps", "--json"])?)?) };
    let running = |rows: &[Value]| rows.len() == 6 && rows.iter().all(|r| r["state"] == "running");

    println!(
        "\n==> viking deploy examples/demo/shared, then examples/demo/web (seed 000's stacks)"
    );
    let examples = root().join("examples/demo");
    for stack in ["shared", "web"] {
        let path = examples.join(stack);
        println!("{}", indent(&cli(&["deploy", path.to_str().unwrap_or(stack)])?));
    }

    println!(
        "\n==> viking ps: the leader placed every instance; each host's agent started its own"
    );
    wait_for("every instance to run", 60, || ps().is_ok_and(|r| running(&r)))?;
    println!("{}", indent(&cli(&["ps"])?));
    let rows = ps()?;
    let web_host = job(&rows, "web", "web")[0]["host"].as_str().unwrap_or_default().to_owned();

    println!(
        "\n==> viking peers on each host: its overlay peers as its kernel holds them (a VXLAN \
         device; per peer an FDB and a neighbour entry, a route per instance)"
    );
    for (host, _, _) in HOSTS {
        let peers = sh(&[
            viking.to_str().unwrap_or("viking"),
            "peers",
            "--node",
            host,
            "--host-netns",
            &format!("/run/netns/{}", ns(host)),
            "--store",
            &store,
        ])?;
        println!("{}", indent(&peers));
        if peers.lines().skip(2).any(|l| !l.trim_end().ends_with(" ok")) {
            bail!("{host} has a peer that is not programmed:\n{peers}");
        }
    }

    println!("\n==> viking env web/web: the link variables web got (ambassador ports from etcd)");
    println!("{}", indent(&cli(&["env", "web/web"])?));

    let web_log = dir.join(format!("data-{web_host}/exec/web_web_0.log"));
    let answers = |n: usize| -> Vec<String> {
        let text = std::fs::read_to_string(&web_log).unwrap_or_default();
        let lines: Vec<String> =
            text.lines().filter(|l| l.starts_with("middleware:")).map(str::to_owned).collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    };
    println!(
        "\n==> web on {web_host}: its requests, through 127.0.0.1:<ambassador port>, in its log"
    );
    wait_for("web to be answered from other hosts", 30, || {
        let a = answers(6);
        a.len() == 6
            && a.iter().all(|l| l.contains("PONG"))
            && answered_by(&a).iter().any(|h| *h != web_host)
    })
    .with_context(|| {
        format!(
            "web's log ({}):\n{}",
            web_log.display(),
            std::fs::read_to_string(&web_log).unwrap_or_default()
        )
    })?;
    for l in answers(6) {
        println!("    {l}");
    }

    let mongo_host =
        job(&rows, "shared", "mongo")[0]["host"].as_str().unwrap_or_default().to_owned();
    let Some(lost) =
        HOSTS.iter().map(|(h, _, _)| h.to_string()).find(|h| *h != web_host && *h != mongo_host)
    else {
        bail!("no host to fail that runs neither web nor mongo");
    };
    println!("\n==> host {lost} fails (its agent and every instance on it)");
    w.fail(&lost);
    if let Some((_, _, api)) = HOSTS.iter().find(|(h, _, _)| *h != lost) {
        *server.borrow_mut() = format!("127.0.0.1:{api}");
    }
    println!("    its lease expires in 10 s; then the leader places its instances elsewhere");
    wait_for("the lost host's instances to be placed again", 60, || {
        ps().is_ok_and(|rows| {
            job(&rows, "web", "middleware")
                .iter()
                .all(|r| r["host"] != lost.as_str() && r["state"] == "running")
        })
    })?;
    println!("{}", indent(&cli(&["ps"])?));
    println!("\n==> web on {web_host}, after {lost} failed");
    wait_for("web to be answered by the hosts left", 30, || {
        let a = answers(6);
        a.len() == 6 && a.iter().all(|l| l.contains("PONG")) && !answered_by(&a).contains(&lost)
    })?;
    for l in answers(6) {
        println!("    {l}");
    }
    println!("\n==> viking services on {web_host} (the kernel's table)");
    println!(
        "{}",
        indent(&sh(&[
            viking.to_str().unwrap_or("viking"),
            "services",
            "--node",
            &web_host,
            "--bpffs",
            &bpffs(&web_host)
        ])?)
    );
    println!(
        "\n==> demo OK: web reached instances on other hosts through its link ports, balanced in the kernel, before and after a host failed"
    );
    Ok(())
}
