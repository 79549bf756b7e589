//! Bad input: a malformed value or key written by hand under an allocator key is an error
//! naming the key, and nothing stored changes; an unreachable etcd is an error naming it.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::time::{Duration, Instant};

use viking::{
    cluster::{membership, Addresses, AmbassadorPorts, DEFAULT_PORT_RANGE},
    store::{keys, EtcdOptions, EtcdStore, Listing, Store, StoreSpec},
};
use viking_tests::{etcd::Backend, store_tests};

fn snapshot(l: &Listing) -> Vec<(String, Vec<u8>, i64)> {
    l.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.mod_revision)).collect()
}

async fn malformed_values<B: Backend>(b: &B) {
    let s = b.client().await;
    let ports = AmbassadorPorts::new(s.clone(), DEFAULT_PORT_RANGE);
    let ips = Addresses::new(s.clone(), viking::cluster::DEFAULT_POOL.parse().unwrap());
    ports.allocate("web_app", 80).await.unwrap();
    ips.subnet("web", 3).await.unwrap();
    ips.address("web", "web/0").await.unwrap();

    // Each case: a hand-written record, then the operations that must refuse it by name.
    let cases: Vec<(&str, &[u8])> = vec![
        (keys::PORTS_NEXT, b"banana"),
        ("/viking/alloc/ports/web_app/80", b"-3"),
        ("/viking/alloc/ports/web_app/http", b"20001"),
        ("/viking/alloc/subnets/web", b"10.32.0.0/33"),
        ("/viking/alloc/subnets/web", b"10.32.0.7/24"),
        ("/viking/alloc/ips/web/not-an-ip", b"web/9"),
        ("/viking/alloc/ips/web/10.99.0.5", b"web/9"),
        ("/viking/alloc/ips/web/10.32.0.9", b""),
        ("/viking/hosts/h1", b"{\"address\": 5}"),
    ];
    for (key, bad) in cases {
        let old = s.get(key).await.unwrap();
        s.put(key, bad.to_vec(), None).await.unwrap();
        let before = snapshot(&s.list(keys::ROOT).await.unwrap());
        let mut errors = Vec::new();
        // NB: only the operations that read the broken record; an allocation for another
        // service never looks at it.
        if key == keys::PORTS_NEXT {
            errors.push(ports.allocate("web_new", 80).await.map(|_| ()));
            errors.push(ports.list().await.map(|_| ()));
        } else if key.starts_with(keys::PORTS) {
            errors.push(ports.list().await.map(|_| ()));
            if key.ends_with("/80") {
                errors.push(ports.allocate("web_app", 80).await.map(|_| ()));
                errors.push(ports.get("web_app", 80).await.map(|_| ()));
            }
        } else if key.starts_with(keys::SUBNETS) {
            errors.push(ips.subnet("web", 3).await.map(|_| ()));
            errors.push(ips.subnet("other", 3).await.map(|_| ()));
            errors.push(ips.address("web", "web/1").await.map(|_| ()));
            errors.push(ips.list().await.map(|_| ()));
        } else if key.starts_with(keys::IPS) {
            errors.push(ips.address("web", "web/1").await.map(|_| ()));
            errors.push(ips.list().await.map(|_| ()));
        } else {
            errors.push(membership::hosts(&s).await.map(|_| ()));
        }
        for e in errors {
            let e =
                e.expect_err(&format!("{key} = {:?} was accepted", String::from_utf8_lossy(bad)));
            assert!(e.to_string().contains(key), "{}: error does not name {key}: {e}", b.name());
        }
        let after = snapshot(&s.list(keys::ROOT).await.unwrap());
        assert_eq!(before, after, "{key}: the store changed");
        match old {
            Some(kv) => s.put(key, kv.value, None).await.unwrap(),
            None => s.delete(key).await.map(|_| 0).unwrap(),
        };
    }
    // Repaired: everything works again and the first answers stand.
    assert_eq!(ports.allocate("web_app", 80).await.unwrap(), DEFAULT_PORT_RANGE.first);
    assert_eq!(
        ips.address("web", "web/0").await.unwrap(),
        "10.32.0.2".parse::<std::net::Ipv4Addr>().unwrap()
    );
    // Names that cannot be key segments are refused before anything is written.
    assert!(ports.allocate("a/b", 80).await.unwrap_err().to_string().contains("a/b"));
    assert!(ips.subnet("", 1).await.is_err());
}

store_tests!(malformed_values);

#[tokio::test]
async fn unreachable_etcd_is_named() {
    // Port 1 on loopback: nothing listens there.
    let t = Instant::now();
    let options = EtcdOptions { timeout: Some(Duration::from_secs(2)), ..Default::default() };
    let e = EtcdStore::connect(&["http://127.0.0.1:1".into()], &options).await.unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:1"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let spec: StoreSpec = "etcd://127.0.0.1:1,127.0.0.1:2".parse().unwrap();
    let e = viking::store::open(&spec, &options).await.unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:1,127.0.0.1:2"), "{e}");
    let spec: StoreSpec = "etcds://127.0.0.1:1".parse().unwrap();
    let e = viking::store::open(&spec, &options).await.unwrap_err();
    assert!(e.to_string().contains("--etcd-ca"), "{e}");
    let e = "etcd://nowhere".parse::<StoreSpec>().unwrap_err();
    assert!(e.to_string().contains("etcd://nowhere"), "{e}");
}
