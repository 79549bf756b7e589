//! What an agent settles at start: `--address` from the default route when it is not given,
//! a clear refusal naming the flag when there is neither (on a shared store), and a refusal
//! naming the route when the instance address pool collides with one of the host's routes.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use viking_tests::{
    agent::{free_port, AgentProc},
    etcd::{Etcd, TempDir},
    guards::{veth, BpfDir, Cgroup, NetNs},
    unique, viking_bin,
};

/// Runs `viking agent` on `store` in host namespace `ns` with `args`, expecting it to refuse
/// to start; its stderr.
fn refused(store: &str, ns: &NetNs, args: &[&str]) -> String {
    let (bpf, cgroup, dir) = (BpfDir::new(), Cgroup::new(), TempDir::new("vkr"));
    let node = unique("node");
    let out = Command::new("timeout")
        .arg("30")
        .arg(viking_bin())
        .args(["agent", "--node", &node, "--store", store, "--runtime", "exec"])
        .args(["--api", &format!("127.0.0.1:{}", free_port())])
        .arg("--bpffs")
        .arg(&bpf.path)
        .arg("--cgroup")
        .arg(&cgroup.path)
        .arg("--data-dir")
        .arg(dir.path.join("data"))
        .arg("--token-file")
        .arg(dir.path.join("token"))
        .arg("--host-netns")
        .arg(ns.path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "the agent refuses to start: {err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_comes_from_the_default_route_or_the_agent_says_which_flag() {
    let etcd = Etcd::start().await;
    // A host with a default route, no --address: its record carries the route's source.
    let (host, gw) = (NetNs::new("vkh"), NetNs::new("vkg"));
    veth(&host, &["10.98.0.2/24"], &gw, &["10.98.0.1/24"]);
    host.ip(&["route", "add", "default", "via", "10.98.0.1"]);
    let args: Vec<String> = vec![
        "--host-netns".into(),
        host.path().display().to_string(),
        "--runtime".into(),
        "exec".into(),
    ];
    let agent = AgentProc::start_with(Some(&etcd.spec()), &args).await;
    let out = Command::new(viking_bin())
        .args(["hosts", "--json", "--store", &etcd.spec()])
        .output()
        .unwrap();
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = hosts.as_array().unwrap().iter().find(|h| h["name"] == agent.node.as_str()).unwrap();
    assert_eq!(me["address"], "10.98.0.2", "{hosts}");
    assert_eq!(me["vtep"]["port"], 4789, "{hosts}");
    drop(agent);

    // No default route, no --address, a shared store: a refusal that names the flag.
    let lonely = NetNs::new("vkh");
    let err = refused(&etcd.spec(), &lonely, &[]);
    assert!(err.contains("--address"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_collides_with_a_host_route_is_refused_naming_the_route() {
    let etcd = Etcd::start().await;
    let (host, other) = (NetNs::new("vkh"), NetNs::new("vkg"));
    veth(&host, &["10.98.0.2/24"], &other, &["10.98.0.1/24"]);
    // Inside the default pool (10.32.0.0/12): instances would shadow what it reaches.
    host.ip(&["route", "add", "10.40.0.0/16", "via", "10.98.0.1"]);
    let err = refused(&etcd.spec(), &host, &["--address", "10.98.0.2"]);
    assert!(err.contains("10.40.0.0/16 via 10.98.0.1"), "{err}");
    assert!(err.contains("--overlay-pool"), "{err}");
    // A pool clear of it starts.
    let args: Vec<String> = [
        "--host-netns",
        &host.path().display().to_string(),
        "--address",
        "10.98.0.2",
        "--runtime",
        "exec",
        "--overlay-pool",
        "10.64.0.0/16",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let agent = AgentProc::start_with(Some(&etcd.spec()), &args).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(agent.log().contains("overlay ready"), "{}", agent.log());
}
