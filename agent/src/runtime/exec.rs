//! The exec runtime: a job's command as a process in its own network namespace and cgroup,
//! with the link env, its output in a log file (Nomad's exec driver is the model).
//!
//! Per instance, on this host:
//! - a network namespace bind-mounted at `<run>/netns/<name>`, loopback up; with an address,
//!   plumbed as every instance is (`netlink::instance`: a veth with `eth0` inside, the
//!   overlay's MTU, routes);
//! - a cgroup `<agent cgroup>/vk-<node>-<name>`: below the agent's, so its programs see the
//!   instance's sockets;
//! - a state file `<data>/exec/<name>.json` (pid, start time, address), so an agent restart
//!   finds its instances again; the process is not the agent's child and outlives it.
//!
//! A start is crash-safe: the state file is written (marked `starting`, naming the namespace,
//! cgroup and veth it is about to make) before anything is made, and every step is
//! idempotent. An agent killed at any moment of a start leaves a record that the next agent
//! cleans up (`list`) before starting the instance again from scratch.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::IpAddr,
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use nix::{
    mount::{mount, umount2, MntFlags, MsFlags},
    sched::{setns, unshare, CloneFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use super::{
    spec_hash, Instance, InstanceSpec, InstanceState, Result, Runtime, RuntimeConfig, RuntimeError,
};
use crate::{
    datapath::netns::netns_cookie,
    netlink::{
        self,
        instance::{veth_name, Plumbing},
    },
};

const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateFile {
    spec: InstanceSpec,
    pid: i32,
    /// Field 22 of /proc/<pid>/stat: tells a reused pid from ours.
    start_time: u64,
    netns: PathBuf,
    cgroup: PathBuf,
    veth: Option<String>,
    cookie: Option<u64>,
    exit: Option<i32>,
    /// Written before the start makes anything, cleared once the process runs and its pid is
    /// recorded: a record still `starting` that no start of this agent is working on was left
    /// by an agent killed mid-start.
    #[serde(default)]
    starting: bool,
}

#[derive(Clone)]
pub struct ExecRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RuntimeConfig,
    state_dir: PathBuf,
    netns_dir: PathBuf,
    notify: Arc<Notify>,
    /// Exit codes of the processes this agent started and reaped.
    exits: Mutex<BTreeMap<i32, i32>>,
    /// The instances this agent is starting right now.
    starting: Mutex<std::collections::BTreeSet<String>>,
    /// The DNS responder instances get as nameserver, and Viking's domain (`names`).
    dns: Option<(IpAddr, String)>,
}

/// Marks an instance as being started by this agent for as long as it lives.
struct Starting<'a> {
    inner: &'a Inner,
    name: String,
}

impl Drop for Starting<'_> {
    fn drop(&mut self) {
        self.inner.starting.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.name);
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RuntimeError + 'a {
    move |e| RuntimeError::io(what, path, e)
}

fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // NB: the command name (field 2) may hold spaces and parentheses: count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn alive(st: &StateFile) -> bool {
    start_time(st.pid) == Some(st.start_time)
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(-1)
}

