//! Docker instances get the responder too: a container of deployment `abc` (on a real dockerd,
//! the agent's docker runtime) has `nameserver 169.254.1.1` and `search abc.viking viking`;
//! `nslookup pricing` in it gives abc's VIP, and the page fetched from that address is abc's
//! pricing container's. NB: the test image is busybox-static: its glibc cannot load the DNS
//! module in a container without libraries, so names are looked up with busybox's nslookup
//! (which speaks DNS itself and honours the search path), and the page is fetched with nc
//! (its wget exits with SIGSEGV in these containers; not looked into yet, docs/names.md).
use std::{process::Command, time::Duration};

use viking_tests::{
    cluster::{Cluster, Options},
    docker::IMAGE,
};

fn stack(greeting: &str) -> String {
    format!(
        "pricing:\n  image: {IMAGE}\n  command: mkdir -p /www && echo {greeting} > /www/index.html && exec httpd -f -p 80 -h /www\n  ports: [80]\n\
         web:\n  image: {IMAGE}\n  command: while true; do echo \"R=$(cat /etc/resolv.conf | tr '\\n' ' ')\"; echo \"N=$(nslookup pricing 2>&1 | tr '\\n' ' ')\"; a=$(nslookup pricing | awk '/^Name/{{n=1}} n && /^Address/{{print $2; exit}}'); echo \"G=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 $a 80 | tail -1) ($a)\"; sleep 0.5; done\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_docker_container_resolves_its_deployments_names() {
    let c = Cluster::start_with(Options {
        hosts: 1,
        docker: vec![0],
        agent_args: vec!["--dns-upstream".into(), "10.250.0.2:53".into()],
        ..Options::default()
    })
    .await;
    c.deploy("abc", &stack("abc-pricing")).await;
    c.wait_ps("2 containers running", |r| r.len() == 2 && r.iter().all(|r| r.state == "running"))
        .await;
    let d = c.dockerd.as_ref().unwrap();
    let names = d.cli(&["ps", "--format", "{{.Names}}"]);
    let web = names
        .lines()
        .find(|n| n.contains("abc_web") && !n.ends_with(".sandbox"))
        .unwrap_or_else(|| panic!("abc's web container among {names}"))
        .to_owned();
    let mut log = String::new();
    for _ in 0..150 {
        let out = Command::new("docker").args(["-H", &d.host(), "logs", &web]).output().unwrap();
        log = String::from_utf8_lossy(&out.stdout).to_string();
        if log.contains("G=abc-pricing") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(log.contains("nameserver 169.254.1.1"), "{log}\n{}", c.logs());
    assert!(log.contains("search abc.viking viking"), "{log}");
    let vip = super::datapath::vips(&c).await.get("abc", "pricing").unwrap().ip;
    assert!(log.contains(&format!("Name:\tpricing.abc.viking Address: {vip}")), "{log}");
    assert!(log.contains("G=abc-pricing"), "http://pricing/ by name: {log}\n{}", c.logs());
}
