//! The VPC filter's world: member hosts and non-member "outsiders", each a network namespace
//! on one bridge (10.97.0.0/24, fd97::/64), one etcd, and a `viking agent --vpc-rules` per
//! host started when the test says. Hosts are 10.97.0.1.. (fd97::1..), outsiders
//! 10.97.0.100.. (fd97::100..). Everything is removed on Drop.
use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use viking::vpc::VpcStatus;

use crate::{agent::AgentProc, etcd::Etcd, guards::NetNs, unique};

pub struct VpcHost {
    // NB: the agent goes before its namespace.
    pub agent: Option<AgentProc>,
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// Its `--vpc-rules` folder.
    pub rules: PathBuf,
}

pub struct Outsider {
    pub ns: NetNs,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
}

pub struct VpcNet {
    pub hosts: Vec<VpcHost>,
    pub outsiders: Vec<Outsider>,
    pub lan: NetNs,
    pub etcd: Etcd,
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

/// Plugs a new namespace into the bridge with `v4`/24 and `v6`/64.
fn plug(lan: &NetNs, prefix: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> NetNs {
    let ns = NetNs::new(prefix);
    let (a, b) = (unique("vv"), unique("vb"));
    ip(&[
        "link", "add", &a, "netns", &ns.name, "type", "veth", "peer", "name", &b, "netns",
        &lan.name,
    ]);
    lan.ip(&["link", "set", &b, "master", "br0", "up"]);
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", &a]);
    ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", &a, "nodad"]);
    ns.ip(&["link", "set", &a, "up"]);
    ns
}

/// How a connection attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    Connected,
    /// RST: the packet passed the filter and nobody listened.
    Refused,
    /// No answer: dropped.
    Silent,
}

impl VpcNet {
    pub async fn new(hosts: usize, outsiders: usize) -> Self {
        crate::require_root();
        let lan = NetNs::new("vkvl");
        lan.ip(&["link", "add", "br0", "type", "bridge"]);
        lan.ip(&["link", "set", "br0", "up"]);
        let dir = std::env::temp_dir().join(unique("vk-vpc-"));
        let mut out =
            Self { hosts: Vec::new(), outsiders: Vec::new(), lan, etcd: Etcd::start().await, dir };
        for i in 0..hosts {
            let n = i as u8 + 1;
            let (v4, v6) =
                (Ipv4Addr::new(10, 97, 0, n), Ipv6Addr::new(0xfd97, 0, 0, 0, 0, 0, 0, n.into()));
            let ns = plug(&out.lan, "vkvh", v4, v6);
            let rules = out.dir.join(format!("rules-{i}"));
            std::fs::create_dir_all(&rules).expect("rules dir");
            out.hosts.push(VpcHost { agent: None, ns, ip: v4, ip6: v6, rules });
        }
        for j in 0..outsiders {
            let n = 100 + j as u8;
            // NB: fd97::100 reads as 10.97.0.100 does (0x100 + j).
            let v6 = Ipv6Addr::new(0xfd97, 0, 0, 0, 0, 0, 0, 0x100 + j as u16);
            let v4 = Ipv4Addr::new(10, 97, 0, n);
            let ns = plug(&out.lan, "vkvo", v4, v6);
            out.outsiders.push(Outsider { ns, ip: v4, ip6: v6 });
        }
        out
    }

    /// Writes host `i`'s policy (`policy.yml` in its folder).
    pub fn write_policy(&self, i: usize, name: &str, text: &str) {
        let path = self.hosts[i].rules.join(name);
        // NB: written whole and renamed in, as an operator's tool would.
        let tmp = self.hosts[i].rules.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("policy");
        std::fs::rename(&tmp, &path).expect("policy in place");
    }

    /// Starts host `i`'s agent with `policy` (and more agent arguments), and waits until the
    /// policy is in force.
    pub async fn start(&mut self, i: usize, policy: &str, extra: &[&str]) {
        self.write_policy(i, "policy.yml", policy);
        self.launch(i, extra).await;
        self.wait_status(i, "the policy in force", |s| s.policy.is_some()).await;
    }

