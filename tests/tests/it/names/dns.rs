//! The DNS responder on a real host (exec runtime): two deployments `abc` and `xyz` of one
//! stack. From inside abc's `web` (glibc's resolver, with the resolv.conf the runtime gives
//! it) `pricing` is abc's VIP and a connection to `pricing:80` reaches abc's instances (xyz's
//! from xyz's web); `pricing.xyz` crosses to xyz, `1.pricing` is that instance's address, a
//! name outside Viking's domains comes from a test upstream resolver in a namespace of the
//! test's own. From the host: SRV gives the port, unknown names are NXDOMAIN, `rm xyz` makes
//! xyz's names NXDOMAIN while abc's stay, and thousands of random and truncated packets leave
//! the responder answering.
use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, MessageType, Query, ResponseCode},
    rr::{rdata::A, Name, RData, Record, RecordType},
};
use rand::{Rng as _, SeedableRng as _};
use viking_tests::{
    cluster::{bin, rows, Cluster, Options},
    guards::NetNs,
    unique, viking_bin,
};

use super::datapath::vips;

const RESPONDER: &str = "169.254.1.1:53";
const UPSTREAM: &str = "10.250.0.2:53";
/// What the test upstream answers for every A question.
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

/// The test's upstream resolver: answers every A question with `OUTSIDE`, in its own
/// namespace, linked to the host's by a veth (10.250.0.1 <-> 10.250.0.2).
struct Upstream {
    _ns: NetNs,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    fn start(host: &NetNs) -> Self {
        let ns = NetNs::new("vkup");
        let (a, b) = (unique("vu"), unique("vu"));
        let out = std::process::Command::new("ip")
            .args(["link", "add", &a, "netns", &host.name, "type", "veth", "peer", "name", &b])
            .args(["netns", &ns.name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        host.ip(&["addr", "add", "10.250.0.1/30", "dev", &a]);
        host.ip(&["link", "set", &a, "up"]);
        ns.ip(&["addr", "add", "10.250.0.2/30", "dev", &b]);
        ns.ip(&["link", "set", &b, "up"]);
        let sock = ns.enter(|| UdpSocket::bind(UPSTREAM).unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !s.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                let mut r = Message::new();
                r.set_id(q.id()).set_message_type(MessageType::Response);
                r.add_queries(q.queries().iter().cloned());
                for question in q.queries() {
                    if question.query_type() == RecordType::A {
                        let rec =
                            Record::from_rdata(question.name().clone(), 5, RData::A(A(OUTSIDE)));
                        r.add_answer(rec);
                    }
                }
                let _ = sock.send_to(&r.to_vec().unwrap(), from);
            }
        });
        Self { _ns: ns, stop }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One question to the responder from the host's namespace.
fn ask(host: &NetNs, name: &str, t: RecordType) -> Message {
    let mut m = Message::new();
    m.set_id(rand::random()).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let bytes = m.to_vec().unwrap();
    host.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for _ in 0..3 {
            s.send_to(&bytes, RESPONDER).unwrap();
            let mut buf = [0u8; 1500];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Message::from_vec(&buf[..n]).unwrap();
            }
        }
        panic!("no answer from {RESPONDER}");
    })
}

fn a_of(m: &Message) -> Vec<String> {
    m.answers().iter().map(|r| r.data().to_string()).collect()
}

fn stack() -> String {
    let probe = bin("vk-probe");
    format!(
        "pricing:\n  command: {probe} serve 0.0.0.0:80\n  ports: [80]\n  scale: 2\n\
         web:\n  command: while true; do echo \"A=$(getent ahostsv4 pricing | head -1)\"; \
         echo \"X=$(getent ahostsv4 pricing.xyz | head -1)\"; echo \"I=$(getent ahostsv4 1.pricing | head -1)\"; \
         echo \"O=$(getent ahostsv4 www.outside.test | head -1)\"; \
         echo \"C=$(socat -T1 - TCP:pricing:80 </dev/null 2>&1 | head -1)\"; echo END; sleep 0.5; done\n"
    )
}

