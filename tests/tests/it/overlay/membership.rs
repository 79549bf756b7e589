//! Membership drives every other host's kernel: a host whose agent dies is gone from their
//! FDB, neighbours and routes once its lease lapses, and back when it rejoins; a member record
//! with a malformed VTEP is left out with a warning while the other peers stay as they are.
use std::time::{Duration, Instant};

use viking::store::{EtcdOptions, EtcdStore, Store as _};
use viking_tests::cluster::{bin, Cluster, Host};

use super::{address, all_running, eventually, fetch, peers};

/// Whether `host`'s kernel holds `peer` (its address) in all of the overlay's FDB, neighbours
/// and routes, in any of them, and the dump.
fn holds(host: &Host, peer: &Host) -> (bool, bool, String) {
    let dump = host.overlay_dump();
    let fdb = dump.lines().any(|l| {
        l.contains(&format!("dst {} ", peer.ip)) || l.ends_with(&format!("dst {}", peer.ip))
    });
    // NB: `ip neigh show dev X` leaves the device out of each line.
    let neigh = dump.lines().any(|l| l.starts_with(&format!("{} lladdr", peer.ip)));
    let route = dump.lines().any(|l| l.contains(&format!("via {} dev vk-vxlan", peer.ip)));
    (fdb && neigh && route, fdb || neigh || route, dump)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_leaves_is_gone_from_every_kernel_and_back_when_it_rejoins() {
    let mut c = Cluster::start(3).await;
    let lost = c.hosts[2].agent.node.clone();
    // Fixed (it has a volume): its intent stays with its host while the host is away.
    let srv = format!(
        "srv:\n  type: job\n  host: {lost}\n  command: exec {} serve 0.0.0.0:80 srv-on-c\n  ports:\n    - 80\n  volume:\n    - /data\n",
        bin("vk-probe")
    );
    c.deploy("mem", &srv).await;
    let rows = c.wait_ps("srv running on C", |r| all_running(r, 1)).await;
    let ip = address(&rows, "mem", "srv");
    for i in 0..2 {
        eventually(&c, "A and B route srv through C", 20, || async {
            match holds(&c.hosts[i], &c.hosts[2]) {
                (true, _, _) => Ok(()),
                (_, _, dump) => Err(dump),
            }
        })
        .await;
    }

    // C's agent dies (SIGKILL); its lease lapses one TTL later and its record goes.
    c.hosts[2].agent.kill();
    let etcd = c.etcd.as_ref().unwrap();
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();
    let key = format!("/viking/hosts/{lost}");
    eventually(&c, "C's membership lapses", 30, || async {
        match store.get(&key).await.unwrap() {
            None => Ok(()),
            Some(_) => Err("still a member".to_owned()),
        }
    })
    .await;
    let gone = Instant::now();
    for i in 0..2 {
        eventually(&c, "C gone from A's and B's FDB, neighbours and routes", 20, || async {
            match holds(&c.hosts[i], &c.hosts[2]) {
                (_, false, _) => Ok(()),
                (_, _, dump) => Err(dump),
            }
        })
        .await;
    }
    println!("record gone -> both kernels clean: {:.2?}", gone.elapsed());
    let (ok, route) = c.hosts[0].run("ip", &["route", "get", &ip.to_string()]);
    assert!(!route.contains("vk-vxlan"), "no overlay route to srv while C is away: {ok} {route}");
    let p = peers(&c, &c.hosts[0]);
    assert!(!p.contains_key(&lost), "{p:?}");

    // C comes back: in every kernel again, srv's route with it.
    c.hosts[2].agent.restart().await;
    let back = Instant::now();
    for i in 0..2 {
        eventually(&c, "C back in A's and B's kernels", 20, || async {
            match holds(&c.hosts[i], &c.hosts[2]) {
                (true, _, _) => Ok(()),
                (_, _, dump) => Err(dump),
            }
        })
        .await;
    }
    println!("rejoined -> both kernels programmed: {:.2?}", back.elapsed());
    let got = fetch(&c.hosts[0], ip, 80).unwrap();
    assert!(got.contains("srv-on-c"), "srv answers A again: {got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_a_malformed_vtep_is_left_out_and_the_others_are_untouched() {
    let c = Cluster::start(2).await;
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    eventually(&c, "A programs B", 20, || async {
        match holds(a, b) {
            (_, true, _) => Ok(()),
            (_, _, dump) => Err(dump),
        }
    })
    .await;
    let before = a.overlay_dump();

    // A record whose VTEP MAC is not a MAC, and one with no VTEP at all (a host-gw agent).
    let etcd = c.etcd.as_ref().unwrap();
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();
    let bad = r#"{"address": "10.99.8.2", "vtep": {"mac": "zz:00:00:00:00:01", "vni": 42, "port": 4789}}"#;
    let none = r#"{"address": "10.99.9.2"}"#;
    store.put("/viking/hosts/bogus", bad.as_bytes().to_vec(), None).await.unwrap();
    store.put("/viking/hosts/plain", none.as_bytes().to_vec(), None).await.unwrap();
    let p = eventually(&c, "viking peers shows both left out", 20, || async {
        let p = peers(&c, a);
        let left_out = |n: &str| p.get(n).is_some_and(|(s, _)| s.starts_with("left out"));
        if left_out("bogus") && left_out("plain") {
            Ok(p)
        } else {
            Err(format!("{p:?}"))
        }
    })
    .await;
    assert!(p["bogus"].0.contains("zz:00:00:00:00:01"), "{p:?}");
    assert!(p["plain"].0.contains("no VTEP"), "{p:?}");
    assert_eq!(p[&b.agent.node].0, "ok", "{p:?}");
    // A pass has run with them (the log says so), and B is exactly as it was.
    eventually(&c, "A warns about both", 20, || async {
        let log = a.agent.log();
        if log.contains("bogus") && log.contains("plain") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(a.overlay_dump(), before, "the other peers' entries are untouched");
    store.delete("/viking/hosts/bogus").await.unwrap();
    store.delete("/viking/hosts/plain").await.unwrap();
}