    /// Starts host `i`'s agent on the policy its folder holds; returns once its API answers.
    pub async fn launch(&mut self, i: usize, extra: &[&str]) {
        let h = &self.hosts[i];
        let mut args: Vec<String> = vec![
            "--runtime".into(),
            "exec".into(),
            "--host-netns".into(),
            h.ns.path().display().to_string(),
            "--address".into(),
            h.ip.to_string(),
            "--vpc-rules".into(),
            h.rules.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let agent = AgentProc::start_with(Some(&self.etcd.spec()), &args).await;
        self.hosts[i].agent = Some(agent);
    }

    pub fn agent(&self, i: usize) -> &AgentProc {
        self.hosts[i].agent.as_ref().expect("the host's agent runs")
    }

    pub async fn status(&self, i: usize) -> VpcStatus {
        self.agent(i).client().get("/v1/vpc").await.expect("vpc status").expect("a status")
    }

    /// Polls host `i`'s status until `ok` holds (20 s at most).
    pub async fn wait_status(
        &self,
        i: usize,
        what: &str,
        ok: impl Fn(&VpcStatus) -> bool,
    ) -> VpcStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = self.status(i).await;
            if ok(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!("host {i}: timed out waiting for {what}: {s:#?}\n{}", self.agent(i).log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Host `i`'s v4 address with `port`.
    pub fn addr(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.hosts[i].ip), port)
    }

    pub fn addr6(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.hosts[i].ip6), port)
    }

    pub fn dir(&self) -> &PathBuf {
        &self.dir
    }
}

impl Drop for VpcNet {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One TCP connect from inside `ns` (700 ms at most), read of the greeting included when it
/// connects (a `Backend` greets).
pub fn reach(ns: &NetNs, to: SocketAddr) -> Reach {
    ns.enter(move || match TcpStream::connect_timeout(&to, Duration::from_millis(700)) {
        Ok(_) => Reach::Connected,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Reach::Refused,
        Err(_) => Reach::Silent,
    })
}

/// Tries `reach` until it gives `want` (routes to instances on other hosts come with the
/// reconciler's next pass); returns what the last try gave.
pub async fn reach_within(ns: &NetNs, to: SocketAddr, want: Reach, within: Duration) -> Reach {
    let deadline = Instant::now() + within;
    loop {
        let got = reach(ns, to);
        if got == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a datagram from inside `ns` to a UDP `Backend` (3 tries, 400 ms each): whether an
/// answer came.
pub fn udp_answers(ns: &NetNs, to: SocketAddr) -> bool {
    ns.enter(move || {
        let bind: SocketAddr =
            if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("addr");
        let sock = UdpSocket::bind(bind).expect("udp socket");
        sock.set_read_timeout(Some(Duration::from_millis(400))).expect("timeout");
        let mut buf = [0u8; 256];
        (0..3).any(|_| {
            let _ = sock.send_to(b"hello", to);
            sock.recv_from(&mut buf).is_ok()
        })
    })
}

/// Connects from inside `ns`, asks a `Backend` for `bytes` (`stream N`) and reads them all;
/// `started` gets a message once the first bytes came. Returns how many came.
pub fn download(
    ns: &NetNs,
    to: SocketAddr,
    bytes: usize,
    started: std::sync::mpsc::Sender<()>,
) -> usize {
    ns.enter(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut greeting = [0u8; 1];
        // The greeting line, then the stream.
        let mut line = Vec::new();
        while s.read(&mut greeting).is_ok_and(|n| n == 1) && greeting[0] != b'\n' {
            line.push(greeting[0]);
        }
        s.write_all(format!("stream {bytes}\n").as_bytes()).expect("ask");
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        let mut told = false;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            got += n;
            if !told {
                let _ = started.send(());
                told = true;
            }
        }
        got
    })
}
