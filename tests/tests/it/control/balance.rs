//! Balance chosen in a stack file, per job and per link, reaches the datapath: `viking
//! services` shows it, and connections spread as it says.
use std::{collections::BTreeMap, process::Command};

use viking_tests::{
    cluster::{bin, Cluster},
    probe::Conn,
    viking_bin,
};

/// How many of an instance's logged connections each backend answered.
fn spread(log: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for c in log.lines().filter_map(|l| serde_json::from_str::<Conn>(l).ok()) {
        if let Some(b) = c.backend() {
            *out.entry(b.to_owned()).or_default() += 1;
        }
    }
    out
}

#[tokio::test]
async fn each_balance_mode_shows_in_services_and_spreads_as_it_should() {
    let c = Cluster::single_embedded().await;
    let probe = bin("vk-probe");
    c.deploy(
        "svc",
        &format!(
            "rr:\n  command: {probe} serve 0.0.0.0:80\n  ports: [80]\n  scale: 3\n\
             lc:\n  command: {probe} serve 0.0.0.0:80\n  ports: [80]\n  scale: 3\n  balance: least_conn\n"
        ),
    )
    .await;
    c.wait_ps("svc running", |r| r.len() == 6 && r.iter().all(|r| r.state == "running")).await;
    // Run-once clients: 30 connects each, one at a time (rr, random) or held open (lc).
    c.deploy(
        "cli",
        &format!(
            "by-rr:\n  command: {probe} tcp $SVC_RR_PORT_80 30\n  links: [svc/rr]\n\
             by-random:\n  command: {probe} tcp $SVC_RR_PORT_80 30\n  links:\n    - {{to: svc/rr, balance: random}}\n\
             by-lc:\n  command: {probe} hold $SVC_LC_PORT_80 30\n  links: [svc/lc]\n"
        ),
    )
    .await;
    c.wait_ps("the clients ran", |r| {
        r.iter().filter(|r| r.stack == "cli" && r.state == "completed").count() == 3
    })
    .await;
    let agent = &c.hosts[0].agent;
    // NB: round robin keeps its position per CPU (no atomics on the connect path): a client
    // that moves between CPUs is even within one connection per CPU.
    let rr = spread(&agent.instance_log("cli_by-rr_0"));
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let (lo, hi) = (rr.values().min().copied(), rr.values().max().copied());
    assert!(rr.len() == 3 && hi.zip(lo).is_some_and(|(h, l)| h - l <= cpus), "round robin: {rr:?}");
    let random = spread(&agent.instance_log("cli_by-random_0"));
    assert_eq!(
        (random.len(), random.values().sum::<usize>()),
        (3, 30),
        "random reaches all: {random:?}"
    );
    let lc = spread(&agent.instance_log("cli_by-lc_0"));
    assert_eq!(
        lc.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "least connections, all held: {lc:?}"
    );

    let out = Command::new(viking_bin())
        .args(["services", "--json", "--bpffs"])
        .arg(&agent.bpf.path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let services: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let algo = |name: &str| {
        services
            .iter()
            .find(|s| s["name"] == name && s["frontend"]["proto"] == "tcp")
            .map(|s| s["algo"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|| panic!("no service {name}: {services:#?}"))
    };
    assert_eq!(algo("svc_rr:80"), "round_robin");
    assert_eq!(algo("svc_rr:80@random"), "random");
    assert_eq!(algo("svc_lc:80"), "least_conn");
}
