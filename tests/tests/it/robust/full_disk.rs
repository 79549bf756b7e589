//! The embedded store on a small tmpfs that fills up during deploys: the API answers 503 with
//! the store's reason and `/v1/health` says the store fails; once space is freed the same
//! agent process recovers (no restart), and every deploy it acknowledged is there, also after
//! a restart.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use viking::{
    api::client::ClientError, api::DeployRequest, deploy::StackSummary, stack::plan::Plan,
};
use viking_tests::{agent::AgentProc, etcd::TempDir};

/// A tmpfs of `size` mounted at a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Self {
        let dir = TempDir::on_disk("vk-tmpfs-");
        nix::mount::mount(
            Some("tmpfs"),
            &dir.path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mounting a tmpfs");
        Self { dir }
    }

    fn path(&self) -> &Path {
        &self.dir.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.dir.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills the file system under `path` with one file, to the last byte it takes.
fn fill(path: &Path) -> PathBuf {
    let file = path.join("filler");
    let mut f = std::fs::File::create(&file).expect("filler");
    let chunk = vec![0xa5u8; 64 << 10];
    let mut small = vec![0xa5u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&small).is_ok() {}
    small.truncate(1);
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    file
}

/// A stack of one job that runs nothing (scale 0) with `kb` KiB of env: deploying it writes
/// about that much to the store.
fn stack(name: &str, kb: usize) -> DeployRequest {
    let filler: String = (0..kb * 1024).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    DeployRequest {
        name: name.into(),
        file: format!("{name}.yml"),
        text: format!(
            "j:\n  type: job\n  command: sleep 1\n  scale: 0\n  env:\n    FILL: {filler}\n"
        ),
        dry_run: false,
        contexts: Default::default(),
    }
}

async fn health(api: &str) -> (u16, serde_json::Value) {
    let res = reqwest::get(format!("http://{api}/v1/health")).await.expect("health answers");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_full_disk_gives_503s_and_the_agent_recovers_when_space_is_freed() {
    let disk = Tmpfs::new("6m");
    let store = format!("embedded:{}", disk.path().join("store").display());
    let mut agent = AgentProc::start(Some(&store)).await;
    let pid = agent.child.as_ref().unwrap().pid();
    let api = agent.client();
    let (status, body) = health(&agent.api).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["store"]["healthy"], true);

    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let name = format!("before{i}");
        api.post::<_, Plan>("/v1/deploy", &stack(&name, 16)).await.expect("deploy");
        acknowledged.push(name);
    }

    let filler = fill(disk.path());
    // Deploys go on until the store cannot write: each is acknowledged or refused with 503.
    let mut refused = None;
    for i in 0..300 {
        let name = format!("during{i}");
        match api.post::<_, Plan>("/v1/deploy", &stack(&name, 16)).await {
            Ok(_) => acknowledged.push(name),
            Err(ClientError::Refused { status, message }) => {
                refused = Some((status, message));
                break;
            }
            Err(e) => panic!("deploy {name}: {e}"),
        }
    }
    let (status, message) = refused.expect("a full disk refuses a deploy");
    assert_eq!(status, 503, "{message}");
    assert!(
        message.contains("No space left") || message.contains("storage error"),
        "the answer says why: {message}"
    );
    let (status, body) = health(&agent.api).await;
    assert_eq!(status, 503, "health while the store fails: {body}");
    assert_eq!(body["store"]["healthy"], false, "{body}");
    assert!(body["store"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");

    // Space comes back: the same process recovers by itself.
    std::fs::remove_file(filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = health(&agent.api).await;
        if status == 200 && body["store"]["healthy"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {body}\n{}", agent.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(agent.child.as_ref().unwrap().pid(), pid);
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "the agent was not restarted"
    );
    api.post::<_, Plan>("/v1/deploy", &stack("after", 16)).await.expect("deploy after recovery");
    acknowledged.push("after".into());

    let listed =
        |stacks: Vec<StackSummary>| -> Vec<String> { stacks.into_iter().map(|s| s.name).collect() };
    let have = listed(api.get("/v1/stacks").await.unwrap().unwrap());
    for name in &acknowledged {
        assert!(have.contains(name), "{name} was acknowledged and is lost: {have:?}");
    }
    // And on disk: a restarted agent has them all.
    agent.kill();
    agent.restart().await;
    let have = listed(agent.client().get("/v1/stacks").await.unwrap().unwrap());
    for name in &acknowledged {
        assert!(have.contains(name), "{name} lost over a restart: {have:?}");
    }
}
