//! A real dockerd for the docker runtime tests: Debian's `dockerd`, started by the test in a
//! network namespace of its own (so its bridge, veths and published ports never touch the
//! host's network), with its own data root, exec root, pid file, socket and containerd
//! namespace under a temp dir, iptables left alone. Stopped by the PID we started, its mounts
//! and directories removed on drop. The image comes from xtask's builder (the same code as
//! `cargo xtask image`), imported into this daemon: nothing is pulled.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use crate::{etcd::TempDir, guards::Cgroup, guards::NetNs, unique};

/// `cargo xtask image`'s builder: the busybox rootfs tar and `docker import`.
#[path = "../../xtask/src/image.rs"]
pub mod image;

pub use image::IMAGE;

const DOCKERD: &str = "/usr/sbin/dockerd";

/// One dockerd, its own everything.
pub struct Dockerd {
    pub socket: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
    namespace: String,
    // NB: dropped after Drop::drop has stopped the daemon: the namespace, then the files.
    pub netns: NetNs,
    _tmp: TempDir,
}

impl Dockerd {
    /// Starts a dockerd, waits until it answers and imports `viking/busybox:latest` into it.
    pub fn start() -> Self {
        assert!(
            Path::new(DOCKERD).exists(),
            "{DOCKERD} missing: cargo xtask setup installs docker.io"
        );
        // NB: short paths: containerd's socket lives under the exec root (108-byte limit).
        let tmp = TempDir::new("vkd");
        let dir = tmp.path.clone();
        for d in ["data", "exec"] {
            std::fs::create_dir_all(dir.join(d)).expect("dockerd dirs");
        }
        let mut d = Self {
            socket: dir.join("docker.sock"),
            dir,
            child: None,
            namespace: unique("vkd"),
            netns: NetNs::new("vkd"),
            _tmp: tmp,
        };
        d.spawn();
        d.wait_ready();
        image::import(Some(&d.host()), IMAGE).expect("importing the busybox image");
        d
    }

    /// `unix:///.../docker.sock`, for the docker CLI.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn spawn(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("dockerd log");
        let mut cmd = self.netns.command(DOCKERD, None);
        cmd.arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("docker.pid"))
            .arg("--host")
            .arg(self.host())
            // Leave the host's firewall and forwarding alone; published ports go through
            // docker-proxy, inside this daemon's namespace.
            .args(["--iptables=false", "--ip-masq=false", "--ip-forward=false"])
            // A busybox image is tiny: copying it beats leaving overlay mounts behind.
            .args(["--storage-driver", "vfs"])
            // Its own containerd (started by dockerd under the exec root) and namespace, so
            // parallel daemons never see each other's containers.
            .args(["--containerd-namespace", &self.namespace])
            .args(["--containerd-plugins-namespace", &format!("{}p", self.namespace)])
            .args(["--shutdown-timeout", "5", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn dockerd"));
    }

    /// dockerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").is_err() {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
    }

    /// Waits until the daemon answers on its socket.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.ping() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("dockerd exited ({status}):\n{}", self.log());
            }
            assert!(Instant::now() < deadline, "dockerd did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM to the dockerd we started (it stops its containers and its containerd), then
    /// SIGKILL if it lingers; reaped. The containerd it started is stopped by its PID if it
    /// outlived it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let containerd_pid = self.dir.join("exec/containerd/containerd.pid");
        if let Some(pid) = std::fs::read_to_string(&containerd_pid)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .filter(|p| *p > 0)
        {
            // NB: only if that PID still is a containerd (the file outlives the process).
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "containerd" {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }

    /// Stops the daemon and starts it again on the same directories.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }

    /// Starts the daemon again on the same directories (after `stop`), and waits for it.
    pub fn start_again(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Runs the docker CLI against this daemon; its stdout, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("docker")
            .args(["-H", &self.host()])
            .args(args)
            .output()
            .expect("docker CLI");
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // A daemon that had to be killed leaves its netns and shm mounts behind.
        for m in mounts_below(&self.dir) {
            let _ = nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// The agent's cgroup for docker tests: a cgroup v2 directory whose path (relative to the v2
/// root) is the containers' cgroup parent. On a hybrid host dockerd's cgroupfs driver also
/// creates that parent in every v1 hierarchy; drop removes those (empty) too.
pub struct DockerCgroup {
    pub cgroup: Cgroup,
    pub relative: String,
}

impl DockerCgroup {
    pub fn new() -> Self {
        let cgroup = Cgroup::new();
        let root = viking::datapath::mounts::cgroup2_root().expect("cgroup v2 mount");
        let rel = cgroup.path.strip_prefix(&root).expect("below the v2 root");
        let relative = format!("/{}", rel.display());
        Self { cgroup, relative }
    }
}

impl Default for DockerCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for DockerCgroup {
    fn drop(&mut self) {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let mut f = line.split_whitespace();
            let (Some(_), Some(dst), Some("cgroup")) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let dir = Path::new(dst).join(self.relative.trim_start_matches('/'));
            for _ in 0..50 {
                if std::fs::remove_dir(&dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// The cgroup v1 directories dockerd's cgroupfs driver makes for a container parent on a
/// hybrid host (the v2 one is the agent's `Cgroup` guard's): removed deepest first on drop.
pub struct V1Parents {
    relative: String,
}

impl V1Parents {
    /// For the agent cgroup `cgroup` (below the cgroup v2 root).
    pub fn of(cgroup: &Path) -> Self {
        let root = viking::datapath::mounts::cgroup2_root().expect("cgroup v2 mount");
        let rel = cgroup.strip_prefix(&root).expect("the agent cgroup is below the v2 root");
        Self { relative: rel.display().to_string() }
    }

    /// The parent as docker names it (`/viking-test-..`).
    pub fn relative(&self) -> String {
        format!("/{}", self.relative)
    }
}

impl Drop for V1Parents {
    fn drop(&mut self) {
        if self.relative.is_empty() {
            return;
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        for line in mounts.lines() {
            let mut f = line.split_whitespace();
            if let (Some(_), Some(dst), Some("cgroup")) = (f.next(), f.next(), f.next()) {
                crate::guards::remove_cgroup_tree(&Path::new(dst).join(&self.relative));
            }
        }
    }
}
