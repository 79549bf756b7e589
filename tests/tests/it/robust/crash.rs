//! The exec runtime's start is crash-safe: the agent is killed (SIGKILL) at a random moment
//! while it starts 20 instances, 20 times over; after each restart every instance runs and
//! nothing is left over: one namespace mount, one veth, one cgroup and one state file per
//! instance, one process in each cgroup.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use viking_tests::cluster::{rows, Cluster};

const INSTANCES: usize = 20;
const ROUNDS: usize = 20;

/// xorshift64: random moments, reproducible from the seed the test prints.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// What the runtime holds on this host, counted from the kernel and the file system.
#[derive(Debug, PartialEq, Eq)]
struct Held {
    state_files: BTreeSet<String>,
    mounts: usize,
    netns_files: usize,
    veths: usize,
    cgroups: BTreeSet<String>,
    /// Processes in the instances' cgroups.
    processes: usize,
}

fn names_in(dir: &Path, suffix: &str) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(suffix).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn held(c: &Cluster) -> Held {
    let host = &c.hosts[0];
    let run = PathBuf::from("/run/viking").join(&host.agent.node).join("netns");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = format!("{}/", run.display());
    let mounts = mountinfo
        .lines()
        .filter(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix)))
        .count();
    let links =
        Command::new("ip").args(["-n", &host.ns.name, "-o", "link", "show"]).output().expect("ip");
    let veths = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        // NB: instances' host-side veths are `vk` and 8 hex digits (the overlay's device is
        // `vk-vxlan`); `ip -o link` prints a veth as `name@peer`.
        .map(|name| name.split('@').next().unwrap_or(name))
        .filter(|name| {
            name.len() == 10
                && name.starts_with("vk")
                && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
        })
        .count();
    let cg = &host.agent.cgroup.path;
    let cgroups: BTreeSet<String> = std::fs::read_dir(cg)
        .expect("the agent's cgroup")
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with("vk-"))
        .collect();
    let processes = cgroups
        .iter()
        .map(|n| {
            std::fs::read_to_string(cg.join(n).join("cgroup.procs"))
                .map(|p| p.lines().count())
                .unwrap_or(0)
        })
        .sum();
    Held {
        state_files: names_in(&host.agent.data_dir().join("exec"), ".json"),
        mounts,
        netns_files: names_in(&run, "").len(),
        veths,
        cgroups,
        processes,
    }
}

fn wanted(c: &Cluster) -> Held {
    let names: BTreeSet<String> = (0..INSTANCES).map(|i| format!("crash_s_{i}")).collect();
    Held {
        state_files: names.clone(),
        mounts: INSTANCES,
        netns_files: INSTANCES,
        veths: INSTANCES,
        cgroups: names.iter().map(|n| format!("vk-{}-{n}", c.hosts[0].agent.node)).collect(),
        processes: INSTANCES,
    }
}

/// The pids of the instances, from their state files.
fn pids(c: &Cluster) -> Vec<i32> {
    let dir = c.hosts[0].agent.data_dir().join("exec");
    names_in(&dir, ".json")
        .iter()
        .filter_map(|n| {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(format!("{n}.json"))).ok()?).ok()?;
            v["pid"].as_i64().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 0)
        })
        .collect()
}

#[tokio::test]
async fn an_agent_killed_while_it_starts_instances_starts_them_all_after_a_restart() {
    let mut c = Cluster::single_embedded().await;
    let seed =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
            | 1;
    println!("crash moments from seed {seed}");
    let mut rng = Rng(seed);
    c.deploy(
        "crash",
        &format!(
            "s:\n  type: job\n  command: exec sleep 3600\n  ports:\n    - 80\n  scale: {INSTANCES}\n"
        ),
    )
    .await;
    let mut kills = Vec::new();
    // Rounds whose kill cut a start short (the restarted agent says it cleans one up).
    let mut cut_short = 0;
    for round in 0..ROUNDS {
        // Round 0 kills while the first deploy starts; later rounds kill every instance and
        // then the agent while it starts them again (its restarts come 1 s after a crash).
        let at = if round == 0 {
            rng.below(1500)
        } else {
            for pid in pids(&c) {
                // NB: processes this test's agent started.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            900 + rng.below(1600)
        };
        tokio::time::sleep(Duration::from_millis(at)).await;
        c.hosts[0].agent.kill();
        kills.push(at);
        c.hosts[0].agent.restart().await;
        c.wait_ps(&format!("round {round} (killed after {at} ms): all running"), |r| {
            let s = rows(r, "crash", "s");
            s.len() == INSTANCES && s.iter().all(|r| r.state == "running")
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (now, want) = (held(&c), wanted(&c));
            if now == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round} (killed after {at} ms): left over or missing:\n{now:#?}\nwanted\n{want:#?}\n{}",
                c.hosts[0].agent.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        cut_short += usize::from(c.hosts[0].agent.log().contains("cleaning up a start cut short"));
    }
    println!("killed after (ms): {kills:?}; {cut_short} of {ROUNDS} kills cut a start short");
    assert!(cut_short > 0, "no kill landed in a start: the moments need moving");
}
