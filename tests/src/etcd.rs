//! Real etcd for the store tests: one member or a cluster of several, each a `/usr/bin/etcd`
//! process on 127.0.0.1 with free ports and its own data directory, killed by PID and removed
//! on drop. Also the embedded store's directory guard and the harness that runs each store
//! test against both stores (`store_tests!`), and an etcd with mutual TLS (`Etcd::start_tls`,
//! certificates from the `openssl` CLI in a temp dir: `Pki`).
use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use viking::store::{EmbeddedStore, EtcdOptions, EtcdStore, Store};

use crate::unique;

/// Where test data directories go: tmpfs when there is one (etcd's WAL fsyncs cost nothing
/// there; the embedded store's durability tests use `TempDir::on_disk`).
fn scratch() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// A directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        Self::in_dir(&scratch(), prefix)
    }

    /// On the real disk (under the system temp dir), for durability tests.
    pub fn on_disk(prefix: &str) -> Self {
        Self::in_dir(&std::env::temp_dir(), prefix)
    }

    fn in_dir(base: &Path, prefix: &str) -> Self {
        let path = base.join(unique(prefix));
        std::fs::create_dir_all(&path).expect("create temp dir");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Certificates for an etcd with mutual TLS, made by the `openssl` CLI (EC P-256, valid two
/// days) in a temp dir removed on drop: a CA, a server certificate for 127.0.0.1/localhost, a
/// client certificate it signed, and a second CA (with a client certificate of its own) that
/// signed nothing the server trusts.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that did not sign the server's certificate.
    pub other_ca: PathBuf,
    /// A client certificate and key signed by `other_ca`.
    pub other_cert: PathBuf,
    pub other_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn new() -> Self {
        let dir = TempDir::new("vk-pki-");
        let d = &dir.path;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca = |name: &str| {
            let mut args = vec!["req", "-x509", "-days", "2"];
            args.extend(ec);
            let (key, pem, subj) =
                (format!("{name}.key"), format!("{name}.pem"), format!("/CN=viking test {name}"));
            args.extend(["-keyout", &key, "-out", &pem, "-subj", &subj]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(d, &args);
        };
        // `leaf` signed by `ca`, with the extensions in `ext`.
        let leaf = |name: &str, ca: &str, cn: &str, ext: &str| {
            let ext_file = format!("{name}.ext");
            std::fs::write(d.join(&ext_file), ext).expect("write openssl extensions");
            let (key, csr, pem) =
                (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
            let subj = format!("/CN={cn}");
            let mut args = vec!["req"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(d, &args);
            let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
            let mut args = vec!["x509", "-req", "-in", &csr, "-out", &pem, "-days", "2"];
            args.extend(["-CA", &ca_pem, "-CAkey", &ca_key, "-CAcreateserial"]);
            args.extend(["-extfile", &ext_file]);
            openssl(d, &args);
        };
        let basic = "basicConstraints=critical,CA:FALSE\n\
                     keyUsage=critical,digitalSignature,keyEncipherment\n";
        ca("ca");
        ca("other-ca");
        // NB: etcd's own gRPC gateway dials the server with the server certificate, so under
        // --client-cert-auth it must be good for clientAuth too.
        leaf(
            "server",
            "ca",
            "127.0.0.1",
            &format!(
                "{basic}extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectAltName=IP:127.0.0.1,DNS:localhost\n"
            ),
        );
        let client = format!("{basic}extendedKeyUsage=clientAuth\n");
        leaf("client", "ca", "viking-test-client", &client);
        leaf("other", "other-ca", "viking-test-stranger", &client);
        Self {
            ca: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            client_cert: d.join("client.pem"),
            client_key: d.join("client.key"),
            other_ca: d.join("other-ca.pem"),
            other_cert: d.join("other.pem"),
            other_key: d.join("other.key"),
            dir,
        }
    }

    /// Options that verify the server with `ca` and present the good client certificate.
    pub fn client_options(&self) -> EtcdOptions {
        EtcdOptions {
            ca: Some(self.ca.clone()),
            cert: Some(self.client_cert.clone()),
            key: Some(self.client_key.clone()),
            timeout: None,
        }
    }

    /// `--etcd-ca .. --etcd-cert .. --etcd-key ..` for `viking` with the good client certificate.
    pub fn cli_args(&self) -> Vec<String> {
        [
            ("--etcd-ca", &self.ca),
            ("--etcd-cert", &self.client_cert),
            ("--etcd-key", &self.client_key),
        ]
        .into_iter()
        .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
        .collect()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

/// Ports nobody listens on now (held until the caller is ready to hand them to etcd).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

/// One etcd member.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub dir: TempDir,
    child: Option<Child>,
    cluster: String,
    token: String,
    started_once: bool,
    /// Serve clients over mutual TLS with these certificates.
    tls: Option<Arc<Pki>>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn spawn(&mut self) {
        let log = File::create(self.dir.path.join("etcd.log")).expect("etcd log");
        let data = self.dir.path.join("data");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("/usr/bin/etcd");
        if let Some(pki) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&pki.server_cert)
                .arg("--key-file")
                .arg(&pki.server_key)
                .arg("--trusted-ca-file")
                .arg(&pki.ca)
                .arg("--client-cert-auth");
        }
        cmd.arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.cluster])
            .args(["--initial-cluster-token", &self.token])
            .args(["--initial-cluster-state", if self.started_once { "existing" } else { "new" }])
            // NB: quick failover, so tests that kill members stay short.
            .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawn /usr/bin/etcd (apt-get install etcd-server)"));
        self.started_once = true;
    }

    /// SIGKILL, by the PID we started, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path.join("etcd.log")).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An etcd cluster of one or more members on loopback.
pub struct Etcd {
    pub members: Vec<Member>,
}

impl Etcd {
    /// One member, ready.
    pub async fn start() -> Self {
        Self::cluster(1).await
    }

    /// One member serving clients over mutual TLS (`Pki`: its certificates, `options()`: a
    /// client's), ready. Peers talk plain HTTP on loopback.
    pub async fn start_tls() -> Self {
        Self::cluster_with(1, Some(Arc::new(Pki::new()))).await
    }

    /// `n` members, ready (a leader is elected).
    pub async fn cluster(n: usize) -> Self {
        Self::cluster_with(n, None).await
    }

    async fn cluster_with(n: usize, tls: Option<Arc<Pki>>) -> Self {
        assert!(
            Path::new("/usr/bin/etcd").exists(),
            "/usr/bin/etcd missing: cargo xtask setup installs etcd-server"
        );
        let ports = free_ports(2 * n);
        let token = unique("vkt");
        let names: Vec<String> = (0..n).map(|i| format!("{token}-{i}")).collect();
        let cluster = (0..n)
            .map(|i| format!("{}=http://127.0.0.1:{}", names[i], ports[2 * i + 1]))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: names[i].clone(),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
                dir: TempDir::new("vk-etcd-"),
                child: None,
                cluster: cluster.clone(),
                token: token.clone(),
                started_once: false,
                tls: tls.clone(),
            })
            .collect();
        for m in &mut members {
            m.spawn();
        }
        let etcd = Self { members };
        etcd.wait_ready().await;
        etcd
    }

    /// Waits until the cluster answers (a leader is elected).
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let options = EtcdOptions { timeout: Some(Duration::from_secs(1)), ..self.options() };
            match EtcdStore::connect(&self.endpoints(), &options).await {
                Ok(s) if s.revision().await.is_ok() => return,
                Ok(_) => {}
                Err(e) if Instant::now() > deadline => {
                    let logs: Vec<String> = self.members.iter().map(Member::log).collect();
                    panic!("etcd did not come up: {e}\n{}", logs.join("\n---\n"));
                }
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The certificates, when the members serve TLS.
    pub fn pki(&self) -> Option<&Pki> {
        self.members.first().and_then(|m| m.tls.as_deref())
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS) of every member (dead ones included).
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = if self.pki().is_some() { "https" } else { "http" };
        self.members.iter().map(|m| format!("{scheme}://{}", m.endpoint())).collect()
    }

    /// The `--store` argument for this cluster (`etcds://` with TLS).
    pub fn spec(&self) -> String {
        let eps: Vec<String> = self.members.iter().map(Member::endpoint).collect();
        let scheme = if self.pki().is_some() { "etcds" } else { "etcd" };
        format!("{scheme}://{}", eps.join(","))
    }

    /// How a client connects: with TLS, the CA and the good client certificate.
    pub fn options(&self) -> EtcdOptions {
        self.pki().map(Pki::client_options).unwrap_or_default()
    }

    /// A new client connection (its own gRPC channel).
    pub async fn store(&self) -> EtcdStore {
        EtcdStore::connect(&self.endpoints(), &self.options()).await.expect("connect to etcd")
    }

    /// Kills member `i` (SIGKILL by PID).
    pub fn kill(&mut self, i: usize) {
        self.members[i].kill();
    }

    /// Starts member `i` again on its data directory and ports.
    pub fn restart(&mut self, i: usize) {
        self.members[i].kill();
        self.members[i].spawn();
    }

    /// The index of the member that currently leads the raft group.
    pub async fn raft_leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let options = EtcdOptions { timeout: Some(Duration::from_secs(1)), ..self.options() };
            let scheme = if m.tls.is_some() { "https" } else { "http" };
            let Ok(store) =
                EtcdStore::connect(&[format!("{scheme}://{}", m.endpoint())], &options).await
            else {
                continue;
            };
            let Ok(status) = store.client().maintenance_client().status().await else { continue };
            let me = status.header().map(|h| h.member_id());
            if me.is_some() && me == Some(status.leader()) {
                return Some(i);
            }
        }
        None
    }
}

