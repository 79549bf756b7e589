//! A cluster on one machine: "hosts" are network namespaces, each on a subnet of its own
//! (`10.99.<n>.2/24`), joined only by a router namespace that forwards between those subnets
//! and knows nothing of instance addresses: no shared L2 segment, as between real hosts in
//! different racks or zones. One etcd, and one `viking agent` per host (running outside the
//! host's namespace, with `--host-netns`, so the test reaches every API on loopback; exec
//! runtime unless the host runs docker). Instances get addresses from their stack's subnet and
//! reach each other across hosts through the overlay.
use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use viking::{api::DeployRequest, control::instances::PsRow, stack::plan::Plan};

use crate::{
    agent::AgentProc,
    docker::{Dockerd, V1Parents},
    etcd::Etcd,
    guards::NetNs,
    unique,
};

pub struct Host {
    // NB: the agent (and its instances) go before the namespace; dockerd's cgroup v1 copies of
    // the agent's cgroup after the agent's own.
    pub agent: AgentProc,
    pub v1: Option<V1Parents>,
    pub ns: NetNs,
    /// Its address on its own subnet (`--address`).
    pub ip: String,
    /// The router's address on that subnet (its default gateway).
    pub gateway: String,
    /// Its link to the router.
    pub link: String,
}

/// What a cluster is made of.
#[derive(Default)]
pub struct Options {
    pub hosts: usize,
    /// The hosts (by index) whose agent runs the docker runtime on `dockerd`.
    pub docker: Vec<usize>,
    /// The MTU of every link between hosts and the router (`None`: 1500).
    pub mtu: Option<u32>,
    /// More `viking agent` arguments for every host.
    pub agent_args: Vec<String>,
}

pub struct Cluster {
    /// Stopped first: it stops its containers while their agents still run.
    pub dockerd: Option<Dockerd>,
    pub hosts: Vec<Host>,
    pub router: NetNs,
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
    /// `n` hosts on subnets of their own behind one router, each with an exec-runtime agent.
    pub async fn start(n: usize) -> Self {
        Self::start_with(Options { hosts: n, ..Options::default() }).await
    }

    /// One host whose agent keeps its state in its embedded store: no etcd.
    pub async fn single_embedded() -> Self {
        Self::start_on(Options { hosts: 1, ..Options::default() }, None, None).await
    }

    /// A cluster as `opts` says, on one etcd (and a dockerd of its own when a host runs
    /// docker).
    pub async fn start_with(opts: Options) -> Self {
        let etcd = Etcd::start().await;
        let dockerd =
            (!opts.docker.is_empty()).then(|| tokio::task::block_in_place(Dockerd::start));
        Self::start_on(opts, Some(etcd), dockerd).await
    }

    async fn start_on(opts: Options, etcd: Option<Etcd>, dockerd: Option<Dockerd>) -> Self {
        crate::require_root();
        let router = NetNs::new("vkr");
        router.enter(|| std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("forwarding"));
        let dir = std::env::temp_dir().join(unique("vk-cluster-"));
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut c = Self { dockerd, hosts: Vec::new(), router, etcd, dir };
        for i in 0..opts.hosts {
            let ns = NetNs::new("vkh");
            let (a, b) = (unique("vh"), unique("vr"));
            ip(&[
                "link",
                "add",
                &a,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &b,
                "netns",
                &c.router.name,
            ]);
            let (addr, gateway) = (format!("10.99.{}.2", i + 1), format!("10.99.{}.1", i + 1));
            if let Some(mtu) = opts.mtu {
                ns.ip(&["link", "set", &a, "mtu", &mtu.to_string()]);
                c.router.ip(&["link", "set", &b, "mtu", &mtu.to_string()]);
            }
            c.router.ip(&["addr", "add", &format!("{gateway}/24"), "dev", &b]);
            c.router.ip(&["link", "set", &b, "up"]);
            ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", &a]);
            ns.ip(&["link", "set", &a, "up"]);
            ns.ip(&["route", "add", "default", "via", &gateway]);
            let mut extra: Vec<String> = vec![
                "--host-netns".into(),
                ns.path().display().to_string(),
                "--address".into(),
                addr.clone(),
            ];
            let docker = opts.docker.contains(&i);
            match (&c.dockerd, docker) {
                (Some(d), true) => extra.extend([
                    "--runtime".into(),
                    "docker".into(),
                    "--docker-socket".into(),
                    d.socket.display().to_string(),
                ]),
                _ => extra.extend(["--runtime".into(), "exec".into()]),
            }
            extra.extend(opts.agent_args.iter().cloned());
            let store = c.etcd.as_ref().map(Etcd::spec);
            let agent = AgentProc::start_with(store.as_deref(), &extra).await;
            let v1 = docker.then(|| V1Parents::of(&agent.cgroup.path));
            c.hosts.push(Host { agent, v1, ns, ip: addr, gateway, link: a });
        }
        c
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
        let host = self.hosts.iter().find(|h| h.agent.child.is_some()).expect("a running agent");
        host.agent.client().post("/v1/deploy", &req).await.expect("deploy").expect("plan")
    }

