//! Seed 001's fig stack with its `build:` folders, end to end under the docker runtime:
//! `viking deploy` packs each context, the agent's dockerd builds the images (FROM the locally
//! imported busybox: nothing pulled), the five services run on Viking's network linked through
//! their ambassador ports, and a changed context builds a new image and restarts only its own
//! job.
//!
//! Traffic: loopback (etcd, the agent's API) and the host namespace (to the containers' veths).
#![allow(clippy::unwrap_used)]
use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use viking::control::instances::PsRow;
use viking_tests::{
    cluster::{Cluster, Options},
    etcd::TempDir,
    require_root, viking_bin,
};

const STACK: &str = "shop";
const JOBS: [&str; 5] = ["auth", "catalogue", "pricing", "redis", "web"];

/// Copies `examples/fig-local` (the stack file and its build folders) into `to`.
fn copy_example(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/fig-local");
    let out = Command::new("cp").arg("-a").arg(format!("{}/.", from.display())).arg(to).output();
    assert!(out.as_ref().is_ok_and(|o| o.status.success()), "cp: {out:?}");
}

/// `viking deploy DIR --name shop` against the cluster's one agent.
fn deploy(c: &Cluster, dir: &Path) {
    let agent = &c.hosts[0].agent;
    let out = Command::new(viking_bin())
        .arg("deploy")
        .arg(dir)
        .args(["--name", STACK, "--server", &agent.api, "--token-file"])
        .arg(agent.token_file())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "viking deploy: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The stack's instances by job, once every one runs with an address; polled (`secs` at most).
async fn all_running(
    c: &Cluster,
    secs: u64,
    pred: impl Fn(&BTreeMap<String, PsRow>) -> bool,
) -> BTreeMap<String, PsRow> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let rows: Vec<PsRow> =
            c.hosts[0].agent.client().get("/v1/ps").await.unwrap().unwrap_or_default();
        let by_job: BTreeMap<String, PsRow> =
            rows.into_iter().filter(|r| r.stack == STACK).map(|r| (r.job.clone(), r)).collect();
        let up = JOBS
            .iter()
            .all(|j| by_job.get(*j).is_some_and(|r| r.state == "running" && r.address.is_some()));
        if up && pred(&by_job) {
            return by_job;
        }
        assert!(Instant::now() < deadline, "timed out: {by_job:#?}\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An HTTP GET of `/` at the instance's address, port 80, from the host's namespace, until its
/// body holds every one of `want`.
fn get(c: &Cluster, row: &PsRow, want: &'static [&'static str]) -> String {
    let Some(IpAddr::V4(ip)) = row.address else { panic!("{row:?}: no IPv4 address") };
    c.hosts[0].ns.enter(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let attempt = (|| -> std::io::Result<String> {
                let mut s = TcpStream::connect((ip, 80))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                Ok(out)
            })();
            match attempt {
                Ok(out) if want.iter().all(|w| out.contains(w)) => return out,
                r if Instant::now() > deadline => panic!("GET {ip}:80/ wanted {want:?}: {r:?}"),
                _ => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    })
}

/// The images the builds made for the stack (`viking-build/shop-<job>:<hash>`).
fn built_images(c: &Cluster) -> Vec<String> {
    let d = c.dockerd.as_ref().unwrap();
    let out = d.cli(&["images", "--format", "{{.Repository}}:{{.Tag}}"]);
    let mut v: Vec<String> =
        out.lines().filter(|l| l.starts_with("viking-build/shop-")).map(str::to_string).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fig_stack_with_builds_runs_under_docker_and_a_changed_context_rebuilds_its_job() {
    require_root();
    let c = Cluster::start_with(Options { hosts: 1, docker: vec![0], ..Options::default() }).await;
    let dir = TempDir::new("vk-fig-build");
    copy_example(&dir.path);

    let t = Instant::now();
    tokio::task::block_in_place(|| deploy(&c, &dir.path));
    let first = all_running(&c, 180, |_| true).await;
    println!("built and running: {:.1?}", t.elapsed());
    // Three images built, one per build folder; the others run the imported image.
    let images = built_images(&c);
    let repos: Vec<&str> = images.iter().filter_map(|i| i.split(':').next()).collect();
    assert_eq!(
        repos,
        ["viking-build/shop-auth", "viking-build/shop-pricing", "viking-build/shop-web"],
        "{images:?}"
    );
    // web's page is made of what its links answered: auth (and through it redis) and
    // catalogue (and through it pricing), each reached through its ambassador port.
    let page = tokio::task::block_in_place(|| {
        get(
            &c,
            &first["web"],
            &["web", "auth, sessions in redis", "catalogue, priced by pricing v1"],
        )
    });
    println!("{page}");

    // pricing's context changes: the next deploy builds a new image for it and replaces its
    // instance; every other job keeps its container.
    std::fs::write(dir.path.join("pricing/index.html"), "pricing v2\n").unwrap();
    let t = Instant::now();
    tokio::task::block_in_place(|| deploy(&c, &dir.path));
    let old_pricing = first["pricing"].handle.clone();
    let second = all_running(&c, 180, |rows| rows["pricing"].handle != old_pricing).await;
    println!("rebuilt and replaced: {:.1?}", t.elapsed());
    tokio::task::block_in_place(|| get(&c, &second["pricing"], &["pricing v2"]));
    for job in ["auth", "catalogue", "redis", "web"] {
        assert_eq!(first[job].handle, second[job].handle, "{job} was not touched");
    }
    let images = built_images(&c);
    assert_eq!(
        images.iter().filter(|i| i.starts_with("viking-build/shop-pricing:")).count(),
        2,
        "a second pricing image: {images:?}"
    );
}
