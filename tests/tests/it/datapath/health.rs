//! Passive health: backends whose connects fail are ejected in the kernel and come back when
//! they answer; a service whose backends are all ejected still tries them.
use std::{collections::HashMap, net::SocketAddr, thread::sleep, time::Duration};

use viking::datapath::{Algo, Ejection, Health, Proto, ServiceSpec};
use viking_tests::{
    backend::Backend,
    probe::{Conn, Summary},
    topo::{finish, read_until_ready, run_probe, spec, Topo, SERVER_IPS},
};

/// A backend address that refuses connections: nothing listens there (the server's kernel
/// answers the SYN with a RST).
fn refusing(port: u16) -> SocketAddr {
    format!("{}:{port}", SERVER_IPS[1]).parse().expect("address")
}

/// A backend address whose SYNs vanish: a listener behind an iptables DROP rule in the
/// server's namespace (a host that went away).
struct BlackHole {
    addr: SocketAddr,
    _listener: Backend,
    ns: String,
}

impl BlackHole {
    fn new(t: &Topo, port: u16) -> Self {
        let hole = Self::answering(t, port);
        hole.iptables("-A");
        hole
    }

    /// The listener, still answering: `cut` makes it a black hole later.
    fn answering(t: &Topo, port: u16) -> Self {
        let addr: SocketAddr = format!("{}:{port}", SERVER_IPS[2]).parse().expect("address");
        let listener = Backend::tcp(&t.server, "hole", addr);
        Self { addr, _listener: listener, ns: t.server.name.clone() }
    }

    fn cut(&self) {
        self.iptables("-A");
    }

    fn iptables(&self, op: &str) {
        let port = self.addr.port().to_string();
        let ip = self.addr.ip().to_string();
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, "iptables", op, "INPUT", "-p", "tcp", "-d", &ip])
            .args(["--dport", &port, "-j", "DROP"])
            .output()
            .expect("iptables");
        assert!(out.status.success(), "iptables: {}", String::from_utf8_lossy(&out.stderr));
    }
}

/// The probe with a short connect timeout (a black-holed connect gives up after 1.5 s; the
/// kernel's first SYN retransmission timeout, at 1 s, has counted it failed by then).
fn probe(t: &Topo, args: &[&str]) -> Vec<Conn> {
    let mut cmd = t.probe_cmd(args);
    cmd.env("VK_PROBE_TIMEOUT_MS", "1500");
    run_probe(cmd)
}

fn by_backend(conns: &[Conn]) -> HashMap<String, usize> {
    let mut by = HashMap::new();
    for c in conns {
        *by.entry(c.backend().unwrap_or("failed").to_owned()).or_default() += 1;
    }
    by
}

fn all_ejected(t: &mut Topo, s: &ServiceSpec, which: std::ops::Range<usize>) -> bool {
    let st = t.table().get(&s.frontend).expect("read").expect("installed");
    st.backends[which].iter().all(|b| b.health == Health::Ejected)
}

fn with_ejection(mut s: ServiceSpec, e: Ejection) -> ServiceSpec {
    s.ejection = e;
    s
}

#[test]
fn a_refusing_and_a_black_holed_backend_are_ejected_after_n_failures() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let hole = BlackHole::new(&t, 8100);
    let backends = [b[0].addr, refusing(8101), hole.addr];
    let after = 3;
    let s = with_ejection(
        spec("127.0.0.1:7600", Proto::Tcp, Algo::RoundRobin, &backends),
        Ejection { after, backoff_ms: 60_000, max_backoff_ms: 60_000 },
    );
    t.table().upsert(&s).unwrap();

    // Connect until both dead backends are out (round robin counts per CPU, so the order is
    // not exactly every third).
    let mut first = Vec::new();
    while first.len() < 60 && !all_ejected(&mut t, &s, 1..3) {
        first.extend(probe(&t, &["tcp", "127.0.0.1:7600"]));
    }
    let by = by_backend(&first);
    assert_eq!(by.get("failed"), Some(&(2 * after as usize)), "{by:?}");

    let status = t.table().get(&s.frontend).unwrap().unwrap();
    for bs in &status.backends[1..] {
        assert_eq!(bs.health, Health::Ejected, "{bs:?}");
        assert_eq!(bs.failed_connects, u64::from(after), "{bs:?}");
        assert_eq!(bs.ejections, 1, "{bs:?}");
        assert!(bs.ejected_ms > 50_000, "{bs:?}");
    }
    assert_eq!(status.backends[0].health, Health::Ok);
    assert_eq!(status.ejections, 2);
    assert_eq!(status.failed_connects, 2 * u64::from(after));

    // Ejected: every new connection goes to the live backend, none fails.
    let next = probe(&t, &["tcp", "127.0.0.1:7600", "60"]);
    assert_eq!(by_backend(&next), HashMap::from([("b1".to_owned(), 60)]));
    drop(hole);
}

