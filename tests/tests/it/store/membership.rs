//! Membership: hosts register under a lease; one whose agent stops disappears after its TTL;
//! watchers see joins, updates and leaves.
// NB: the store tests are plain async fns run by store_tests!, which clippy does not
// count as tests; they unwrap like any test.
#![allow(clippy::unwrap_used)]
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use viking::cluster::{
    membership::{self, Capacity, HostEvent, HostInfo, HostWatcher},
    ClusterError,
};
use viking::store::{keys, Store};
use viking_tests::{
    etcd::{vk_store_bin, Backend, Etcd},
    guards::ChildGuard,
    store_tests,
};

const TTL: Duration = Duration::from_secs(2);
const SLACK: Duration = Duration::from_millis(1500);

fn host(name: &str, last: u8) -> HostInfo {
    HostInfo {
        tags: vec!["ssd".into()],
        capacity: Capacity { cpus: 2, memory_mb: 2048, instances: 20 },
        started: 1,
        ..HostInfo::new(name, format!("127.0.0.{last}").parse().unwrap())
    }
}

async fn expect(w: &mut HostWatcher, want: HostEvent, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let left = within.saturating_sub(t.elapsed());
        match w.next_within(left).await {
            Some(e) if e == want => return t.elapsed(),
            Some(_) => {}
            None => panic!("no {want:?} within {within:?}"),
        }
    }
}

/// Two hosts join; one's agent stops (nothing refreshes its lease): it leaves after the TTL;
/// the other leaves cleanly: at once.
async fn join_lapse_leave<B: Backend>(b: &B) {
    let s = b.client().await;
    let mut w = HostWatcher::start(&s).await.unwrap();
    let one = membership::join(&s, host("one", 1), TTL).await.unwrap();
    let two = membership::join(&b.client().await, host("two", 2), TTL).await.unwrap();
    expect(&mut w, HostEvent::Joined(host("one", 1)), SLACK).await;
    expect(&mut w, HostEvent::Joined(host("two", 2)), SLACK).await;
    // Registered past several TTLs: the leases are kept alive.
    tokio::time::sleep(TTL * 2).await;
    let listed = membership::hosts(&s).await.unwrap();
    assert_eq!(listed.iter().map(|h| h.info.name.as_str()).collect::<Vec<_>>(), ["one", "two"]);
    assert!(listed.iter().all(|h| h.lease.is_some()));
    // A watcher started now knows both.
    let w2 = HostWatcher::start(&s).await.unwrap();
    assert_eq!(w2.hosts().count(), 2);
    // "one" stops (as if its process died): gone within the TTL.
    drop(one);
    let took = expect(&mut w, HostEvent::Left("one".into()), TTL + SLACK).await;
    eprintln!("{}: a stopped host left after {took:?}", b.name());
    // "two" leaves: at once.
    two.leave().await.unwrap();
    let took = expect(&mut w, HostEvent::Left("two".into()), SLACK).await;
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(membership::hosts(&s).await.unwrap().is_empty());
}

/// A host record edited by hand is an update; a broken one is an error naming it for the
/// listing, and ignored (logged) by watchers.
async fn updates_and_bad_records<B: Backend>(b: &B) {
    let s = b.client().await;
    let m = membership::join(&s, host("three", 3), TTL).await.unwrap();
    let mut w = HostWatcher::start(&s).await.unwrap();
    let mut changed = host("three", 3);
    changed.tags.push("gpu".into());
    s.put(&keys::host("three"), serde_json::to_vec(&changed).unwrap(), m.lease()).await.unwrap();
    expect(&mut w, HostEvent::Updated(changed), SLACK).await;
    s.put(&keys::host("broken"), b"{not json".to_vec(), None).await.unwrap();
    let e = membership::hosts(&s).await.unwrap_err();
    assert!(
        matches!(e, ClusterError::BadValue(_)) && e.to_string().contains("/viking/hosts/broken"),
        "{e}"
    );
    s.delete(&keys::host("broken")).await.unwrap();
    m.leave().await.unwrap();
    expect(&mut w, HostEvent::Left("three".into()), SLACK).await;
}

store_tests!(join_lapse_leave, updates_and_bad_records);

/// A member process on a real etcd, killed with SIGKILL: the host disappears after its TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_disappears() {
    let etcd = Etcd::start().await;
    let s = etcd.store().await;
    let mut w = HostWatcher::start(&s).await.unwrap();
    let mut cmd = Command::new(vk_store_bin());
    cmd.args(["member", &etcd.spec(), "victim", &TTL.as_secs().to_string()]).stdout(Stdio::piped());
    let mut child = ChildGuard::spawn(cmd);
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "JOINED victim");
    let joined = loop {
        match w.next_within(SLACK).await {
            Some(HostEvent::Joined(h)) => break h,
            Some(_) => {}
            None => panic!("no join seen"),
        }
    };
    assert_eq!((joined.name.as_str(), joined.capacity.cpus), ("victim", 2));
    let t = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = child.0.wait();
    expect(&mut w, HostEvent::Left("victim".into()), TTL + SLACK).await;
    eprintln!("etcd: killed agent's host left after {:?}", t.elapsed());
    assert!(membership::hosts(&s).await.unwrap().is_empty());
}