/// The last complete round of web's log lines, as KEY -> value.
fn last_round(log: &str) -> std::collections::BTreeMap<String, String> {
    let lines: Vec<&str> = log.lines().collect();
    let Some(end) = lines.iter().rposition(|l| *l == "END") else { return Default::default() };
    lines[..end]
        .iter()
        .rev()
        .take(5)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instances_resolve_their_own_deployments_names_and_the_rest_is_forwarded() {
    let c = Cluster::start_with(Options {
        hosts: 1,
        agent_args: vec!["--dns-upstream".into(), UPSTREAM.into()],
        ..Options::default()
    })
    .await;
    let host = &c.hosts[0];
    let _upstream = Upstream::start(&host.ns);
    c.deploy("abc", &stack()).await;
    c.deploy("xyz", &stack()).await;
    let ps = c
        .wait_ps("6 instances running", |r| r.len() == 6 && r.iter().all(|r| r.state == "running"))
        .await;
    let t = vips(&c).await;
    let vip = |s: &str| t.get(s, "pricing").unwrap().ip.to_string();
    let addr_of = |s: &str, i: u32| {
        rows(&ps, s, "pricing").iter().find(|r| r.index == i).unwrap().address.unwrap().to_string()
    };

    for (stack, other) in [("abc", "xyz"), ("xyz", "abc")] {
        let mut round = Default::default();
        for _ in 0..100 {
            round = last_round(&host.agent.instance_log(&format!("{stack}_web_0")));
            // NB: until instance 1 reports its address, `1.pricing` is searched in vain and
            // then asked upstream, which answers everything.
            let first = |k: &str| round.get(k).and_then(|v| v.split_whitespace().next());
            let done = round.get("C").is_some_and(|c| c.starts_with(&format!("{stack}_pricing_")))
                && first("O") == Some(OUTSIDE.to_string().as_str())
                && first("I") == Some(addr_of(stack, 1).as_str());
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let msg = format!("{stack}'s web saw {round:#?}\n{}", c.logs());
        let first = |k: &str| round.get(k).and_then(|v| v.split_whitespace().next()).unwrap_or("");
        assert_eq!(first("A"), vip(stack), "pricing is {stack}'s VIP: {msg}");
        assert_eq!(first("X"), vip("xyz"), "pricing.xyz crosses stacks: {msg}");
        assert_eq!(first("I"), addr_of(stack, 1), "1.pricing is that instance: {msg}");
        assert_eq!(first("O"), OUTSIDE.to_string(), "forwarded upstream: {msg}");
        let conn = round.get("C").cloned().unwrap_or_default();
        assert!(conn.starts_with(&format!("{stack}_pricing_")), "pricing:80 reached: {msg}");
        assert!(!conn.contains(other), "{msg}");
    }

    // From the host: SRV, NXDOMAIN, the consul form.
    let srv = ask(&host.ns, "_80._tcp.pricing.abc.viking.", RecordType::SRV);
    assert_eq!(srv.answers()[0].data().to_string(), "0 0 80 pricing.abc.viking.");
    assert_eq!(a_of(&Message::from_vec(&srv.to_vec().unwrap()).unwrap()).len(), 1);
    let nx = ask(&host.ns, "nope.abc.viking.", RecordType::A);
    assert_eq!(nx.response_code(), ResponseCode::NXDomain);
    let consul = ask(&host.ns, "pricing.abc.service.consul.", RecordType::A);
    assert_eq!(a_of(&consul), [vip("abc")]);

    // `viking dig` answers as an instance of the stack would.
    let dig = |name: &str, stack: &str| {
        let ns = host.ns.path().display().to_string();
        let out = std::process::Command::new(viking_bin())
            .args(["dig", name, "--stack", stack, "--host-netns", &ns, "--json"])
            .output()
            .unwrap();
        let tried: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out.status.success(), tried)
    };
    for stack in ["abc", "xyz"] {
        let (ok, tried) = dig("pricing", stack);
        let last = &tried[tried.as_array().unwrap().len() - 1];
        assert!(ok, "{tried}");
        assert_eq!(last["name"], format!("pricing.{stack}.viking."));
        assert_eq!(last["answers"][0], format!("A {}", vip(stack)), "{tried}");
    }
    // Not in abc's or Viking's domain: searched there, then asked upstream.
    let (ok, tried) = dig("nope", "abc");
    assert!(ok, "{tried}");
    assert_eq!(tried[0]["status"], "Non-Existent Domain", "{tried}");
    assert_eq!(tried[1]["status"], "Non-Existent Domain", "{tried}");
    assert_eq!(tried[2]["answers"][0], format!("A {OUTSIDE}"), "{tried}");
    let (ok, tried) = dig("nope.abc.viking.", "abc");
    assert!(!ok && tried.as_array().unwrap().len() == 1, "{tried}");

    // rm xyz: its names go, abc's stay.
    c.hosts[0].agent.client().delete("/v1/stacks/xyz").await.unwrap();
    let removed = Instant::now();
    loop {
        let r = ask(&host.ns, "pricing.xyz.viking.", RecordType::A);
        if r.response_code() == ResponseCode::NXDomain {
            break;
        }
        assert!(removed.elapsed() < Duration::from_secs(10), "pricing.xyz still answers {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("xyz's names were NXDOMAIN {:?} after rm", removed.elapsed());
    assert_eq!(a_of(&ask(&host.ns, "pricing.abc.viking.", RecordType::A)), [vip("abc")]);

    // Garbage: random packets and every truncation of good ones; still answering.
    let good = {
        let mut m = Message::new();
        m.set_id(1).add_query(Query::query(
            Name::from_ascii("_80._tcp.pricing.abc.viking.").unwrap(),
            RecordType::SRV,
        ));
        m.to_vec().unwrap()
    };
    host.ns.enter(move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for i in 0..3000 {
            let p: Vec<u8> = if i % 3 == 0 {
                good[..rng.gen_range(0..good.len())].to_vec()
            } else {
                (0..rng.gen_range(0..700)).map(|_| rng.gen()).collect()
            };
            let _ = s.send_to(&p, RESPONDER.parse::<SocketAddr>().unwrap());
        }
    });
    assert_eq!(a_of(&ask(&host.ns, "pricing.abc.viking.", RecordType::A)), [vip("abc")]);
    assert!(host.agent.child.is_some() && c.logs().contains("names: DNS responder listening"));
}
