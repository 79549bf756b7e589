//! Scheduling, reconciling and registration on a three-host cluster (network namespaces,
//! one etcd, an agent per host with the exec runtime), with real processes as instances:
//! redis-server for shared/mongo, vk-probe servers for auth and middleware, and a client
//! loop for web.
use std::{collections::BTreeSet, io::Write as _, process::Stdio, time::Duration};

use viking::control::instances::PsRow;
use viking_tests::{
    cluster::{bin, rows, Cluster},
    probe::Conn,
    viking_bin,
};

fn shared_stack() -> String {
    let probe = bin("vk-probe");
    format!(
        "mongo:\n  type: job\n  command: redis-server --port 27017 --save '' --appendonly no --protected-mode no\n  ports:\n    - 27017\n  volume:\n    - /db/data\n\
         auth:\n  type: job\n  command: {probe} serve 0.0.0.0:80\n  ports:\n    - 80\n  volume:\n    - /db/data\n"
    )
}

fn web_stack(middleware_scale: u32) -> String {
    let probe = bin("vk-probe");
    format!(
        "middleware:\n  type: job\n  command: {probe} serve 0.0.0.0:80\n  ports:\n    - 80\n  scale: {middleware_scale}\n  link:\n    - shared/mongo\n    - shared/auth\n\
         web:\n  type: job\n  command: while true; do {probe} tcp $MIDDLEWARE_PORT_80 6; redis-cli -h $SHARED_MONGO_PORT_27017_TCP_ADDR -p $SHARED_MONGO_PORT_27017_TCP_PORT ping; sleep 0.3; done\n  ports:\n    - 80\n  link:\n    - shared/mongo\n    - shared/auth\n    - middleware\n"
    )
}

fn all_running(rows: &[PsRow], n: usize) -> bool {
    rows.len() == n && rows.iter().all(|r| r.state == "running")
}

