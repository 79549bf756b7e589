//! The usual test world: a client namespace (in a cgroup of its own, where the datapath is
//! attached) joined by veth to a server namespace holding three backend addresses.
use std::{
    io::{BufRead as _, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
};

use viking::datapath::{
    Algo, Datapath, DatapathConfig, Frontend, Proto, ServiceSpec, ServiceTable,
};

use viking_common::{maps, ConnSlot, SockState};

use crate::{
    backend::Backend,
    guards::{veth, BpfDir, Cgroup, NetNs},
    probe::Conn,
    probe_bin,
};

pub const CLIENT_IP: &str = "10.200.0.1";
pub const SERVER_IPS: [&str; 3] = ["10.200.0.2", "10.200.0.3", "10.200.0.4"];
pub const CLIENT_IP6: &str = "fd00:200::1";
pub const SERVER_IP6: &str = "fd00:200::2";

pub struct Topo {
    // NB: fields drop in this order: the agent's handles, then the pins (which detaches the
    // programs), then the cgroup, then the namespaces.
    pub datapath: Option<Datapath>,
    pub bpf: BpfDir,
    pub cgroup: Cgroup,
    pub server: NetNs,
    pub client: NetNs,
}

impl Topo {
    /// The world with an agent's datapath started in-process.
    pub fn new() -> Self {
        let mut t = Self::without_agent();
        t.datapath = Some(Datapath::start(&t.config()).expect("datapath starts"));
        t
    }

    /// The world with nothing attached yet.
    pub fn without_agent() -> Self {
        crate::require_root();
        let client = NetNs::new("vkc");
        let server = NetNs::new("vks");
        let server_addrs: Vec<String> = SERVER_IPS.iter().map(|ip| format!("{ip}/24")).collect();
        let mut server_refs: Vec<&str> = server_addrs.iter().map(String::as_str).collect();
        let server6 = format!("{SERVER_IP6}/64");
        server_refs.push(&server6);
        let client4 = format!("{CLIENT_IP}/24");
        let client6 = format!("{CLIENT_IP6}/64");
        veth(&client, &[&client4, &client6], &server, &server_refs);
        Self { datapath: None, bpf: BpfDir::new(), cgroup: Cgroup::new(), server, client }
    }

    pub fn config(&self) -> DatapathConfig {
        DatapathConfig { cgroup: self.cgroup.path.clone(), bpffs: self.bpf.path.clone() }
    }

    pub fn table(&mut self) -> &mut ServiceTable {
        &mut self.datapath.as_mut().expect("agent started").table
    }

    /// Installs (or replaces) a service.
    pub fn service(&mut self, frontend: &str, proto: Proto, algo: Algo, backends: &[SocketAddr]) {
        let spec = spec(frontend, proto, algo, backends);
        self.table().upsert(&spec).expect("upsert");
    }

    /// TCP backends b1..b3, one on each server address, all on `port`.
    pub fn tcp_backends(&self, port: u16) -> Vec<Backend> {
        SERVER_IPS
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                Backend::tcp(
                    &self.server,
                    &format!("b{}", i + 1),
                    format!("{ip}:{port}").parse().expect("addr"),
                )
            })
            .collect()
    }

    /// The probe as a command in the client namespace and cgroup.
    pub fn probe_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.client.command(probe_bin(), Some(&self.cgroup));
        cmd.args(args);
        cmd
    }

    /// Runs the probe to completion and parses its connection lines.
    pub fn probe(&self, args: &[&str]) -> Vec<Conn> {
        run_probe(self.probe_cmd(args))
    }

    /// The datapath's socket slots (`CONN_SLOTS`), opened from their pin.
    pub fn conn_slots(&self) -> aya::maps::Array<aya::maps::MapData, ConnSlot> {
        let data = self.pinned(maps::CONN_SLOTS);
        aya::maps::Map::Array(data).try_into().expect("CONN_SLOTS is an array")
    }

    /// The datapath's overflow hash of sockets (`CONNS`), opened from its pin.
    pub fn conns(&self) -> aya::maps::HashMap<aya::maps::MapData, u64, SockState> {
        let data = self.pinned(maps::CONNS);
        aya::maps::Map::HashMap(data).try_into().expect("CONNS is a hash")
    }

    fn pinned(&self, name: &str) -> aya::maps::MapData {
        let path = viking::datapath::maps_dir(&self.bpf.path).join(name);
        aya::maps::MapData::from_pin(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Sockets the datapath tracks by cookie (slots of `CONN_SLOTS` taken, entries of
    /// `CONNS`), and the same counted per destination port (the sum of `CONN_PORTS`): both 0
    /// once every redirected socket closed.
    pub fn tracked_sockets(&self) -> (usize, u64) {
        let entries = self.conns().keys().filter(Result::is_ok).count();
        let slots = self.conn_slots();
        let taken = slots.iter().filter_map(Result::ok).filter(|s| s.cookie != 0).count();
        let data = self.pinned(maps::CONN_PORTS);
        let ports: aya::maps::Array<_, u32> =
            aya::maps::Map::Array(data).try_into().expect("CONN_PORTS is an array");
        (entries + taken, ports.iter().filter_map(Result::ok).map(u64::from).sum())
    }

    /// Starts a long-running probe (hold, loop, stream) with stdin and stdout piped.
    pub fn probe_spawn(&self, args: &[&str]) -> Child {
        let mut cmd = self.probe_cmd(args);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
        cmd.spawn().expect("spawn probe")
    }
}

impl Default for Topo {
    fn default() -> Self {
        Self::new()
    }
}

/// The spec `Topo::service` installs: named `svc-FRONTEND`, default ejection settings.
pub fn spec(frontend: &str, proto: Proto, algo: Algo, backends: &[SocketAddr]) -> ServiceSpec {
    ServiceSpec {
        ejection: Default::default(),
        end_tcp: false,
        name: format!("svc-{frontend}"),
        frontend: Frontend { addr: frontend.parse().expect("frontend"), proto, netns: 0 },
        algo,
        backends: backends.to_vec(),
    }
}

/// Runs a probe command and parses every JSON connection line it prints.
pub fn run_probe(mut cmd: Command) -> Vec<Conn> {
    let out = cmd.stdin(Stdio::null()).output().expect("run probe");
    assert!(out.status.success(), "probe failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("probe line {l:?}: {e}")))
        .collect()
}

/// Reads a spawned `hold` probe's lines up to "ready".
pub fn read_until_ready(child: &mut Child) -> Vec<Conn> {
    let out = child.stdout.as_mut().expect("stdout piped");
    let mut r = BufReader::new(out);
    let mut conns = Vec::new();
    let mut line = String::new();
    while r.read_line(&mut line).expect("read probe") > 0 {
        if line.trim() == "ready" {
            return conns;
        }
        conns.push(serde_json::from_str(line.trim()).expect("probe json"));
        line.clear();
    }
    panic!("probe ended before ready");
}

/// Closes a spawned probe's stdin and parses its final summary line.
pub fn finish<T: serde::de::DeserializeOwned>(mut child: Child) -> T {
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("probe output");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("probe summary {last:?}: {e}"))
}