    /// `viking ps`, through the first host whose agent runs.
    pub async fn ps(&self) -> Vec<PsRow> {
        let host = self.hosts.iter().find(|h| h.agent.child.is_some()).expect("a running agent");
        host.agent.client().get("/v1/ps").await.expect("ps").unwrap_or_default()
    }

    /// Every agent's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out: Vec<String> =
            self.hosts.iter().map(|h| format!("--- {}\n{}", h.agent.node, h.agent.log())).collect();
        if let Some(d) = &self.dockerd {
            out.push(format!("--- dockerd\n{}", d.log()));
        }
        out.join("\n")
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
                let rows: Vec<String> = rows
                    .iter()
                    .map(|r| {
                        format!(
                            "{}/{}#{} {} {} {}",
                            r.stack, r.job, r.index, r.host, r.state, r.detail
                        )
                    })
                    .collect();
                panic!("timed out waiting for {what}; ps:\n{}\n{}", rows.join("\n"), self.logs());
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

impl Host {
    /// Runs `cmd args` inside this host's namespace; (success, stdout + stderr).
    pub fn run(&self, cmd: &str, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns.name, cmd])
            .args(args)
            .output()
            .expect("ip netns exec");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// What the overlay holds in this host's kernel, as `ip` and `bridge` print it: the VXLAN
    /// device (with its index), its FDB entries and neighbours, and Viking's routes.
    pub fn overlay_dump(&self) -> String {
        let dev = viking::overlay::DEVICE;
        let mut out = String::new();
        for args in [
            vec!["-d", "-o", "link", "show", "dev", dev],
            vec!["neigh", "show", "dev", dev, "nud", "permanent"],
            vec!["route", "show", "proto", "77"],
        ] {
            let (ok, text) = self.run("ip", &args);
            assert!(ok, "ip {}: {text}", args.join(" "));
            // NB: counters and timers are not state.
            let text: String = text
                .lines()
                .map(|l| l.split(" numtxqueues").next().unwrap_or(l))
                .collect::<Vec<_>>()
                .join("\n");
            out.push_str(&text);
            out.push('\n');
        }
        let (ok, fdb) = self.run("bridge", &["fdb", "show", "dev", dev]);
        assert!(ok, "bridge fdb: {fdb}");
        out.push_str(&fdb);
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The daemon goes first (it stops its containers), then the agents.
        if let Some(d) = &mut self.dockerd {
            d.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The path of a test binary (`vk-probe`) to put in a job's command.
pub fn bin(name: &str) -> String {
    crate::target_dir().join(name).display().to_string()
}

/// The rows of one job.
pub fn rows<'a>(rows: &'a [PsRow], stack: &str, job: &str) -> Vec<&'a PsRow> {
    rows.iter().filter(|r| r.stack == stack && r.job == job).collect()
}
