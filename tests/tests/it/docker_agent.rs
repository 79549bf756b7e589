//! The docker runtime end to end, through a real `viking agent --runtime docker` on a real
//! dockerd (started by the test in a network namespace of its own, `tests/src/docker.rs`) and
//! a real etcd, the agent's host a namespace behind the cluster's router: a deployed stack's
//! containers run on Viking's network (their allocated address, nothing published) with their
//! link env and labels, the linked service is registered at the container's own address and
//! port, the linking container reaches it through its ambassador port (the agent's datapath,
//! in the kernel), a dockerd restart is survived (new containers, registered again), and
//! `viking rm` removes containers, sandboxes and registrations.
//!
//! Traffic: loopback (etcd, the agent's API) and the host namespace (to the containers' veths).
#![allow(clippy::unwrap_used)]
use std::{
    collections::BTreeMap,
    future::Future,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpStream},
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
    cluster::{Cluster, Options},
    docker::{Dockerd, IMAGE},
    require_root, viking_bin,
};

const STACK: &str = "dk";
const GREETING: &str = "hello-from-server";

fn stack_text() -> String {
    format!(
        "server:\n  type: job\n  image: {IMAGE}\n  command: mkdir -p /www && echo {GREETING} > /www/index.html && exec httpd -f -p 80 -h /www\n  ports:\n    - 80\n\
         client:\n  type: job\n  image: {IMAGE}\n  command: while true; do timeout 5 wget -q -O - http://$SERVER_PORT_80_TCP_ADDR:$SERVER_PORT_80_TCP_PORT/; sleep 0.5; done\n  daemonize: true\n  link:\n    - server\n"
    )
}

/// The test's cluster: one host, running docker.
struct Setup {
    c: Cluster,
}

/// A container of the agent's node, as `docker ps -a` shows it.
#[derive(Debug, Clone)]
struct Ctr {
    name: String,
    id: String,
    state: String,
}

impl Setup {
    fn d(&self) -> &Dockerd {
        self.c.dockerd.as_ref().unwrap()
    }

    fn d_mut(&mut self) -> &mut Dockerd {
        self.c.dockerd.as_mut().unwrap()
    }

    fn agent(&self) -> &AgentProc {
        &self.c.hosts[0].agent
    }

    /// The agent's log and dockerd's, for a failure message.
    fn logs(&self) -> String {
        self.c.logs()
    }

    /// This node's instance containers (running or not; not their sandboxes), by name.
    fn containers(&self) -> BTreeMap<String, Ctr> {
        self.node_containers().into_iter().filter(|(n, _)| !n.ends_with(".sandbox")).collect()
    }

