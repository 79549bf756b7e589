//! The agent image run the way deploy/docker-run.sh runs it, under the test's own dockerd
//! (tests/src/docker.rs, in a network namespace of its own): privileged, host network (the
//! daemon's namespace), host PID and cgroup namespace, the host's cgroup fs, a bpffs, the
//! docker socket and a data dir mounted where the agent looks for them by default.
//!
//! The bpffs is one the test mounts (shared, so the mount can be `rshared` as the recipe
//! says; the host's /sys/fs/bpf is left as it is); the agent's cgroup is a test cgroup.
//! Traffic: the agent's API on the daemon namespace's loopback, its `--address` on that
//! namespace's `lo`, containers on the daemon's bridge.
#![allow(clippy::unwrap_used)]
use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use serde_json::Value;
use viking_tests::{
    agent::free_port,
    docker::{image, DockerCgroup, Dockerd},
    etcd::TempDir,
    unique, viking_bin,
};

/// The agent's `--address`, on the daemon namespace's `lo` (docker-proxy listens there).
pub const ADDRESS: &str = "10.223.0.2";
pub const GREETING: &str = "hello-from-ops";

/// A bpffs mounted by the test (shared), unmounted and removed on drop.
pub struct BpfMount {
    pub path: PathBuf,
}

impl BpfMount {
    fn new() -> Self {
        let path = std::env::temp_dir().join(unique("vk-bpffs-"));
        std::fs::create_dir_all(&path).unwrap();
        let none: Option<&str> = None;
        nix::mount::mount(Some("bpf"), &path, Some("bpf"), nix::mount::MsFlags::empty(), none)
            .unwrap();
        nix::mount::mount(none, &path, none, nix::mount::MsFlags::MS_SHARED, none).unwrap();
        Self { path }
    }
}

