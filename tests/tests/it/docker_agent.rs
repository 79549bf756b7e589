//! The docker runtime end to end, through a real `viking agent --runtime docker` on a real
//! dockerd (started by the test in a network namespace of its own, `tests/src/docker.rs`) and
//! a real etcd: a deployed stack's containers run with their link env and labels, the linked
//! service is registered at the agent's address and the container's published port, the
//! linking container reaches it through its ambassador port (the agent's datapath, in the
//! kernel), a dockerd restart is survived (new containers, registered again), and `viking rm`
//! removes containers and registrations.
//!
//! Traffic: loopback (etcd, the agent's API) and the dockerd namespace (its bridge, its
//! docker-proxy on the agent's `--address`, which the test puts on that namespace's `lo`).
#![allow(clippy::unwrap_used)]
use std::{
    collections::BTreeMap,
    future::Future,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;
use viking::{
    api::DeployRequest,
    control::instances::{Phase, PsRow, Status},
    datapath::Proto,
    stack::Port,
    store::{keys, EtcdOptions, EtcdStore, Store as _},
};
use viking_tests::{
    agent::AgentProc,
    docker::{Dockerd, IMAGE},
    etcd::Etcd,
    require_root, viking_bin,
};

const STACK: &str = "dk";
/// The agent's `--address` ("the address other hosts reach this one on"): on the dockerd
/// namespace's loopback, where docker-proxy listens on every address.
const ADDRESS: &str = "10.223.0.1";
const GREETING: &str = "hello-from-server";

fn stack_text() -> String {
    format!(
        "server:\n  type: job\n  image: {IMAGE}\n  command: mkdir -p /www && echo {GREETING} > /www/index.html && exec httpd -f -p 80 -h /www\n  ports:\n    - 80\n\
         client:\n  type: job\n  image: {IMAGE}\n  command: while true; do timeout 5 wget -q -O - http://$SERVER_PORT_80_TCP_ADDR:$SERVER_PORT_80_TCP_PORT/; sleep 0.5; done\n  daemonize: true\n  link:\n    - server\n"
    )
}

/// The cgroup v1 directories dockerd's cgroupfs driver makes for a container parent on a
/// hybrid host (the v2 one is the agent's `Cgroup` guard's): removed deepest first on drop.
struct V1Parents {
    relative: String,
}

impl V1Parents {
    fn of(cgroup: &Path) -> Self {
        let root = viking::datapath::mounts::cgroup2_root().expect("cgroup v2 mount");
        let rel = cgroup.strip_prefix(&root).expect("the agent cgroup is below the v2 root");
        Self { relative: rel.display().to_string() }
    }
}

impl Drop for V1Parents {
    fn drop(&mut self) {
        if self.relative.is_empty() {
            return;
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let mut f = line.split_whitespace();
            if let (Some(_), Some(dst), Some("cgroup")) = (f.next(), f.next(), f.next()) {
                viking_tests::guards::remove_cgroup_tree(&Path::new(dst).join(&self.relative));
            }
        }
    }
}

/// Everything the test started. NB: fields drop in this order: dockerd first (it stops what
/// still runs), then the agent (killed; its cgroup and dirs removed), then the v1 cgroup
/// parents dockerd made for the agent's cgroup, then etcd.
struct Setup {
    d: Dockerd,
    agent: AgentProc,
    v1: V1Parents,
    etcd: Etcd,
}

/// A container of the agent's node, as `docker ps -a` shows it.
#[derive(Debug, Clone)]
struct Ctr {
    name: String,
    id: String,
    state: String,
}

impl Setup {
    /// The agent's log and dockerd's, for a failure message.
    fn logs(&self) -> String {
        format!("--- agent\n{}\n--- dockerd\n{}", self.agent.log(), self.d.log())
    }

    /// This node's containers (running or not), by name.
    fn containers(&self) -> BTreeMap<String, Ctr> {
        let out = self.d.cli(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=viking.node={}", self.agent.node),
            "--format",
            "{{.Names}} {{.ID}} {{.State}}",
        ]);
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let c =
                    Ctr { name: f.next()?.into(), id: f.next()?.into(), state: f.next()?.into() };
                Some((c.name.clone(), c))
            })
            .collect()
    }

    fn inspect(&self, id: &str) -> Value {
        let v: Value = serde_json::from_str(&self.d.cli(&["inspect", id])).unwrap();
        v[0].clone()
    }

    async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&self.etcd.endpoints(), &EtcdOptions::default()).await.unwrap()
    }

    /// The registrations of the stack (key -> JSON).
    async fn registrations(&self, store: &EtcdStore) -> BTreeMap<String, Value> {
        store
            .list(&format!("/services/{STACK}/"))
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| (kv.key, serde_json::from_slice(&kv.value).unwrap()))
            .collect()
    }

    /// What the agent reports of one instance at `/viking/ps/<node>/dk/<job>/0`.
    async fn status(&self, store: &EtcdStore, job: &str) -> Option<Status> {
        let key = keys::ps(&self.agent.node, STACK, job, 0);
        let kv = store.get(&key).await.unwrap()?;
        Some(serde_json::from_slice(&kv.value).unwrap())
    }

    async fn ps(&self) -> Vec<PsRow> {
        self.agent.client().get("/v1/ps").await.unwrap().unwrap_or_default()
    }

    /// Polls `f` until it gives `Ok` (`secs` at most); panics with the last error and logs.
    async fn eventually<T, F, Fut>(&self, what: &str, secs: u64, mut f: F) -> T
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
                    panic!("timed out waiting for {what}: {e}\n{}", self.logs())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }
}

