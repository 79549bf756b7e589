//! An agent restart changes nothing in the kernel: the overlay's device, FDB, neighbours and
//! routes dump the same before and after, `ip monitor` sees none of them deleted or added
//! meanwhile, and a transfer across the overlay that spans the restart completes.
use std::{
    process::{Command, Stdio},
    time::Duration,
};

use viking_tests::{
    cluster::{Cluster, Host},
    guards::ChildGuard,
};

use super::{address, all_running, in_instance};

/// `ip monitor` and `bridge monitor fdb` in a host's namespace, into files.
struct Monitor {
    _ip: ChildGuard,
    _fdb: ChildGuard,
    files: [std::path::PathBuf; 2],
}

impl Monitor {
    fn start(c: &Cluster, host: &Host, tag: &str) -> Self {
        let files = [c.dir.join(format!("{tag}-ip.log")), c.dir.join(format!("{tag}-fdb.log"))];
        let spawn = |args: &[&str], file: &std::path::Path| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &host.ns.name]).args(args);
            cmd.stdout(std::fs::File::create(file).unwrap()).stderr(Stdio::null());
            ChildGuard::spawn(cmd)
        };
        let ip = spawn(&["ip", "monitor", "link", "neigh", "route"], &files[0]);
        let fdb = spawn(&["bridge", "monitor", "fdb"], &files[1]);
        Self { _ip: ip, _fdb: fdb, files }
    }

    /// What it saw of the overlay's device and Viking's routes.
    fn overlay_events(&self) -> Vec<String> {
        self.files
            .iter()
            .flat_map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| l.contains("vk-vxlan") || l.contains("proto 77"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restart_leaves_the_kernel_as_it_is_and_traffic_flowing() {
    let mut c = Cluster::start(2).await;
    let (a, b) = (c.hosts[0].agent.node.clone(), c.hosts[1].agent.node.clone());
    let stack = format!(
        "srv:\n  type: job\n  host: {b}\n  command: exec iperf3 -s -p 5201\n  ports:\n    - 5201\n\
         box:\n  type: job\n  host: {a}\n  daemonize: true\n  command: exec sleep 100000\n"
    );
    c.deploy("rs", &stack).await;
    let rows = c.wait_ps("srv on B, box on A", |r| all_running(r, 2)).await;
    let srv = address(&rows, "rs", "srv");
    // Settled: B is programmed on A, the route to srv with it.
    let route = format!("{srv} via {} dev vk-vxlan", c.hosts[1].ip);
    super::eventually(&c, "A routes srv", 20, || async {
        let d = c.hosts[0].overlay_dump();
        if d.contains(&route) {
            Ok(())
        } else {
            Err(d)
        }
    })
    .await;
    let before = [c.hosts[0].overlay_dump(), c.hosts[1].overlay_dump()];
    let monitors = [Monitor::start(&c, &c.hosts[0], "a"), Monitor::start(&c, &c.hosts[1], "b")];
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A transfer from box (A) to srv (B) for 6 s, across both agents' restarts.
    let mut iperf = in_instance(
        &c,
        &c.hosts[0],
        "rs_box_0",
        &["iperf3", "-c", &srv.to_string(), "-p", "5201", "-t", "6", "-J"],
    );
    iperf.stdout(Stdio::piped()).stderr(Stdio::piped());
    let transfer = iperf.spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..2 {
        c.hosts[i].agent.kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.hosts[i].agent.restart().await;
    }
    let out = tokio::task::block_in_place(|| transfer.wait_with_output()).unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && report.get("error").is_none(),
        "the transfer completes: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let received = report["end"]["sum_received"]["bytes"].as_f64().unwrap_or(0.0);
    assert!(received > 0.0, "{report}");
    println!("transferred {:.1} MB across the restarts", received / 1e6);

    // Both agents have made passes since (their mirrors started, the kernel compared), and
    // nothing changed: the same device (same index), entries and routes, and no event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, m) in monitors.iter().enumerate() {
        assert_eq!(c.hosts[i].overlay_dump(), before[i], "host {i}'s overlay after the restart");
        assert_eq!(
            m.overlay_events(),
            Vec::<String>::new(),
            "host {i}: overlay objects changed\n{}",
            c.logs()
        );
    }
    // The restarted agents (a fresh log each) found the kernel right: no pass changed a thing.
    for h in &c.hosts {
        let log = h.agent.log();
        assert!(log.contains("overlay ready") && !log.contains("overlay synced"), "{log}");
    }
    drop(monitors);

    // A's agent stops; meanwhile a stale route of Viking's appears and B's neighbour entry
    // goes. The next agent removes the one, adds the other, and leaves the rest alone.
    let peer = c.hosts[1].ip.clone();
    c.hosts[0].agent.kill();
    let stale = "10.32.200.1/32";
    let (ok, out) = c.hosts[0].run(
        "ip",
        &["route", "add", stale, "via", &peer, "dev", "vk-vxlan", "onlink", "proto", "77"],
    );
    assert!(ok, "{out}");
    let (ok, out) = c.hosts[0].run("ip", &["neigh", "del", &peer, "dev", "vk-vxlan"]);
    assert!(ok, "{out}");
    let untouched = Monitor::start(&c, &c.hosts[0], "a2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.hosts[0].agent.restart().await;
    super::eventually(&c, "the stale route gone, the neighbour back", 20, || async {
        let d = c.hosts[0].overlay_dump();
        if d == before[0] {
            Ok(())
        } else {
            Err(d)
        }
    })
    .await;
    let events = untouched.overlay_events();
    assert!(events.iter().any(|e| e.starts_with("Deleted 10.32.200.1")), "{events:?}");
    assert!(
        events.iter().any(|e| e.starts_with(&format!("{peer} dev vk-vxlan lladdr"))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| e.contains(&srv.to_string())),
        "srv's route untouched: {events:?}"
    );
}