impl Drop for BpfMount {
    fn drop(&mut self) {
        // Unpinning everything detaches the programs and frees the maps.
        if let Ok(entries) = std::fs::read_dir(&self.path) {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// The agent container and everything it runs on. NB: fields drop in order: dockerd first
/// (it stops the agent container and the instances), then the cgroup, bpffs and data dir.
pub struct AgentContainer {
    pub d: Dockerd,
    pub cgroup: DockerCgroup,
    pub bpf: BpfMount,
    pub data: TempDir,
    pub node: String,
    pub name: String,
    pub image: String,
    pub api: String,
}

impl AgentContainer {
    /// A dockerd with both images imported, and the agent container running and ready.
    pub fn start() -> Self {
        viking_tests::require_root();
        let t = Instant::now();
        let d = Dockerd::start();
        let image = image::import_agent(Some(&d.host()), &viking_bin()).unwrap();
        println!("dockerd up, images imported ({image}): {:.1?}", t.elapsed());
        d.netns.ip(&["addr", "add", &format!("{ADDRESS}/32"), "dev", "lo"]);
        let c = Self {
            d,
            cgroup: DockerCgroup::new(),
            bpf: BpfMount::new(),
            data: TempDir::new("vk-ops-"),
            node: unique("ops"),
            name: unique("viking-agent-"),
            image,
            api: format!("127.0.0.1:{}", free_port()),
        };
        c.run();
        c.wait_ready(Duration::from_secs(60));
        c
    }

    /// The bpffs dir of this node as the host sees it (`viking services --bpffs`).
    pub fn host_bpffs(&self) -> PathBuf {
        self.bpf.path.join(&self.node)
    }

    pub fn token_file(&self) -> PathBuf {
        self.data.path.join("api-token")
    }

    /// `docker run` of the agent (deploy/docker-run.sh's flags).
    pub fn run(&self) {
        let bpf = format!(
            "type=bind,src={},dst=/sys/fs/bpf,bind-propagation=rshared",
            self.bpf.path.display()
        );
        let sock = format!("{}:/var/run/docker.sock", self.d.socket.display());
        let data = format!("{}:/var/lib/viking", self.data.path.display());
        let cgroup = self.cgroup.cgroup.path.display().to_string();
        let bpffs = format!("/sys/fs/bpf/{}", self.node);
        let mut args = vec!["run", "-d", "--name", &self.name];
        // NB: `--privileged` grants every capability; where this machine's bounding set lacks
        // some (a sandboxed CI machine lacks CAP_SYS_RESOURCE), runc refuses to start such a
        // container. Then the container gets what --privileged would give but those: every
        // capability this machine has, no seccomp or AppArmor profile, /proc unmasked.
        let missing = missing_capabilities();
        if missing.is_empty() {
            args.push("--privileged");
        } else {
            println!("bounding set lacks {missing:?}: privileged but for those");
            args.extend(["--cap-add", "ALL"]);
            for cap in &missing {
                args.extend(["--cap-drop", cap]);
            }
            args.extend(["--security-opt", "seccomp=unconfined"]);
            args.extend(["--security-opt", "apparmor=unconfined"]);
            args.extend(["--security-opt", "systempaths=unconfined"]);
        }
        args.extend(["--network", "host", "--pid", "host", "--cgroupns", "host"]);
        args.extend(["-v", "/sys/fs/cgroup:/sys/fs/cgroup", "--mount", &bpf]);
        args.extend(["-v", &sock, "-v", &data, "-e", "RUST_LOG=info", &self.image, "agent"]);
        args.extend(["--node", &self.node, "--api", &self.api, "--address", ADDRESS]);
        args.extend(["--cgroup", &cgroup, "--bpffs", &bpffs]);
        let id = self.d.cli(&args);
        assert!(!id.is_empty());
    }

    /// The agent container's log.
    pub fn log(&self) -> String {
        let out = Command::new("docker")
            .args(["-H", &self.d.host(), "logs", &self.name])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
            })
            .unwrap_or_default();
        format!("--- agent container\n{out}\n--- dockerd\n{}", self.d.log())
    }

    /// `viking ARGS --server .. --token-file ..` run inside the daemon's namespace (where the
    /// agent's API is), as an operator on that host runs it.
    pub fn viking(&self, args: &[&str]) -> Output {
        let mut cmd = self.d.netns.command(viking_bin(), None);
        cmd.args(args)
            .args(["--server", &self.api, "--token-file"])
            .arg(self.token_file())
            .env("RUST_LOG", "warn");
        cmd.output().unwrap()
    }

    /// `viking status --json`, if the agent answers.
    pub fn status(&self) -> Option<Value> {
        if !self.token_file().exists() {
            return None;
        }
        let out = self.viking(&["status", "--json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until the agent says it is ready (programs, store, first sync).
    pub fn wait_ready(&self, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.status().filter(|s| s["ready"] == true) {
                return s;
            }
            assert!(Instant::now() < deadline, "the agent is not ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `viking services --json` read from the pins on the host.
    pub fn services(&self) -> Value {
        let out = Command::new(viking_bin())
            .args(["services", "--json", "--bpffs"])
            .arg(self.host_bpffs())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Writes a stack file and deploys it with `viking deploy --wait`; the exit code and
    /// output.
    pub fn deploy_wait(&self, stack: &str, text: &str) -> Output {
        let file = self.data.path.join(format!("{stack}.yml"));
        std::fs::write(&file, text).unwrap();
        let file = file.display().to_string();
        self.viking(&["deploy", &file, "--name", stack, "--wait", "--timeout", "120"])
    }

    /// The ambassador port a job's link env points at (`viking env S/J --json`).
    pub fn ambassador_port(&self, target: &str, var: &str) -> u16 {
        let out = self.viking(&["env", target, "--json"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let env: Value = serde_json::from_slice(&out.stdout).unwrap();
        env[var].as_str().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{var}: {env}"))
    }

    /// A client in the agent's cgroup and the daemon's namespace: busybox wget of `url`.
    pub fn wget(&self, url: &str) -> Command {
        let mut cmd = self.d.netns.command("/bin/busybox", Some(&self.cgroup.cgroup));
        cmd.args(["wget", "-q", "-O", "-", url]);
        cmd
    }

    /// The id of a container by name.
    pub fn container_id(&self, name: &str) -> String {
        self.d.cli(&["inspect", "-f", "{{.Id}}", name])
    }
}

/// Capabilities docker gives a privileged container that this process's bounding set lacks.
fn missing_capabilities() -> Vec<&'static str> {
    const CAPS: [&str; 41] = [
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let bnd = status.lines().find_map(|l| l.strip_prefix("CapBnd:")).unwrap().trim();
    let bnd = u64::from_str_radix(bnd, 16).unwrap();
    CAPS.iter().enumerate().filter(|(i, _)| bnd >> i & 1 == 0).map(|(_, c)| *c).collect()
}

/// A stack of a server (busybox httpd serving GREETING and a 64 MiB file) and a client
/// linked to it (so the server's port gets an ambassador port).
pub fn stack(image: &str) -> String {
    format!(
        "server:\n  type: job\n  image: {image}\n  command: mkdir -p /www && echo {GREETING} > /www/index.html && dd if=/dev/zero of=/www/big bs=1048576 count=64 2>/dev/null && exec httpd -f -p 80 -h /www\n  ports:\n    - 80\n\
         client:\n  type: job\n  image: {image}\n  command: exec sleep 100000\n  daemonize: true\n  link:\n    - server\n"
    )
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}