#[test]
fn an_ejected_backend_comes_back_when_it_answers_again() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let dead = refusing(8102);
    let s = with_ejection(
        spec("127.0.0.1:7601", Proto::Tcp, Algo::RoundRobin, &[b[0].addr, dead]),
        Ejection { after: 2, backoff_ms: 300, max_backoff_ms: 300 },
    );
    t.table().upsert(&s).unwrap();
    let mut first = Vec::new();
    while first.len() < 40 && !all_ejected(&mut t, &s, 1..2) {
        first.extend(probe(&t, &["tcp", "127.0.0.1:7601"]));
    }
    assert_eq!(by_backend(&first).get("failed"), Some(&2), "{first:?}");

    // It answers again; once its backoff is over, the next connect to it is the probe, it
    // succeeds, and the backend is back in rotation.
    let revived = Backend::tcp(&t.server, "revived", dead);
    sleep(Duration::from_millis(400));
    let after = probe(&t, &["tcp", "127.0.0.1:7601", "40"]);
    let by = by_backend(&after);
    assert_eq!(by.get("failed"), None, "{by:?}");
    assert!(by.get("revived").copied().unwrap_or(0) >= 15, "back in rotation: {by:?}");
    let status = t.table().get(&s.frontend).unwrap().unwrap();
    assert_eq!(status.backends[1].health, Health::Ok, "{status:?}");
    assert_eq!(status.backends[1].failing, 0);
    drop(revived);
}

#[test]
fn a_backend_that_keeps_failing_is_ejected_for_longer_each_time() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let s = with_ejection(
        spec("127.0.0.1:7602", Proto::Tcp, Algo::RoundRobin, &[b[0].addr, refusing(8103)]),
        Ejection { after: 1, backoff_ms: 200, max_backoff_ms: 10_000 },
    );
    t.table().upsert(&s).unwrap();
    for _ in 0..20 {
        if all_ejected(&mut t, &s, 1..2) {
            break;
        }
        probe(&t, &["tcp", "127.0.0.1:7602"]);
    }
    let first = t.table().get(&s.frontend).unwrap().unwrap().backends[1].ejected_ms;
    assert!((1..=200).contains(&first), "{first}");
    // After the backoff the probe fails: out again, for twice as long.
    sleep(Duration::from_millis(250));
    let conns = probe(&t, &["tcp", "127.0.0.1:7602", "10"]);
    assert_eq!(by_backend(&conns).get("failed"), Some(&1), "one probe only: {conns:?}");
    let status = t.table().get(&s.frontend).unwrap().unwrap();
    let second = status.backends[1].ejected_ms;
    assert!((201..=400).contains(&second), "{second}");
    assert_eq!(status.backends[1].ejections, 2);
}

#[test]
fn a_service_whose_backends_are_all_ejected_still_tries_them() {
    let mut t = Topo::new();
    let (x, y) = (refusing(8104), refusing(8105));
    let s = with_ejection(
        spec("127.0.0.1:7603", Proto::Tcp, Algo::Random, &[x, y]),
        Ejection { after: 1, backoff_ms: 60_000, max_backoff_ms: 60_000 },
    );
    t.table().upsert(&s).unwrap();
    // Both fail until both are ejected.
    for _ in 0..20 {
        probe(&t, &["tcp", "127.0.0.1:7603"]);
        let st = t.table().get(&s.frontend).unwrap().unwrap();
        if st.backends.iter().all(|b| b.health == Health::Ejected) {
            break;
        }
    }
    let st = t.table().get(&s.frontend).unwrap().unwrap();
    assert!(st.backends.iter().all(|b| b.health == Health::Ejected), "{st:?}");

    // One comes up while both are still ejected: connects reach it, none is refused by the
    // datapath itself.
    let up = Backend::tcp(&t.server, "up", y);
    let conns = probe(&t, &["tcp", "127.0.0.1:7603", "20"]);
    assert!(by_backend(&conns).get("up").copied().unwrap_or(0) > 0, "{conns:?}");
    let st = t.table().get(&s.frontend).unwrap().unwrap();
    assert_eq!(st.rejects, 0, "the datapath refused nothing");
    assert_eq!(st.backends[1].health, Health::Ok, "its success brought it back");
    drop(up);
}

