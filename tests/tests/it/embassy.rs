//! Embassy mode (seeds 002, 004): a container whose environment says
//! `BACKEND_REDIS=redis.master[prod];6379/tcp` reaches, at 127.0.0.1:6379 inside its own
//! network namespace, the registered redis-servers tagged `prod`, and follows registrations
//! as they come and go. The discovery loop (`discovery::sync::run`) runs in-process against a
//! real etcd and a datapath attached to the test's cgroup.
//!
//! A "container" here is a network namespace of the test's (loopback up) whose processes run
//! in the test's cgroup; the redis-servers run in another namespace, reached over veth.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    process::Stdio,
    time::Duration,
};

use viking::{
    cluster::DEFAULT_PORT_RANGE,
    datapath::{
        maps_dir, netns::netns_cookie, Algo, Datapath, DatapathConfig, Frontend, Proto,
        ServiceSpec, ServiceTable,
    },
    discovery::{
        embassy::{Container, Containers},
        sync,
    },
    store::Store,
};
use viking_tests::{
    etcd::{Etcd, TempDir},
    guards::{veth, BpfDir, Cgroup, ChildGuard, NetNs},
    require_root,
};

const SERVICE: &str = "/services/prod/redis.master/6379";

/// A real redis-server that answers `GET name` with its own name.
struct Redis {
    _child: ChildGuard,
    _dir: TempDir,
}

