//! The same semantics from both stores: revisions, transactions and their compares, leases,
//! deletes. Each case runs against a real etcd and the embedded store.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::time::{Duration, Instant};

use viking::store::{Compare, Op, Store, StoreError, Txn, WatchEvent};
use viking_tests::{etcd::Backend, store_tests};

async fn revisions_and_txns<B: Backend>(b: &B) {
    let s = b.client().await;
    let r0 = s.revision().await.unwrap();
    let r1 = s.put("/t/a", b"1".to_vec(), None).await.unwrap();
    assert_eq!(r1, r0 + 1);
    let a = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version, a.lease), (r1, r1, 1, None));
    let r2 = s.put("/t/a", b"2".to_vec(), None).await.unwrap();
    let a = s.get("/t/a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (r1, r2, 2));
    // Deleting nothing takes no revision; deleting something does.
    assert!(!s.delete("/t/none").await.unwrap());
    assert_eq!(s.revision().await.unwrap(), r2);
    // A transaction with two writes is one revision.
    let t = s
        .txn(
            Txn::when([Compare::ModRevision("/t/a".into(), r2), Compare::Absent("/t/b".into())])
                .then([Op::put("/t/b", "x"), Op::put("/t/c", "y"), Op::get("/t/a")])
                .otherwise([Op::get("/t/b")]),
        )
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.revision, r2 + 1);
    assert_eq!(t.gets.len(), 1);
    assert_eq!(t.gets[0].as_ref().unwrap().value, b"2");
    let b_kv = s.get("/t/b").await.unwrap().unwrap();
    let c_kv = s.get("/t/c").await.unwrap().unwrap();
    assert_eq!((b_kv.mod_revision, c_kv.mod_revision), (r2 + 1, r2 + 1));
    // The same compares now fail: nothing is written, the other branch answers.
    let t = s
        .txn(
            Txn::when([Compare::ModRevision("/t/a".into(), r2), Compare::Absent("/t/b".into())])
                .then([Op::put("/t/b", "overwritten")])
                .otherwise([Op::get("/t/b")]),
        )
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(t.revision, r2 + 1);
    assert_eq!(t.gets[0].as_ref().unwrap().value, b"x");
    // Value compares; ModRevision 0 means absent.
    let t = s
        .txn(Txn::when([
            Compare::Value("/t/c".into(), b"y".to_vec()),
            Compare::ModRevision("/t/zz".into(), 0),
        ]))
        .await
        .unwrap();
    assert!(t.succeeded);
    let t = s.txn(Txn::when([Compare::Value("/t/none".into(), vec![])])).await.unwrap();
    assert!(!t.succeeded, "a missing key holds no value");
    // PrefixUnchangedSince: sees creations and writes under the prefix, not elsewhere.
    let listing = s.list("/t/").await.unwrap();
    assert_eq!(listing.kvs.len(), 3);
    let since = Compare::PrefixUnchangedSince("/t/".into(), listing.revision);
    s.put("/u/elsewhere", vec![], None).await.unwrap();
    assert!(s.txn(Txn::when([since.clone()])).await.unwrap().succeeded);
    s.delete("/t/c").await.unwrap();
    assert!(s.txn(Txn::when([since.clone()])).await.unwrap().succeeded, "deletions are not seen");
    s.put("/t/new", vec![], None).await.unwrap();
    assert!(!s.txn(Txn::when([since])).await.unwrap().succeeded);
    // Listings are sorted and exact to the prefix.
    s.put("/t", vec![], None).await.unwrap();
    s.put("/t0", vec![], None).await.unwrap();
    let keys: Vec<String> = s.list("/t/").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(keys, ["/t/a", "/t/b", "/t/new"]);
    assert_eq!(s.delete_prefix("/t/").await.unwrap(), 3);
    assert!(s.list("/t/").await.unwrap().kvs.is_empty());
}

async fn leases<B: Backend>(b: &B) {
    let s = b.client().await;
    let lease = s.grant(Duration::from_secs(2)).await.unwrap();
    s.put("/l/a", b"1".to_vec(), Some(lease)).await.unwrap();
    s.put("/l/b", b"2".to_vec(), Some(lease)).await.unwrap();
    assert_eq!(s.get("/l/a").await.unwrap().unwrap().lease, Some(lease));
    // Moving a key off the lease keeps it when the lease goes.
    s.put("/l/b", b"3".to_vec(), None).await.unwrap();
    let mut w = s.watch("/l/", None).await.unwrap();
    // Kept alive past its TTL.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(s.keep_alive(lease).await.unwrap() >= Duration::from_secs(1));
    }
    assert!(s.get("/l/a").await.unwrap().is_some());
    // Left alone, it expires: its key is deleted (an event), the other stays.
    let t = Instant::now();
    match w.next_within(Duration::from_secs(5)).await {
        Some(WatchEvent::Delete { key, .. }) => assert_eq!(key, "/l/a"),
        other => panic!("{}: no expiry: {other:?}", b.name()),
    }
    assert!(t.elapsed() < Duration::from_millis(3500), "{:?}", t.elapsed());
    assert!(s.get("/l/b").await.unwrap().is_some());
    assert!(matches!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound { .. })));
    // Writing under a dead lease is refused, and writes nothing.
    let e = s.put("/l/c", vec![], Some(lease)).await.unwrap_err();
    assert!(e.to_string().contains("lease") || e.to_string().contains("Lease"), "{e}");
    assert!(s.get("/l/c").await.unwrap().is_none());
    // Revoking deletes at once.
    let l2 = s.grant(Duration::from_secs(30)).await.unwrap();
    s.put("/l/d", vec![], Some(l2)).await.unwrap();
    s.revoke(l2).await.unwrap();
    assert!(s.get("/l/d").await.unwrap().is_none());
    s.revoke(l2).await.unwrap();
}

store_tests!(revisions_and_txns, leases);
