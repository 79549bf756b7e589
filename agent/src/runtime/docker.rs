//! The docker runtime: each instance is a container, created through the Engine API (bollard)
//! on a unix socket (docs/runtime-docker.md).
//!
//! - Name `<stack>_<job>_<index>`; labels `viking.stack/job/index/node` and
//!   `viking.spec-hash`, so `list()` finds this node's containers after an agent restart and
//!   the reconciler sees a changed spec.
//! - Volumes under `<data>/volumes/<stack>/...` as bind mounts (anonymous `/data` ->
//!   `<stack>/<job>/data`, named `name:/data` -> `<stack>/name`, `/host:/data` as written).
//! - Viking's network, not docker's: a sandbox container (`sandbox.rs`, `network_mode: none`)
//!   holds the instance's network namespace, which the agent plumbs like an exec instance's
//!   (`netlink::instance`: veth, the allocated address, routes, the overlay's MTU) before the
//!   instance's container joins it (`network_mode: container:<sandbox>`). Its ports are
//!   reached at its own address, from any host; nothing is published. Labels
//!   `viking.address` and `viking.ports` keep what `list()` reports.
//! - `HostConfig.CgroupParent` is the agent's cgroup (relative to the cgroup v2 root), so the
//!   programs attached there see the containers' sockets.
//! - A background task follows the event stream and wakes `changed()`; when dockerd goes away
//!   it reconnects with backoff and wakes `changed()` once it is back.
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Component, Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bollard::{
    container::LogOutput,
    errors::Error as DockerError,
    models::{ContainerCreateBody, ContainerInspectResponse, HostConfig},
    query_parameters::{
        AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
        EventsOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
        StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
    },
    Docker, API_DEFAULT_VERSION,
};
use futures::StreamExt as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _},
    sync::{Notify, OnceCell},
    task::JoinHandle,
};

use super::{
    sandbox, spec_hash, Instance, InstanceSpec, InstanceState, Result, Runtime, RuntimeConfig,
    RuntimeError, LABEL_INDEX, LABEL_JOB, LABEL_NODE, LABEL_STACK,
};
use crate::{
    datapath::netns::netns_cookie,
    netlink::{
        self,
        instance::{veth_name, Plumbing},
    },
    stack::Port,
};

/// The label holding `spec_hash(spec)` (decimal).
pub const LABEL_SPEC_HASH: &str = "viking.spec-hash";
/// The label of a `run_attached` container (its node): not an instance, `list()` skips it.
pub const LABEL_RUN: &str = "viking.run";
/// The label holding an instance's address (as `viking ps` shows it).
pub const LABEL_ADDRESS: &str = "viking.address";
/// The label holding an instance's ports (JSON, `["80/tcp"]`).
pub const LABEL_PORTS: &str = "viking.ports";

/// Seconds a stopping container gets between SIGTERM and SIGKILL.
const STOP_TIMEOUT_SECS: i32 = 10;
/// Seconds any one API call may take (a stop takes up to STOP_TIMEOUT_SECS).
const API_TIMEOUT_SECS: u64 = 120;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a fresh event stream may take to fail before it counts as established.
const STREAM_SETTLE: Duration = Duration::from_millis(250);

#[derive(Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: RuntimeConfig,
    socket: PathBuf,
    docker: Docker,
    /// The agent's cgroup relative to the cgroup v2 root (`None`: the root, docker's default).
    cgroup_parent: Option<String>,
    /// Set once the API version is agreed with dockerd (and its cgroup driver checked).
    session: OnceCell<Session>,
    /// Set once the sandbox image is known to be in dockerd (reset when dockerd may have
    /// restarted on other storage: a failed sandbox create checks again).
    sandbox_image: tokio::sync::Mutex<bool>,
    notify: Arc<Notify>,
    events: Arc<EventState>,
    follower: JoinHandle<()>,
    /// Where `build:` contexts are read from (`with_contexts`).
    contexts: std::sync::OnceLock<Arc<dyn super::build::ContextSource>>,
    /// The DNS responder containers get as nameserver, and Viking's domain (`with_dns`).
    dns: std::sync::OnceLock<(IpAddr, String)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