fn row<'a>(rows: &'a [PsRow], job: &str) -> Option<&'a PsRow> {
    rows.iter().find(|r| r.stack == STACK && r.job == job && r.index == 0)
}

fn describe(rows: &[PsRow]) -> String {
    rows.iter()
        .map(|r| format!("{}/{}#{} {} {} {}", r.stack, r.job, r.index, r.host, r.state, r.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// An HTTP GET of `/` at `ADDRESS:port` from inside the dockerd namespace (where the agent's
/// address is), as another host would reach the published port.
fn get_published(d: &Dockerd, port: u16) -> String {
    d.netns.enter(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let ip: Ipv4Addr = ADDRESS.parse().unwrap();
                let mut s = TcpStream::connect((ip, port))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })();
            match attempt {
                Ok(out) if out.contains(GREETING) => return out,
                r if Instant::now() > deadline => panic!("GET {ADDRESS}:{port}/: {r:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
}

/// The host port docker published container port 80/tcp on (IPv4 binding), from inspect.
fn published_80(c: &Value) -> u16 {
    let bindings = c["NetworkSettings"]["Ports"]["80/tcp"].as_array().cloned().unwrap_or_default();
    bindings
        .iter()
        .filter(|b| !b["HostIp"].as_str().unwrap_or("").contains(':'))
        .find_map(|b| b["HostPort"].as_str()?.parse().ok())
        .unwrap_or_else(|| panic!("80/tcp published: {}", c["NetworkSettings"]))
}

/// Checks the server's registration: exactly one for the stack, at
/// `/services/dk/dk_server/80/<host_port>/dk_server_0`, naming `container` at the agent's
/// address. Returns an error (to poll on) when it is not (yet) so.
fn check_registration(
    regs: &BTreeMap<String, Value>,
    node: &str,
    host_port: u16,
    container: &str,
) -> Result<(), String> {
    let key = format!("/services/{STACK}/{STACK}_server/80/{host_port}/{STACK}_server_0");
    let keys: Vec<&String> = regs.keys().collect();
    let reg = regs.get(&key).ok_or_else(|| format!("{key} not among {keys:?}"))?;
    if regs.len() != 1 {
        return Err(format!("one registration for the stack, not {keys:?}"));
    }
    if reg["id"] != container {
        return Err(format!("{key} names container {}, not {container}", reg["id"]));
    }
    assert_eq!(reg["ipaddress"], ADDRESS, "{reg}");
    assert_eq!(reg["host_port"], host_port, "{reg}");
    assert_eq!(reg["host"], node, "{reg}");
    assert_eq!(reg["port"], 80, "{reg}");
    assert_eq!(reg["name"], format!("{STACK}_server_0"), "{reg}");
    assert_eq!(reg["image"], IMAGE, "{reg}");
    Ok(())
}

/// Both instances running in fresh containers (not in `old`), as docker, the agent's status
/// records and `viking ps` say; returns (server, client) containers.
async fn both_running(s: &Setup, store: &EtcdStore, old: &[&str]) -> Result<(Ctr, Ctr), String> {
    let ctrs = s.containers();
    let mut out = Vec::new();
    for job in ["server", "client"] {
        let name = format!("{STACK}_{job}_0");
        let c = ctrs.get(&name).ok_or_else(|| format!("no container {name}: {ctrs:?}"))?;
        if c.state != "running" || old.contains(&c.id.as_str()) {
            return Err(format!("{name}: {c:?} (old: {old:?})"));
        }
        let st = s.status(store, job).await.ok_or_else(|| format!("no status for {job}"))?;
        if st.phase != Phase::Running || st.handle != c.id {
            return Err(format!("status of {job}: {st:?}, container {}", c.id));
        }
        out.push(c.clone());
    }
    let rows = s.ps().await;
    if !["server", "client"].iter().all(|j| row(&rows, j).is_some_and(|r| r.state == "running")) {
        return Err(format!("ps: {}", describe(&rows)));
    }
    let client = out.pop().unwrap();
    Ok((out.pop().unwrap(), client))
}

/// Waits until the client container's log shows it fetched the server's page through its
/// link (`SERVER_PORT_80_TCP_ADDR:SERVER_PORT_80_TCP_PORT`, the ambassador port).
async fn client_reaches_server(s: &Setup, client: &Ctr, what: &str) {
    s.eventually(what, 60, || async {
        let out = Command::new("docker")
            .args(["-H", &s.d.host(), "logs", &client.id])
            .output()
            .map_err(|e| e.to_string())?;
        let log = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if log.contains(GREETING) {
            Ok(())
        } else {
            Err(format!("client log: {log}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_agent_runs_links_registers_survives_dockerd_restart_and_rm() {
    require_root();
    let t0 = Instant::now();
    let etcd = Etcd::start().await;
    let d = tokio::task::block_in_place(Dockerd::start);
    println!("etcd + dockerd up, image imported: {:.1?}", t0.elapsed());
    d.netns.ip(&["addr", "add", &format!("{ADDRESS}/32"), "dev", "lo"]);
    let extra: Vec<String> = vec![
        "--runtime".into(),
        "docker".into(),
        "--docker-socket".into(),
        d.socket.display().to_string(),
        "--address".into(),
        ADDRESS.into(),
    ];
    let agent = AgentProc::start_with(Some(&etcd.spec()), &extra).await;
    let v1 = V1Parents::of(&agent.cgroup.path);
    let mut s = Setup { d, agent, v1, etcd };
    let store = s.store().await;
    let node = s.agent.node.clone();

    // Deploy through the API.
    let t = Instant::now();
    let req = DeployRequest {
        name: STACK.into(),
        file: "docker-agent.yml".into(),
        text: stack_text(),
        dry_run: false,
        contexts: Default::default(),
    };
    let _: Value = s.agent.client().post("/v1/deploy", &req).await.unwrap().unwrap();
    let (server, client) = s
        .eventually("deploy -> both containers running", 90, || both_running(&s, &store, &[]))
        .await;
    println!("deployed and running: {:.1?}", t.elapsed());

    // `viking ps`: on this node, at the agent's address, the server with its published port.
    let rows = s.ps().await;
    assert_eq!(rows.iter().filter(|r| r.stack == STACK).count(), 2, "{}", describe(&rows));
    let srow = row(&rows, "server").unwrap();
    let crow = row(&rows, "client").unwrap();
    for r in [srow, crow] {
        assert_eq!(r.host, node, "{r:?}");
        assert_eq!(r.address.map(|a| a.to_string()).as_deref(), Some(ADDRESS), "{r:?}");
    }
    let tcp80 = Port { port: 80, proto: Proto::Tcp };
    assert_eq!(srow.ports.len(), 1, "{srow:?}");
    assert_eq!(srow.ports[0].0, tcp80, "{srow:?}");
    let host_port = srow.ports[0].1;
    assert!(crow.ports.is_empty(), "{crow:?}");

    // Docker's view: labels, the published port, the agent's cgroup as parent.
    let si = s.inspect(&server.id);
    let ci = s.inspect(&client.id);
    assert_eq!(published_80(&si), host_port);
    let relative = format!("/{}", s.v1.relative);
    for (c, job) in [(&si, "server"), (&ci, "client")] {
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels["viking.stack"], STACK, "{labels}");
        assert_eq!(labels["viking.job"], job, "{labels}");
        assert_eq!(labels["viking.index"], "0", "{labels}");
        assert_eq!(labels["viking.node"], node.as_str(), "{labels}");
        assert!(labels["viking.spec-hash"].as_str().is_some_and(|h| !h.is_empty()), "{labels}");
        assert_eq!(c["Config"]["Image"], IMAGE);
        assert_eq!(c["HostConfig"]["CgroupParent"], relative.as_str());
    }

    // The client's env has the link env `viking env dk/client` reports, and it points at the
    // ambassador (127.0.0.1 and the allocated port).
    let env: BTreeMap<String, String> =
        s.agent.client().get(&format!("/v1/env/{STACK}/client")).await.unwrap().unwrap();
    assert_eq!(env.get("SERVER_PORT_80_TCP_ADDR").map(String::as_str), Some("127.0.0.1"));
    let amb = env["SERVER_PORT_80_TCP_PORT"].clone();
    assert!(amb.parse::<u16>().is_ok_and(|p| p > 0), "{env:?}");
    assert_eq!(env["SERVER_PORT_80"], format!("127.0.0.1:{amb}"));
    assert_eq!(env["SERVER_PORT_80_TCP"], format!("tcp://127.0.0.1:{amb}"));
    assert_eq!(env["SERVER_PORT_80_TCP_PROTO"], "tcp");
    let cenv: Vec<String> = serde_json::from_value(ci["Config"]["Env"].clone()).unwrap();
    for (k, v) in &env {
        assert!(cenv.contains(&format!("{k}={v}")), "{k}={v} in the client's env: {cenv:?}");
    }
    let senv: Vec<String> = serde_json::from_value(si["Config"]["Env"].clone()).unwrap();
    assert!(!senv.iter().any(|kv| kv.starts_with("SERVER_PORT")), "{senv:?}");

    // Registered: /services/dk/dk_server/80/<host port>/dk_server_0 -> the agent's address,
    // the container's id; the status record names the same container.
    let regs = s.registrations(&store).await;
    check_registration(&regs, &node, host_port, &server.id).unwrap();

    // The published port answers at the registered address, and the client reaches the
    // server through its ambassador port (rewritten in the kernel to ADDRESS:host_port).
    let body = tokio::task::block_in_place(|| get_published(&s.d, host_port));
    assert!(body.contains(GREETING), "{body}");
    client_reaches_server(&s, &client, "client reaches server through the link").await;

    // dockerd restarts (SIGTERM to the PID the test started, started again on the same
    // dirs): its containers end with it; the agent reconnects and starts them again.
    let old_pid = s.d.pid();
    let t = Instant::now();
    tokio::task::block_in_place(|| s.d.stop());
    // While dockerd is down its containers are gone: the agent says so and unregisters them,
    // so no datapath keeps sending connections to a dead backend.
    s.eventually("dockerd down -> failed and unregistered", 30, || async {
        let regs = s.registrations(&store).await;
        let st = s.status(&store, "server").await;
        match st {
            Some(st) if regs.is_empty() && st.phase == Phase::Failed => Ok(()),
            other => Err(format!("registrations {regs:?}, server status {other:?}")),
        }
    })
    .await;
    tokio::task::block_in_place(|| s.d.start_again());
    assert_ne!(s.d.pid(), old_pid);
    println!("dockerd restarted: {:.1?}", t.elapsed());
    let old = [server.id.as_str(), client.id.as_str()];
    let (server2, client2) = s
        .eventually("dockerd restart -> both running in new containers", 90, || {
            both_running(&s, &store, &old)
        })
        .await;
    println!("restart converged: {:.1?} after the restart began", t.elapsed());
    let exited = s.agent.child.as_mut().and_then(|c| c.0.try_wait().ok().flatten());
    assert!(exited.is_none(), "the agent survives dockerd going away: {exited:?}\n{}", s.logs());
    let rows = s.ps().await;
    let srow = row(&rows, "server").unwrap().clone();
    println!(
        "after the restart: server restarts={}, client restarts={}",
        srow.restarts,
        row(&rows, "client").unwrap().restarts
    );
    let si2 = s.inspect(&server2.id);
    let host_port2 = published_80(&si2);
    assert_eq!(srow.ports, vec![(tcp80, host_port2)], "{srow:?}");
    assert_eq!(srow.address.map(|a| a.to_string()).as_deref(), Some(ADDRESS));
    // Registered again, with the new container (and its port); the old registration is gone.
    s.eventually("registered again with the new container", 30, || async {
        check_registration(&s.registrations(&store).await, &node, host_port2, &server2.id)
    })
    .await;
    // The old containers are gone (replaced by name), and the link works again.
    let names: Vec<String> = s.containers().into_keys().collect();
    assert_eq!(names, [format!("{STACK}_client_0"), format!("{STACK}_server_0")]);
    let body = tokio::task::block_in_place(|| get_published(&s.d, host_port2));
    assert!(body.contains(GREETING), "{body}");
    client_reaches_server(&s, &client2, "client reaches server again after the restart").await;

    // `viking rm dk` (the CLI, against the agent's API): containers, registrations and status
    // records go.
    let t = Instant::now();
    let out = Command::new(viking_bin())
        .args(["rm", STACK, "--server", &s.agent.api, "--token-file"])
        .arg(s.agent.token_file())
        .output()
        .unwrap();
    assert!(out.status.success(), "viking rm: {}", String::from_utf8_lossy(&out.stderr));
    s.eventually("viking rm -> containers, registrations and status gone", 60, || async {
        let ctrs = s.containers();
        let regs = s.registrations(&store).await;
        let ps = store.list(&format!("{}{node}/", keys::PS)).await.unwrap().kvs;
        let rows: Vec<PsRow> = s.ps().await.into_iter().filter(|r| r.stack == STACK).collect();
        if ctrs.is_empty() && regs.is_empty() && ps.is_empty() && rows.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "containers {ctrs:?}, registrations {regs:?}, {} status records, ps: {}",
                ps.len(),
                describe(&rows)
            ))
        }
    })
    .await;
    println!("rm: {:.1?}", t.elapsed());
    assert_eq!(s.d.cli(&["ps", "-aq"]), "", "no container left in the daemon");
    println!("total: {:.1?}", t0.elapsed());
}
