//! The overlay's MTU: on an underlay of 1400 bytes, instance interfaces get 1350 (VXLAN's 50
//! bytes less), and a 1 MiB TCP transfer (DF set) between instances on two hosts goes through
//! whole: no host or router fragments a packet or answers "fragmentation needed".
use std::process::Command;

use viking_tests::cluster::{bin, Cluster, Options};

use super::{address, all_running, in_instance, run};

/// Counters of `/proc/net/snmp` in namespace `ns`: `("Ip", "FragCreates")` and the like.
fn snmp(ns: &str) -> std::collections::BTreeMap<(String, String), i64> {
    let out =
        Command::new("ip").args(["netns", "exec", ns, "cat", "/proc/net/snmp"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = text.lines().collect();
    let mut m = std::collections::BTreeMap::new();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let (proto, names) = names.split_once(':').unwrap();
        let values = values.split_once(':').unwrap().1;
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            m.insert((proto.to_owned(), n.to_owned()), v.parse().unwrap_or(0));
        }
    }
    m
}

/// What would show a packet too large for its path: fragments made or reassembled, and ICMP
/// "destination unreachable" sent (fragmentation needed is one).
const WATCHED: [(&str, &str); 4] =
    [("Ip", "FragCreates"), ("Ip", "FragOKs"), ("Ip", "ReasmReqds"), ("Icmp", "OutDestUnreachs")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transfer_with_df_crosses_hosts_whole() {
    let c = Cluster::start_with(Options { hosts: 2, mtu: Some(1400), ..Options::default() }).await;
    let (a, b) = (&c.hosts[0], &c.hosts[1]);
    let probe = bin("vk-probe");
    let stack = format!(
        "srv:\n  type: job\n  host: {}\n  command: exec {probe} serve 0.0.0.0:80\n  ports:\n    - 80\n\
         box:\n  type: job\n  host: {}\n  daemonize: true\n  command: exec sleep 100000\n",
        b.agent.node, a.agent.node
    );
    c.deploy("mtu", &stack).await;
    let rows = c.wait_ps("srv on B, box on A", |r| all_running(r, 2)).await;
    let srv = address(&rows, "mtu", "srv");

    // The VXLAN device and every instance interface: 1400 - 50.
    // NB: `ip`, not /sys: nsenter enters the network namespace only, and /sys stays the
    // agent's.
    let (_, link) =
        run(in_instance(&c, a, "mtu_box_0", &["ip", "-o", "link", "show", "dev", "eth0"]));
    assert!(link.contains(" mtu 1350 "), "{link}");
    let (_, dev) = a.run("cat", &["/sys/class/net/vk-vxlan/mtu"]);
    assert_eq!(dev.trim(), "1350");

    let namespaces = [a.ns.name.clone(), b.ns.name.clone(), c.router.name.clone()];
    let before: Vec<_> = namespaces.iter().map(|n| snmp(n)).collect();
    let (ok, out) =
        run(in_instance(&c, a, "mtu_box_0", &[&probe, "stream", &format!("{srv}:80"), "1048576"]));
    let summary: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    assert!(ok && summary["ok"] == 1 && summary["bytes"] == 1_048_576, "1 MiB from srv: {out}");
    let after: Vec<_> = namespaces.iter().map(|n| snmp(n)).collect();
    for (i, ns) in namespaces.iter().enumerate() {
        for (proto, name) in WATCHED {
            let k = (proto.to_owned(), name.to_owned());
            assert_eq!(after[i].get(&k), before[i].get(&k), "{ns}: {proto} {name} moved");
        }
    }
}