/// What the first successful contact with dockerd settled.
#[derive(Debug)]
struct Session {
    cgroup_parent: Option<String>,
}

#[derive(Default)]
struct EventState {
    connections: AtomicU64,
    connected: AtomicBool,
}

fn api_err(what: impl std::fmt::Display) -> impl FnOnce(DockerError) -> RuntimeError {
    move |e| RuntimeError::Docker(format!("{what}: {e}"))
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The agent's cgroup as docker's `CgroupParent`: its path below the cgroup v2 root
/// (`/viking/node1`), or `None` for the root itself.
pub fn cgroup_parent(cgroup2_root: &Path, cgroup: &Path) -> Result<Option<String>> {
    let rel = cgroup.strip_prefix(cgroup2_root).map_err(|_| {
        RuntimeError::Docker(format!(
            "the agent cgroup {} is not below the cgroup v2 mount {}",
            cgroup.display(),
            cgroup2_root.display()
        ))
    })?;
    if rel.as_os_str().is_empty() {
        return Ok(None);
    }
    Ok(Some(format!("/{}", rel.display())))
}

/// A volume as written in a stack file, as a docker bind (`host:container[:mode]`) and the
/// host directory Viking creates for it (named and anonymous volumes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub bind: String,
    pub create: Option<PathBuf>,
}

fn clean_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(s) => out.push(s),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

fn valid_volume_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `/data` -> `<volumes>/<stack>/<job>/data:/data`; `name:/data[:ro]` ->
/// `<volumes>/<stack>/name:/data[:ro]`; `/host:/data[:ro]` as written.
pub fn volume_bind(volumes: &Path, stack: &str, job: &str, volume: &str) -> Result<VolumeBind> {
    let bad = |why: &str| RuntimeError::Docker(format!("volume {volume:?}: {why}"));
    let Some((source, target)) = volume.split_once(':') else {
        if !volume.starts_with('/') {
            return Err(bad("an anonymous volume is an absolute container path"));
        }
        let rel = clean_relative(volume).ok_or_else(|| bad("not a usable container path"))?;
        let host = volumes.join(stack).join(job).join(rel);
        return Ok(VolumeBind { bind: format!("{}:{volume}", host.display()), create: Some(host) });
    };
    if !target.starts_with('/') {
        return Err(bad("the container path must be absolute"));
    }
    if source.starts_with('/') {
        return Ok(VolumeBind { bind: volume.to_owned(), create: None });
    }
    if !valid_volume_name(source) {
        return Err(bad(
            "a named volume is [A-Za-z0-9][A-Za-z0-9_.-]*; host paths must be absolute",
        ));
    }
    let host = volumes.join(stack).join(source);
    Ok(VolumeBind { bind: format!("{}:{target}", host.display()), create: Some(host) })
}

