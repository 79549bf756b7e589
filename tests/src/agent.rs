//! A real `viking agent` process for tests: its own cgroup, bpffs dir, API port and token file;
//! killed by PID and cleaned up on Drop.
use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use viking::api::client::ApiClient;

use crate::{
    guards::{BpfDir, Cgroup, ChildGuard},
    unique, viking_bin,
};

/// A free loopback TCP port (bound, read, released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct AgentProc {
    // NB: the process goes first, then its pins, cgroup and files.
    pub child: Option<ChildGuard>,
    pub bpf: BpfDir,
    pub cgroup: Cgroup,
    pub dir: PathBuf,
    pub node: String,
    pub api: String,
    pub store: String,
    /// More `viking agent` arguments (runtime, host netns, address).
    pub extra: Vec<String>,
    /// The CA that signed the API's certificate, when the agent serves TLS.
    pub ca: Option<PathBuf>,
}

impl AgentProc {
    /// Starts an agent with an embedded store of its own (removed with it).
    pub async fn embedded() -> Self {
        Self::start(None).await
    }

    /// Starts an agent on `store` (`etcd://..`; `None`: embedded, in the agent's own dir) and
    /// waits for its API.
    pub async fn start(store: Option<&str>) -> Self {
        Self::start_with(store, &[]).await
    }

    /// Starts an agent with more arguments.
    pub async fn start_with(store: Option<&str>, extra: &[String]) -> Self {
        Self::start_full(store, extra, None, |_| {}).await
    }

    /// Starts an agent whose API speaks TLS (`extra` has `--api-cert`/`--api-key`) with a
    /// certificate signed by `ca`.
    pub async fn start_tls(store: Option<&str>, extra: &[String], ca: Option<PathBuf>) -> Self {
        Self::start_full(store, extra, ca, |_| {}).await
    }

    /// Starts an agent with more arguments, after `setup` has prepared its files (a token
    /// file, a store directory) that the agent will find.
    pub async fn start_with_setup(
        store: Option<&str>,
        extra: &[String],
        setup: impl FnOnce(&Self),
    ) -> Self {
        Self::start_full(store, extra, None, setup).await
    }

    async fn start_full(
        store: Option<&str>,
        extra: &[String],
        ca: Option<PathBuf>,
        setup: impl FnOnce(&Self),
    ) -> Self {
        crate::require_root();
        let node = unique("node");
        let dir = std::env::temp_dir().join(unique("vk-agent-"));
        std::fs::create_dir_all(&dir).expect("agent dir");
        let mut a = Self {
            child: None,
            bpf: BpfDir::new(),
            cgroup: Cgroup::new(),
            api: format!("127.0.0.1:{}", free_port()),
            dir,
            node,
            store: String::new(),
            extra: extra.to_vec(),
            ca,
        };
        a.store = store
            .map_or_else(|| format!("embedded:{}", a.dir.join("store").display()), str::to_owned);
        setup(&a);
        a.spawn();
        a.wait_healthy().await;
        a
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.join("api-token")
    }

    /// The agent's data directory (exec instances' state files and logs under `exec/`).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The log of an exec instance (`<stack>_<job>_<index>`).
    pub fn instance_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.data_dir().join("exec").join(format!("{name}.log")))
            .unwrap_or_default()
    }

    /// Starts the agent again (after `kill`), on the same node name, dirs and port.
    pub async fn restart(&mut self) {
        self.spawn();
        self.wait_healthy().await;
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(viking_bin());
        cmd.args(["agent", "--node", &self.node, "--store", &self.store, "--api", &self.api])
            .arg("--cgroup")
            .arg(&self.cgroup.path)
            .arg("--bpffs")
            .arg(&self.bpf.path)
            .arg("--token-file")
            .arg(self.token_file())
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(&self.extra)
            .env("RUST_LOG", "warn,viking=info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("agent.log")).expect("log file"));
        self.child = Some(ChildGuard::spawn(cmd));
    }

    /// `http://API` or, with TLS, `https://API`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.api)
    }

    /// An HTTP client that trusts the API's CA (when it has one).
    pub fn http(&self) -> reqwest::Client {
        viking::api::tls::client(self.ca.as_deref()).expect("an HTTP client")
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let url = self.url("/v1/health");
        let http = self.http();
        while Instant::now() < deadline {
            if http.get(&url).send().await.is_ok_and(|r| r.status().is_success())
                && self.token_file().exists()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("agent {} did not come up:\n{}", self.node, self.log());
    }

    /// Whether this agent leads now (its health answer says).
    pub async fn is_leader(&self) -> bool {
        match self.http().get(self.url("/v1/health")).send().await {
            Ok(r) => r.json::<serde_json::Value>().await.is_ok_and(|v| v["leader"] == true),
            Err(_) => false,
        }
    }

    pub fn client(&self) -> ApiClient {
        let token = std::fs::read_to_string(self.token_file()).expect("token file");
        self.client_with(token.trim())
    }

    pub fn client_with(&self, token: &str) -> ApiClient {
        ApiClient::with_ca(&self.api, token.to_owned(), self.ca.as_deref()).expect("API client")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Kills the process (SIGKILL, by PID).
    pub fn kill(&mut self) {
        self.child = None;
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        self.child = None;
        // The exec runtime's instances are in cgroups below the agent's (the Cgroup guard
        // kills them); their network namespaces are bind mounts under /run/viking/<node>.
        let run = PathBuf::from("/run/viking").join(&self.node);
        if let Ok(entries) = std::fs::read_dir(run.join("netns")) {
            for e in entries.flatten() {
                let _ = nix::mount::umount2(&e.path(), nix::mount::MntFlags::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir_all(&run);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
