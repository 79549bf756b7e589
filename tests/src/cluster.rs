//! A cluster on one machine: "hosts" are network namespaces on a private bridge, one etcd,
//! and one `viking agent --runtime exec` per host (running outside the host's namespace, with
//! `--host-netns`, so the test reaches every API on loopback). Instances get addresses from
//! their stack's subnet inside their host; hosts route each other's instances.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use viking::{api::DeployRequest, control::instances::PsRow, stack::plan::Plan};

use crate::{agent::AgentProc, etcd::Etcd, guards::NetNs, unique};

pub struct Host {
    // NB: the agent (and its instances) go before the namespace.
    pub agent: AgentProc,
    pub ns: NetNs,
    pub ip: String,
}

pub struct Cluster {
    pub hosts: Vec<Host>,
    pub lan: NetNs,
    /// None: a single host on its embedded store (nothing installed).
    pub etcd: Option<Etcd>,
    /// Where the test writes its stack files.
    pub dir: PathBuf,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// `n` hosts `10.99.0.1..n` on one bridge, each with an agent.
    pub async fn start(n: usize) -> Self {
        Self::start_on(n, Some(Etcd::start().await)).await
    }

    /// One host whose agent keeps its state in its embedded store: no etcd.
    pub async fn single_embedded() -> Self {
        Self::start_on(1, None).await
    }

    async fn start_on(n: usize, etcd: Option<Etcd>) -> Self {
        crate::require_root();
        let lan = NetNs::new("vkl");
        lan.ip(&["link", "add", "br0", "type", "bridge"]);
        lan.ip(&["link", "set", "br0", "up"]);
        let dir = std::env::temp_dir().join(unique("vk-cluster-"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut hosts = Vec::new();
        for i in 0..n {
            let ns = NetNs::new("vkh");
            let (a, b) = (unique("vh"), unique("vb"));
            ip(&[
                "link", "add", &a, "netns", &ns.name, "type", "veth", "peer", "name", &b, "netns",
                &lan.name,
            ]);
            lan.ip(&["link", "set", &b, "master", "br0", "up"]);
            let addr = format!("10.99.0.{}", i + 1);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &a]);
            ns.ip(&["link", "set", &a, "up"]);
            let extra: Vec<String> = vec![
                "--runtime".into(),
                "exec".into(),
                "--host-netns".into(),
                ns.path().display().to_string(),
                "--address".into(),
                addr.clone(),
            ];
            let store = etcd.as_ref().map(Etcd::spec);
            let agent = AgentProc::start_with(store.as_deref(), &extra).await;
            hosts.push(Host { agent, ns, ip: addr });
        }
        Self { hosts, lan, etcd, dir }
    }

    pub fn host(&self, node: &str) -> &Host {
        self.hosts.iter().find(|h| h.agent.node == node).expect("a host of this cluster")
    }

    /// Deploys `text` (a viking-format stack file) as `stack` through the first host's API.
    pub async fn deploy(&self, stack: &str, text: &str) -> Plan {
        let file = self.dir.join(format!("{stack}.yml"));
        std::fs::write(&file, text).expect("stack file");
        let req = DeployRequest {
            name: stack.into(),
            file: file.display().to_string(),
            text: text.into(),
            dry_run: false,
            contexts: Default::default(),
        };
        self.hosts[0].agent.client().post("/v1/deploy", &req).await.expect("deploy").expect("plan")
    }

    /// `viking ps`, through the first host whose agent runs.
    pub async fn ps(&self) -> Vec<PsRow> {
        let host = self.hosts.iter().find(|h| h.agent.child.is_some()).expect("a running agent");
        host.agent.client().get("/v1/ps").await.expect("ps").unwrap_or_default()
    }

    /// Polls `viking ps` until `ok` holds (60 s at most); returns the rows that passed.
    pub async fn wait_ps(&self, what: &str, ok: impl Fn(&[PsRow]) -> bool) -> Vec<PsRow> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = self.ps().await;
            if ok(&rows) {
                return rows;
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .hosts
                    .iter()
                    .map(|h| format!("--- {}\n{}", h.agent.node, h.agent.log()))
                    .collect();
                let rows: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{}/{}#{} {} {} {}",
                            r.stack, r.job, r.index, r.host, r.state, r.detail
                        )
                    })
                    .collect();
                panic!(
                    "timed out waiting for {what}; ps:\n{}\n{}",
                    rows.join("\n"),
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The registrations under `/services/`, key -> JSON.
    pub async fn registrations(&self) -> BTreeMap<String, serde_json::Value> {
        use viking::store::Store as _;
        let etcd = self.etcd.as_ref().expect("registrations are read from etcd");
        let store = viking::store::EtcdStore::connect(
            &etcd.endpoints(),
            &viking::store::EtcdOptions::default(),
        )
        .await
        .expect("etcd");
        store
            .list("/services/")
            .await
            .expect("list")
            .kvs
            .into_iter()
            .filter_map(|kv| Some((kv.key, serde_json::from_slice(&kv.value).ok()?)))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of a test binary (`vk-probe`) to put in a job's command.
pub fn bin(name: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    dir.join(name).display().to_string()
}

/// The rows of one job.
pub fn rows<'a>(rows: &'a [PsRow], stack: &str, job: &str) -> Vec<&'a PsRow> {
    rows.iter().filter(|r| r.stack == stack && r.job == job).collect()
}