fn env_map(env: Option<&Vec<String>>) -> BTreeMap<String, String> {
    env.into_iter()
        .flatten()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

impl DockerRuntime {
    /// A runtime on dockerd's socket (`/var/run/docker.sock`). Does not need dockerd to be up
    /// yet: the API version is agreed at the first call, and the event follower (started here,
    /// so this must run inside a tokio runtime) keeps retrying until dockerd answers.
    pub fn connect(cfg: RuntimeConfig, socket: &Path) -> Result<Self> {
        let handle = tokio::runtime::Handle::try_current()
            .map_err(|e| RuntimeError::Docker(format!("the docker runtime needs tokio: {e}")))?;
        let root = crate::datapath::mounts::cgroup2_root()
            .map_err(|e| RuntimeError::Docker(format!("finding the cgroup v2 mount: {e}")))?;
        let cgroup_parent = cgroup_parent(&root, &cfg.cgroup)?;
        let path = socket.to_string_lossy();
        let docker = Docker::connect_with_unix(&path, API_TIMEOUT_SECS, API_DEFAULT_VERSION)
            .map_err(api_err(format!("connecting to {path}")))?;
        let notify = Arc::new(Notify::new());
        let events = Arc::new(EventState::default());
        let follower = handle.spawn(follow_events(
            docker.clone(),
            cfg.node.clone(),
            notify.clone(),
            events.clone(),
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                socket: socket.to_path_buf(),
                docker,
                cgroup_parent,
                session: OnceCell::new(),
                sandbox_image: tokio::sync::Mutex::new(false),
                notify,
                events,
                follower,
                contexts: std::sync::OnceLock::new(),
                dns: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Reads `build:` contexts from `source` (the store) to build the images of build jobs.
    pub fn with_contexts(self, source: Arc<dyn super::build::ContextSource>) -> Self {
        let _ = self.inner.contexts.set(source);
        self
    }

    /// Containers with an address get `nameserver` and their stack's search path: the DNS
    /// settings of their sandbox, whose resolv.conf the container shares (docs/names.md).
    pub fn with_dns(self, nameserver: IpAddr, domain: &str) -> Self {
        let _ = self.inner.dns.set((nameserver, domain.to_owned()));
        self
    }

    /// Builds the image of a `build:` job's spec if dockerd lacks it.
    async fn ensure_image(&self, spec: &InstanceSpec, name: &str) -> Result<()> {
        let (Some(hash), Some(image)) = (&spec.build, &spec.image) else { return Ok(()) };
        let (docker, _) = self.api().await?;
        let source = self.inner.contexts.get().map(|s| s.as_ref());
        super::build::ensure(docker, image, hash, source, name).await
    }

    /// How many times the event stream has been established (1 after the first connect, one
    /// more after each dockerd restart).
    pub fn event_connections(&self) -> u64 {
        self.inner.events.connections.load(Ordering::Relaxed)
    }

    /// Whether the event stream is up now.
    pub fn events_connected(&self) -> bool {
        self.inner.events.connected.load(Ordering::Relaxed)
    }

    /// The client, once the API version is agreed with dockerd.
    async fn api(&self) -> Result<(&Docker, &Session)> {
        let inner = &self.inner;
        let session = inner
            .session
            .get_or_try_init(|| async {
                let docker = inner.docker.clone().negotiate_version().await.map_err(api_err(
                    format!("talking to dockerd on {}", inner.socket.display()),
                ))?;
                let info = docker.info().await.map_err(api_err("docker info"))?;
                let driver = info.cgroup_driver.map(|d| format!("{d:?}").to_lowercase());
                let mut cgroup_parent = inner.cgroup_parent.clone();
                if driver.as_deref() == Some("systemd") && cgroup_parent.is_some() {
                    tracing::warn!(
                        cgroup = ?cgroup_parent,
                        "dockerd uses the systemd cgroup driver, which only takes slices: \
                         containers go to docker's default cgroup; attach the agent at the \
                         cgroup v2 root for its programs to see them"
                    );
                    cgroup_parent = None;
                }
                let version = docker.client_version();
                tracing::info!(
                    socket = %inner.socket.display(),
                    api = %format!("{}.{}", version.major_version, version.minor_version),
                    cgroup_driver = ?driver,
                    cgroup_parent = ?cgroup_parent,
                    "docker runtime connected"
                );
                Ok::<_, RuntimeError>(Session { cgroup_parent })
            })
            .await?;
        Ok((&inner.docker, session))
    }

    fn labels(&self, spec: &InstanceSpec) -> HashMap<String, String> {
        HashMap::from([
            (LABEL_STACK.to_owned(), spec.stack.clone()),
            (LABEL_JOB.to_owned(), spec.job.clone()),
            (LABEL_INDEX.to_owned(), spec.index.to_string()),
            (LABEL_NODE.to_owned(), self.inner.cfg.node.clone()),
            (LABEL_SPEC_HASH.to_owned(), spec_hash(spec).to_string()),
            (LABEL_ADDRESS.to_owned(), spec.address.map(|a| a.to_string()).unwrap_or_default()),
            (
                LABEL_PORTS.to_owned(),
                serde_json::to_string(&spec.ports.iter().map(Port::to_string).collect::<Vec<_>>())
                    .unwrap_or_default(),
            ),
        ])
    }

    /// The create body of `spec`: image, command, env, volumes and cgroup parent (its network
    /// is the caller's to choose).
    fn body(&self, spec: &InstanceSpec, session: &Session) -> Result<ContainerCreateBody> {
        let name = spec.name();
        let image = spec.image.clone().ok_or_else(|| {
            RuntimeError::instance(&name, "the job has no image: the docker runtime runs images")
        })?;
        let volumes = self.inner.cfg.data_dir.join("volumes");
        let mut binds = Vec::new();
        for v in &spec.volumes {
            let b = volume_bind(&volumes, &spec.stack, &spec.job, v)?;
            if let Some(dir) = &b.create {
                std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io("creating", dir, e))?;
            }
            binds.push(b.bind);
        }
        Ok(ContainerCreateBody {
            image: Some(image),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            hostname: None,
            host_config: Some(HostConfig {
                binds: Some(binds),
                cgroup_parent: session.cgroup_parent.clone(),
                // tini as PID 1: signals reach the job (a stop is quick), zombies are reaped.
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    /// Imports the sandbox image when dockerd lacks it.
    async fn ensure_sandbox_image(&self) -> Result<()> {
        let mut known = self.inner.sandbox_image.lock().await;
        if *known {
            return Ok(());
        }
        let (docker, _) = self.api().await?;
        let image = sandbox::image();
        match docker.inspect_image(&image).await {
            Ok(_) => {}
            Err(e) if status_of(&e) == Some(404) => {
                let opts = CreateImageOptionsBuilder::default()
                    .from_src("-")
                    .repo(sandbox::REPOSITORY)
                    .tag(&sandbox::tag())
                    .build();
                let body = bollard::body_full(sandbox::rootfs_tar().into());
                let mut progress = docker.create_image(Some(opts), Some(body), None);
                while let Some(step) = progress.next().await {
                    step.map_err(api_err(format!("importing the sandbox image {image}")))?;
                }
                tracing::info!(%image, "imported the sandbox image");
            }
            Err(e) => return Err(api_err(format!("inspecting {image}"))(e)),
        }
        *known = true;
        Ok(())
    }

    /// Creates and starts the sandbox of instance `name` and plumbs its network namespace;
    /// returns its container id.
    async fn start_sandbox(&self, spec: &InstanceSpec, session: &Session) -> Result<String> {
        let name = spec.name();
        self.ensure_sandbox_image().await?;
        let body = ContainerCreateBody {
            image: Some(sandbox::image()),
            cmd: Some(vec!["/pause".into()]),
            labels: Some(HashMap::from([
                (LABEL_NODE.to_owned(), self.inner.cfg.node.clone()),
                (sandbox::LABEL_SANDBOX.to_owned(), name.clone()),
            ])),
            host_config: Some({
                let mut hc = HostConfig {
                    network_mode: Some("none".into()),
                    cgroup_parent: session.cgroup_parent.clone(),
                    ..Default::default()
                };
                if let (Some((ns, domain)), Some(IpAddr::V4(_))) =
                    (self.inner.dns.get(), spec.address)
                {
                    let d = crate::names::resolv::Dns::for_stack(*ns, domain, &spec.stack);
                    hc.dns = Some(vec![d.nameserver.to_string()]);
                    hc.dns_search = Some(d.search);
                    hc.dns_options = Some(d.options);
                }
                hc
            }),
            ..Default::default()
        };
        let id = match self.create(&sandbox::name(&name), body.clone()).await {
            Ok(id) => id,
            Err(e) => {
                // NB: dockerd may have come back on other storage: check the image again.
                *self.inner.sandbox_image.lock().await = false;
                self.ensure_sandbox_image().await?;
                self.create(&sandbox::name(&name), body).await.map_err(|_| e)?
            }
        };
        let (docker, _) = self.api().await?;
        docker
            .start_container(&id, None)
            .await
            .map_err(|e| RuntimeError::instance(&name, format!("starting its sandbox: {e}")))?;
        let pid = self
            .inspect(&id)
            .await?
            .and_then(|c| c.state?.pid)
            .filter(|p| *p > 0)
            .ok_or_else(|| RuntimeError::instance(&name, "its sandbox did not stay up"))?;
        let p = Plumbing {
            host_netns: self.inner.cfg.host_netns.clone(),
            netns: PathBuf::from(format!("/proc/{pid}/ns/net")),
            veth: veth_name(&self.inner.cfg.node, &name),
            address: spec.address,
            mtu: self.inner.cfg.mtu,
        };
        netlink::instance::plumb(&p)
            .await
            .map_err(|e| RuntimeError::Network { name: name.clone(), why: e.to_string() })?;
        Ok(id)
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String> {
        let (docker, _) = self.api().await?;
        let opts = CreateContainerOptionsBuilder::default().name(name).build();
        let image = body.image.clone().unwrap_or_default();
        match docker.create_container(Some(opts), body).await {
            Ok(r) => {
                for w in r.warnings {
                    tracing::debug!(instance = %name, warning = %w, "docker");
                }
                Ok(r.id)
            }
            Err(e) if status_of(&e) == Some(404) => Err(RuntimeError::instance(
                name,
                format!(
                    "image {image} is not on this host ({e}); Viking does not pull: load, \
                     import or build it here"
                ),
            )),
            Err(e) => Err(RuntimeError::instance(name, format!("creating the container: {e}"))),
        }
    }

    /// Force-removes a container, quietly when it is not there.
    async fn force_remove(&self, name: &str) -> Result<()> {
        let (docker, _) = self.api().await?;
        let opts = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
            Err(e) => Err(RuntimeError::instance(name, format!("removing the container: {e}"))),
        }
    }

    async fn inspect(&self, name: &str) -> Result<Option<ContainerInspectResponse>> {
        let (docker, _) = self.api().await?;
        match docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if status_of(&e) == Some(404) => Ok(None),
            Err(e) => Err(RuntimeError::instance(name, format!("inspecting the container: {e}"))),
        }
    }

    /// What `list()` reports about one inspected container (`None`: not a Viking instance).
    fn instance(&self, c: &ContainerInspectResponse) -> Option<Instance> {
        let config = c.config.as_ref()?;
        let labels = config.labels.as_ref()?;
        let stack = labels.get(LABEL_STACK)?.clone();
        let job = labels.get(LABEL_JOB)?.clone();
        let index = labels.get(LABEL_INDEX)?.parse().ok()?;
        let state = c.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let pid = state.and_then(|s| s.pid).filter(|p| *p > 0);
        let state = if running {
            InstanceState::Running
        } else {
            let started = state
                .and_then(|s| s.started_at.as_deref())
                .is_some_and(|t| !t.starts_with("0001-"));
            let code = state.and_then(|s| s.exit_code).and_then(|c| i32::try_from(c).ok());
            InstanceState::Exited(if started { code.unwrap_or(-1) } else { -1 })
        };
        let ports: Vec<(Port, u16)> = labels
            .get(LABEL_PORTS)
            .and_then(|p| serde_json::from_str::<Vec<String>>(p).ok())
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.parse::<Port>().ok())
            .map(|p| (p, p.port))
            .collect();
        let address = labels
            .get(LABEL_ADDRESS)
            .and_then(|a| a.parse().ok())
            .unwrap_or(self.inner.cfg.host_address);
        let name = c
            .name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| super::instance_name(&stack, &job, index));
        Some(Instance {
            name,
            stack,
            job,
            index,
            state,
            address: Some(address),
            ports,
            netns_cookie: match (running, pid) {
                (true, Some(pid)) => netns_cookie(Path::new(&format!("/proc/{pid}/ns/net"))).ok(),
                _ => None,
            },
            handle: c.id.clone().unwrap_or_default(),
            env: env_map(config.env.as_ref()),
            spec_hash: labels.get(LABEL_SPEC_HASH).and_then(|h| h.parse().ok()).unwrap_or(0),
        })
    }

    /// `run_attached` with any reader and writers: creates `spec` with stdin open, attaches,
    /// copies `stdin` into the container (closing its stdin at EOF) and its output to `stdout`
    /// and `stderr`, waits, removes the container and returns its exit code.
    pub async fn run_with_io<R, W, E>(
        &self,
        spec: &InstanceSpec,
        mut stdin: R,
        mut stdout: W,
        mut stderr: E,
    ) -> Result<i32>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send,
        E: AsyncWrite + Unpin + Send,
    {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-run-{}-{}",
            spec.name(),
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        self.ensure_image(spec, &name).await?;
        let (docker, session) = self.api().await?;
        let mut body = self.body(spec, session)?;
        body.attach_stdin = Some(true);
        body.attach_stdout = Some(true);
        body.attach_stderr = Some(true);
        body.open_stdin = Some(true);
        body.stdin_once = Some(true);
        body.tty = Some(false);
        body.labels = Some(HashMap::from([
            (LABEL_RUN.to_owned(), self.inner.cfg.node.clone()),
            (LABEL_STACK.to_owned(), spec.stack.clone()),
            (LABEL_JOB.to_owned(), spec.job.clone()),
        ]));
        self.create(&name, body).await?;
        let result = async {
            let opts = AttachContainerOptionsBuilder::default()
                .stream(true)
                .stdin(true)
                .stdout(true)
                .stderr(true)
                .build();
            let attached = docker
                .attach_container(&name, Some(opts))
                .await
                .map_err(|e| RuntimeError::instance(&name, format!("attaching: {e}")))?;
            docker
                .start_container(&name, None)
                .await
                .map_err(|e| RuntimeError::instance(&name, format!("starting: {e}")))?;
            let mut input = attached.input;
            let feeder = tokio::spawn(async move {
                if let Err(e) = tokio::io::copy(&mut stdin, &mut input).await {
                    tracing::debug!(error = %e, "copying stdin to the container");
                }
                let _ = input.shutdown().await;
            });
            let mut output = attached.output;
            while let Some(item) = output.next().await {
                let written = match item {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        stdout.write_all(&message).await
                    }
                    Ok(LogOutput::StdErr { message }) => stderr.write_all(&message).await,
                    Ok(LogOutput::StdIn { .. }) => Ok(()),
                    Err(e) => {
                        tracing::debug!(container = %name, error = %e, "attach stream");
                        break;
                    }
                };
                if let Err(e) = written {
                    tracing::debug!(container = %name, error = %e, "writing its output");
                }
            }
            let _ = stdout.flush().await;
            let _ = stderr.flush().await;
            let opts = WaitContainerOptionsBuilder::default().condition("not-running").build();
            let code = match docker.wait_container(&name, Some(opts)).next().await {
                Some(Ok(r)) => i32::try_from(r.status_code).unwrap_or(-1),
                Some(Err(DockerError::DockerContainerWaitError { code, .. })) => {
                    i32::try_from(code).unwrap_or(-1)
                }
                Some(Err(e)) => return Err(RuntimeError::instance(&name, format!("waiting: {e}"))),
                None => -1,
            };
            feeder.abort();
            Ok(code)
        }
        .await;
        if let Err(e) = self.force_remove(&name).await {
            tracing::warn!(container = %name, error = %e, "removing a finished run");
        }
        result
    }
}

impl Runtime for DockerRuntime {
    fn describe(&self) -> String {
        format!("docker ({})", self.inner.socket.display())
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<Instance> {
        let name = spec.name();
        self.ensure_image(spec, &name).await?;
        let (docker, session) = self.api().await?;
        let mut body = self.body(spec, session)?;
        body.labels = Some(self.labels(spec));
        self.remove(&name).await?;
        let started = async {
            let sandbox = self.start_sandbox(spec, session).await?;
            if let Some(hc) = body.host_config.as_mut() {
                hc.network_mode = Some(format!("container:{sandbox}"));
            }
            let id = self.create(&name, body).await?;
            docker.start_container(&id, None).await.map_err(|e| {
                RuntimeError::instance(&name, format!("starting the container: {e}"))
            })?;
            Ok::<_, RuntimeError>(id)
        }
        .await;
        let id = match started {
            Ok(id) => id,
            Err(e) => {
                let _ = self.remove(&name).await;
                return Err(e);
            }
        };
        let inspected = self.inspect(&id).await?.ok_or_else(|| {
            RuntimeError::instance(&name, "the container vanished after its start")
        })?;
        let instance = self
            .instance(&inspected)
            .ok_or_else(|| RuntimeError::instance(&name, "the container lost its labels"))?;
        tracing::info!(
            instance = %name,
            container = %id.get(..12).unwrap_or(&id),
            address = ?instance.address,
            "instance started"
        );
        Ok(instance)
    }

    async fn remove(&self, name: &str) -> Result<()> {
        let (docker, _) = self.api().await?;
        let opts = StopContainerOptionsBuilder::default().t(STOP_TIMEOUT_SECS).build();
        match docker.stop_container(name, Some(opts)).await {
            Ok(()) => {}
            // 304: already stopped.
            Err(e) if status_of(&e) == Some(304) => {}
            Err(e) if status_of(&e) == Some(404) => {}
            Err(e) => {
                tracing::warn!(instance = %name, error = %e, "stopping; removing it by force")
            }
        }
        self.force_remove(name).await?;
        // Its sandbox, and with its network namespace the veth.
        self.force_remove(&sandbox::name(name)).await?;
        let veth = veth_name(&self.inner.cfg.node, name);
        if let Err(e) =
            netlink::instance::unplumb(self.inner.cfg.host_netns.as_deref(), &veth).await
        {
            tracing::warn!(instance = %name, error = %e, "deleting its veth");
        }
        tracing::debug!(instance = %name, "instance removed");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Instance>> {
        let (docker, _) = self.api().await?;
        let filters =
            HashMap::from([("label", vec![format!("{LABEL_NODE}={}", self.inner.cfg.node)])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let summaries =
            docker.list_containers(Some(opts)).await.map_err(api_err("listing containers"))?;
        let mut out = Vec::new();
        for s in summaries {
            let Some(id) = s.id else { continue };
            // NB: gone between the list and the inspect: it is not there any more.
            let Some(c) = self.inspect(&id).await? else { continue };
            match self.instance(&c) {
                Some(i) => out.push(i),
                None => {
                    tracing::debug!(container = %id, "labelled for this node, but not an instance")
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn changed(&self) -> Arc<Notify> {
        self.inner.notify.clone()
    }

    async fn run_attached(&self, spec: &InstanceSpec, io: super::RunIo) -> Result<i32> {
        self.run_with_io(spec, io.stdin, io.stdout, io.stderr).await
    }
}

/// Follows dockerd's container events for this node and wakes `notify` on each; when the
/// stream breaks (dockerd restarts) it reconnects with backoff and wakes `notify` once it is
/// back, since events were missed in between.
async fn follow_events(docker: Docker, node: String, notify: Arc<Notify>, state: Arc<EventState>) {
    let mut backoff = BACKOFF_MIN;
    let mut lost_logged = false;
    loop {
        let ready = async {
            // Agree the API version again: the daemon that answers may be another one.
            docker.clone().negotiate_version().await?;
            let filters = HashMap::from([
                ("type", vec!["container".to_owned()]),
                ("label", vec![format!("{LABEL_NODE}={node}")]),
            ]);
            let mut stream =
                docker.events(Some(EventsOptionsBuilder::default().filters(&filters).build()));
            // The request is sent on the first poll: an unreachable daemon fails at once.
            match tokio::time::timeout(STREAM_SETTLE, stream.next()).await {
                Ok(Some(Err(e))) => return Err(e),
                Ok(None) => {
                    return Err(DockerError::IOError {
                        err: std::io::Error::other("the event stream ended at once"),
                    })
                }
                Ok(Some(Ok(ev))) => tracing::debug!(action = ?ev.action, "docker event"),
                Err(_) => {}
            }
            Ok(stream)
        }
        .await;
        let mut stream = match ready {
            Ok(s) => s,
            Err(e) => {
                if lost_logged {
                    tracing::debug!(error = %e, retry_in = ?backoff, "docker event stream: still down");
                } else {
                    tracing::warn!(error = %e, retry_in = ?backoff, "docker event stream: cannot connect; retrying");
                    lost_logged = true;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let n = state.connections.fetch_add(1, Ordering::Relaxed) + 1;
        state.connected.store(true, Ordering::Relaxed);
        if n > 1 {
            tracing::info!(connections = n, "docker event stream reconnected");
        } else {
            tracing::debug!("docker event stream connected");
        }
        backoff = BACKOFF_MIN;
        lost_logged = false;
        // Whatever happened while we were not listening: the reconciler lists again.
        notify.notify_one();
        while let Some(item) = stream.next().await {
            match item {
                Ok(ev) => {
                    let actor = ev.actor.as_ref();
                    let name = actor
                        .and_then(|a| a.attributes.as_ref())
                        .and_then(|a| a.get("name"))
                        .cloned()
                        .unwrap_or_default();
                    tracing::debug!(action = ?ev.action, container = %name, "docker event");
                    notify.notify_one();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "docker event stream broke");
                    break;
                }
            }
        }
        state.connected.store(false, Ordering::Relaxed);
        if !lost_logged {
            tracing::warn!("docker event stream lost (dockerd restarting?); reconnecting");
            lost_logged = true;
        }
        tokio::time::sleep(backoff).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volumes() {
        let v = Path::new("/var/lib/viking/n1/volumes");
        let b = volume_bind(v, "web", "db", "/data").expect("anonymous");
        assert_eq!(b.bind, "/var/lib/viking/n1/volumes/web/db/data:/data");
        assert_eq!(b.create.as_deref(), Some(Path::new("/var/lib/viking/n1/volumes/web/db/data")));
        let b = volume_bind(v, "web", "db", "/var/lib/mysql").expect("nested anonymous");
        assert_eq!(b.bind, "/var/lib/viking/n1/volumes/web/db/var/lib/mysql:/var/lib/mysql");
        let b = volume_bind(v, "web", "db", "dbdata:/data:ro").expect("named");
        assert_eq!(b.bind, "/var/lib/viking/n1/volumes/web/dbdata:/data:ro");
        let b = volume_bind(v, "web", "db", "/srv/x:/x").expect("host");
        assert_eq!(b, VolumeBind { bind: "/srv/x:/x".into(), create: None });
        for bad in ["data", "../x:/x", "./x:/x", "a/b:/x", "x:y", "/a/../../b", "/"] {
            assert!(volume_bind(v, "web", "db", bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cgroup_parents() {
        let root = Path::new("/sys/fs/cgroup/unified");
        assert_eq!(cgroup_parent(root, root).expect("root"), None);
        assert_eq!(
            cgroup_parent(root, &root.join("viking/n1")).expect("child").as_deref(),
            Some("/viking/n1")
        );
        assert!(cgroup_parent(root, Path::new("/sys/fs/cgroup/memory/x")).is_err());
    }

    #[test]
    fn env_parsing() {
        let env = vec!["A=1".to_owned(), "B=x=y".to_owned(), "C".to_owned()];
        let m = env_map(Some(&env));
        assert_eq!(m.get("A").map(String::as_str), Some("1"));
        assert_eq!(m.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(m.get("C").map(String::as_str), Some(""));
    }
}
