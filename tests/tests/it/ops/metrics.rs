//! `/metrics` and `/v1/ready` of a real agent on a real etcd: readiness turns true only once the
//! first sync has programmed the store's view (a second agent, started once 1,025
//! registrations of one service are there: the newest 1,024 are programmed; the first agent
//! leads and keeps the deployed stack's ports); connections and refusals through the
//! datapath move the per-service and per-backend counters; the text parses with Prometheus'
//! own parser and passes its linter (`promtool check metrics`, Debian's prometheus package).
//!
//! Traffic: loopback only (etcd, the API, the backend, the probe in the agent's cgroup).
#![allow(clippy::unwrap_used)]
use std::{
    io::Write as _,
    net::TcpListener,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use viking::{
    api::DeployRequest,
    stack::plan::Plan,
    store::{EtcdOptions, EtcdStore, Op, Store as _, Txn},
};
use viking_tests::{agent::AgentProc, etcd::Etcd, probe::Conn, probe_bin};

/// Jobs no host can run (a host tag nobody has): their ports are allocated, nothing registers.
const STACK: &str = "web:\n  type: job\n  command: sleep 1000\n  ports:\n    - 80\n  filter:\n    - nowhere\n\
empty:\n  type: job\n  command: sleep 1000\n  ports:\n    - 80\n  filter:\n    - nowhere\n\
client:\n  type: job\n  command: sleep 1000\n  filter:\n    - nowhere\n  link:\n    - web\n    - empty\n";

fn registration(i: u32, port: u16) -> (String, String) {
    (
        format!("/services/m/m_web/80/{port}/m_web_{i}"),
        format!(r#"{{"ipaddress": "127.0.0.1", "host_port": {port}, "port": 80, "proto": "tcp"}}"#),
    )
}

/// A value of `text` (Prometheus text format) by its full series name, `0` if absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(agent: &AgentProc) -> String {
    let r = reqwest::get(format!("http://{}/metrics", agent.api)).await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    r.text().await.unwrap()
}

async fn ready(agent: &AgentProc) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{}/v1/ready", agent.api)).await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// `promtool check metrics` over `text`: parsed by Prometheus' own text parser and linted.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask setup installs Debian's prometheus package)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// `vk-probe ARGS` in the agent's cgroup (the datapath serves its sockets).
fn probe(agent: &AgentProc, args: &[&str]) -> Vec<Conn> {
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(agent.cgroup.path.join("cgroup.procs"))
        .unwrap();
    let mut cmd = Command::new(probe_bin());
    cmd.args(args);
    // SAFETY: only write(2) on an fd opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_parse_and_ready_waits_for_the_first_sync() {
    let etcd = Etcd::start().await;
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();
    let backend = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend_port = backend.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in backend.incoming().flatten() {
            let peer = conn.peer_addr().unwrap();
            std::thread::spawn(move || viking_tests::backend::serve_tcp(conn, "mb", peer));
        }
    });

    // A leader, and a stack whose two ports are allocated: 1025 registrations for one (a
    // service may have 1024 backends), none for the other.
    let leader = AgentProc::start(Some(&etcd.spec())).await;
    let req = DeployRequest {
        name: "m".into(),
        file: "m.yml".into(),
        text: STACK.into(),
        dry_run: false,
        contexts: Default::default(),
    };
    let plan: Plan = leader.client().post("/v1/deploy", &req).await.unwrap().unwrap();
    let port_of =
        |service: &str| plan.ports.iter().find(|p| p.service == service).unwrap().ambassador_port;
    let (web_port, empty_port) = (port_of("m_web"), port_of("m_empty"));
    let regs: Vec<(String, String)> =
        (0..1025).map(|i| registration(i, 30000 + i as u16)).collect();
    for chunk in regs.chunks(100) {
        let ops = chunk.iter().map(|(k, v)| Op::put(k.clone(), v.clone().into_bytes()));
        store.txn(Txn::when([]).then(ops)).await.unwrap();
    }

    let agent = AgentProc::start(Some(&etcd.spec())).await;
    let web = format!(r#"service="m_web:80",frontend="127.0.0.1:{web_port}",proto="tcp""#);
    let backends = format!("viking_service_backends{{{web}}}");
    // Readiness never runs ahead of the first sync: once /v1/ready says 200 the datapath holds
    // the store's view, the over-full service with its newest 1,024 backends (not a failed
    // pass); before, it is 503 naming the sync, alive all the same.
    let t = Instant::now();
    let mut unready = 0;
    loop {
        let (code, body) = ready(&agent).await;
        if code == 200 {
            let text = scrape(&agent).await;
            assert_eq!(value(&text, "viking_discovery_synced"), 1.0, "{body}\n{text}");
            assert_eq!(value(&text, &backends), 1024.0, "{text}");
            assert_eq!(value(&text, "viking_discovery_errors_total"), 0.0, "{text}");
            break;
        }
        assert_eq!(code, 503, "{body}");
        let checks = body["checks"].as_array().unwrap();
        let failing: Vec<&str> =
            checks.iter().filter(|c| c["ok"] != true).filter_map(|c| c["name"].as_str()).collect();
        assert!(!failing.is_empty(), "503 names what is not ready: {body}");
        let health = reqwest::get(format!("http://{}/v1/health", agent.api)).await.unwrap();
        assert_eq!(health.status(), 200, "alive all the same");
        unready += 1;
        assert!(t.elapsed() < Duration::from_secs(30), "never ready: {body}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("ready after {:.1?} ({unready} answers of 503 before)", t.elapsed());

    // The registrations go (one revision) but one, at the backend: the next pass programs it.
    let t = Instant::now();
    store.delete_prefix("/services/m/").await.unwrap();
    let keep = registration(0, backend_port);
    store.put(&keep.0, keep.1.into_bytes(), None).await.unwrap();
    loop {
        let (code, body) = ready(&agent).await;
        let programmed = value(&scrape(&agent).await, &backends);
        if code == 200 && programmed == 1.0 {
            assert_eq!(body["ready"], true);
            break;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let keys: Vec<String> =
                store.list("/services/").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
            panic!(
                "not ready or {programmed} backends programmed (registered: {keys:?}): {body}\n{}",
                agent.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("ready {:.1?} after the store's view became programmable", t.elapsed());

    let empty = format!(r#"service="m_empty:80",frontend="127.0.0.1:{empty_port}",proto="tcp""#);
    let be = format!(r#"{web},backend="127.0.0.1:{backend_port}""#);
    let before = scrape(&agent).await;
    let conns = |t: &str| value(t, &format!("viking_service_connections_total{{{web}}}"));
    let refused =
        |t: &str| value(t, &format!("viking_service_refused_connections_total{{{empty}}}"));
    let to_backend = |t: &str| value(t, &format!("viking_backend_connections_total{{{be}}}"));
    assert_eq!(value(&before, &format!("viking_service_backends{{{web}}}")), 1.0, "{before}");
    assert_eq!(value(&before, &format!("viking_service_backends{{{empty}}}")), 0.0);

    let ok = tokio::task::block_in_place(|| {
        probe(&agent, &["tcp", &format!("127.0.0.1:{web_port}"), "5"])
    });
    assert_eq!(ok.len(), 5);
    assert!(ok.iter().all(|c| c.backend() == Some("mb")), "{ok:?}");
    let no = tokio::task::block_in_place(|| {
        probe(&agent, &["tcp", &format!("127.0.0.1:{empty_port}"), "3"])
    });
    assert!(no.iter().all(|c| c.errno == Some(libc::ECONNREFUSED)), "{no:?}");

    let after = scrape(&agent).await;
    assert_eq!(conns(&after) - conns(&before), 5.0, "{after}");
    assert_eq!(to_backend(&after) - to_backend(&before), 5.0);
    assert_eq!(refused(&after) - refused(&before), 3.0);
    // The two ambassador ports, and the VIPs of web and empty (docs/names.md).
    assert_eq!(value(&after, r#"viking_datapath_map_entries{map="services"}"#), 4.0);
    assert_eq!(value(&after, r#"viking_datapath_program_attached{program="connect4"}"#), 1.0);
    assert!(value(&after, "viking_discovery_lag_seconds_count") >= 1.0, "{after}");
    assert_eq!(value(&after, "viking_discovery_synced"), 1.0);
    assert_eq!(value(&after, "viking_leader"), 0.0, "the first agent leads");
    assert!(value(&after, r#"viking_store_request_duration_seconds_count{op="list"}"#) >= 1.0);

    let (parsed, said) = promtool(&after);
    assert!(parsed, "promtool check metrics:\n{said}\n{after}");
    // And the linter does see a bad exposition.
    let (parsed, _) = promtool("viking_bad{ 1\n");
    assert!(!parsed);
}
