//! The embedded store keeps everything it acknowledged: through a clean restart, and through a
//! SIGKILL in the middle of a burst of writes. It also refuses a second writer, and lets a
//! reader in alongside the writer.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use viking::store::{EmbeddedStore, Store, StoreError, WatchEvent};
use viking_tests::{
    etcd::{vk_store_bin, TempDir},
    guards::ChildGuard,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    // NB: on the real disk: durability is the point.
    let dir = TempDir::on_disk("vk-burst-");
    let mut cmd = Command::new(vk_store_bin());
    cmd.arg("burst").arg(&dir.path).arg("8").stdout(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let out = child.0.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut acked = HashMap::new();
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut parts = line.split(' ');
            if let (Some("ACK"), Some(key), Some(rev)) = (parts.next(), parts.next(), parts.next())
            {
                acked.insert(key.to_string(), rev.parse::<i64>().unwrap());
            }
        }
        acked
    });
    // Let the burst run, then kill it mid-write.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.0.wait();
    let acked = reader.join().unwrap();
    assert!(acked.len() > 100, "only {} writes acknowledged in 1.5 s", acked.len());
    let store = EmbeddedStore::open(&dir.path).await.unwrap();
    let listing = store.list("/burst/").await.unwrap();
    let stored: HashMap<String, (Vec<u8>, i64)> =
        listing.kvs.into_iter().map(|kv| (kv.key.clone(), (kv.value, kv.mod_revision))).collect();
    for (key, rev) in &acked {
        let (value, stored_rev) =
            stored.get(key).unwrap_or_else(|| panic!("acknowledged {key} lost"));
        assert_eq!(value, key.as_bytes());
        assert_eq!(stored_rev, rev, "{key}");
    }
    let max = acked.values().max().copied().unwrap_or(0);
    assert!(listing.revision >= max);
    eprintln!(
        "{} writes acknowledged before SIGKILL, all there ({} stored)",
        acked.len(),
        stored.len()
    );
    // And the store goes on from there.
    let r = store.put("/burst/after", b"x".to_vec(), None).await.unwrap();
    assert!(r > listing.revision);
    store.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_keys_revisions_history_and_leases() {
    let dir = TempDir::on_disk("vk-restart-");
    let s = EmbeddedStore::open(&dir.path).await.unwrap();
    let r1 = s.put("/k/a", b"1".to_vec(), None).await.unwrap();
    s.put("/k/b", b"2".to_vec(), None).await.unwrap();
    s.delete("/k/b").await.unwrap();
    let lease = s.grant(Duration::from_secs(2)).await.unwrap();
    s.put("/k/leased", b"l".to_vec(), Some(lease)).await.unwrap();
    let rev = s.revision().await.unwrap();
    // A second writer is refused, naming the holder; a reader gets in.
    match EmbeddedStore::open(&dir.path).await {
        Err(e @ StoreError::InUse { .. }) => {
            assert!(e.to_string().contains(&std::process::id().to_string()), "{e}")
        }
        other => panic!("second writer: {other:?}"),
    }
    let ro = EmbeddedStore::open_read_only(&dir.path).await.unwrap();
    assert_eq!(ro.get("/k/a").await.unwrap().unwrap().value, b"1");
    assert!(matches!(ro.put("/k/x", vec![], None).await, Err(StoreError::ReadOnly { .. })));
    drop(ro);
    s.close().await.unwrap();

    let s = EmbeddedStore::open(&dir.path).await.unwrap();
    assert_eq!(s.revision().await.unwrap(), rev);
    let a = s.get("/k/a").await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.mod_revision), (&b"1"[..], r1));
    assert!(s.get("/k/b").await.unwrap().is_none());
    // History survives: a watch from the first revision replays it.
    let mut w = s.watch("/k/", Some(r1)).await.unwrap();
    let mut events = Vec::new();
    while let Some(e) = w.next_within(Duration::from_millis(300)).await {
        events.push(e);
    }
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(matches!(&events[2], WatchEvent::Delete { key, .. } if key == "/k/b"));
    // The lease survived the restart with a fresh TTL, and nobody refreshes it: its key goes.
    assert!(s.get("/k/leased").await.unwrap().is_some());
    let t = Instant::now();
    let mut w = s.watch("/k/leased", None).await.unwrap();
    match w.next_within(Duration::from_secs(5)).await {
        Some(WatchEvent::Delete { key, .. }) => assert_eq!(key, "/k/leased"),
        other => panic!("leased key not expired: {other:?}"),
    }
    assert!(t.elapsed() <= Duration::from_millis(2500), "{:?}", t.elapsed());
    assert!(matches!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound { .. })));
    s.close().await.unwrap();
}
