//! etcd's limits hold on both stores (128 operations per transaction, 1.5 MiB per request),
//! and writes larger than that go through `store::bulk`: all or nothing, even when the writer
//! is killed in the middle.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use viking::store::{
    bulk, keys,
    limits::{MAX_REQUEST_BYTES, MAX_TXN_OPS},
    Compare, EmbeddedStore, Op, Store, StoreError, Txn,
};
use viking_tests::{
    etcd::{vk_store_bin, Backend, Etcd, TempDir},
    guards::ChildGuard,
    store_tests,
};

fn puts(n: usize, prefix: &str, value: &str) -> Vec<Op> {
    (0..n).map(|i| Op::put(format!("{prefix}{i:05}"), value)).collect()
}

async fn limits_are_etcds<B: Backend>(b: &B) {
    let s = b.client().await;
    let over = Txn::when([]).then(puts(MAX_TXN_OPS + 1, "/lim/", "x"));
    let err = s.txn(over).await.unwrap_err();
    assert!(matches!(err, StoreError::Limit { .. }), "{}: {err}", b.name());
    assert!(err.to_string().contains("128"), "{err}");
    let big = s.put("/lim/big", vec![b'x'; MAX_REQUEST_BYTES], None).await.unwrap_err();
    assert!(matches!(big, StoreError::Limit { .. }), "{}: {big}", b.name());
    assert!(s.list("/lim/").await.unwrap().kvs.is_empty(), "{}: nothing of them written", b.name());
    // At the limit is fine.
    assert!(s.txn(Txn::when([]).then(puts(MAX_TXN_OPS, "/lim/", "x"))).await.unwrap().succeeded);
}

async fn bulk_writes_are_all_or_nothing<B: Backend>(b: &B) {
    let s = b.client().await;
    // 1,000 puts of 4 KiB: 8 transactions' worth of operations, 3 requests' worth of bytes.
    let value = "v".repeat(4096);
    let ops: Vec<Op> = puts(1000, "/big/", &value);
    assert!(bulk::commit(&s, vec![Compare::Absent("/big/gate".into())], ops).await.unwrap());
    let l = s.list("/big/").await.unwrap();
    assert_eq!(l.kvs.len(), 1000, "{}", b.name());
    assert!(s.list(keys::JOURNAL).await.unwrap().kvs.is_empty(), "{}: journal left", b.name());

    // A compare that fails: nothing of the change lands, and no journal is left.
    s.put("/big/gate", b"closed".to_vec(), None).await.unwrap();
    let mut ops = vec![Op::DeletePrefix { prefix: "/big/".into() }];
    ops.extend(puts(500, "/other/", "x"));
    assert!(!bulk::commit(&s, vec![Compare::Absent("/big/gate".into())], ops).await.unwrap());
    assert_eq!(s.list("/big/").await.unwrap().kvs.len(), 1001);
    assert!(s.list("/other/").await.unwrap().kvs.is_empty());
    assert!(s.list(keys::JOURNAL).await.unwrap().kvs.is_empty(), "{}: journal left", b.name());

    // A small change goes in one transaction, deletes included.
    assert!(bulk::commit(&s, vec![], vec![Op::DeletePrefix { prefix: "/big/".into() }])
        .await
        .unwrap());
    assert!(s.list("/big/").await.unwrap().kvs.is_empty());
}

store_tests!(limits_are_etcds, bulk_writes_are_all_or_nothing);

/// Runs `vk-store bulk` against `spec` and SIGKILLs it at a moment of `kill_after` past its
/// second committed generation; returns the last generation it said it committed.
fn run_and_kill(spec: &str, kill_after: Duration) -> u64 {
    let mut cmd = Command::new(vk_store_bin());
    cmd.args(["bulk", spec, "1500"]).stdout(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut last = 0;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(g) = line.strip_prefix("COMMITTED ") {
                last = g.parse().unwrap();
                let _ = tx.send(last);
            }
        }
        last
    });
    while rx.recv_timeout(Duration::from_secs(30)).expect("the writer commits") < 2 {}
    std::thread::sleep(kill_after);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.0.wait();
    reader.join().unwrap()
}

/// After the kill: settling leaves every key at one generation, at least the last one the
/// writer was told was committed.
async fn check_whole<S: Store>(s: &S, acked: u64, what: &str) {
    let pending = bulk::settle(s).await.unwrap();
    eprintln!("{what}: killed at generation {acked}; a committed journal was pending: {pending}");
    assert!(s.get(bulk::COMMIT).await.unwrap().is_none(), "{what}: a journal still pending");
    let kvs = s.list("/bulk/k/").await.unwrap().kvs;
    assert_eq!(kvs.len(), 1500, "{what}");
    let generations: std::collections::BTreeSet<u64> =
        kvs.iter().map(|kv| kv.text().unwrap().parse().unwrap()).collect();
    assert_eq!(generations.len(), 1, "{what}: a half-applied write: {generations:?}");
    let g = *generations.first().unwrap();
    assert!(g >= acked, "{what}: generation {g} older than the acknowledged {acked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bulk_writer_leaves_all_or_nothing_on_etcd() {
    let etcd = Etcd::start().await;
    for (round, ms) in [0u64, 7, 23, 41, 60].into_iter().enumerate() {
        let acked = run_and_kill(&etcd.spec(), Duration::from_millis(ms));
        check_whole(&etcd.store().await, acked, &format!("etcd round {round}")).await;
    }
    // The chunks of a writer killed before its commit go once its lease lapses.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let s = etcd.store().await;
    bulk::settle(&s).await.unwrap();
    let left = s.list(keys::JOURNAL).await.unwrap().kvs;
    assert!(
        left.is_empty(),
        "journal keys left: {:?}",
        left.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bulk_writer_leaves_all_or_nothing_embedded() {
    let dir = TempDir::on_disk("vk-bulk-");
    let spec = format!("embedded:{}", dir.path.display());
    for (round, ms) in [0u64, 9, 31].into_iter().enumerate() {
        let acked = run_and_kill(&spec, Duration::from_millis(ms));
        let s = EmbeddedStore::open(&dir.path).await.unwrap();
        check_whole(&s, acked, &format!("embedded round {round}")).await;
        s.close().await.unwrap();
    }
}
