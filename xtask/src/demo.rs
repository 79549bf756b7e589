//! `cargo xtask demo`: Viking at work on this one machine, with readable output.
//!
//! Three "hosts" are network namespaces on a private bridge (in a namespace of their own, so
//! no traffic leaves what the demo created). `alpha` runs the agent and a client; `bravo`
//! and `charlie` run real redis-server backends. A linked service gets an ambassador port on
//! 127.0.0.1; redis-cli on alpha connects there and the kernel sends it to a backend on
//! another host, no proxy in between. Then charlie stops and traffic goes to bravo alone.
//! Everything the demo creates is removed at the end, also when a step fails.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::Duration,
};

use anyhow::{bail, Context as _};

use crate::{setup, util::root};

const LAN: &str = "vkdemo-lan";
const HOSTS: [(&str, &str); 3] =
    [("vkdemo-alpha", "10.77.0.1"), ("vkdemo-bravo", "10.77.0.2"), ("vkdemo-charlie", "10.77.0.3")];
const AMBASSADOR: &str = "127.0.0.1:20001";
const BPFFS: &str = "/sys/fs/bpf/viking/demo-alpha";

struct World {
    children: Vec<Child>,
    cgroup: Option<PathBuf>,
    viking: PathBuf,
}

impl Drop for World {
    fn drop(&mut self) {
        println!("\n==> cleaning up");
        for c in &mut self.children {
            // Only processes this demo started, by PID.
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new(&self.viking)
            .args(["agent", "--node", "alpha", "--bpffs", BPFFS, "--cleanup"])
            .output();
        for (ns, _) in HOSTS {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", LAN]).status();
        if let Some(cg) = &self.cgroup {
            let _ = std::fs::remove_dir(cg);
        }
        println!("    removed namespaces, cgroup, pins and processes");
    }
}

fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output().with_context(|| args.join(" "))?;
    if !out.status.success() {
        bail!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
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

/// A command run on `ns` inside `cgroup` (so the agent's programs see its sockets).
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

pub fn run() -> anyhow::Result<()> {
    setup::run()?;
    println!("==> building viking (eBPF programs embedded)");
    crate::util::exec(Command::new("cargo").args(["build", "--release", "--bins"]))?;
    let viking = root().join("target/release/viking");
    let mut w = World { children: Vec::new(), cgroup: None, viking: viking.clone() };

    println!("\n==> three hosts on one private LAN");
    sh(&["ip", "netns", "add", LAN])?;
    sh(&["ip", "-n", LAN, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", LAN, "link", "set", "br0", "up"])?;
    for (i, (ns, ip)) in HOSTS.iter().enumerate() {
        sh(&["ip", "netns", "add", ns])?;
        let (a, b) = (format!("vkd{i}"), format!("vkd{i}p"));
        sh(&[
            "ip", "link", "add", &a, "netns", ns, "type", "veth", "peer", "name", &b, "netns", LAN,
        ])?;
        sh(&["ip", "-n", LAN, "link", "set", &b, "master", "br0", "up"])?;
        sh(&["ip", "-n", ns, "addr", "add", &format!("{ip}/24"), "dev", &a])?;
        sh(&["ip", "-n", ns, "link", "set", &a, "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        println!("    {:<8} {ip}", ns.trim_start_matches("vkdemo-"));
    }
    let cgroup = cgroup2()?.join("vkdemo-alpha");
    std::fs::create_dir_all(&cgroup)?;
    w.cgroup = Some(cgroup.clone());

    println!("\n==> agent on alpha (eBPF attached to cgroup {})", cgroup.display());
    let agent = Command::new(&viking)
        .args(["agent", "--node", "alpha", "--bpffs", BPFFS])
        .arg("--cgroup")
        .arg(&cgroup)
        .env("RUST_LOG", "warn")
        .spawn()?;
    w.children.push(agent);
    for _ in 0..100 {
        if Path::new(BPFFS).join("links/viking_sockops").exists() {
            break;
        }
        sleep(Duration::from_millis(50));
    }

    println!("\n==> redis-server on bravo and charlie");
    for (ns, ip) in &HOSTS[1..] {
        let dir = std::env::temp_dir().join(ns);
        std::fs::create_dir_all(&dir)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "redis-server", "--bind", ip, "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()?;
        w.children.push(child);
    }
    sleep(Duration::from_millis(500));
    for (ns, ip) in &HOSTS[1..] {
        let name = ns.trim_start_matches("vkdemo-");
        sh(&["ip", "netns", "exec", ns, "redis-cli", "-h", ip, "set", "host", name])?;
    }

    println!("\n==> link shared/redis: ambassador {AMBASSADOR} -> bravo, charlie (round robin)");
    let backends = [format!("{}:6379", HOSTS[1].1), format!("{}:6379", HOSTS[2].1)];
    let add =
        |backends: &[String]| -> anyhow::Result<()> {
            let mut cmd = Command::new(&viking);
            cmd.args(["service", "add", "shared_redis", "--node", "alpha", "--bpffs", BPFFS])
                .args(["--frontend", AMBASSADOR, "--algo", "round_robin"]);
            for b in backends {
                cmd.args(["--backend", b]);
            }
            crate::util::exec(&mut cmd)
        };
    add(&backends)?;
    println!("    SHARED_REDIS_PORT_6379_TCP=tcp://{AMBASSADOR}");

    let ask = |n: usize| -> anyhow::Result<Vec<String>> {
        let (host, port) = AMBASSADOR.split_once(':').context("ambassador")?;
        (0..n)
            .map(|_| {
                let out = on_host(
                    HOSTS[0].0,
                    &cgroup,
                    "redis-cli",
                    &["-h", host, "-p", port, "get", "host"],
                )
                .output()?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
            })
            .collect()
    };
    println!("\n==> alpha: redis-cli -h 127.0.0.1 -p 20001 get host (x4)");
    let answers = ask(4)?;
    for a in &answers {
        println!("    answered by {a}");
    }
    if !(answers.iter().any(|a| a == "bravo") && answers.iter().any(|a| a == "charlie")) {
        bail!("expected answers from both bravo and charlie, got {answers:?}");
    }
    println!("\n==> viking services");
    print!(
        "{}",
        sh(&[
            viking.to_str().unwrap_or("viking"),
            "services",
            "--node",
            "alpha",
            "--bpffs",
            BPFFS
        ])? + "\n"
    );

    println!("\n==> charlie goes down; its backend is withdrawn");
    if let Some(mut c) = w.children.pop() {
        let _ = c.kill();
        let _ = c.wait();
    }
    add(&backends[..1])?;
    let answers = ask(3)?;
    for a in &answers {
        println!("    answered by {a}");
    }
    if answers.iter().any(|a| a != "bravo") {
        bail!("expected only bravo after charlie stopped, got {answers:?}");
    }
    println!("\n==> demo OK: connections to the ambassador port were balanced in the kernel");
    Ok(())
}
