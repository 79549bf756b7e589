//! The overlay across hosts that are only routed to each other (docs/overlay.md): hosts on
//! three subnets joined by a router namespace that knows no instance address, agents with the
//! exec or docker runtime, real workloads (busybox httpd, iperf3, vk-probe).
//!
//! Traffic: only inside the cluster's namespaces (instances, hosts, the router).
#![allow(clippy::unwrap_used)]
mod membership;
mod mtu;
mod restart;
mod routed;
mod run_once;
mod setup;

use std::{
    future::Future,
    process::Command,
    time::{Duration, Instant},
};

use viking::control::instances::PsRow;
use viking_tests::cluster::{Cluster, Host};

/// The command line that runs `args` inside instance `name` (`<stack>_<job>_<index>`) of
/// `host`: nsenter into an exec instance's namespace, `docker exec` into a container.
pub fn in_instance(c: &Cluster, host: &Host, name: &str, args: &[&str]) -> Command {
    if host.v1.is_some() {
        let d = c.dockerd.as_ref().unwrap();
        let mut cmd = Command::new("docker");
        cmd.args(["-H", &d.host(), "exec", name]).args(args);
        cmd
    } else {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/viking/{}/netns/{name}", host.agent.node)).args(args);
        cmd
    }
}

/// Runs it; (success, stdout + stderr).
pub fn run(mut cmd: Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Polls `f` until it gives `Ok` (`secs` at most); panics with the last error and the logs.
pub async fn eventually<T, F, Fut>(c: &Cluster, what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let t = Instant::now();
    let deadline = t + Duration::from_secs(secs);
    loop {
        match f().await {
            Ok(v) => {
                println!("{what}: {:.1?}", t.elapsed());
                return v;
            }
            Err(e) if Instant::now() > deadline => {
                panic!("timed out waiting for {what}: {e}\n{}", c.logs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// From `host`'s namespace: connects to `ip:port`, sends an HTTP GET, and reads what comes
/// back until the peer closes or 2 s pass (vk-probe's greeting comes first, httpd's page after
/// the request).
pub fn fetch(host: &Host, ip: std::net::Ipv4Addr, port: u16) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    host.ns.enter(move || {
        let mut s =
            std::net::TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
}

/// The address `viking ps` gives an instance.
pub fn address(rows: &[PsRow], stack: &str, job: &str) -> std::net::Ipv4Addr {
    let r = rows.iter().find(|r| r.stack == stack && r.job == job).unwrap();
    match r.address {
        Some(std::net::IpAddr::V4(a)) => a,
        other => panic!("{r:?}: address {other:?}"),
    }
}

pub fn all_running(rows: &[PsRow], n: usize) -> bool {
    rows.len() == n && rows.iter().all(|r| r.state == "running")
}

/// `viking peers --json` of one host: peer name -> (state, routes).
pub fn peers(c: &Cluster, host: &Host) -> std::collections::BTreeMap<String, (String, usize)> {
    let etcd = c.etcd.as_ref().unwrap();
    let out = Command::new(viking_tests::viking_bin())
        .args(["peers", "--json", "--node", &host.agent.node, "--host-netns"])
        .arg(host.ns.path())
        .args(["--store", &etcd.spec()])
        .output()
        .unwrap();
    assert!(out.status.success(), "viking peers: {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    rows.iter()
        .map(|r| {
            let state = r["state"].as_str().unwrap().to_owned();
            (
                r["name"].as_str().unwrap().to_owned(),
                (state, r["routes"].as_u64().unwrap() as usize),
            )
        })
        .collect()
}
