//! The docker runtime against a real dockerd (started by the test, in its own network
//! namespace, with its own directories; docs/runtime-docker.md): containers start with their
//! env, labels, volumes, published ports and the agent's cgroup as parent; list, exit codes
//! and remove; the event follower survives a dockerd restart; run with piped stdin/stdout.
//!
//! Traffic: only to 127.0.0.1 inside the daemon's namespace (docker-proxy -> the container on
//! that namespace's bridge).
#![allow(clippy::unwrap_used)]
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, TcpStream},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Notify;
use viking::{
    datapath::Proto,
    runtime::{
        docker::DockerRuntime, spec_hash, Instance, InstanceSpec, InstanceState, Runtime,
        RuntimeConfig,
    },
    stack::Port,
};
use viking_tests::{
    docker::{DockerCgroup, Dockerd, IMAGE},
    etcd::TempDir,
    require_root, unique,
};

fn config(node: &str, data: &TempDir, cgroup: &DockerCgroup) -> RuntimeConfig {
    RuntimeConfig {
        node: node.to_owned(),
        data_dir: data.path.clone(),
        cgroup: cgroup.cgroup.path.clone(),
        host_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
        // NB: the docker runtime does not use it: dockerd has the network it has.
        host_netns: None,
    }
}

fn spec(stack: &str, job: &str, index: u32, script: &str) -> InstanceSpec {
    InstanceSpec {
        stack: stack.to_owned(),
        job: job.to_owned(),
        index,
        image: Some(IMAGE.to_owned()),
        command: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        ports: Vec::new(),
        volumes: Vec::new(),
        daemonize: true,
        address: None,
        build: None,
    }
}

/// An HTTP GET to 127.0.0.1:port inside the daemon's namespace, retried until it answers.
fn http_get(d: &Dockerd, port: u16, path: &'static str) -> String {
    d.netns.enter(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })();
            match attempt {
                Ok(out) if out.starts_with("HTTP/1.") && out.contains(" 200 ") => return out,
                r if Instant::now() > deadline => panic!("GET 127.0.0.1:{port}{path}: {r:?}"),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
}

/// Waits (woken by `changed()`, polling as a fallback) until `f` holds for the list.
async fn wait_list(
    rt: &DockerRuntime,
    what: &str,
    f: impl Fn(&[Instance]) -> bool,
) -> Vec<Instance> {
    let notify = rt.changed();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = rt.list().await.unwrap();
        if f(&list) {
            return list;
        }
        assert!(Instant::now() < deadline, "{what}: {list:#?}");
        let _ = tokio::time::timeout(Duration::from_millis(500), notify.notified()).await;
    }
}