/// The names of the middleware instances web's client loop reached, from its log.
fn reached(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Conn>(l).ok())
        .filter_map(|c| c.backend().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn stacks_spread_register_and_link_across_hosts() {
    let c = Cluster::start(3).await;
    c.deploy("shared", &shared_stack()).await;
    c.deploy("web", &web_stack(3)).await;
    let ps = c.wait_ps("6 instances running", |r| all_running(r, 6)).await;

    // Replicas spread: one middleware per host.
    let mw = rows(&ps, "web", "middleware");
    let hosts: BTreeSet<&str> = mw.iter().map(|r| r.host.as_str()).collect();
    assert_eq!(hosts.len(), 3, "middleware spread over the hosts: {mw:#?}");

    // Every instance with ports is registered (seed 002 format) at its own address.
    let regs = c.registrations().await;
    for r in &ps {
        let key = format!(
            "/services/{0}/{0}_{1}/{2}/{2}/{0}_{1}_{3}",
            r.stack, r.job, r.ports[0].0.port, r.index
        );
        let reg = regs.get(&key).unwrap_or_else(|| panic!("{key} registered: {regs:#?}"));
        assert_eq!(reg["host"], r.host.as_str());
        assert_eq!(reg["ipaddress"], r.address.expect("an address").to_string());
    }

    // web got the link env `viking env` shows, and reaches middleware on every host through
    // its MIDDLEWARE_PORT_80 ambassador port, and redis (shared/mongo) through its own.
    let web = rows(&ps, "web", "web")[0].clone();
    let host = c.host(&web.host);
    let env: std::collections::BTreeMap<String, String> =
        host.agent.client().get("/v1/env/web/web").await.unwrap().unwrap();
    let log_of_web = || host.agent.instance_log("web_web_0");
    for _ in 0..100 {
        if reached(&log_of_web()).len() == 3 && log_of_web().contains("PONG") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = log_of_web();
    let want: BTreeSet<String> = (0..3).map(|i| format!("web_middleware_{i}")).collect();
    assert_eq!(reached(&log), want, "web reached every middleware instance:\n{log}");
    assert!(log.contains("PONG"), "web reached redis through SHARED_MONGO:\n{log}");
    let pid = regs["/services/web/web_web/80/80/web_web_0"]["id"].as_str().unwrap().to_owned();
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    for var in ["SHARED_MONGO_PORT_27017", "SHARED_AUTH_PORT_80_TCP", "MIDDLEWARE_PORT_80_TCP_PORT"]
    {
        assert!(
            environ.split('\0').any(|kv| kv == format!("{var}={}", env[var])),
            "{var}={} in web's environment",
            env[var]
        );
    }

    // `viking rm web`: its instances stop everywhere and their registrations go.
    c.hosts[0].agent.client().delete("/v1/stacks/web").await.unwrap();
    c.wait_ps("only shared left", |r| r.iter().all(|r| r.stack == "shared")).await;
    let mut left = c.registrations().await;
    for _ in 0..50 {
        if left.keys().all(|k| !k.starts_with("/services/web/")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = c.registrations().await;
    }
    assert!(left.keys().all(|k| !k.starts_with("/services/web/")), "{left:#?}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "web's process ended");
}

#[tokio::test]
async fn a_lost_host_moves_its_instances_and_fixed_ones_wait_for_it() {
    let mut c = Cluster::start(3).await;
    c.deploy("shared", &shared_stack()).await;
    c.deploy("web", &web_stack(3)).await;
    let ps = c.wait_ps("6 instances running", |r| all_running(r, 6)).await;
    let lost = rows(&ps, "shared", "mongo")[0].host.clone();
    let moved: Vec<u32> =
        rows(&ps, "web", "middleware").iter().filter(|r| r.host == lost).map(|r| r.index).collect();
    assert_eq!(moved.len(), 1);

    let i = c.hosts.iter().position(|h| h.agent.node == lost).unwrap();
    c.hosts[i].agent.kill();
    // After the lease (10 s) expires: the middleware instance runs on another host and is
    // registered there; mongo (fixed: it has a volume) waits for its host and says so.
    let ps = c
        .wait_ps("the lost host's instances placed again", |r| {
            rows(r, "web", "middleware").iter().all(|m| m.host != lost && m.state == "running")
                && rows(r, "shared", "mongo").iter().all(|m| m.state == "waiting")
        })
        .await;
    let mongo = rows(&ps, "shared", "mongo")[0].clone();
    assert!(mongo.detail.contains(&lost), "mongo says which host it waits for: {mongo:?}");
    let m =
        rows(&ps, "web", "middleware").into_iter().find(|r| r.index == moved[0]).unwrap().clone();
    let key = format!("/services/web/web_middleware/80/80/web_middleware_{}", m.index);
    let mut regs = c.registrations().await;
    for _ in 0..50 {
        if regs.get(&key).is_some_and(|r| r["host"] == m.host.as_str()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        regs = c.registrations().await;
    }
    assert_eq!(regs[&key]["host"], m.host.as_str(), "the registration moved with it");
    assert!(regs.values().all(|r| r["host"] != lost.as_str()), "nothing registered on {lost}");

    // The host comes back: mongo returns to it (its history), and runs again.
    c.hosts[i].agent.restart().await;
    c.wait_ps("mongo back on its host", |r| {
        rows(r, "shared", "mongo").iter().all(|m| m.host == lost && m.state == "running")
    })
    .await;
}

#[tokio::test]
async fn a_killed_instance_is_restarted_with_backoff_and_registered_again() {
    let c = Cluster::start(1).await;
    c.deploy("shared", &shared_stack()).await;
    c.wait_ps("2 instances running", |r| all_running(r, 2)).await;
    let key = "/services/shared/shared_auth/80/80/shared_auth_0";
    let old = c.registrations().await[key]["id"].as_str().unwrap().to_owned();
    let pid: i32 = old.parse().unwrap();
    // NB: this process was started by the test's own agent.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let ps = c
        .wait_ps("auth restarted", |r| {
            rows(r, "shared", "auth").iter().all(|a| a.state == "running" && a.restarts >= 1)
        })
        .await;
    assert_eq!(rows(&ps, "shared", "auth")[0].restarts, 1);
    let mut now = old.clone();
    for _ in 0..50 {
        now = c
            .registrations()
            .await
            .get(key)
            .and_then(|r| r["id"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if !now.is_empty() && now != old {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !now.is_empty() && now != old,
        "registered again with the new process ({old} -> {now})"
    );
}

#[tokio::test]
async fn viking_run_pipes_stdin_through_a_job_on_a_single_embedded_host() {
    // A single host with nothing installed: the agent's embedded store, the exec runtime.
    let c = Cluster::single_embedded().await;
    c.deploy("tools", "upper:\n  type: job\n  command: tr a-z A-Z\n").await;
    // Deployed, it runs once to completion (its stdin is empty) and is removed.
    let ps = c.wait_ps("upper completed", |r| r.iter().any(|r| r.state == "completed")).await;
    assert_eq!(ps[0].detail, "exit 0");

    let agent = &c.hosts[0].agent;
    let mut child = std::process::Command::new(viking_bin())
        .args(["run", "tools/upper", "--server", &agent.api, "--token-file"])
        .arg(agent.token_file())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "HI\n");
}

/// `viking run --viking-host B` sent to host A's API: placed on B by the scheduler, run there
/// with the CLI's stdin and stdout relayed across hosts, and its exit code is the CLI's.
#[tokio::test]
async fn viking_run_goes_to_the_host_it_is_placed_on_with_its_streams_and_exit_code() {
    let c = Cluster::start(2).await;
    c.deploy(
        "tools",
        "where:\n  type: job\n  command: tr a-z A-Z; echo on $VIKING_HOST >&2; exit 7\n",
    )
    .await;
    c.wait_ps("the deployed run-once job completed", |r| r.len() == 1 && r[0].state == "completed")
        .await;
    let (a, b) = (&c.hosts[0].agent, &c.hosts[1].agent);
    let mut child = std::process::Command::new(viking_bin())
        .args(["run", "tools/where", "--viking-host", &b.node, "--server", &a.api, "--token-file"])
        .arg(a.token_file())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"shout\n").unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "SHOUT\n");
    assert!(err.contains(&format!("on {}", b.node)), "{err}");

    // A host that is not in the cluster: refused, saying why.
    let out = std::process::Command::new(viking_bin())
        .args([
            "run",
            "tools/where",
            "--viking-host",
            "nowhere",
            "--server",
            &a.api,
            "--token-file",
        ])
        .arg(a.token_file())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("host nowhere is not in the cluster"));
}

#[tokio::test]
async fn a_backend_descriptor_reaches_tagged_instances_inside_its_container_only() {
    // Embassy mode through the agent: `app` asks for `db_redis[prod]` on its own 127.0.0.1:6379;
    // only the redis instances with the `prod` tag answer it.
    let c = Cluster::start(2).await;
    let redis = |name: &str, tags: &str| {
        format!(
            "{name}:\n  type: job\n  command: redis-server --port 6379 --save '' --appendonly no --protected-mode no\n  ports:\n    - 6379\n  tags: [{tags}]\n  scale: 2\n"
        )
    };
    c.deploy("db", &(redis("redis", "prod") + &redis("spare", "dev"))).await;
    c.wait_ps("4 redis running", |r| all_running(r, 4)).await;
    let app = "app:\n  type: job\n  env:\n    BACKEND_REDIS: db_redis[prod];6379/tcp\n    BACKEND_BAD: 'no port here'\n  command: while true; do redis-cli -p 6379 info server | grep tcp_port; redis-cli -p 6379 set seen $VIKING_INSTANCE > /dev/null; sleep 0.3; done\n  daemonize: true\n";
    c.deploy("front", app).await;
    let ps = c.wait_ps("app running", |r| all_running(r, 5)).await;
    let host = c.host(&rows(&ps, "front", "app")[0].host);
    let mut log = String::new();
    for _ in 0..100 {
        log = host.agent.instance_log("front_app_0");
        if log.matches("tcp_port:6379").count() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        log.matches("tcp_port:6379").count() >= 3,
        "app reached redis on 127.0.0.1:6379:\n{log}"
    );
    // Which redis instances app wrote to: only the prod ones (db_redis), never db_spare.
    let probe = |r: &PsRow| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &c.host(&r.host).ns.name, "redis-cli", "-h"])
            .arg(r.address.expect("address").to_string())
            .args(["-p", "6379", "get", "seen"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    for _ in 0..50 {
        if rows(&ps, "db", "redis").iter().all(|r| probe(r) == "front_app_0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for r in rows(&ps, "db", "redis") {
        assert_eq!(probe(r), "front_app_0", "prod instance {} was used", r.index);
    }
    for r in rows(&ps, "db", "spare") {
        assert_eq!(probe(r), "", "dev instance {} was never used", r.index);
    }
    // The bad descriptor is reported with the variable's name; the good one works anyway.
    let agent_log = host.agent.log();
    assert!(agent_log.contains("BACKEND_BAD"), "{agent_log}");
}

#[tokio::test]
async fn a_redeployed_link_reaches_the_running_job() {
    // The leader reuses its plans while the deployed jobs stay the same; a redeploy that adds
    // a link must still reach the instance (replaced, with the link's env).
    let c = Cluster::single_embedded().await;
    let db = "db:\n  type: job\n  command: exec busybox httpd -f -p 8080\n  ports:\n    - 8080\n";
    let app = "app:\n  type: job\n  command: while true; do echo \"db=${DB_PORT_8080_TCP_PORT:-none}\"; sleep 0.2; done\n  daemonize: true\n";
    c.deploy("s", &format!("{db}{app}")).await;
    c.wait_ps("db and app running", |r| all_running(r, 2)).await;
    let agent = &c.hosts[0].agent;
    let log_has = |want: &str| {
        (0..200).any(|_| {
            let found = agent.instance_log("s_app_0").contains(want);
            if !found {
                std::thread::sleep(Duration::from_millis(50));
            }
            found
        })
    };
    assert!(log_has("db=none"), "{}", agent.instance_log("s_app_0"));

    let linked = format!("{app}  link:\n    - db\n");
    let plan = c.deploy("s", &format!("{db}{linked}")).await;
    let port = plan
        .jobs
        .iter()
        .find(|j| j.job.name == "app")
        .and_then(|j| j.link_env.get("DB_PORT_8080_TCP_PORT").cloned())
        .expect("the plan gives app the link");
    let want = format!("db={port}");
    assert!(log_has(&want), "app never got {want}: {}", agent.instance_log("s_app_0"));
}
