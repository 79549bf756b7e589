//! Three hosts on three subnets, joined only by a router that has no route to any instance
//! address: an instance on host A reaches one on host C by its allocated address and through
//! its link's ambassador port, host B reaches it too, and C reaches A's instance back; with
//! exec instances, and with docker containers.
use viking_tests::{
    cluster::{bin, Cluster, Options},
    docker::IMAGE,
};

use super::{address, all_running, eventually, fetch, in_instance, peers, run};

const GREETING: &str = "hello-across-the-overlay";

/// srv on host C answers GREETING on port 80 (docker: busybox httpd; exec: vk-probe's
/// greeting); cli on host A asks it through its link in a loop.
fn stack(docker: bool, a: &str, c: &str) -> String {
    if docker {
        format!(
            "srv:\n  type: job\n  image: {IMAGE}\n  host: {c}\n  command: mkdir -p /www && echo {GREETING} > /www/index.html && exec httpd -f -p 80 -h /www\n  ports:\n    - 80\n\
             cli:\n  type: job\n  image: {IMAGE}\n  host: {a}\n  daemonize: true\n  command: while true; do timeout 5 wget -q -O - http://$SRV_PORT_80_TCP_ADDR:$SRV_PORT_80_TCP_PORT/; sleep 0.3; done\n  link:\n    - srv\n"
        )
    } else {
        let probe = bin("vk-probe");
        format!(
            "srv:\n  type: job\n  host: {c}\n  command: exec {probe} serve 0.0.0.0:80 {GREETING}\n  ports:\n    - 80\n\
             cli:\n  type: job\n  host: {a}\n  daemonize: true\n  command: while true; do {probe} tcp $SRV_PORT_80; sleep 0.3; done\n  link:\n    - srv\n"
        )
    }
}

async fn reach_across_routed_hosts(docker: bool) {
    let opts = Options {
        hosts: 3,
        docker: if docker { vec![0, 2] } else { vec![] },
        ..Options::default()
    };
    let c = Cluster::start_with(opts).await;
    let (a, b, hc) = (&c.hosts[0], &c.hosts[1], &c.hosts[2]);
    c.deploy("net", &stack(docker, &a.agent.node, &hc.agent.node)).await;
    let rows = c.wait_ps("srv on C and cli on A running", |r| all_running(r, 2)).await;
    let srv = address(&rows, "net", "srv");
    let cli = address(&rows, "net", "cli");

    // No shared segment and no route to instances but the overlay's: the router knows only
    // the hosts' subnets; A routes srv through C's address on its VXLAN device.
    let (_, router) = run({
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["-n", &c.router.name, "route", "show"]);
        cmd
    });
    assert!(!router.contains("10.32.") && !router.contains("default"), "router routes: {router}");
    let (ok, route) = a.run("ip", &["route", "get", &srv.to_string()]);
    assert!(
        ok && route.contains(&format!("via {} dev vk-vxlan", hc.ip)),
        "A's route to srv: {route}"
    );

    // cli (on A) reaches srv (on C) through its link: 127.0.0.1:<ambassador port>, rewritten
    // in A's kernel to srv's address, carried by the overlay.
    eventually(&c, "cli reaches srv through its link", 30, || async {
        let log = if docker {
            let d = c.dockerd.as_ref().unwrap();
            run({
                let mut cmd = std::process::Command::new("docker");
                cmd.args(["-H", &d.host(), "logs", "net_cli_0"]);
                cmd
            })
            .1
        } else {
            a.agent.instance_log("net_cli_0")
        };
        if log.contains(GREETING) {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;

    // By address: from inside cli's namespace, from host B, and from C back to cli's address.
    let (ok, got) = if docker {
        run(in_instance(
            &c,
            a,
            "net_cli_0",
            &["timeout", "5", "wget", "-q", "-O", "-", &format!("http://{srv}/")],
        ))
    } else {
        run(in_instance(&c, a, "net_cli_0", &[&bin("vk-probe"), "tcp", &format!("{srv}:80")]))
    };
    assert!(ok && got.contains(GREETING), "cli -> {srv}: {got}");
    let got = fetch(b, srv, 80).unwrap();
    assert!(got.contains(GREETING), "host B -> {srv}: {got}");
    let back = fetch(hc, cli, 80).unwrap_err();
    assert_eq!(
        back.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "C -> cli's address: cli itself refuses ({back})"
    );

    // `viking peers` on A: B and C, each programmed; routes through C to srv and to C's own
    // overlay address, through B to B's.
    let p = peers(&c, a);
    assert_eq!(p.get(&hc.agent.node), Some(&("ok".to_owned(), 2)), "{p:?}");
    assert_eq!(p.get(&b.agent.node), Some(&("ok".to_owned(), 1)), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_instances_reach_each_other_across_routed_hosts() {
    reach_across_routed_hosts(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_instances_reach_each_other_across_routed_hosts() {
    reach_across_routed_hosts(true).await;
}
