//! Run-once jobs on one host, started together, each linking to a service on another host:
//! each starts only once the path to the service exists (its registration in the datapath, the
//! overlay's route to its address), so every one succeeds on its first and only run.
use viking_tests::cluster::{bin, Cluster};

use super::all_running;

const JOBS: usize = 6;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_once_jobs_linking_across_hosts_succeed_on_their_first_run() {
    let c = Cluster::start(2).await;
    let (a, b) = (c.hosts[0].agent.node.clone(), c.hosts[1].agent.node.clone());
    let probe = bin("vk-probe");
    let mut stack = format!(
        "db:\n  type: job\n  host: {b}\n  command: exec {probe} serve 0.0.0.0:80 db-greeting\n  ports:\n    - 80\n"
    );
    for i in 0..JOBS {
        // One connect, no retry: it exits 0 only if that connect got db's greeting.
        stack.push_str(&format!(
            "once{i}:\n  type: job\n  host: {a}\n  daemonize: false\n  command: {probe} tcp $DB_PORT_80 | grep db-greeting\n  link:\n    - db\n"
        ));
    }
    c.deploy("ro", &stack).await;
    let rows = c
        .wait_ps("every run-once job completed", |r| {
            r.len() == JOBS + 1
                && r.iter().filter(|r| r.job.starts_with("once")).all(|r| r.state == "completed")
        })
        .await;
    for r in rows.iter().filter(|r| r.job.starts_with("once")) {
        assert_eq!((r.detail.as_str(), r.restarts), ("exit 0", 0), "{r:?}\n{}", c.logs());
        assert_eq!(r.host, a);
    }
    assert!(all_running(&rows.iter().filter(|r| r.job == "db").cloned().collect::<Vec<_>>(), 1));
}
