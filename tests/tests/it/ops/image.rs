//! The agent image (`cargo xtask image`'s builder) as a privileged container under a real
//! dockerd: it attaches, serves the API, runs a deployed stack through the docker socket and
//! programs its service, which a client in the agent's cgroup reaches; a `docker restart` of
//! the agent during a transfer leaves the transfer and the table whole; `docker rm -f` and a
//! new container adopt the running instances.
#![allow(clippy::unwrap_used)]
use std::{
    io::Read as _,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::container::{stack, text, AgentContainer, GREETING};

/// Deploys the stack with `viking deploy --wait` and returns the ambassador port of the link.
fn deploy(c: &AgentContainer) -> u16 {
    let t = Instant::now();
    let out = c.deploy_wait("ops", &stack(viking_tests::docker::IMAGE));
    assert!(
        out.status.success(),
        "viking deploy --wait: {:?}\n{}\n{}",
        out.status.code(),
        text(&out),
        c.log()
    );
    let said = text(&out);
    assert!(said.contains("rolled out"), "{said}");
    assert!(said.contains("in datapath 1/1"), "the live lines show each step: {said}");
    println!("deploy --wait: {:.1?}", t.elapsed());
    c.ambassador_port("ops/client", "SERVER_PORT_80_TCP_PORT")
}

/// The one service of the stack in the datapath (pins read on the host): its frontend and
/// backends, and its connection count.
fn table(c: &AgentContainer) -> (Vec<(String, Vec<String>)>, u64) {
    let services = c.services();
    let mut conns = 0;
    let rows = services
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            conns += s["conns"].as_u64().unwrap();
            let backends =
                s["backends"].as_array().unwrap().iter().map(|b| b["addr"].to_string()).collect();
            (s["frontend"].to_string(), backends)
        })
        .collect();
    (rows, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_image_runs_privileged_attaches_serves_and_programs() {
    let c = tokio::task::block_in_place(AgentContainer::start);
    // The image is what `cargo xtask image` builds: viking/agent:<version>, from nothing pulled.
    assert_eq!(c.image, format!("viking/agent:{}", env!("CARGO_PKG_VERSION")));
    let s = c.status().unwrap();
    assert_eq!(s["node"], c.node.as_str());
    assert_eq!(s["datapath"]["programs_attached"], 10, "{s}");
    assert_eq!(s["store"]["ok"], true, "{s}");
    assert_eq!(s["leading"], true, "{s}");
    // The pins are in the bpffs mounted into the container.
    assert!(c.host_bpffs().join("links/connect4").exists());

    let port = tokio::task::block_in_place(|| deploy(&c));
    // A client in the agent's cgroup connects to the ambassador: the kernel sends it to the
    // server container's own address and port (docker containers are on Viking's network).
    let out = c.wget(&format!("http://127.0.0.1:{port}/")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(GREETING), "{}\n{}", text(&out), c.log());
    let (rows, conns) = table(&c);
    // The server's ambassador port and its job's VIP (docs/names.md), to the same backend.
    assert_eq!(rows.len(), 2, "{rows:?}");
    let amb = rows.iter().find(|r| r.0.contains(&format!("127.0.0.1:{port}"))).expect("ambassador");
    let vip = rows.iter().find(|r| r.0.contains("\"10.96.")).expect("the server's VIP");
    assert_eq!(vip.1, amb.1, "{rows:?}");
    let pool: ipnetwork::Ipv4Network = viking::cluster::DEFAULT_POOL.parse().unwrap();
    let backend: std::net::SocketAddr = amb.1[0].trim_matches('"').parse().unwrap();
    assert!(
        matches!(backend, std::net::SocketAddr::V4(b) if pool.contains(*b.ip()) && b.port() == 80),
        "the server's allocated address: {rows:?}"
    );
    assert!(conns >= 1);

    let s = c.status().unwrap();
    assert_eq!(s["instances"]["running"], 2, "{s}");
    assert_eq!(s["datapath"]["services"], 2, "the ambassador port and the VIP: {s}");
    assert_eq!(s["sync"]["synced"], true, "{s}");

    // A rollout that cannot succeed (an image nobody has, and nothing is pulled): --wait
    // says which instance failed and exits 1.
    let bad =
        "broken:\n  type: job\n  image: viking/absent:1\n  command: true\n  daemonize: true\n";
    let out = tokio::task::block_in_place(|| c.deploy_wait("bad", bad));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("bad/broken #0 on"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_container_restart_keeps_transfers_and_rm_then_run_adopts() {
    let c = tokio::task::block_in_place(AgentContainer::start);
    let port = tokio::task::block_in_place(|| deploy(&c));
    let (before, conns_before) = table(&c);
    let server = c.container_id("ops_server_0");
    let client = c.container_id("ops_client_0");

    // A 64 MiB download through the ambassador, read in part, then left waiting while the
    // agent container restarts, then read to its end.
    let mut wget = c.wget(&format!("http://127.0.0.1:{port}/big"));
    let mut child = wget.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0usize;
    let mut nonzero = 0usize;
    while got < 8 << 20 {
        let n = out.read(&mut buf).unwrap();
        assert!(n > 0, "the transfer ended early at {got} bytes");
        nonzero += buf[..n].iter().filter(|b| **b != 0).count();
        got += n;
    }
    let t = Instant::now();
    tokio::task::block_in_place(|| {
        c.d.cli(&["restart", "-t", "10", &c.name]);
        c.wait_ready(Duration::from_secs(60));
    });
    println!("docker restart, ready again: {:.1?} (transfer at {got} bytes)", t.elapsed());
    loop {
        let n = out.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        nonzero += buf[..n].iter().filter(|b| **b != 0).count();
        got += n;
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "wget: {status}");
    assert_eq!(got, 64 << 20, "the whole file arrived");
    assert_eq!(nonzero, 0, "and nothing but what the server sent");
    // The table is intact: the same service, the same backend, counters not reset.
    let (after, conns_after) = table(&c);
    assert_eq!(before, after);
    assert!(conns_after > conns_before, "{conns_before} -> {conns_after}");

    // `docker rm -f` (SIGKILL) and a new container: the instances keep running and are
    // adopted (same containers, no restart), and the link still works.
    tokio::task::block_in_place(|| {
        c.d.cli(&["rm", "-f", &c.name]);
        c.run();
        c.wait_ready(Duration::from_secs(60));
    });
    assert_eq!(c.container_id("ops_server_0"), server);
    assert_eq!(c.container_id("ops_client_0"), client);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = c.viking(&["ps", "--json"]);
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let ok = rows.as_array().is_some_and(|r| {
            r.len() == 2 && r.iter().all(|r| r["state"] == "running" && r["restarts"] == 0)
        });
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "ps after the new container: {rows}\n{}", c.log());
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(c.container_id("ops_server_0"), server, "adopted, not replaced");
    let out = c.wget(&format!("http://127.0.0.1:{port}/")).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(GREETING), "{}", text(&out));
    assert_eq!(table(&c).0, before);
}
