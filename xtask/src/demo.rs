//! `cargo xtask demo`: Viking at work on this one machine, with readable output.
//!
//! Three "hosts" (alpha, bravo, charlie) are network namespaces on a private bridge, in a
//! namespace of their own, so no traffic leaves what the demo created. One etcd holds the
//! cluster's state; each host runs an agent (its own cgroup, bpffs dir and API). The seed 000
//! stacks are deployed through the API; bravo and charlie run the `shared/mongo` instances (a
//! redis-server on 27017 stands in for mongo) and register them in seed 002's format; alpha's
//! `web` client connects to its `SHARED_MONGO_PORT_27017` and the kernel sends it to a backend
//! on another host, no proxy in between. Then bravo stops, and traffic goes to charlie alone.
//! Everything the demo creates is removed at the end, also when a step fails.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{setup, util::root};

const LAN: &str = "vkdemo-lan";
const HOSTS: [(&str, &str, u16); 3] =
    [("alpha", "10.77.0.1", 7711), ("bravo", "10.77.0.2", 7712), ("charlie", "10.77.0.3", 7713)];
const ETCD_CLIENT: u16 = 23791;
const ETCD_PEER: u16 = 23792;

fn ns(host: &str) -> String {
    format!("vkdemo-{host}")
}

fn bpffs(host: &str) -> String {
    format!("/sys/fs/bpf/viking/demo-{host}")
}

struct World {
    /// By name, so a host's processes can be stopped on their own.
    children: Vec<(String, Child)>,
    cgroups: Vec<PathBuf>,
    dir: PathBuf,
    viking: PathBuf,
}

impl World {
    fn stop(&mut self, name: &str) {
        // Only processes this demo started, by PID.
        for (_, c) in self.children.iter_mut().filter(|(n, _)| n == name) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.retain(|(n, _)| n != name);
    }
}

