//! Test 5: a malformed file is refused, and the policy in force and its counters stay; a
//! policy that would shut out a connection established now is refused unless forced; a
//! reload during a transfer does not break it.
use std::{process::Command, time::Duration};

use viking::vpc::status::ErrorKind;
use viking_tests::{
    backend::Backend,
    viking_bin,
    vpc::{download, reach, Reach, VpcNet},
};

use super::rule;

const OPEN: &str = "\
default: deny
allow:
  - from: cluster
  - name: feed
    from: 10.97.0.100/32
    ports: [9000/tcp]
";
const CLOSED: &str = "default: deny\nallow:\n  - from: cluster\n";
const BAD: &str = "allow:\n  - from: cluster\n    ports: [22]\n";

fn viking(net: &VpcNet, args: &[&str]) -> std::process::Output {
    let agent = net.agent(0);
    Command::new(viking_bin())
        .args(args)
        .arg("--server")
        .arg(&agent.api)
        .arg("--token-file")
        .arg(agent.token_file())
        .output()
        .expect("viking")
}

#[tokio::test]
async fn bad_files_are_refused_and_a_reload_keeps_established_flows() {
    let mut net = VpcNet::new(1, 1).await;
    net.start(0, OPEN, &[]).await;
    let _server = Backend::tcp(&net.hosts[0].ns, "feed", net.addr(0, 9000));
    let client = &net.outsiders[0].ns;
    for _ in 0..3 {
        assert_eq!(reach(client, net.addr(0, 9000)), Reach::Connected);
    }
    let before = net.status(0).await;
    let feed = rule(&before, "feed").clone();
    assert!(feed.pass_packets > 0);

    // A malformed file: `viking vpc check` says where; the agent refuses it and keeps the
    // policy in force, with its counters.
    let bad = net.dir().join("bad.yml");
    std::fs::write(&bad, BAD).expect("bad file");
    let check =
        Command::new(viking_bin()).args(["vpc", "check"]).arg(&bad).output().expect("check");
    assert!(!check.status.success());
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(err.contains("bad.yml:3: allow[0].ports[0]") && err.contains("no protocol"), "{err}");
    net.write_policy(0, "bad.yml", BAD);
    let s = net
        .wait_status(0, "the bad file refused", |s| {
            s.error.as_ref().is_some_and(|e| e.kind == ErrorKind::Invalid)
        })
        .await;
    let msg = &s.error.as_ref().expect("error").message;
    assert!(msg.contains("bad.yml:3: allow[0].ports[0]"), "{msg}");
    assert_eq!(s.policy, before.policy, "the policy in force stays");
    let kept = rule(&s, "feed");
    assert_eq!(kept.id, feed.id);
    assert!(kept.pass_packets >= feed.pass_packets, "its counters stay");
    assert_eq!(reach(client, net.addr(0, 9000)), Reach::Connected, "and it still decides");
    let table = viking(&net, &["vpc", "status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("NOT APPLIED (invalid") && table.contains("feed: allow from 10.97.0.100/32"),
        "{table}"
    );
    std::fs::remove_file(net.hosts[0].rules.join("bad.yml")).expect("rm");
    net.wait_status(0, "the error cleared", |s| s.error.is_none()).await;

    // A transfer from the host to the outsider, and a policy that no longer lets it in.
    let (started_tx, started) = std::sync::mpsc::channel();
    let (ns_path, to) = (net.outsiders[0].ns.name.clone(), net.addr(0, 9000));
    let total = 48 << 20;
    let transfer = std::thread::spawn(move || {
        let ns = viking_tests::guards::NetNs { name: ns_path };
        let got = download(&ns, to, total, started_tx);
        std::mem::forget(ns); // NB: the test's own guard removes the namespace
        got
    });
    started.recv_timeout(Duration::from_secs(5)).expect("the transfer started");
    net.write_policy(0, "policy.yml", CLOSED);
    // The guard refuses it: the outsider's established connection could not come back.
    let s = net
        .wait_status(0, "the lockout guard's refusal", |s| {
            s.error.as_ref().is_some_and(|e| e.kind == ErrorKind::Refused)
        })
        .await;
    let e = s.error.as_ref().expect("error");
    assert_eq!(e.offenders.len(), 1, "{e:#?}");
    assert_eq!(e.offenders[0].remote.ip(), std::net::IpAddr::from(net.outsiders[0].ip));
    assert_eq!(s.policy, before.policy, "{}", net.agent(0).log());
    // Forced, it is applied during the transfer...
    let out = viking(&net, &["vpc", "reload", "--force"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("applied"));
    assert!(!transfer.is_finished(), "the reload came during the transfer (make it longer)");
    // ...which completes, every byte...
    let got = transfer.join().expect("transfer");
    assert_eq!(got, total, "the established transfer survived the reload");
    // ...while a new connection is now dropped.
    assert_eq!(reach(client, net.addr(0, 9000)), Reach::Silent);
    let s = net.status(0).await;
    assert!(s.policy.as_ref().is_some_and(|p| p.forced), "{s:#?}");
    assert!(s.error.is_none(), "{s:#?}");
    assert!(!s.rules.iter().any(|r| r.name.as_deref() == Some("feed")));
}
