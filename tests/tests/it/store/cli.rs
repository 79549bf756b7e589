//! `viking hosts` and `viking allocations`: tables and JSON, against an embedded store another
//! process has open (the CLI reads alongside it) and against a real etcd.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{process::Command, time::Duration};

use viking::{
    cluster::{membership, Addresses, AmbassadorPorts, HostInfo, DEFAULT_PORT_RANGE},
    store::{EmbeddedStore, Store},
};
use viking_tests::{
    etcd::{Etcd, TempDir},
    viking_bin,
};

fn viking(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(viking_bin()).args(args).env("RUST_LOG", "warn").output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn host(name: &str) -> HostInfo {
    HostInfo {
        tags: vec!["ssd".into(), "eu".into()],
        ..HostInfo::new(name, "127.0.0.9".parse().unwrap())
    }
}

async fn populate<S: Store>(s: &S) -> membership::Member<S> {
    let ports = AmbassadorPorts::new(s.clone(), DEFAULT_PORT_RANGE);
    ports.allocate("shop_db", 5432).await.unwrap();
    ports.allocate("shop_web", 80).await.unwrap();
    let ips = Addresses::new(s.clone(), viking::cluster::DEFAULT_POOL.parse().unwrap());
    ips.subnet("shop", 2).await.unwrap();
    ips.address("shop", "web/0").await.unwrap();
    membership::join(s, host("edge1"), Duration::from_secs(5)).await.unwrap()
}

fn check(spec: &str) {
    let (ok, out, err) = viking(&["allocations", "--store", spec]);
    assert!(ok, "{err}");
    for want in [
        "shop_db",
        "5432",
        "20000",
        "shop_web",
        "20001",
        "10.32.0.0/24",
        "10.32.0.1",
        "10.32.0.2",
        "web/0",
        "1/253",
    ] {
        assert!(out.contains(want), "no {want} in:\n{out}");
    }
    let (ok, out, err) = viking(&["allocations", "--store", spec, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ports"]["next"], 20002);
    assert_eq!(v["ports"]["ports"][0]["ambassador_port"], 20000);
    assert_eq!(v["subnets"][0]["subnet"], "10.32.0.0/24");
    assert_eq!(v["ips"][0]["ip"], "10.32.0.2");

    let (ok, out, err) = viking(&["hosts", "--store", spec]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("HOST")
            && out.contains("edge1")
            && out.contains("127.0.0.9")
            && out.contains("ssd,eu"),
        "{out}"
    );
    let (ok, out, err) = viking(&["hosts", "--store", spec, "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["name"], "edge1");
    assert_eq!(v[0]["leader"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_while_open_elsewhere() {
    let dir = TempDir::new("vk-cli-");
    let s = EmbeddedStore::open(&dir.path).await.unwrap();
    let _member = populate(&s).await;
    let spec = format!("embedded:{}", dir.path.display());
    // This process holds the store for writing: the CLI reads next to it.
    check(&spec);
    // A missing store is an error naming the directory, and nothing is created.
    let missing = dir.path.join("nothing-here");
    let (ok, _, err) = viking(&["hosts", "--store", &format!("embedded:{}", missing.display())]);
    assert!(!ok && err.contains(&missing.display().to_string()), "{err}");
    assert!(!missing.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_and_unreachable_etcd() {
    let etcd = Etcd::start().await;
    let s = etcd.store().await;
    let _member = populate(&s).await;
    check(&etcd.spec());
    let (ok, _, err) = viking(&["hosts", "--store", "etcd://127.0.0.1:1"]);
    assert!(!ok && err.contains("127.0.0.1:1"), "{err}");
    let (ok, _, err) = viking(&["hosts", "--store", "zookeeper://x:1"]);
    assert!(!ok && err.contains("zookeeper://x:1"), "{err}");
}