impl Drop for World {
    fn drop(&mut self) {
        println!("\n==> cleaning up");
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (host, _, _) in HOSTS {
            let _ = Command::new(&self.viking)
                .args(["agent", "--node", host, "--bpffs", &bpffs(host), "--cleanup"])
                .output();
            let _ = Command::new("ip").args(["netns", "del", &ns(host)]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", LAN]).status();
        for cg in &self.cgroups {
            let _ = std::fs::remove_dir(cg);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        println!("    removed namespaces, cgroups, pins, etcd data and processes");
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

/// A command run on host `ns` inside `cgroup` (so that host's agent sees its sockets).
fn on_host(ns: &str, cgroup: &Path, program: &str, args: &[&str]) -> Command {
    // NB: join the cgroup before `ip netns exec`, which mounts its own /sys.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", r#"echo $$ > "$0/cgroup.procs" && exec ip netns exec "$@""#])
        .arg(cgroup)
        .arg(ns)
        .arg(program)
        .args(args);
    cmd
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    for _ in 0..200 {
        if ok() {
            return Ok(());
        }
        sleep(Duration::from_millis(50));
    }
    bail!("timed out waiting for {what}")
}

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    println!("==> building viking (eBPF programs embedded)");
    crate::util::exec(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    let viking = root().join("target/release/viking");
    let dir = std::env::temp_dir().join(format!("vkdemo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut w = World {
        children: Vec::new(),
        cgroups: Vec::new(),
        viking: viking.clone(),
        dir: dir.clone(),
    };

    println!("\n==> three hosts on one private LAN");
    sh(&["ip", "netns", "add", LAN])?;
    sh(&["ip", "-n", LAN, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", LAN, "link", "set", "br0", "up"])?;
    let cg_root = cgroup2()?;
    for (i, (host, ip, _)) in HOSTS.iter().enumerate() {
        let n = ns(host);
        sh(&["ip", "netns", "add", &n])?;
        let (a, b) = (format!("vkd{i}"), format!("vkd{i}p"));
        sh(&[
            "ip", "link", "add", &a, "netns", &n, "type", "veth", "peer", "name", &b, "netns", LAN,
        ])?;
        sh(&["ip", "-n", LAN, "link", "set", &b, "master", "br0", "up"])?;
        sh(&["ip", "-n", &n, "addr", "add", &format!("{ip}/24"), "dev", &a])?;
        sh(&["ip", "-n", &n, "link", "set", &a, "up"])?;
        sh(&["ip", "-n", &n, "link", "set", "lo", "up"])?;
        let cg = cg_root.join(&n);
        std::fs::create_dir_all(&cg)?;
        w.cgroups.push(cg);
        println!("    {host:<8} {ip}");
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

    println!("\n==> an agent on every host (eBPF on the host's cgroup, API, membership, election)");
    let token = dir.join("api-token");
    for (host, ip, api) in HOSTS {
        let log = std::fs::File::create(dir.join(format!("agent-{host}.log")))?;
        let agent = Command::new(&viking)
            .args(["agent", "--node", host, "--store", &store, "--bpffs", &bpffs(host)])
            .args(["--api", &format!("127.0.0.1:{api}"), "--address", ip])
            .arg("--cgroup")
            .arg(cg_root.join(ns(host)))
            .arg("--token-file")
            .arg(&token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        w.children.push((host.into(), agent));
        wait_for(&format!("agent {host}"), || {
            Command::new(&viking)
                .args(["stacks", "--server", &format!("127.0.0.1:{api}"), "--token-file"])
                .arg(&token)
                .output()
                .is_ok_and(|o| o.status.success())
        })?;
    }
    let cli = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&viking)
            .args(args)
            .args(["--server", "127.0.0.1:7711", "--token-file"])
            .arg(&token)
            .output()?;
        if !out.status.success() {
            bail!("viking {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    };

    println!("\n==> viking deploy examples/shared, then examples/web (seed 000's stacks)");
    let examples = root().join("examples");
    for stack in ["shared", "web"] {
        let path = examples.join(stack);
        println!("{}", indent(&cli(&["deploy", path.to_str().unwrap_or(stack)])?));
    }
    println!("\n==> viking env web/web (Docker link variables, ambassador ports from etcd)");
    let env_text = cli(&["env", "web/web"])?;
    println!("{}", indent(&env_text));
    let env: BTreeMap<&str, &str> = env_text.lines().filter_map(|l| l.split_once('=')).collect();
    let port = env
        .get("SHARED_MONGO_PORT_27017_TCP_PORT")
        .context("web got no SHARED_MONGO env")?
        .to_string();

    println!(
        "\n==> shared/mongo instances on bravo and charlie, registered in /services/ (seed 002)"
    );
    for (host, ip, _) in &HOSTS[1..] {
        let data = dir.join(format!("redis-{host}"));
        std::fs::create_dir_all(&data)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns(host), "redis-server", "--bind", ip, "--port", "27017"])
            .args(["--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir"])
            .arg(&data)
            .stdout(Stdio::null())
            .spawn()?;
        w.children.push((host.to_string(), child));
        wait_for(&format!("mongo on {host}"), || {
            sh(&[
                "ip",
                "netns",
                "exec",
                &ns(host),
                "redis-cli",
                "-h",
                ip,
                "-p",
                "27017",
                "set",
                "host",
                host,
            ])
            .is_ok()
        })?;
        let record = format!(
            r#"{{"id":"{host}-1","host":"{host}","ipaddress":"{ip}","host_port":"27017","port":"27017","proto":"tcp","name":"shared_mongo","image":"redis-server","tags":[]}}"#
        );
        let key = format!("/services/demo/shared_mongo/27017/27017/{host}-1");
        sh(&["etcdctl", "--endpoints", &format!("127.0.0.1:{ETCD_CLIENT}"), "put", &key, &record])?;
        println!("    {key} -> {ip}:27017");
    }

    let alpha_cg = cg_root.join(ns("alpha"));
    let ask = |n: usize| -> anyhow::Result<Vec<String>> {
        (0..n)
            .map(|_| {
                let out = on_host(
                    &ns("alpha"),
                    &alpha_cg,
                    "redis-cli",
                    &["-h", "127.0.0.1", "-p", &port, "get", "host"],
                )
                .output()?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            })
            .collect()
    };
    println!("\n==> web on alpha: redis-cli -h 127.0.0.1 -p $SHARED_MONGO_PORT_27017_TCP_PORT ({port}) get host");
    wait_for("the datapath to learn the backends", || {
        ask(6).is_ok_and(|a| a.iter().any(|x| x == "charlie") && a.iter().any(|x| x == "bravo"))
    })?;
    for a in ask(6)? {
        println!("    answered by {a}");
    }
    println!("\n==> viking services on alpha (the kernel's table)");
    println!(
        "{}",
        indent(&sh(&[
            viking.to_str().unwrap_or("viking"),
            "services",
            "--node",
            "alpha",
            "--bpffs",
            &bpffs("alpha")
        ])?)
    );

    println!("\n==> host bravo stops (agent and instance); its registration goes");
    w.stop("bravo");
    sh(&[
        "etcdctl",
        "--endpoints",
        &format!("127.0.0.1:{ETCD_CLIENT}"),
        "del",
        "/services/demo/shared_mongo/27017/27017/bravo-1",
    ])?;
    wait_for("bravo to leave the datapath", || {
        ask(4).is_ok_and(|a| a.iter().all(|x| x == "charlie"))
    })?;
    for a in ask(4)? {
        println!("    answered by {a}");
    }
    println!("\n==> viking stacks");
    println!("{}", indent(&cli(&["stacks"])?));
    println!(
        "\n==> demo OK: web on alpha reached shared/mongo on other hosts, balanced in the kernel"
    );
    Ok(())
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}