/// A store under test and a way to get more clients of it.
pub trait Backend: Send + Sync {
    type S: Store;
    /// A client: for etcd a new connection, for the embedded store a handle on it.
    fn client(&self) -> impl std::future::Future<Output = Self::S> + Send;
    fn name(&self) -> &'static str;
}

pub struct EtcdBackend {
    pub etcd: Etcd,
}

impl Backend for EtcdBackend {
    type S = EtcdStore;
    async fn client(&self) -> EtcdStore {
        self.etcd.store().await
    }
    fn name(&self) -> &'static str {
        "etcd"
    }
}

pub struct EmbeddedBackend {
    pub store: EmbeddedStore,
    pub dir: TempDir,
}

impl EmbeddedBackend {
    pub async fn new() -> Self {
        let dir = TempDir::new("vk-store-");
        let store = EmbeddedStore::open(&dir.path).await.expect("open embedded store");
        Self { store, dir }
    }
}

impl Backend for EmbeddedBackend {
    type S = EmbeddedStore;
    async fn client(&self) -> EmbeddedStore {
        self.store.clone()
    }
    fn name(&self) -> &'static str {
        "embedded"
    }
}

/// Runs each named `async fn NAME<B: Backend>(b: &B)` against a real etcd (one member) and
/// against the embedded store: `mod NAME { fn etcd(); fn embedded(); }`.
#[macro_export]
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn etcd() {
                let b = $crate::etcd::EtcdBackend { etcd: $crate::etcd::Etcd::start().await };
                super::$name(&b).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn embedded() {
                let b = $crate::etcd::EmbeddedBackend::new().await;
                super::$name(&b).await;
                b.store.close().await.expect("close the embedded store");
            }
        }
    )*};
}

/// The `vk-store` helper binary of this package (the child processes the store tests kill).
pub fn vk_store_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("vk-store");
    assert!(
        bin.exists(),
        "{} missing: build it first (cargo build -p viking-tests --bins)",
        bin.display()
    );
    bin
}