    /// Every container of this node: instances and their sandboxes.
    fn node_containers(&self) -> BTreeMap<String, Ctr> {
        let out = self.d().cli(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &format!("label=viking.node={}", self.agent().node),
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
        let v: Value = serde_json::from_str(&self.d().cli(&["inspect", id])).unwrap();
        v[0].clone()
    }

    async fn store(&self) -> EtcdStore {
        let etcd = self.c.etcd.as_ref().unwrap();
        EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap()
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
        let key = keys::ps(&self.agent().node, STACK, job, 0);
        let kv = store.get(&key).await.unwrap()?;
        Some(serde_json::from_slice(&kv.value).unwrap())
    }

    async fn ps(&self) -> Vec<PsRow> {
        self.agent().client().get("/v1/ps").await.unwrap().unwrap_or_default()
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

/// An HTTP GET of `/` at `ip:80` from the host's namespace, as every host reaches the
/// instance (through the overlay).
fn get_instance(s: &Setup, ip: Ipv4Addr) -> String {
    s.c.hosts[0].ns.enter(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect((ip, 80))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })();
            match attempt {
                Ok(out) if out.contains(GREETING) => return out,
                r if Instant::now() > deadline => panic!("GET {ip}:80/: {r:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
}

/// Checks the server's registration: exactly one for the stack, at
/// `/services/dk/dk_server/80/80/dk_server_0`, naming `container` at its own address.
/// Returns an error (to poll on) when it is not (yet) so.
fn check_registration(
    regs: &BTreeMap<String, Value>,
    node: &str,
    address: Ipv4Addr,
    container: &str,
) -> Result<(), String> {
    let key = format!("/services/{STACK}/{STACK}_server/80/80/{STACK}_server_0");
    let keys: Vec<&String> = regs.keys().collect();
    let reg = regs.get(&key).ok_or_else(|| format!("{key} not among {keys:?}"))?;
    if regs.len() != 1 {
        return Err(format!("one registration for the stack, not {keys:?}"));
    }
    if reg["id"] != container {
        return Err(format!("{key} names container {}, not {container}", reg["id"]));
    }
    assert_eq!(reg["ipaddress"], address.to_string(), "{reg}");
    assert_eq!(reg["host_port"], 80, "{reg}");
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
            .args(["-H", &s.d().host(), "logs", &client.id])
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
    let c = Cluster::start_with(Options { hosts: 1, docker: vec![0], ..Options::default() }).await;
    println!("etcd + dockerd + agent up, image imported: {:.1?}", t0.elapsed());
    let mut s = Setup { c };
    let store = s.store().await;
    let node = s.agent().node.clone();

    // Deploy through the API.
    let t = Instant::now();
    let req = DeployRequest {
        name: STACK.into(),
        file: "docker-agent.yml".into(),
        text: stack_text(),
        dry_run: false,
        contexts: Default::default(),
    };
    let _: Value = s.agent().client().post("/v1/deploy", &req).await.unwrap().unwrap();
    let (server, client) = s
        .eventually("deploy -> both containers running", 90, || both_running(&s, &store, &[]))
        .await;
    println!("deployed and running: {:.1?}", t.elapsed());

    // `viking ps`: on this node, each at its own allocated address; the server's port is its
    // own (nothing is published on the host).
    let rows = s.ps().await;
    assert_eq!(rows.iter().filter(|r| r.stack == STACK).count(), 2, "{}", describe(&rows));
    let srow = row(&rows, "server").unwrap();
    let crow = row(&rows, "client").unwrap();
    let pool: ipnetwork::Ipv4Network = viking::cluster::DEFAULT_POOL.parse().unwrap();
    let address = |r: &PsRow| match r.address {
        Some(IpAddr::V4(a)) if pool.contains(a) => a,
        other => panic!("{r:?}: {other:?} is not an allocated address"),
    };
    for r in [srow, crow] {
        assert_eq!(r.host, node, "{r:?}");
    }
    let server_ip = address(srow);
    assert_ne!(server_ip, address(crow));
    let tcp80 = Port { port: 80, proto: Proto::Tcp };
    assert_eq!(srow.ports, vec![(tcp80, 80)], "{srow:?}");
    assert!(crow.ports.is_empty(), "{crow:?}");

    // Docker's view: labels, the agent's cgroup as parent, the network of its sandbox.
    let si = s.inspect(&server.id);
    let ci = s.inspect(&client.id);
    let relative = s.c.hosts[0].v1.as_ref().unwrap().relative();
    for (c, job) in [(&si, "server"), (&ci, "client")] {
        let labels = &c["Config"]["Labels"];
        assert_eq!(labels["viking.stack"], STACK, "{labels}");
        assert_eq!(labels["viking.job"], job, "{labels}");
        assert_eq!(labels["viking.index"], "0", "{labels}");
        assert_eq!(labels["viking.node"], node.as_str(), "{labels}");
        assert!(labels["viking.spec-hash"].as_str().is_some_and(|h| !h.is_empty()), "{labels}");
        assert_eq!(c["Config"]["Image"], IMAGE);
        assert_eq!(c["HostConfig"]["CgroupParent"], relative.as_str());
        let sandbox = s.inspect(&format!("{STACK}_{job}_0.sandbox"));
        let mode = format!("container:{}", sandbox["Id"].as_str().unwrap());
        assert_eq!(c["HostConfig"]["NetworkMode"], mode.as_str());
        assert_eq!(sandbox["HostConfig"]["NetworkMode"], "none");
        let published = c["NetworkSettings"]["Ports"].as_object().map_or(0, |p| p.len());
        assert_eq!(published, 0, "nothing published: {}", c["NetworkSettings"]);
    }

    // The client's env has the link env `viking env dk/client` reports, and it points at the
    // ambassador (127.0.0.1 and the allocated port).
    let env: BTreeMap<String, String> =
        s.agent().client().get(&format!("/v1/env/{STACK}/client")).await.unwrap().unwrap();
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

    // Registered: /services/dk/dk_server/80/80/dk_server_0 -> its own address, the
    // container's id; the status record names the same container.
    let regs = s.registrations(&store).await;
    check_registration(&regs, &node, server_ip, &server.id).unwrap();

    // The server answers at the registered address, and the client reaches it through its
    // ambassador port (rewritten in the kernel to the server's address).
    let body = tokio::task::block_in_place(|| get_instance(&s, server_ip));
    assert!(body.contains(GREETING), "{body}");
    client_reaches_server(&s, &client, "client reaches server through the link").await;

    // dockerd restarts (SIGTERM to the PID the test started, started again on the same
    // dirs): its containers end with it; the agent reconnects and starts them again.
    let old_pid = s.d().pid();
    let t = Instant::now();
    tokio::task::block_in_place(|| s.d_mut().stop());
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
    tokio::task::block_in_place(|| s.d_mut().start_again());
    assert_ne!(s.d().pid(), old_pid);
    println!("dockerd restarted: {:.1?}", t.elapsed());
    let old = [server.id.as_str(), client.id.as_str()];
    let (server2, client2) = s
        .eventually("dockerd restart -> both running in new containers", 90, || {
            both_running(&s, &store, &old)
        })
        .await;
    println!("restart converged: {:.1?} after the restart began", t.elapsed());
    let pid = s.agent().child.as_ref().map(|c| c.pid()).unwrap();
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the agent survives dockerd going away\n{}",
        s.logs()
    );
    let rows = s.ps().await;
    let srow = row(&rows, "server").unwrap().clone();
    println!(
        "after the restart: server restarts={}, client restarts={}",
        srow.restarts,
        row(&rows, "client").unwrap().restarts
    );
    // The same address (the instance's, not the container's) and port.
    assert_eq!(srow.ports, vec![(tcp80, 80)], "{srow:?}");
    assert_eq!(address(&srow), server_ip);
    // Registered again, with the new container; the old registration is gone.
    s.eventually("registered again with the new container", 30, || async {
        check_registration(&s.registrations(&store).await, &node, server_ip, &server2.id)
    })
    .await;
    // The old containers are gone (replaced by name), and the link works again.
    let names: Vec<String> = s.containers().into_keys().collect();
    assert_eq!(names, [format!("{STACK}_client_0"), format!("{STACK}_server_0")]);
    let body = tokio::task::block_in_place(|| get_instance(&s, server_ip));
    assert!(body.contains(GREETING), "{body}");
    client_reaches_server(&s, &client2, "client reaches server again after the restart").await;

    // `viking rm dk` (the CLI, against the agent's API): containers, sandboxes, registrations
    // and status records go.
    let t = Instant::now();
    let out = Command::new(viking_bin())
        .args(["rm", STACK, "--server", &s.agent().api, "--token-file"])
        .arg(s.agent().token_file())
        .output()
        .unwrap();
    assert!(out.status.success(), "viking rm: {}", String::from_utf8_lossy(&out.stderr));
    s.eventually("viking rm -> containers, registrations and status gone", 60, || async {
        let ctrs = s.node_containers();
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
    assert_eq!(s.d().cli(&["ps", "-aq"]), "", "no container left in the daemon");
    println!("total: {:.1?}", t0.elapsed());
}