#[test]
fn with_ejection_off_a_failing_backend_keeps_its_share() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let s = with_ejection(
        spec("127.0.0.1:7604", Proto::Tcp, Algo::RoundRobin, &[b[0].addr, refusing(8106)]),
        Ejection::OFF,
    );
    t.table().upsert(&s).unwrap();
    let conns = probe(&t, &["tcp", "127.0.0.1:7604", "20"]);
    // Round robin (per CPU): about half, far more than the 3 the default would allow.
    let failed = by_backend(&conns).get("failed").copied().unwrap_or(0);
    assert!(failed >= 7, "{conns:?}");
    let st = t.table().get(&s.frontend).unwrap().unwrap();
    assert_eq!(st.backends[1].health, Health::Ok);
    assert_eq!(st.backends[1].failed_connects, failed as u64, "failures are still counted");
    assert_eq!(st.ejections, 0);
}

#[test]
fn an_old_connection_closing_does_not_bring_back_an_ejected_backend() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let hole = BlackHole::answering(&t, 8108);
    let s = with_ejection(
        spec("127.0.0.1:7606", Proto::Tcp, Algo::LeastConn, &[b[0].addr, hole.addr]),
        Ejection { after: 2, backoff_ms: 60_000, max_backoff_ms: 60_000 },
    );
    t.table().upsert(&s).unwrap();
    // Connections held open while the backend still answers: least connections spreads them.
    let mut holder = t.probe_spawn(&["hold", "127.0.0.1:7606", "6"]);
    let held = read_until_ready(&mut holder);
    assert!(held.iter().any(|c| c.backend() == Some("hole")), "{held:?}");
    // Its host goes away: new connects to it go unanswered until it is ejected.
    hole.cut();
    for _ in 0..20 {
        if all_ejected(&mut t, &s, 1..2) {
            break;
        }
        probe(&t, &["tcp", "127.0.0.1:7606"]);
    }
    assert!(all_ejected(&mut t, &s, 1..2), "the black-holed backend is ejected");
    // The connections made before the ejection close now, established: that says nothing
    // about the backend now, and it stays out.
    let _: Summary = finish(holder);
    sleep(Duration::from_millis(100));
    let st = t.table().get(&s.frontend).unwrap().unwrap();
    assert_eq!(st.backends[1].health, Health::Ejected, "{:?}", st.backends[1]);
    assert_eq!(st.backends[1].ejections, 1, "{:?}", st.backends[1]);
    // NB: the held connections to the black hole take the probe a while to give up on.
    assert!(st.backends[1].ejected_ms > 1_000, "{:?}", st.backends[1]);
    drop(hole);
}

#[test]
fn connections_the_backend_resets_after_they_were_established_are_no_failed_connects() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let s = with_ejection(
        spec("127.0.0.1:7607", Proto::Tcp, Algo::RoundRobin, &[b[0].addr, refusing(8109)]),
        Ejection { after: 1, backoff_ms: 60_000, max_backoff_ms: 60_000 },
    );
    t.table().upsert(&s).unwrap();
    // Each socket is closed after the backend's RST: in TCP state CLOSE at its release, as a
    // refused one is. Only the refused ones failed.
    let conns = run_probe({
        let mut cmd = t.probe_cmd(&["reset", "127.0.0.1:7607", "10"]);
        cmd.env("VK_PROBE_TIMEOUT_MS", "1500");
        cmd
    });
    let reset: Vec<_> = conns.iter().filter(|c| c.backend() == Some("b1")).collect();
    assert!(reset.len() >= 5, "{conns:?}");
    assert!(reset.iter().all(|c| c.error.is_none()), "each was reset by b1: {reset:?}");
    let st = t.table().get(&s.frontend).unwrap().unwrap();
    assert_eq!(st.backends[0].failed_connects, 0, "{:?}", st.backends[0]);
    assert_eq!(st.backends[0].health, Health::Ok, "{:?}", st.backends[0]);
    assert_eq!(st.backends[1].health, Health::Ejected, "{:?}", st.backends[1]);
    assert_eq!(st.backends[1].failed_connects, 1, "{:?}", st.backends[1]);
}

