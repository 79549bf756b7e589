//! Watches: every event in order, across a compaction (or a resync that brings the complete
//! state), and across the etcd server restarting under them.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{collections::BTreeMap, time::Duration};

use viking::store::{Changes, Mirror, Op, Store, Txn, Watch, WatchEvent};
use viking_tests::{
    etcd::{Backend, Etcd},
    store_tests,
};

const WAIT: Duration = Duration::from_secs(10);

/// Applies events to a picture of the keys until it has `want` keys whose values are the
/// final ones; returns the picture and whether a resync was seen.
async fn follow(
    watch: &mut Watch,
    state: &mut BTreeMap<String, Vec<u8>>,
    want: &BTreeMap<String, Vec<u8>>,
) -> bool {
    let mut resynced = false;
    let mut last = 0;
    while state != want {
        let e = watch.next_within(WAIT).await.unwrap_or_else(|| {
            panic!("watch stalled: have {} keys, want {}", state.len(), want.len())
        });
        assert!(e.revision() > last, "events out of order: {} after {last}", e.revision());
        last = e.revision();
        match e {
            WatchEvent::Put(kv) => {
                state.insert(kv.key, kv.value);
            }
            WatchEvent::Delete { key, .. } => {
                state.remove(&key);
            }
            WatchEvent::Resync { kvs, .. } => {
                resynced = true;
                *state = kvs.into_iter().map(|kv| (kv.key, kv.value)).collect();
            }
        }
    }
    resynced
}

/// A watch running across a compaction sees every event; a watch from a revision compacted
/// away gets a resync with the complete state, then the events after it.
async fn across_compaction<B: Backend>(b: &B) {
    let s = b.client().await;
    let start = s.revision().await.unwrap() + 1;
    let mut live = s.watch("/w/", None).await.unwrap();
    let mut want = BTreeMap::new();
    for i in 0..50 {
        let key = format!("/w/{i:02}");
        s.put(&key, format!("v{i}").into_bytes(), None).await.unwrap();
        want.insert(key, format!("v{i}").into_bytes());
    }
    for i in 0..10 {
        s.delete(&format!("/w/{i:02}")).await.unwrap();
        want.remove(&format!("/w/{i:02}"));
    }
    // Noise outside the prefix is not reported.
    s.put("/other/x", b"1".to_vec(), None).await.unwrap();
    let compact_at = s.revision().await.unwrap();
    s.compact(compact_at).await.unwrap();
    for i in 50..80 {
        let key = format!("/w/{i:02}");
        s.put(&key, format!("v{i}").into_bytes(), None).await.unwrap();
        want.insert(key, format!("v{i}").into_bytes());
    }
    // The live watch: every event, no resync needed.
    let mut state = BTreeMap::new();
    let resynced = follow(&mut live, &mut state, &want).await;
    assert!(!resynced, "{}: a live watch resynced", b.name());
    assert!(
        live.next_within(Duration::from_millis(200)).await.is_none(),
        "events beyond the writes"
    );

    // A watch from before the compaction: resync, complete, then live events.
    let mut late = s.watch("/w/", Some(start)).await.unwrap();
    let mut state = BTreeMap::new();
    let resynced = follow(&mut late, &mut state, &want).await;
    assert!(resynced, "{}: a watch from a compacted revision did not resync", b.name());
    s.put("/w/after", b"x".to_vec(), None).await.unwrap();
    want.insert("/w/after".into(), b"x".to_vec());
    follow(&mut late, &mut state, &want).await;
    // A watch from a revision still kept replays history exactly.
    let mut exact = s.watch("/w/", Some(compact_at)).await.unwrap();
    let mut seen = 0;
    while let Some(e) = exact.next_within(Duration::from_millis(500)).await {
        assert!(!matches!(e, WatchEvent::Resync { .. }));
        seen += 1;
    }
    assert_eq!(seen, 31, "{}: 30 puts after the compaction and one more", b.name());
}