impl ExecRuntime {
    /// Prepares the state and namespace directories. `run_dir` holds the namespace bind mounts
    /// (`/run/viking/<node>`).
    pub fn new(cfg: RuntimeConfig, run_dir: &Path) -> Result<Self> {
        let state_dir = cfg.data_dir.join("exec");
        let netns_dir = run_dir.join("netns");
        for d in [&state_dir, &netns_dir] {
            fs::create_dir_all(d).map_err(io("creating", d))?;
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                state_dir,
                netns_dir,
                notify: Arc::new(Notify::new()),
                exits: Mutex::new(BTreeMap::new()),
                starting: Mutex::new(Default::default()),
                dns: None,
            }),
        })
    }

    fn state_path(&self, name: &str) -> PathBuf {
        self.inner.state_dir.join(format!("{name}.json"))
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.inner.state_dir.join(format!("{name}.log"))
    }

    fn read_state(&self, name: &str) -> Option<StateFile> {
        let bytes = fs::read(self.state_path(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn write_state(&self, name: &str, st: &StateFile) -> Result<()> {
        let path = self.state_path(name);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(st).map_err(|e| RuntimeError::instance(name, e))?;
        fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("writing", &path))
    }

    fn cgroup_path(&self, name: &str) -> PathBuf {
        self.inner.cfg.cgroup.join(format!("vk-{}-{name}", self.inner.cfg.node))
    }

    fn begin_start(&self, name: &str) -> Starting<'_> {
        self.inner.starting.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_owned());
        Starting { inner: &self.inner, name: name.to_owned() }
    }

    fn is_starting(&self, name: &str) -> bool {
        self.inner.starting.lock().unwrap_or_else(|e| e.into_inner()).contains(name)
    }

    /// Unmounts whatever is mounted at `path` (a namespace left by an agent killed
    /// mid-start) and removes the file.
    fn clear_netns(path: &Path) -> Result<()> {
        // NB: EINVAL once nothing more is mounted there; mounts may be stacked.
        for _ in 0..8 {
            if umount2(path, MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(RuntimeError::io("removing", path, e))
            }
            _ => Ok(()),
        }
    }

    /// A fresh network namespace bind-mounted at `path` (whatever was there is replaced:
    /// creating a file on a leftover mount would fail with EPERM).
    fn create_netns(path: &Path) -> Result<()> {
        Self::clear_netns(path)?;
        fs::File::create(path).map_err(io("creating", path))?;
        let target = path.to_path_buf();
        std::thread::spawn(move || -> std::io::Result<()> {
            unshare(CloneFlags::CLONE_NEWNET)?;
            mount(
                Some(Path::new("/proc/thread-self/ns/net")),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .join()
        .map_err(|_| RuntimeError::instance(&path.display().to_string(), "netns thread died"))?
        .map_err(io("mounting a network namespace at", path))
    }

    async fn plumb(
        &self,
        name: &str,
        netns: &Path,
        address: Option<IpAddr>,
    ) -> Result<Option<String>> {
        let p = Plumbing {
            host_netns: self.inner.cfg.host_netns.clone(),
            netns: netns.to_path_buf(),
            veth: veth_name(&self.inner.cfg.node, name),
            address,
            mtu: self.inner.cfg.mtu,
        };
        netlink::instance::plumb(&p)
            .await
            .map_err(|e| RuntimeError::Network { name: name.to_owned(), why: e.to_string() })
    }

    /// Instances with an address get `nameserver` and their stack's search path in a
    /// resolv.conf of their own, bind-mounted at /etc/resolv.conf (docs/names.md).
    pub fn with_dns(mut self, nameserver: IpAddr, domain: &str) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.dns = Some((nameserver, domain.to_owned())),
            None => tracing::warn!("names: the exec runtime is shared already; no resolv.conf"),
        }
        self
    }

    fn resolv_path(&self, name: &str) -> PathBuf {
        self.inner.state_dir.join(format!("{name}.resolv.conf"))
    }

    /// Writes the instance's resolv.conf and has the child see it at /etc/resolv.conf, in a
    /// mount namespace of its own (nothing else of the host's filesystem changes).
    fn give_resolv_conf(&self, cmd: &mut std::process::Command, spec: &InstanceSpec) -> Result<()> {
        let Some((nameserver, domain)) = &self.inner.dns else { return Ok(()) };
        let target = Path::new("/etc/resolv.conf");
        if !matches!(spec.address, Some(IpAddr::V4(_))) || !target.exists() {
            return Ok(());
        }
        let path = self.resolv_path(&spec.name());
        let text = crate::names::resolv::Dns::for_stack(*nameserver, domain, &spec.stack);
        fs::write(&path, text.resolv_conf()).map_err(io("writing", &path))?;
        use std::os::unix::ffi::OsStrExt as _;
        let c = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_bytes())
                .map_err(|_| RuntimeError::io("naming", p, std::io::ErrorKind::InvalidInput.into()))
        };
        let (src, dst, root) = (c(&path)?, c(target)?, c(Path::new("/"))?);
        // SAFETY: between fork and exec the closure only makes raw syscalls with strings made
        // before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fail = || Err(std::io::Error::last_os_error());
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return fail();
                }
                let none = std::ptr::null();
                let private = libc::MS_REC | libc::MS_PRIVATE;
                if libc::mount(none, root.as_ptr(), none, private, std::ptr::null()) != 0 {
                    return fail();
                }
                if libc::mount(src.as_ptr(), dst.as_ptr(), none, libc::MS_BIND, std::ptr::null())
                    != 0
                {
                    return fail();
                }
                Ok(())
            });
        }
        Ok(())
    }

    fn command(&self, spec: &InstanceSpec) -> Result<std::process::Command> {
        let name = spec.name();
        let Some((prog, args)) = spec.command.split_first() else {
            return Err(RuntimeError::instance(
                &name,
                "the job has no command: the exec runtime runs a job's command (an image alone \
                 needs the docker runtime)",
            ));
        };
        let workdir = self.inner.cfg.data_dir.join("volumes").join(&spec.stack).join(&spec.job);
        fs::create_dir_all(&workdir).map_err(io("creating", &workdir))?;
        let mut cmd = std::process::Command::new(prog);
        cmd.args(args)
            .env_clear()
            .env("PATH", PATH_ENV)
            .env("HOME", "/")
            .env("HOSTNAME", &name)
            .envs(&spec.env)
            .current_dir(&workdir);
        Ok(cmd)
    }

    /// Puts the child into `cgroup` (and `netns`, when given) before it executes.
    fn confine(cmd: &mut std::process::Command, cgroup: &Path, netns: Option<&Path>) -> Result<()> {
        fs::create_dir_all(cgroup).map_err(io("creating the cgroup", cgroup))?;
        let procs_path = cgroup.join("cgroup.procs");
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(io("opening", &procs_path))?;
        let ns = match netns {
            Some(p) => Some(fs::File::open(p).map_err(io("opening", p))?),
            None => None,
        };
        // SAFETY: between fork and exec the closure only makes raw syscalls on descriptors
        // opened before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(ns) = &ns {
                    setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                }
                let rc = libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1);
                if rc != 1 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(())
    }

    fn reap(&self, mut child: tokio::process::Child, pid: i32, name: String) {
        let this = self.clone();
        tokio::spawn(async move {
            let code = match child.wait().await {
                Ok(status) => exit_code(status),
                Err(_) => -1,
            };
            tracing::info!(instance = %name, pid, code, "instance exited");
            if let Ok(mut exits) = this.inner.exits.lock() {
                exits.insert(pid, code);
            }
            if let Some(mut st) = this.read_state(&name) {
                if st.pid == pid {
                    st.exit = Some(code);
                    let _ = this.write_state(&name, &st);
                }
            }
            this.inner.notify.notify_one();
        });
    }

    fn instance(&self, st: &StateFile) -> Instance {
        let state = match st.exit {
            Some(code) => InstanceState::Exited(code),
            None if alive(st) => InstanceState::Running,
            None => InstanceState::Exited(
                self.inner.exits.lock().ok().and_then(|e| e.get(&st.pid).copied()).unwrap_or(-1),
            ),
        };
        let spec = &st.spec;
        Instance {
            name: spec.name(),
            stack: spec.stack.clone(),
            job: spec.job.clone(),
            index: spec.index,
            state,
            address: spec.address.or(Some(self.inner.cfg.host_address)),
            ports: spec.ports.iter().map(|p| (*p, p.port)).collect(),
            netns_cookie: st.cookie,
            handle: st.pid.to_string(),
            env: spec.env.clone(),
            spec_hash: spec_hash(spec),
        }
    }

    async fn stop_process(st: &StateFile) {
        if !alive(st) {
            return;
        }
        let group = Pid::from_raw(-st.pid);
        let _ = kill(group, Signal::SIGTERM);
        for _ in 0..50 {
            if !alive(st) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = kill(group, Signal::SIGKILL);
        let _ = kill(Pid::from_raw(st.pid), Signal::SIGKILL);
    }

    async fn cleanup(&self, name: &str, st: &StateFile) {
        if let Some(veth) = &st.veth {
            let deleted =
                netlink::instance::unplumb(self.inner.cfg.host_netns.as_deref(), veth).await;
            if let Err(e) = deleted {
                tracing::warn!(instance = %name, error = %e, "deleting its veth");
            }
        }
        if let Err(e) = Self::clear_netns(&st.netns) {
            tracing::warn!(instance = %name, error = %e, "removing its network namespace");
        }
        // Anything left in the cgroup (a daemon the job forked) goes with it.
        let _ = fs::write(st.cgroup.join("cgroup.kill"), "1");
        for _ in 0..20 {
            if fs::remove_dir(&st.cgroup).is_ok() || !st.cgroup.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = fs::remove_file(self.resolv_path(name));
        let _ = fs::remove_file(self.state_path(name));
    }
}

impl Runtime for ExecRuntime {
    fn describe(&self) -> String {
        format!("exec ({})", self.inner.state_dir.display())
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance> {
        let name = spec.name();
        let _starting = self.begin_start(&name);
        self.remove(&name).await?;
        let mut cmd = self.command(spec)?;
        let netns = self.inner.netns_dir.join(&name);
        let cgroup = self.cgroup_path(&name);
        let mut st = StateFile {
            spec: spec.clone(),
            pid: 0,
            start_time: 0,
            netns: netns.clone(),
            cgroup: cgroup.clone(),
            // NB: the name `plumb` gives the host end, recorded before it exists.
            veth: matches!(spec.address, Some(IpAddr::V4(_)))
                .then(|| veth_name(&self.inner.cfg.node, &name)),
            cookie: None,
            exit: None,
            starting: true,
        };
        // Recorded before anything is made: from here on a crash leaves a record that the
        // next agent cleans up.
        self.write_state(&name, &st)?;
        let started = async {
            Self::create_netns(&netns)?;
            st.cookie = netns_cookie(&netns).ok();
            if let Some(veth) = self.plumb(&name, &netns, spec.address).await? {
                st.veth = Some(veth);
            }
            let log_path = self.log_path(&name);
            let mut log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io("opening", &log_path))?;
            let _ = writeln!(log, "--- viking: starting {name}");
            let err = log.try_clone().map_err(io("opening", &log_path))?;
            cmd.stdin(Stdio::null()).stdout(log).stderr(err);
            Self::confine(&mut cmd, &cgroup, Some(&netns))?;
            self.give_resolv_conf(&mut cmd, spec)?;
            let child = tokio::process::Command::from(cmd)
                .spawn()
                .map_err(|e| RuntimeError::instance(&name, format!("{:?}: {e}", spec.command)))?;
            let pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
            st.pid = pid;
            st.start_time = start_time(pid).unwrap_or(0);
            st.starting = false;
            // NB: until this write a crash leaves the process in its cgroup, which the
            // cleanup of the `starting` record kills.
            self.write_state(&name, &st)?;
            self.reap(child, pid, name.clone());
            Ok::<_, RuntimeError>(())
        }
        .await;
        if let Err(e) = started {
            self.cleanup(&name, &st).await;
            return Err(e);
        }
        tracing::info!(instance = %name, pid = st.pid, address = ?spec.address, "instance started");
        Ok(self.instance(&st))
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let Some(st) = self.read_state(name) else { return Ok(()) };
        Self::stop_process(&st).await;
        self.cleanup(name, &st).await;
        tracing::info!(instance = %name, "instance removed");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        let dir = &self.inner.state_dir;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io("reading", dir))? {
            let Ok(entry) = entry else { continue };
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(name) = file.strip_suffix(".json") else { continue };
            let Some(st) = self.read_state(name) else { continue };
            if st.starting {
                if !self.is_starting(name) {
                    // An agent was killed while it started this one: undo what it made; the
                    // instance is then missing, and started afresh if it is wanted.
                    tracing::info!(instance = %name, "cleaning up a start cut short");
                    Self::stop_process(&st).await;
                    self.cleanup(name, &st).await;
                }
                continue;
            }
            out.push(self.instance(&st));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn changed(&self) -> Arc<Notify> {
        self.inner.notify.clone()
    }

    async fn run_attached(&self, spec: &InstanceSpec, io: super::RunIo) -> Result<i32> {
        use tokio::io::AsyncWriteExt as _;
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{}-run-{}-{n}", spec.name(), std::process::id());
        let mut cmd = self.command(spec)?;
        let cgroup = self.cgroup_path(&name);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        // NB: on this host's network (as `docker run --network host`): the cgroup is what
        // puts the job's links through the datapath.
        Self::confine(&mut cmd, &cgroup, self.inner.cfg.host_netns.as_deref())?;
        let mut child = tokio::process::Command::from(cmd)
            .spawn()
            .map_err(|e| RuntimeError::instance(&name, format!("{:?}: {e}", spec.command)))?;
        let (Some(mut cin), Some(mut cout), Some(mut cerr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(RuntimeError::instance(&name, "no pipes to the job"));
        };
        let super::RunIo { mut stdin, mut stdout, mut stderr } = io;
        let feeder = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut stdin, &mut cin).await;
            let _ = cin.shutdown().await;
        });
        let out = async {
            let _ = tokio::io::copy(&mut cout, &mut stdout).await;
            let _ = stdout.flush().await;
        };
        let err = async {
            let _ = tokio::io::copy(&mut cerr, &mut stderr).await;
            let _ = stderr.flush().await;
        };
        tokio::join!(out, err);
        let status = child.wait().await.map_err(|e| RuntimeError::instance(&name, e));
        feeder.abort();
        let _ = fs::write(cgroup.join("cgroup.kill"), "1");
        let _ = fs::remove_dir(&cgroup);
        Ok(exit_code(status?))
    }
}
