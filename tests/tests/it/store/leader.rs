//! Leader election: the leader knows when it stops leading, and another candidate takes over
//! within the lease TTL, also when the leader's process is killed.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use viking::{
    cluster::{self, leader},
    store::Store,
};
use viking_tests::{
    etcd::{vk_store_bin, Backend, Etcd},
    guards::ChildGuard,
    store_tests,
};

const TTL: Duration = Duration::from_secs(2);

/// Two candidates in one process: one leads, the other waits; when the leader's lease is
/// revoked under it, it learns at once and the other leads; resigning hands over at once.
async fn handover<B: Backend>(b: &B) {
    let (sa, sb) = (b.client().await, b.client().await);
    let a = cluster::campaign(&sa, "a", TTL).await.unwrap();
    assert!(a.is_leader());
    assert_eq!(leader::leader(&sa).await.unwrap().as_deref(), Some("a"));
    let sb2 = sb.clone();
    let mut b_task = tokio::spawn(async move { cluster::campaign(&sb2, "b", TTL).await.unwrap() });
    // b waits while a leads (a keeps its lease alive well past the TTL).
    assert!(tokio::time::timeout(TTL * 2, &mut b_task).await.is_err(), "b led while a did");
    assert!(a.is_leader());
    // The lease goes (as when the store expires it): a knows, b leads.
    let t = Instant::now();
    sa.revoke(a.key().lease).await.unwrap();
    tokio::time::timeout(TTL, a.lost()).await.expect("a did not notice it stopped leading");
    assert!(!a.is_leader());
    let b_lead = tokio::time::timeout(TTL * 2, b_task).await.expect("b did not take over").unwrap();
    eprintln!("{}: b leads {:?} after a's lease went", b.name(), t.elapsed());
    assert!(b_lead.is_leader());
    assert_eq!(leader::leader(&sb).await.unwrap().as_deref(), Some("b"));
    // a campaigns again and waits; b resigns: a leads at once.
    let sa2 = sa.clone();
    let a_again = tokio::spawn(async move { cluster::campaign(&sa2, "a", TTL).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    b_lead.resign().await.unwrap();
    let a2 = tokio::time::timeout(TTL, a_again).await.expect("a did not take over").unwrap();
    assert!(a2.is_leader() && t.elapsed() < TTL, "{:?}", t.elapsed());
    a2.resign().await.unwrap();
    assert_eq!(leader::leader(&sa).await.unwrap(), None);
}

/// A dropped leader (its process hung or died: nothing refreshes its lease) is replaced within
/// the TTL.
async fn dropped_leader_lapses<B: Backend>(b: &B) {
    let s = b.client().await;
    let a = cluster::campaign(&s, "a", TTL).await.unwrap();
    let s2 = s.clone();
    let b_task = tokio::spawn(async move { cluster::campaign(&s2, "b", TTL).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    drop(a);
    let b_lead = tokio::time::timeout(TTL * 2, b_task).await.expect("b did not take over").unwrap();
    let took = t.elapsed();
    eprintln!("{}: b leads {took:?} after a stopped", b.name());
    assert!(took <= TTL + Duration::from_millis(1000), "{took:?}");
    assert!(b_lead.is_leader());
}

store_tests!(handover, dropped_leader_lapses);

fn candidate(spec: &str, id: &str) -> (ChildGuard, mpsc::Receiver<String>) {
    let mut cmd = Command::new(vk_store_bin());
    cmd.args(["campaign", spec, id, &TTL.as_secs().to_string()]).stdout(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Two candidate processes on a real etcd; the leader's process is SIGKILLed; the other
/// leads within the lease TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_process_killed() {
    let etcd = Etcd::start().await;
    let (mut a, a_out) = candidate(&etcd.spec(), "a");
    let first = a_out.recv_timeout(Duration::from_secs(10)).expect("a leads");
    assert_eq!(first, "LEADER a");
    let (_b, b_out) = candidate(&etcd.spec(), "b");
    assert!(b_out.recv_timeout(Duration::from_secs(1)).is_err(), "b leads while a lives");
    let t = Instant::now();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(a.pid()), nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let _ = a.0.wait();
    let line = b_out.recv_timeout(TTL * 3).expect("b did not take over");
    let took = t.elapsed();
    eprintln!("etcd: b leads {took:?} after a's process was killed");
    assert_eq!(line, "LEADER b");
    assert!(took <= TTL + Duration::from_millis(1000), "{took:?}");
    let store = etcd.store().await;
    assert_eq!(leader::leader(&store).await.unwrap().as_deref(), Some("b"));
}