/// A reader slower than the writers still gets every event, in order.
async fn slow_reader<B: Backend>(b: &B) {
    let s = b.client().await;
    let mut watch = s.watch("/slow/", None).await.unwrap();
    let mut want = BTreeMap::new();
    let mut writers = Vec::new();
    for w in 0..4 {
        let s = b.client().await;
        writers.push(tokio::spawn(async move {
            for i in 0..600 {
                s.put(&format!("/slow/{w}/{i}"), vec![1], None).await.unwrap();
            }
        }));
        for i in 0..600 {
            want.insert(format!("/slow/{w}/{i}"), vec![1]);
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut state = BTreeMap::new();
    follow(&mut watch, &mut state, &want).await;
    for w in writers {
        w.await.unwrap();
    }
}

/// The keys and values a mirror holds.
fn held(m: &Mirror) -> Vec<(String, Vec<u8>)> {
    m.kvs().into_iter().map(|kv| (kv.key, kv.value)).collect()
}

/// A mirror holds what its prefix holds, through puts, deletes and a compaction, and wakes a
/// subscriber when it changes.
async fn mirror_follows_its_prefix<B: Backend>(b: &B) {
    let s = b.client().await;
    s.put("/m/a", b"1".to_vec(), None).await.unwrap();
    s.put("/mx", b"not under /m/".to_vec(), None).await.unwrap();
    let m = Mirror::start(&s, "/m/").await.unwrap();
    assert_eq!(held(&m), [("/m/a".to_owned(), b"1".to_vec())], "{}: the listing", b.name());
    let mut changes = m.subscribe();

    s.put("/m/b", b"2".to_vec(), None).await.unwrap();
    s.delete("/m/a").await.unwrap();
    s.put("/m/b", b"3".to_vec(), None).await.unwrap();
    let at = s.revision().await.unwrap();
    s.compact(at).await.unwrap();
    let last = s.put("/m/c", b"4".to_vec(), None).await.unwrap();
    s.put("/other", b"5".to_vec(), None).await.unwrap();

    tokio::time::timeout(WAIT, changes.changed()).await.expect("woken").expect("mirror alive");
    let deadline = tokio::time::Instant::now() + WAIT;
    while m.revision() < last && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        held(&m),
        [("/m/b".to_owned(), b"3".to_vec()), ("/m/c".to_owned(), b"4".to_vec())],
        "{}: after the changes",
        b.name()
    );
    assert!(m.is_live());
}

/// `Changes` wakes for writes under its prefixes, whether they came before `next` was called
/// or while it waited, and not for writes elsewhere.
async fn changes_wake_for_their_prefixes_only<B: Backend>(b: &B) {
    let s = b.client().await;
    let mut c = Changes::start(&s, &["/c1/", "/c2/"]).await.unwrap();
    let quiet = Duration::from_millis(300);
    s.put("/c3/x", b"1".to_vec(), None).await.unwrap();
    assert!(tokio::time::timeout(quiet, c.next()).await.is_err(), "{}: woken by /c3/", b.name());

    s.put("/c2/x", b"1".to_vec(), None).await.unwrap();
    tokio::time::timeout(WAIT, c.next()).await.expect("a write made before next()");
    assert!(tokio::time::timeout(quiet, c.next()).await.is_err(), "{}: woken twice", b.name());

    let waiter = tokio::spawn(async move {
        c.next().await;
        c
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.delete("/c1/none-yet").await.unwrap();
    s.put("/c1/y", b"2".to_vec(), None).await.unwrap();
    let c = tokio::time::timeout(WAIT, waiter).await.expect("a write while waiting").unwrap();
    assert!(c.is_live());
}

/// The writes of one transaction share its revision; a watch reports every one of them.
async fn every_write_of_a_transaction_arrives<B: Backend>(b: &B) {
    let s = b.client().await;
    let mut watch = s.watch("/t/", None).await.unwrap();
    // Once this arrives the watch is live: what follows comes as live events, not history.
    s.put("/t/start", b"".to_vec(), None).await.unwrap();
    tokio::time::timeout(WAIT, watch.next()).await.expect("the first event");
    let ops = (0..3).map(|i| Op::put(format!("/t/{i}"), vec![i])).collect::<Vec<_>>();
    s.txn(Txn::when([]).then(ops)).await.unwrap();
    s.txn(Txn::when([]).then([Op::delete("/t/0"), Op::delete("/t/1")])).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match tokio::time::timeout(WAIT, watch.next()).await {
            Ok(Some(WatchEvent::Put(kv))) => seen.push(format!("put {}", kv.key)),
            Ok(Some(WatchEvent::Delete { key, .. })) => seen.push(format!("delete {key}")),
            other => panic!("{}: after {seen:?}: {other:?}", b.name()),
        }
    }
    assert_eq!(seen, ["put /t/0", "put /t/1", "put /t/2", "delete /t/0", "delete /t/1"]);
}

store_tests!(
    every_write_of_a_transaction_arrives,
    across_compaction,
    slow_reader,
    mirror_follows_its_prefix,
    changes_wake_for_their_prefixes_only
);

/// The etcd server restarts under a watch: events written while it was down are impossible,
/// those before and after all arrive, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_etcd_restart() {
    let mut etcd = Etcd::start().await;
    let s = etcd.store().await;
    let mut watch = s.watch("/r/", None).await.unwrap();
    let mut want = BTreeMap::new();
    for i in 0..20 {
        s.put(&format!("/r/{i}"), vec![1], None).await.unwrap();
        want.insert(format!("/r/{i}"), vec![1]);
    }
    etcd.restart(0);
    etcd.wait_ready().await;
    for i in 20..40 {
        s.put(&format!("/r/{i}"), vec![2], None).await.unwrap();
        want.insert(format!("/r/{i}"), vec![2]);
    }
    let mut state = BTreeMap::new();
    follow(&mut watch, &mut state, &want).await;
    assert!(watch.next_within(Duration::from_millis(300)).await.is_none());
}