/// Consumes any stored wake-up, so that the next one is news.
async fn drain(notify: &Arc<Notify>) {
    while tokio::time::timeout(Duration::from_millis(300), notify.notified()).await.is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_start_with_env_labels_ports_and_are_removed() {
    require_root();
    // NB: declared first, dropped last: the containers are gone before their cgroups.
    let cgroup = DockerCgroup::new();
    let data = TempDir::new("vkdd");
    let d = Dockerd::start();
    let node = unique("n");
    let rt = DockerRuntime::connect(config(&node, &data, &cgroup), &d.socket).unwrap();
    assert!(rt.describe().contains("docker"));

    let mut web = spec(
        "web",
        "front",
        0,
        "echo \"$GREETING from $HOSTNAME_HINT\" > /data/index.html && exec httpd -f -p 80 -h /data",
    );
    web.env.insert("GREETING".into(), "hello-viking".into());
    web.env.insert("HOSTNAME_HINT".into(), "front".into());
    web.env.insert("SHARED_MONGO_PORT_27017".into(), "127.0.0.1:20000".into());
    web.ports = vec![Port { port: 80, proto: Proto::Tcp }, Port { port: 53, proto: Proto::Udp }];
    web.volumes = vec!["/data".into(), "shared:/shared".into()];

    let t = Instant::now();
    let inst = rt.start(&web).await.unwrap();
    println!("start: {:?}", t.elapsed());
    assert_eq!(inst.name, "web_front_0");
    assert_eq!((inst.stack.as_str(), inst.job.as_str(), inst.index), ("web", "front", 0));
    assert_eq!(inst.state, InstanceState::Running);
    assert_eq!(inst.address, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    assert_eq!(inst.spec_hash, spec_hash(&web));
    assert_eq!(inst.env.get("GREETING").map(String::as_str), Some("hello-viking"));
    assert_eq!(
        inst.env.get("SHARED_MONGO_PORT_27017").map(String::as_str),
        Some("127.0.0.1:20000")
    );
    let tcp = Port { port: 80, proto: Proto::Tcp };
    let udp = Port { port: 53, proto: Proto::Udp };
    let host_port = inst.ports.iter().find(|(p, _)| *p == tcp).map(|(_, h)| *h).unwrap();
    assert!(host_port > 0);
    assert!(inst.ports.iter().any(|(p, h)| *p == udp && *h > 0), "{:?}", inst.ports);
    let cookie = inst.netns_cookie.expect("a running container's netns cookie");
    assert_ne!(cookie, viking::datapath::netns::current_cookie().unwrap());

    // Labels, as docker sees them.
    let labels: BTreeMap<String, String> =
        serde_json::from_str(&d.cli(&["inspect", "-f", "{{json .Config.Labels}}", &inst.handle]))
            .unwrap();
    assert_eq!(labels.get("viking.stack").map(String::as_str), Some("web"));
    assert_eq!(labels.get("viking.job").map(String::as_str), Some("front"));
    assert_eq!(labels.get("viking.index").map(String::as_str), Some("0"));
    assert_eq!(labels.get("viking.node"), Some(&node));
    assert_eq!(labels.get("viking.spec-hash"), Some(&spec_hash(&web).to_string()));

    // Below the agent's cgroup in the v2 hierarchy: the agent's programs see its sockets.
    let pid = d.cli(&["inspect", "-f", "{{.State.Pid}}", &inst.handle]);
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v2 = cg.lines().find_map(|l| l.strip_prefix("0::")).unwrap();
    assert_eq!(v2, format!("{}/{}", cgroup.relative, inst.handle), "{cg}");

    // The published port reaches httpd, which serves the file it wrote to its volume.
    let body = http_get(&d, host_port, "/index.html");
    assert!(body.contains("hello-viking from front"), "{body}");
    let on_host = data.path.join("volumes/web/front/data/index.html");
    assert_eq!(std::fs::read_to_string(&on_host).unwrap().trim(), "hello-viking from front");
    assert!(data.path.join("volumes/web/shared").is_dir());

    // Listed, as running, with its ports; another node's runtime on the same daemon sees none.
    let list = rt.list().await.unwrap();
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0].state, InstanceState::Running);
    assert_eq!(list[0].ports, inst.ports);
    assert_eq!(list[0].handle, inst.handle);
    let other = DockerRuntime::connect(config(&unique("m"), &data, &cgroup), &d.socket).unwrap();
    assert!(other.list().await.unwrap().is_empty());

    // Starting the same instance again replaces the container.
    let again = rt.start(&web).await.unwrap();
    assert_ne!(again.handle, inst.handle);
    let list = rt.list().await.unwrap();
    assert_eq!(list.iter().map(|i| i.handle.as_str()).collect::<Vec<_>>(), [again.handle.as_str()]);

    // A job that ends is listed as exited with its code, and its end wakes changed().
    let once = spec("web", "once", 0, "sleep 1; exit 3");
    rt.start(&once).await.unwrap();
    wait_list(&rt, "once exits with 3", |l| {
        l.iter().any(|i| i.job == "once" && i.state == InstanceState::Exited(3))
    })
    .await;

    // A job whose image is missing fails clearly (nothing is pulled).
    let mut missing = spec("web", "missing", 0, "true");
    missing.image = Some("viking/not-here:latest".into());
    let err = rt.start(&missing).await.unwrap_err().to_string();
    assert!(err.contains("not on this host"), "{err}");

    // remove: gone from the list and from docker; removing again is fine.
    let t = Instant::now();
    rt.remove("web_front_0").await.unwrap();
    println!("remove (running): {:?}", t.elapsed());
    rt.remove("web_once_0").await.unwrap();
    rt.remove("web_front_0").await.unwrap();
    assert!(rt.list().await.unwrap().is_empty());
    assert_eq!(d.cli(&["ps", "-aq"]), "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_follower_reconnects_after_dockerd_restart() {
    require_root();
    let cgroup = DockerCgroup::new();
    let data = TempDir::new("vkdd");
    let mut d = Dockerd::start();
    let rt = DockerRuntime::connect(config(&unique("n"), &data, &cgroup), &d.socket).unwrap();
    let notify = rt.changed();

    // Connected, and a container's events wake changed().
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.event_connections() < 1 {
        assert!(Instant::now() < deadline, "the event stream never connected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drain(&notify).await;
    rt.start(&spec("ev", "a", 0, "sleep 1")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), notify.notified())
        .await
        .expect("a container start wakes changed()");

    // dockerd goes away (SIGTERM to the PID we started) and comes back on the same dirs.
    let old_pid = d.pid();
    let t = Instant::now();
    // NB: blocking calls off the runtime's workers: the follower keeps running meanwhile.
    tokio::task::block_in_place(|| d.stop());
    let deadline = Instant::now() + Duration::from_secs(20);
    while rt.events_connected() {
        assert!(Instant::now() < deadline, "the follower did not notice dockerd going");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Calls fail while it is down, without hanging.
    assert!(rt.list().await.is_err());
    drain(&notify).await;
    tokio::task::block_in_place(|| d.restart());
    assert_ne!(d.pid(), old_pid);
    tokio::time::timeout(Duration::from_secs(30), notify.notified())
        .await
        .expect("changed() fires once the event stream is back");
    assert!(rt.event_connections() >= 2, "connections: {}", rt.event_connections());
    println!("dockerd restart -> events reconnected: {:?}", t.elapsed());

    // The container from before ended with the daemon; the list says so.
    wait_list(&rt, "the old container is not running", |l| {
        l.iter().all(|i| i.state != InstanceState::Running)
    })
    .await;

    // A container started after the restart is seen, and its own end comes as an event
    // through the new stream.
    let inst = rt.start(&spec("ev", "b", 0, "sleep 2; exit 5")).await.unwrap();
    assert_eq!(inst.state, InstanceState::Running);
    let list = rt.list().await.unwrap();
    assert!(list.iter().any(|i| i.name == "ev_b_0" && i.state == InstanceState::Running));
    drain(&notify).await;
    tokio::time::timeout(Duration::from_secs(15), notify.notified())
        .await
        .expect("the container's exit wakes changed() through the new stream");
    wait_list(&rt, "ev_b_0 exits with 5", |l| {
        l.iter().any(|i| i.name == "ev_b_0" && i.state == InstanceState::Exited(5))
    })
    .await;
    rt.remove("ev_a_0").await.unwrap();
    rt.remove("ev_b_0").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_with_io_pipes_stdin_and_output_and_returns_the_exit_code() {
    require_root();
    let cgroup = DockerCgroup::new();
    let data = TempDir::new("vkdd");
    let d = Dockerd::start();
    let node = unique("n");
    let rt = DockerRuntime::connect(config(&node, &data, &cgroup), &d.socket).unwrap();

    let mut job = spec("tools", "cat", 0, "cat; echo \"to stderr: $WORD\" >&2; exit 7");
    job.env.insert("WORD".into(), "viking".into());
    let input: &'static [u8] = b"line one\nline two\n";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let t = Instant::now();
    let code = tokio::time::timeout(
        Duration::from_secs(60),
        rt.run_with_io(&job, input, &mut out, &mut err),
    )
    .await
    .expect("the run ends once its stdin is closed")
    .unwrap();
    println!("run_with_io: {:?}", t.elapsed());
    assert_eq!(code, 7);
    assert_eq!(String::from_utf8_lossy(&out), "line one\nline two\n");
    assert_eq!(String::from_utf8_lossy(&err), "to stderr: viking\n");

    // Success, and nothing is left behind: the run's container is removed and never listed.
    let ok = spec("tools", "ok", 0, "echo fine");
    let mut out = Vec::new();
    let code = rt.run_with_io(&ok, tokio::io::empty(), &mut out, tokio::io::sink()).await.unwrap();
    assert_eq!((code, String::from_utf8_lossy(&out).as_ref()), (0, "fine\n"));
    assert!(rt.list().await.unwrap().is_empty());
    assert_eq!(d.cli(&["ps", "-aq"]), "");
    assert!(Path::new(&d.socket).exists());
}
