//! Test 1: a non-member cannot open TCP or UDP to a member's ports or to its instances'
//! ports (every try dropped, and counted); members can. One host attaches through TCX, one
//! through a clsact qdisc (the fallback for kernels without TCX).
use std::{net::SocketAddr, time::Duration};

use viking::{api::DeployRequest, control::instances::PsRow, vpc::AttachMode};
use viking_tests::{
    backend::Backend,
    cluster::bin,
    vpc::{reach, reach_within, udp_answers, Reach, VpcNet},
};

use super::{default_rule, rule, CLUSTER_ONLY};

async fn deploy(net: &VpcNet, host: usize, stack: &str, text: &str) {
    let req = DeployRequest {
        name: stack.into(),
        file: format!("{stack}.yml"),
        text: text.into(),
        dry_run: false,
        contexts: Default::default(),
    };
    let _: Option<serde_json::Value> =
        net.agent(host).client().post("/v1/deploy", &req).await.expect("deploy");
}

async fn wait_running(net: &VpcNet, n: usize) -> Vec<PsRow> {
    for _ in 0..300 {
        let rows: Vec<PsRow> =
            net.agent(0).client().get("/v1/ps").await.expect("ps").unwrap_or_default();
        if rows.len() == n && rows.iter().all(|r| r.state == "running" && r.address.is_some()) {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("instances did not start:\n{}", net.agent(0).log());
}

#[tokio::test]
async fn non_members_are_dropped_and_members_pass() {
    let mut net = VpcNet::new(3, 1).await;
    net.start(0, CLUSTER_ONLY, &[]).await;
    net.start(1, CLUSTER_ONLY, &[]).await;
    net.start(2, CLUSTER_ONLY, &["--vpc-attach", "netlink"]).await;
    for i in 0..3 {
        net.wait_status(i, "all three members", |s| s.members.len() == 3).await;
    }
    assert_eq!(net.status(1).await.interfaces[0].attach, AttachMode::Tcx);
    assert_eq!(net.status(2).await.interfaces[0].attach, AttachMode::Netlink);

    // Servers in hosts 1 and 2 themselves, and instances (exec runtime) on host 1.
    let mut servers = Vec::new();
    for i in 1..3 {
        servers.push(Backend::tcp(&net.hosts[i].ns, "host", net.addr(i, 9000)));
        servers.push(Backend::udp(&net.hosts[i].ns, "host", net.addr(i, 9053)));
    }
    let node1 = net.agent(1).node.clone();
    let stack = format!(
        "web:\n  type: job\n  host: {node1}\n  command: {} serve 0.0.0.0:8080\n  ports:\n    - 8080\n\
         dns:\n  type: job\n  host: {node1}\n  command: /usr/bin/socat UDP4-RECVFROM:5300,fork EXEC:cat\n  ports:\n    - 5300/udp\n",
        bin("vk-probe")
    );
    deploy(&net, 0, "pub", &stack).await;
    let rows = wait_running(&net, 2).await;
    let at = |job: &str, port: u16| {
        let r = rows.iter().find(|r| r.job == job).expect("the instance");
        assert_eq!(r.host, node1);
        SocketAddr::new(r.address.expect("an address"), port)
    };
    let (web, dns) = (at("web", 8080), at("dns", 5300));
    // The outsider routes the instances' addresses through host 1, as a neighbour on the
    // private network could.
    let outsider = &net.outsiders[0];
    for a in [web, dns] {
        outsider.ns.ip(&[
            "route",
            "add",
            &format!("{}/32", a.ip()),
            "via",
            &net.hosts[1].ip.to_string(),
        ]);
    }
    let before: Vec<u64> = {
        let mut v = Vec::new();
        for i in 1..3 {
            v.push(default_rule(&net.status(i).await).drop_packets);
        }
        v
    };

    // Members reach everything: the hosts' own ports and host 1's instances.
    let member = &net.hosts[0].ns;
    for i in 1..3 {
        assert_eq!(reach(member, net.addr(i, 9000)), Reach::Connected, "member -> host {i} tcp");
        assert!(udp_answers(member, net.addr(i, 9053)), "member -> host {i} udp");
    }
    let routed = reach_within(member, web, Reach::Connected, Duration::from_secs(15)).await;
    assert_eq!(routed, Reach::Connected, "member -> instance tcp");
    assert!(udp_answers(member, dns), "member -> instance udp");

    // The outsider reaches nothing: every try is dropped (not refused: nothing answers).
    let mut tries = [0u64; 2];
    for (k, i) in [1usize, 2].into_iter().enumerate() {
        for _ in 0..3 {
            assert_eq!(
                reach(&outsider.ns, net.addr(i, 9000)),
                Reach::Silent,
                "outsider -> host {i} tcp"
            );
            tries[k] += 1;
        }
        assert!(!udp_answers(&outsider.ns, net.addr(i, 9053)), "outsider -> host {i} udp");
        tries[k] += 3;
        // A port nobody listens on: dropped too, not refused.
        assert_eq!(reach(&outsider.ns, net.addr(i, 9999)), Reach::Silent);
        tries[k] += 1;
    }
    for _ in 0..3 {
        assert_eq!(reach(&outsider.ns, web), Reach::Silent, "outsider -> instance tcp");
        tries[0] += 1;
    }
    assert!(!udp_answers(&outsider.ns, dns), "outsider -> instance udp");
    tries[0] += 3;

    // The counters say so: every try dropped by the interface's default, members passed by
    // `from: cluster`.
    for (k, i) in [1usize, 2].into_iter().enumerate() {
        let s = net.status(i).await;
        let dropped = default_rule(&s).drop_packets - before[k];
        assert!(dropped >= tries[k], "host {i}: {dropped} dropped for {} tries: {s:#?}", tries[k]);
        let cluster = rule(&s, "allow from cluster");
        assert!(cluster.pass_packets > 0 && cluster.pass_bytes > 0, "{s:#?}");
        assert!(s.connections > 0, "members' connections are tracked: {s:#?}");
    }
    drop(servers);
}
