//! Registrations: a job with the same port on TCP and UDP is reachable on both through its
//! link, and what another registrator wrote under this host's name survives.
use std::time::{Duration, Instant};

use viking::store::{EtcdOptions, EtcdStore, Store};
use viking_tests::{
    cluster::{bin, Cluster},
    probe::Conn,
};

#[tokio::test]
async fn tcp_and_udp_on_one_port_both_reach_through_the_link_and_others_records_survive() {
    let c = Cluster::start(1).await;
    let probe = bin("vk-probe");
    let store = EtcdStore::connect(&c.etcd.as_ref().unwrap().endpoints(), &EtcdOptions::default())
        .await
        .unwrap();
    // Another registrator's record, naming this host, with no lease of ours.
    let node = c.hosts[0].agent.node.clone();
    let foreign = "/services/other/third_party/80/80/x1";
    let value = format!(r#"{{"ipaddress": "10.0.0.9", "host_port": 80, "host": "{node}"}}"#);
    store.put(foreign, value.into_bytes(), None).await.unwrap();

    c.deploy("net", &format!("dns:\n  command: {probe} serve 0.0.0.0:53\n  ports: [53, 53/udp]\n"))
        .await;
    c.deploy(
        "cli",
        &format!(
            "ask:\n  command: {probe} tcp $NET_DNS_PORT_53_TCP_ADDR:$NET_DNS_PORT_53_TCP_PORT 2; \
             {probe} udp $NET_DNS_PORT_53_UDP_ADDR:$NET_DNS_PORT_53_UDP_PORT connected\n  links: [net/dns]\n"
        ),
    )
    .await;
    c.wait_ps("the client ran", |r| r.iter().any(|r| r.stack == "cli" && r.state == "completed"))
        .await;
    let log = c.hosts[0].agent.instance_log("cli_ask_0");
    let replies: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Conn>(l).ok()?.backend().map(str::to_owned))
        .collect();
    assert_eq!(replies, ["net_dns_0", "net_dns_0", "net_dns_0/udp"], "{log}");

    let regs = c.registrations().await;
    assert!(regs.contains_key("/services/net/net_dns/53/53/net_dns_0"), "{regs:#?}");
    let udp = &regs["/services/net/net_dns/53/53/net_dns_0.udp"];
    assert_eq!(udp["proto"], "udp");
    // The foreign record is still there after several passes of this host's registrator.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert!(
            store.get(foreign).await.unwrap().is_some(),
            "another registrator's record was deleted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