impl Redis {
    fn start(ns: &NetNs, name: &str, ip: &str, port: u16) -> Self {
        let dir = TempDir::new("vk-redis-");
        let mut cmd = ns.command("redis-server", None);
        cmd.args(["--bind", ip, "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(&dir.path)
            .stdout(Stdio::null());
        let child = ChildGuard::spawn(cmd);
        for _ in 0..200 {
            let out = ns
                .command("redis-cli", None)
                .args(["-h", ip, "-p", &port.to_string(), "set", "name", name])
                .output()
                .expect("redis-cli");
            if String::from_utf8_lossy(&out.stdout).trim() == "OK" {
                return Self { _child: child, _dir: dir };
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("redis-server {name} on {ip}:{port} did not come up");
    }
}

fn registration(id: &str, ip: &str, tags: &[&str]) -> Vec<u8> {
    serde_json::json!({
        "id": id, "host": "test", "ipaddress": ip, "host_port": "6379", "port": "6379",
        "proto": "tcp", "tags": tags, "name": id, "image": "redis",
    })
    .to_string()
    .into_bytes()
}

/// Which redis answers `GET name` at `host`:`port`, over `n` new connections made from
/// `ns` inside `cgroup` ("refused" when nothing does).
fn who(ns: &NetNs, cgroup: &Cgroup, host: &str, port: u16, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(|_| {
            let out = ns
                .command("redis-cli", Some(cgroup))
                .args(["-h", host, "-p", &port.to_string(), "get", "name"])
                .stdin(Stdio::null())
                .output()
                .expect("redis-cli");
            let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let err = String::from_utf8_lossy(&out.stderr);
            if !said.is_empty() {
                said
            } else if err.contains("refused") {
                "refused".to_owned()
            } else {
                format!("error: {err}")
            }
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

/// Asks until the answer is `want` (the loop programs the change within milliseconds; the
/// limit is generous for a loaded machine).
async fn until(ns: &NetNs, cgroup: &Cgroup, port: u16, want: &[&str]) {
    until_at(ns, cgroup, "127.0.0.1", port, want).await;
}

async fn until_at(ns: &NetNs, cgroup: &Cgroup, host: &str, port: u16, want: &[&str]) {
    let want = set(want);
    let mut got = BTreeSet::new();
    for _ in 0..100 {
        // Round robin over at most 3 backends: 6 connections see each of them twice.
        got = tokio::task::block_in_place(|| who(ns, cgroup, host, port, 6));
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{host}:{port} in {}: wanted {want:?}, got {got:?}", ns.name);
}

/// The netns-scoped entries of `cookie` in the table: address -> backend count.
fn scoped(table: &ServiceTable, cookie: u64) -> BTreeMap<String, usize> {
    table
        .list()
        .expect("list")
        .into_iter()
        .filter(|s| s.frontend.netns == cookie)
        .map(|s| (s.frontend.addr.to_string(), s.backends.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backend_descriptors_reach_tagged_registrations_in_their_own_netns_only() {
    require_root();
    let etcd = Etcd::start().await;
    let store = etcd.store().await;
    let bpf = BpfDir::new();
    let cgroup = Cgroup::new();
    let container = NetNs::new("vkec");
    let other = NetNs::new("vkeo");
    let servers = NetNs::new("vkes");
    veth(
        &container,
        &["10.203.0.1/24"],
        &servers,
        &["10.203.0.2/24", "10.203.0.3/24", "10.203.0.4/24", "10.203.0.5/24"],
    );
    let _prod1 = Redis::start(&servers, "prod-1", "10.203.0.2", 6379);
    let _prod2 = Redis::start(&servers, "prod-2", "10.203.0.3", 6379);
    let _plain = Redis::start(&servers, "plain", "10.203.0.4", 6379);
    let _prod3 = Redis::start(&servers, "prod-3", "10.203.0.5", 6379);
    // Another namespace in the same cgroup with a redis of its own on 127.0.0.1:6379.
    let _local = Redis::start(&other, "local", "127.0.0.1", 6379);

    let config = DatapathConfig { cgroup: cgroup.path.clone(), bpffs: bpf.path.clone() };
    let mut datapath = Datapath::start(&config).expect("datapath starts");
    let cookie = netns_cookie(&container.path()).expect("netns cookie");
    // What an earlier agent may have left: a netns-scoped entry of a container that is gone
    // (the loop's: removed), and an entry made by hand (not the loop's: kept).
    let stale = ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
        name: "gone:BACKEND_X".into(),
        frontend: Frontend {
            addr: "127.0.0.1:7777".parse().unwrap(),
            proto: Proto::Tcp,
            netns: 99,
        },
        algo: Algo::Random,
        backends: vec!["10.203.0.2:6379".parse().unwrap()],
    };
    let by_hand = ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
        name: "by-hand".into(),
        frontend: Frontend { addr: "10.99.0.1:80".parse().unwrap(), proto: Proto::Tcp, netns: 0 },
        ..stale.clone()
    };
    datapath.table.upsert(&stale).unwrap();
    datapath.table.upsert(&by_hand).unwrap();
    let table = ServiceTable::open(&maps_dir(&bpf.path)).expect("open the table");

    for (id, ip, tags) in [
        ("prod-1", "10.203.0.2", &["prod"][..]),
        ("prod-2", "10.203.0.3", &["prod", "stats"][..]),
        ("plain", "10.203.0.4", &[][..]),
    ] {
        store.put(&format!("{SERVICE}/6379/{id}"), registration(id, ip, tags), None).await.unwrap();
    }
    let (containers_tx, containers) = tokio::sync::watch::channel(Containers::new());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let sync = tokio::spawn(sync::run(
        etcd.store().await,
        datapath,
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        DEFAULT_PORT_RANGE,
        Algo::RoundRobin,
        containers,
        stop,
    ));

    // Before the container is published nothing is redirected in its namespace.
    until(&container, &cgroup, 6379, &["refused"]).await;
    assert!(table.get(&stale.frontend).unwrap().is_none(), "the stale entry is removed");
    assert!(table.get(&by_hand.frontend).unwrap().is_some(), "the hand-made one is kept");

    let env: BTreeMap<String, String> = [
        ("BACKEND_REDIS", "redis.master[prod];6379/tcp"),
        ("BACKEND_BROKEN", "redis.master[prod;6381"),
        ("BACKEND_STATS", "/services/prod/redis.master[stats];6380/tcp"),
        ("PATH", "/usr/bin:/bin"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let web = Container { id: "web_web_0".into(), netns_cookie: cookie, env };
    containers_tx.send_replace(Containers::from([(web.id.clone(), web)]));

    // Only the prod-tagged ones; the bad descriptor next to them changes nothing.
    until(&container, &cgroup, 6379, &["prod-1", "prod-2"]).await;
    until(&container, &cgroup, 6380, &["prod-2"]).await;
    // A client that resolves localhost to ::1 reaches the same backends.
    until_at(&container, &cgroup, "::1", 6379, &["prod-1", "prod-2"]).await;
    let want: BTreeMap<String, usize> =
        [("127.0.0.1:6379", 2), ("127.0.0.1:6380", 1), ("[::1]:6379", 2), ("[::1]:6380", 1)]
            .into_iter()
            .map(|(a, n)| (a.to_owned(), n))
            .collect();
    assert_eq!(scoped(&table, cookie), want);
    // The same address from another namespace in the same cgroup is not redirected.
    until(&other, &cgroup, 6379, &["local"]).await;
    until(&other, &cgroup, 6380, &["refused"]).await;

    // A new registration gets traffic; a removed one gets none.
    store
        .put(
            &format!("{SERVICE}/6379/prod-3"),
            registration("prod-3", "10.203.0.5", &["prod"]),
            None,
        )
        .await
        .unwrap();
    until(&container, &cgroup, 6379, &["prod-1", "prod-2", "prod-3"]).await;
    store.delete(&format!("{SERVICE}/6379/prod-1")).await.unwrap();
    until(&container, &cgroup, 6379, &["prod-2", "prod-3"]).await;
    // Losing its tag takes a registration out as well.
    store
        .put(
            &format!("{SERVICE}/6379/prod-2"),
            registration("prod-2", "10.203.0.3", &["stats"]),
            None,
        )
        .await
        .unwrap();
    until(&container, &cgroup, 6379, &["prod-3"]).await;
    until(&container, &cgroup, 6380, &["prod-2"]).await;

    // The container leaves: its entries go with it, nothing else does.
    containers_tx.send_replace(Containers::new());
    until(&container, &cgroup, 6379, &["refused"]).await;
    until(&container, &cgroup, 6380, &["refused"]).await;
    until_at(&container, &cgroup, "::1", 6379, &["refused"]).await;
    assert!(scoped(&table, cookie).is_empty());
    assert!(table.get(&by_hand.frontend).unwrap().is_some());
    until(&other, &cgroup, 6379, &["local"]).await;

    stop_tx.send_replace(true);
    let mut datapath = sync.await.expect("the loop").expect("the loop ends cleanly");
    datapath.table.flush().unwrap();
}