#[test]
fn least_connections_counts_open_connections_not_refused_ones() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let s = with_ejection(
        spec("127.0.0.1:7605", Proto::Tcp, Algo::LeastConn, &[b[0].addr, refusing(8107)]),
        Ejection::OFF,
    );
    t.table().upsert(&s).unwrap();
    let mut holder = t.probe_spawn(&["hold", "127.0.0.1:7605", "12"]);
    let held = read_until_ready(&mut holder);
    let ok = held.iter().filter(|c| c.backend() == Some("b1")).count() as u64;
    assert!(ok > 0 && ok < 12, "{held:?}");
    let st = t.table().get(&s.frontend).unwrap().unwrap();
    assert_eq!(st.backends[0].active, ok, "held connections are counted");
    assert_eq!(st.backends[1].active, 0, "refused connects never count");
    assert_eq!(st.backends[1].failed_connects, 12 - ok);
    // A connection in the cgroup to no service gets no callbacks and changes no count.
    let direct = t.probe(&["tcp", &b[1].addr.to_string(), "5"]);
    assert!(direct.iter().all(|c| c.backend() == Some("b2")), "{direct:?}");
    let _: Summary = finish(holder);
    let mut left = u64::MAX;
    for _ in 0..50 {
        let st = t.table().get(&s.frontend).unwrap().unwrap();
        left = st.backends.iter().map(|b| b.active).sum();
        if left == 0 {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    assert_eq!(left, 0, "closed connections are uncounted");
}

#[test]
fn viking_services_shows_ejections_and_service_add_checks_its_settings() {
    let mut t = Topo::new();
    let b = t.tcp_backends(8000);
    let bpffs = t.bpf.path.clone();
    let viking = |args: &[&str]| {
        let out = std::process::Command::new(viking_tests::viking_bin())
            .args(args)
            .arg("--bpffs")
            .arg(&bpffs)
            .output()
            .expect("viking");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dead = refusing(8108).to_string();
    let (ok, _, err) = viking(&[
        "service",
        "add",
        "web",
        "--frontend",
        "127.0.0.1:7606",
        "--backend",
        &dead,
        "--eject-after",
        "2",
        "--eject-backoff-ms",
        "0",
    ]);
    assert!(!ok, "a zero backoff is refused");
    assert!(err.contains("ejection") && err.contains("backoff_ms = 0"), "{err}");
    assert!(t.table().list().unwrap().is_empty(), "nothing was installed");

    let live = b[0].addr.to_string();
    let (ok, _, err) = viking(&[
        "service",
        "add",
        "web",
        "--frontend",
        "127.0.0.1:7606",
        "--backend",
        &live,
        "--backend",
        &dead,
        "--eject-after",
        "2",
        "--eject-backoff-ms",
        "30000",
    ]);
    assert!(ok, "{err}");
    for _ in 0..30 {
        probe(&t, &["tcp", "127.0.0.1:7606"]);
        if t.table().list().unwrap()[0].ejections > 0 {
            break;
        }
    }
    let (ok, table, err) = viking(&["services"]);
    assert!(ok, "{err}");
    assert!(table.contains("EJECTIONS") && table.contains("1/2 in rotation"), "{table}");
    assert!(table.contains(&format!("-> {dead}")), "{table}");
    assert!(table.contains("ejected 30.0s") || table.contains("ejected 29."), "{table}");
    assert!(table.contains("stale sockets ended: 0 udp, 0 tcp"), "{table}");
    let (ok, json, _) = viking(&["services", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["ejections"], 1);
    assert_eq!(v[0]["ejection"]["after"], 2);
    assert_eq!(v[0]["backends"][1]["health"], "ejected");
}
