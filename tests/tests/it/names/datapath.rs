//! A job's virtual IP in the kernel: two deployments `abc` and `xyz` of one stack on two hosts
//! (exec runtime, real vk-probe servers as pricing); from a host's namespace, in its agent's
//! cgroup, `connect(VIP:80)` and a UDP datagram to `VIP:80` reach only that deployment's
//! instances (on both hosts), getpeername shows the VIP, and `rm` takes the VIP away.
use std::{collections::BTreeSet, time::Duration};

use viking::{
    cluster::vips::{VipTable, PREFIX},
    store::{EtcdOptions, EtcdStore, Store},
};
use viking_tests::{
    cluster::{bin, rows, Cluster},
    probe::Conn,
    probe_bin,
    topo::run_probe,
};

pub fn pricing_stack() -> String {
    let probe = bin("vk-probe");
    format!(
        "pricing:\n  command: {probe} serve 0.0.0.0:80\n  ports: [80, 80/udp]\n  scale: 2\n\
         web:\n  command: sleep 3600\n"
    )
}

pub async fn vips(c: &Cluster) -> VipTable {
    let etcd = c.etcd.as_ref().unwrap();
    let store = EtcdStore::connect(&etcd.endpoints(), &EtcdOptions::default()).await.unwrap();
    VipTable::read(&store.list(PREFIX).await.unwrap().kvs).unwrap()
}

fn probe(c: &Cluster, args: &[&str]) -> Vec<Conn> {
    let h = &c.hosts[0];
    let mut cmd = h.ns.command(probe_bin(), Some(&h.agent.cgroup));
    cmd.env("VK_PROBE_TIMEOUT_MS", "1000").args(args);
    run_probe(cmd)
}

/// The backends `n` TCP connects to `addr` reached (`none` for a failed connect), with the
/// peers getpeername gave.
fn reached(c: &Cluster, addr: &str, n: usize) -> (BTreeSet<String>, BTreeSet<String>) {
    let conns = probe(c, &["tcp", addr, &n.to_string()]);
    let backends = conns.iter().map(|c| c.backend().unwrap_or("none").to_owned()).collect();
    let peers = conns.iter().filter_map(|c| c.peer.clone()).collect();
    (backends, peers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_jobs_vip_reaches_only_its_own_deployments_instances_tcp_and_udp() {
    let c = Cluster::start(2).await;
    c.deploy("abc", &pricing_stack()).await;
    c.deploy("xyz", &pricing_stack()).await;
    let ps = c
        .wait_ps("6 instances running", |r| r.len() == 6 && r.iter().all(|r| r.state == "running"))
        .await;
    for stack in ["abc", "xyz"] {
        let hosts: BTreeSet<&str> =
            rows(&ps, stack, "pricing").iter().map(|r| r.host.as_str()).collect();
        assert_eq!(hosts.len(), 2, "{stack}'s pricing spread over both hosts: {ps:#?}");
    }
    let t = vips(&c).await;
    let vip = |s: &str| t.get(s, "pricing").unwrap().ip.to_string();
    assert_ne!(vip("abc"), vip("xyz"));
    for stack in ["abc", "xyz"] {
        let addr = format!("{}:80", vip(stack));
        let want: BTreeSet<String> = (0..2).map(|i| format!("{stack}_pricing_{i}")).collect();
        let mut got = (BTreeSet::new(), BTreeSet::new());
        for _ in 0..100 {
            got = reached(&c, &addr, 20);
            if got.0 == want {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(got.0, want, "{addr} reaches {stack}'s pricing only\n{}", c.logs());
        assert_eq!(got.1, BTreeSet::from([addr.clone()]), "getpeername shows the VIP");
        // UDP, unconnected and connected: the reply comes from the VIP.
        for mode in [None, Some("connected")] {
            let mut args = vec!["udp", addr.as_str()];
            args.extend(mode);
            let r = probe(&c, &args);
            let name = r[0].backend().unwrap_or("none");
            assert!(
                name.starts_with(&format!("{stack}_pricing_")) && name.ends_with("/udp"),
                "{addr} {mode:?} over UDP: {r:?}"
            );
            assert_eq!(r[0].peer.as_deref(), Some(addr.as_str()), "{mode:?}");
        }
    }

    // rm xyz: its VIP leaves the datapath; abc's still answers.
    let xyz = format!("{}:80", vip("xyz"));
    c.hosts[0].agent.client().delete("/v1/stacks/xyz").await.unwrap();
    let mut gone = false;
    for _ in 0..100 {
        if reached(&c, &xyz, 1).0 == BTreeSet::from(["none".to_owned()]) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "{xyz} still reaches an instance after rm xyz");
    assert!(vips(&c).await.get("xyz", "pricing").is_none());
    let abc = format!("{}:80", vip("abc"));
    assert!(reached(&c, &abc, 4).0.iter().all(|b| b.starts_with("abc_pricing_")));
}
