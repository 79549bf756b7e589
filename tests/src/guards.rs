//! Drop guards for what a test creates in the kernel: network namespaces, cgroups, bpffs
//! directories, and child processes.
use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::unique;

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace with loopback up.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(prefix: &str) -> Self {
        let name = unique(prefix);
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates live there.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).expect("open netns");
        std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }

    /// A command that will run inside this namespace and, if given, inside `cgroup`.
    pub fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        cgroup: Option<&Cgroup>,
    ) -> Command {
        let ns = File::open(self.path()).expect("open netns");
        let procs = cgroup.map(|c| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(c.path.join("cgroup.procs"))
                .expect("cgroup.procs")
        });
        let mut cmd = Command::new(program);
        // SAFETY: only async-signal-safe calls (setns, write) on fds opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(p) = &procs {
                    if libc::write(p.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins two namespaces with a veth pair and gives each end its addresses (CIDR strings).
pub fn veth(a: &NetNs, a_addrs: &[&str], b: &NetNs, b_addrs: &[&str]) {
    let (ea, eb) = (unique("va"), unique("vb"));
    run(
        "ip",
        &[
            "link", "add", &ea, "netns", &a.name, "type", "veth", "peer", "name", &eb, "netns",
            &b.name,
        ],
    );
    for (ns, dev, addrs) in [(a, &ea, a_addrs), (b, &eb, b_addrs)] {
        for addr in addrs {
            let family = if addr.contains(':') { "-6" } else { "-4" };
            ns.ip(&[family, "addr", "add", addr, "dev", dev, "nodad"]);
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// A cgroup v2 directory of its own.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Self {
        let root = viking::datapath::mounts::cgroup2_root().expect("cgroup v2 mount");
        let path = root.join(unique("viking-test-"));
        std::fs::create_dir(&path).expect("create cgroup");
        Self { path }
    }
}

impl Default for Cgroup {
    fn default() -> Self {
        Self::new()
    }
}

/// Removes a cgroup and the cgroups below it, deepest first.
pub fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Whatever still runs below it was started by this test (an agent's instances):
        // cgroup.kill ends exactly that subtree.
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        remove_cgroup_tree(&self.path);
    }
}

/// A bpffs directory of its own, for one agent's pins.
pub struct BpfDir {
    pub path: PathBuf,
}

impl BpfDir {
    pub fn new() -> Self {
        let path = Path::new("/sys/fs/bpf/viking-test").join(unique("t"));
        viking::datapath::mounts::ensure_bpffs(&path).expect("bpffs");
        Self { path }
    }
}

impl Default for BpfDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        // Unpinning the links detaches the programs; unpinning the maps frees them.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A child process killed (by its PID, which we started) and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null());
        Self(cmd.spawn().expect("spawn"))
    }
    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
