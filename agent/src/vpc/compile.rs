//! From policy files to what the kernel maps hold on one host: pure, so it is tested without
//! a kernel, and `evaluate` answers what the filter would do with a packet (the lockout guard
//! asks it).
//!
//! The kernel looks up a source in three *spaces* (this protocol and port; every port of the
//! protocol; every protocol) and a deny found in any wins. Within one space an LPM trie
//! answers with the longest prefix only, so an allowed prefix that lies inside a denied one
//! of the same space is written as that deny: the longest match is then a deny whenever any
//! deny of the space covers the source.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use viking_common::vpc::{MAX_CLUSTER_ENTRIES, MAX_POLICY_ENTRIES, MAX_SLOTS};

use super::{
    error::PolicyError,
    policy::{Action, DefaultAction, PolicyFile, PortSpec, Proto, Rule, Source},
};

/// What the compiler needs to know of the host.
#[derive(Debug, Clone, Default)]
pub struct HostView {
    pub tags: Vec<String>,
    /// The interface that holds the host's cluster address: the one a file filters when it
    /// names none.
    pub cluster_iface: Option<String>,
    /// Interface name -> ifindex, in the host's network namespace.
    pub ifaces: BTreeMap<String, u32>,
}

/// One filtered interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub slot: u8,
    pub iface: String,
    pub ifindex: u32,
    pub default: DefaultAction,
}

/// A rule in force on this host, as `viking vpc status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleInfo {
    pub file: String,
    pub line: usize,
    pub name: Option<String>,
    pub action: Action,
    pub description: String,
    pub interfaces: Vec<String>,
}

impl RuleInfo {
    /// What identifies a rule across reloads (its counters follow it): everything but its
    /// line, so moving a rule in its file keeps its counters.
    pub fn identity(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.file,
            self.name.as_deref().unwrap_or(""),
            self.description,
            self.interfaces.join(",")
        )
    }
}

/// A lookup space: protocol 0 is every protocol, port 0 every port of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Space {
    pub slot: u8,
    pub proto: u8,
    pub port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Index into `Compiled::rules`.
    pub rule: usize,
    pub action: Action,
}

/// The policy of one host, ready for the maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compiled {
    pub slots: Vec<Slot>,
    pub rules: Vec<RuleInfo>,
    pub nets: BTreeMap<(Space, IpNetwork), Decision>,
    pub cluster: BTreeMap<Space, Decision>,
    /// Rules of the files that apply to other hosts (tags).
    pub elsewhere: usize,
}

/// What the filter does with a packet, and which rule says so (`None`: the default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub action: Action,
    pub rule: Option<usize>,
}

fn has_tags(host: &[String], want: &[String]) -> bool {
    want.iter().all(|t| host.contains(t))
}

/// The spaces a port spec covers for a source of `family` (4, 6; 0 for `cluster`: both).
fn spaces(slot: u8, ports: &[PortSpec], family: u8) -> Vec<Space> {
    if ports.is_empty() {
        return vec![Space { slot, proto: 0, port: 0 }];
    }
    let mut out = Vec::new();
    for p in ports {
        match (p.proto, p.ports) {
            (Proto::Icmp, _) => {
                if family != 6 {
                    out.push(Space { slot, proto: 1, port: 0 });
                }
                if family != 4 {
                    out.push(Space { slot, proto: 58, port: 0 });
                }
            }
            (proto, range) => {
                let proto = if proto == Proto::Tcp { 6 } else { 17 };
                match range {
                    None => out.push(Space { slot, proto, port: 0 }),
                    Some((a, b)) => out.extend((a..=b).map(|port| Space { slot, proto, port })),
                }
            }
        }
    }
    out
}

fn family(net: &IpNetwork) -> u8 {
    if net.is_ipv4() {
        4
    } else {
        6
    }
}

/// The slot for interface `name`: the one it had, else one no interface had, else any free.
fn pick_slot(name: &str, used: &BTreeSet<u8>, prev: &BTreeMap<String, u8>) -> Option<u8> {
    if let Some(&s) = prev.get(name) {
        if usize::from(s) < MAX_SLOTS && !used.contains(&s) {
            return Some(s);
        }
    }
    let free = |s: &u8| !used.contains(s);
    (0..MAX_SLOTS as u8)
        .find(|s| free(s) && !prev.values().any(|p| p == s))
        .or_else(|| (0..MAX_SLOTS as u8).find(free))
}

/// Compiles the files for the host `view` describes. `prev_slots` keeps each interface on
/// the slot it had (interface name -> slot).
pub fn compile(
    files: &[PolicyFile],
    view: &HostView,
    prev_slots: &BTreeMap<String, u8>,
) -> Result<Compiled, PolicyError> {
    let mut out = Compiled::default();
    // Per slot: the default a file wrote, and where.
    let mut defaults: BTreeMap<u8, (DefaultAction, PathBuf, usize)> = BTreeMap::new();
    let mut slot_of: BTreeMap<String, u8> = BTreeMap::new();
    let mut nets = Nets::default();
    for f in files {
        if !has_tags(&view.tags, &f.hosts) {
            out.elsewhere += f.rules.len();
            continue;
        }
        let names = match &f.interfaces {
            Some(names) => names.clone(),
            None => vec![view.cluster_iface.clone().ok_or_else(|| {
                PolicyError::new(
                    &f.file,
                    0,
                    "interface",
                    "no interface named, and no interface of this host holds its cluster \
                     address (--address): name one with `interface:`",
                )
            })?],
        };
        let mut slots = Vec::new();
        for name in &names {
            let Some(&ifindex) = view.ifaces.get(name) else {
                let have: Vec<&str> = view.ifaces.keys().map(String::as_str).collect();
                return Err(PolicyError::new(
                    &f.file,
                    f.interface_line,
                    "interface",
                    format!("this host has no interface {name} (it has: {})", have.join(", ")),
                ));
            };
            let slot = match slot_of.get(name) {
                Some(&s) => s,
                None => {
                    let used: BTreeSet<u8> = slot_of.values().copied().collect();
                    let s = pick_slot(name, &used, prev_slots).ok_or_else(|| {
                        PolicyError::new(
                            &f.file,
                            f.interface_line,
                            "interface",
                            format!("more than {MAX_SLOTS} interfaces to filter"),
                        )
                    })?;
                    slot_of.insert(name.clone(), s);
                    out.slots.push(Slot {
                        slot: s,
                        iface: name.clone(),
                        ifindex,
                        default: DefaultAction::Deny,
                    });
                    s
                }
            };
            if f.default_line > 0 {
                match defaults.get(&slot) {
                    Some((d, other, line)) if *d != f.default => {
                        return Err(PolicyError::new(
                            &f.file,
                            f.default_line,
                            "default",
                            format!(
                                "{} for {name}, but {}:{line} says {d}",
                                f.default,
                                other.display()
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        defaults.insert(slot, (f.default, f.file.clone(), f.default_line));
                    }
                }
            }
            slots.push(slot);
        }
        for rule in &f.rules {
            if !has_tags(&view.tags, &rule.hosts) {
                out.elsewhere += 1;
                continue;
            }
            let idx = out.rules.len();
            out.rules.push(info(f, rule, &names));
            add_rule(&mut out, &mut nets, rule, idx, &slots, f)?;
        }
    }
    for s in &mut out.slots {
        if let Some((d, _, _)) = defaults.get(&s.slot) {
            s.default = *d;
        }
    }
    out.slots.sort_by_key(|s| s.slot);
    nets.finish(&mut out);
    Ok(out)
}

/// Source prefixes per space, before deny-covers-allow is applied.
#[derive(Default)]
struct Nets {
    allow: BTreeMap<Space, Vec<(IpNetwork, usize)>>,
    deny: BTreeMap<Space, Vec<(IpNetwork, usize)>>,
}

impl Nets {
    fn add(&mut self, space: Space, net: IpNetwork, rule: usize, action: Action) -> bool {
        let list = match action {
            Action::Allow => self.allow.entry(space).or_default(),
            Action::Deny => self.deny.entry(space).or_default(),
        };
        // The first rule for a prefix keeps it (its counters count it).
        if list.iter().any(|(n, _)| *n == net) {
            return false;
        }
        list.push((net, rule));
        true
    }

    fn finish(self, out: &mut Compiled) {
        let none = Vec::new();
        for (space, allows) in &self.allow {
            let denies = self.deny.get(space).unwrap_or(&none);
            for (net, rule) in allows {
                let covering = denies.iter().find(|(d, _)| {
                    family(d) == family(net)
                        && d.prefix() <= net.prefix()
                        && d.contains(net.network())
                });
                let decision = match covering {
                    Some((_, r)) => Decision { rule: *r, action: Action::Deny },
                    None => Decision { rule: *rule, action: Action::Allow },
                };
                out.nets.insert((*space, *net), decision);
            }
        }
        for (space, denies) in self.deny {
            for (net, rule) in denies {
                out.nets.insert((space, net), Decision { rule, action: Action::Deny });
            }
        }
    }
}

fn info(f: &PolicyFile, rule: &Rule, ifaces: &[String]) -> RuleInfo {
    let file = f
        .file
        .file_name()
        .map_or_else(|| f.file.display().to_string(), |n| n.to_string_lossy().into_owned());
    RuleInfo {
        file,
        line: rule.line,
        name: rule.name.clone(),
        action: rule.action,
        description: rule.describe(),
        interfaces: ifaces.to_vec(),
    }
}

fn add_rule(
    out: &mut Compiled,
    nets: &mut Nets,
    rule: &Rule,
    idx: usize,
    slots: &[u8],
    f: &PolicyFile,
) -> Result<(), PolicyError> {
    let full = |what: &str, max: u32| {
        PolicyError::new(
            &f.file,
            rule.line,
            format!("{}.ports", rule.field),
            format!("the policy needs more than the filter's {max} {what} entries"),
        )
    };
    for &slot in slots {
        for src in &rule.from {
            match src {
                Source::Cluster => {
                    for space in spaces(slot, &rule.ports, 0) {
                        let d = Decision { rule: idx, action: rule.action };
                        match out.cluster.get(&space) {
                            Some(old) if old.action == Action::Deny || d.action == old.action => {}
                            _ => {
                                out.cluster.insert(space, d);
                            }
                        }
                    }
                    if out.cluster.len() > MAX_CLUSTER_ENTRIES as usize {
                        return Err(full("cluster-rule", MAX_CLUSTER_ENTRIES));
                    }
                }
                Source::Net(net) => {
                    for space in spaces(slot, &rule.ports, family(net)) {
                        nets.add(space, *net, idx, rule.action);
                    }
                    let n: usize =
                        nets.allow.values().chain(nets.deny.values()).map(Vec::len).sum();
                    if n > MAX_POLICY_ENTRIES as usize {
                        return Err(full("prefix", MAX_POLICY_ENTRIES));
                    }
                }
            }
        }
    }
    Ok(())
}

impl Compiled {
    pub fn slot(&self, iface: &str) -> Option<&Slot> {
        self.slots.iter().find(|s| s.iface == iface)
    }

    /// Interface name -> slot, for the next compile.
    pub fn slot_map(&self) -> BTreeMap<String, u8> {
        self.slots.iter().map(|s| (s.iface.clone(), s.slot)).collect()
    }

    /// What the filter of `slot` does with a new packet of `proto` (6, 17, 1, 58, ...) to
    /// `port` (0 when it has none) from `src`, a member or not: the kernel's decision, made
    /// the same way.
    pub fn evaluate(&self, slot: u8, proto: u8, port: u16, src: IpAddr, member: bool) -> Outcome {
        let mut levels = vec![(proto, 0), (0, 0)];
        if port != 0 {
            levels.insert(0, (proto, port));
        }
        let mut allow = None;
        for (proto, port) in levels {
            let space = Space { slot, proto, port };
            let longest = self
                .nets
                .iter()
                .filter(|((s, n), _)| *s == space && n.contains(src))
                .max_by_key(|((_, n), _)| n.prefix())
                .map(|(_, d)| *d);
            let cluster = if member { self.cluster.get(&space).copied() } else { None };
            for d in [longest, cluster].into_iter().flatten() {
                if d.action == Action::Deny {
                    return Outcome { action: Action::Deny, rule: Some(d.rule) };
                }
                allow.get_or_insert(d);
            }
        }
        match allow {
            Some(d) => Outcome { action: Action::Allow, rule: Some(d.rule) },
            None => {
                let default = self.slots.iter().find(|s| s.slot == slot).map(|s| s.default);
                let action = match default.unwrap_or_default() {
                    DefaultAction::Deny => Action::Deny,
                    DefaultAction::Allow => Action::Allow,
                };
                Outcome { action, rule: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;
    use crate::vpc::policy::parse_policy;

    fn view(tags: &[&str]) -> HostView {
        HostView {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            cluster_iface: Some("eth0".into()),
            ifaces: [("eth0".to_owned(), 2), ("eth1".to_owned(), 3)].into(),
        }
    }

    fn compile_text(text: &str, tags: &[&str]) -> Result<Compiled, PolicyError> {
        let f = parse_policy(Path::new("p.yml"), text)?;
        compile(&[f], &view(tags), &BTreeMap::new())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const WEB: &str = "default: deny\nallow:\n  - from: cluster\n  - from: 10.0.0.0/8\n    ports: \
                       [22/tcp]\n  - name: web\n    from: [0.0.0.0/0, '::/0']\n    ports: [80/tcp]\n    \
                       hosts: [edge]\ndeny:\n  - from: 10.6.6.6/32\n  - from: 'fd00::66'\n";

    #[test]
    fn tags_choose_the_rules_of_a_host() {
        let edge = compile_text(WEB, &["edge"]).unwrap();
        let other = compile_text(WEB, &[]).unwrap();
        assert_eq!(edge.rules.len(), 5);
        assert_eq!((other.rules.len(), other.elsewhere), (4, 1));
        let web = |c: &Compiled, src| c.evaluate(0, 6, 80, ip(src), false).action;
        assert_eq!(web(&edge, "203.0.113.9"), Action::Allow);
        assert_eq!(web(&edge, "2001:db8::9"), Action::Allow);
        assert_eq!(web(&other, "203.0.113.9"), Action::Deny);
        assert_eq!(edge.evaluate(0, 6, 81, ip("203.0.113.9"), false).rule, None);
    }

    #[test]
    fn a_deny_inside_an_allow_wins_and_v6_prefixes_never_match_v4() {
        let c = compile_text(WEB, &["edge"]).unwrap();
        let ssh = |src| c.evaluate(0, 6, 22, ip(src), false);
        assert_eq!(ssh("10.1.2.3").action, Action::Allow);
        let denied = ssh("10.6.6.6");
        assert_eq!(denied.action, Action::Deny);
        assert_eq!(c.rules[denied.rule.unwrap()].line, 11);
        // The deny has no ports: it covers port 80 from anywhere too.
        assert_eq!(c.evaluate(0, 6, 80, ip("10.6.6.6"), false).action, Action::Deny);
        assert_eq!(c.evaluate(0, 6, 80, ip("fd00::66"), false).action, Action::Deny);
        assert_eq!(c.evaluate(0, 6, 80, ip("fd00::67"), false).action, Action::Allow);
        // `::/0` is IPv6 only: IPv4 sources on port 443 are not allowed by it.
        assert_eq!(c.evaluate(0, 6, 443, ip("203.0.113.9"), false).action, Action::Deny);
        // Members: everything, unless a deny covers them.
        assert_eq!(c.evaluate(0, 17, 4000, ip("192.0.2.1"), true).action, Action::Allow);
        assert_eq!(c.evaluate(0, 17, 4000, ip("10.6.6.6"), true).action, Action::Deny);
    }

    #[test]
    fn interfaces_defaults_and_slots() {
        let c = compile_text("interface: [eth0, eth1]\ndefault: allow\n", &[]).unwrap();
        assert_eq!(c.slots.len(), 2);
        assert_eq!(c.evaluate(1, 6, 1, ip("192.0.2.1"), false).action, Action::Allow);
        let prev: BTreeMap<String, u8> = [("eth1".to_owned(), 5)].into();
        let f = parse_policy(Path::new("p.yml"), "interface: [eth0, eth1]\n").unwrap();
        let c = compile(&[f], &view(&[]), &prev).unwrap();
        assert_eq!(c.slot("eth1").unwrap().slot, 5);
        assert_eq!(c.slot("eth0").unwrap().slot, 0);
        let e = compile_text("interface: eth9\n", &[]).unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (1, "interface"));
        assert!(e.message.contains("no interface eth9"), "{e}");
        let a = parse_policy(Path::new("a.yml"), "default: deny\n").unwrap();
        let b = parse_policy(Path::new("b.yml"), "\ndefault: allow\n").unwrap();
        let e = compile(&[a, b], &view(&[]), &BTreeMap::new()).unwrap_err();
        assert_eq!(e.to_string(), "b.yml:2: default: allow for eth0, but a.yml:1 says deny");
    }

    #[test]
    fn port_ranges_expand_and_their_limit_is_an_error() {
        let c = compile_text("allow:\n  - from: 10.0.0.0/8\n    ports: [1000-1009/tcp]\n", &[])
            .unwrap();
        assert_eq!(c.nets.len(), 10);
        let e = compile_text(
            "allow:\n  - from: [10.0.0.0/8, 11.0.0.0/8]\n    ports: [1-65535/tcp]\n",
            &[],
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (2, "allow[0].ports"));
    }

    // What a policy means, read straight from its rules: any deny that matches wins, then any
    // allow, then the default. The compiled form must agree for every packet.
    fn direct(
        files: &[PolicyFile],
        tags: &[String],
        p: (u8, u16),
        src: IpAddr,
        member: bool,
    ) -> Action {
        let any = |action| {
            files.iter().filter(|f| has_tags(tags, &f.hosts)).any(|f| {
                f.rules.iter().filter(|r| r.action == action && has_tags(tags, &r.hosts)).any(|r| {
                    let port_ok = r.ports.is_empty() || r.ports.iter().any(|s| s.matches(p.0, p.1));
                    let src_ok = r.from.iter().any(|s| match s {
                        Source::Cluster => member,
                        Source::Net(n) => n.contains(src),
                    });
                    port_ok && src_ok
                })
            })
        };
        if any(Action::Deny) {
            Action::Deny
        } else if any(Action::Allow) {
            Action::Allow
        } else {
            Action::Deny
        }
    }

    const NETS: [&str; 9] = [
        "cluster",
        "10.0.0.0/8",
        "10.1.0.0/16",
        "10.1.2.3/32",
        "0.0.0.0/0",
        "192.168.0.0/24",
        "'fd00::/8'",
        "'fd00::1/128'",
        "'::/0'",
    ];
    const PORTS: [&str; 8] = [
        "",
        "[22/tcp]",
        "[80/tcp, 443/tcp]",
        "[tcp]",
        "[53/udp]",
        "[icmp]",
        "[20-25/tcp]",
        "[udp, 22/tcp]",
    ];
    const SRCS: [&str; 8] = [
        "10.1.2.3",
        "10.1.9.9",
        "10.200.0.1",
        "192.168.0.5",
        "8.8.8.8",
        "fd00::1",
        "fd00::2",
        "2001:db8::1",
    ];
    const PACKETS: [(u8, u16); 8] =
        [(6, 22), (6, 80), (6, 23), (6, 8080), (17, 53), (17, 54), (1, 0), (47, 0)];

    fn rule_text(deny: bool, nets: &[usize], ports: usize, tag: bool) -> String {
        let from: Vec<&str> = nets.iter().map(|&i| NETS[i]).collect();
        let mut s =
            format!("{}:\n  - from: [{}]\n", if deny { "deny" } else { "allow" }, from.join(", "));
        if !PORTS[ports].is_empty() {
            s.push_str(&format!("    ports: {}\n", PORTS[ports]));
        }
        if tag {
            s.push_str("    hosts: [edge]\n");
        }
        s
    }

    proptest! {
        #[test]
        fn compiled_policy_decides_as_its_rules_say(
            rules in proptest::collection::vec(
                (any::<bool>(), proptest::collection::vec(0..NETS.len(), 1..3), 0..PORTS.len(), any::<bool>()),
                1..6,
            ),
            edge in any::<bool>(),
            packets in proptest::collection::vec((0..SRCS.len(), 0..PACKETS.len(), any::<bool>()), 1..20),
        ) {
            // One rule per file: a file's `allow` and `deny` keys may each appear once.
            let files: Vec<PolicyFile> = rules
                .iter()
                .enumerate()
                .map(|(i, (deny, nets, ports, tag))| {
                    let name = format!("r{i}.yml");
                    parse_policy(Path::new(&name), &rule_text(*deny, nets, *ports, *tag)).unwrap()
                })
                .collect();
            let tags: Vec<String> = if edge { vec!["edge".into()] } else { vec![] };
            let mut v = view(&[]);
            v.tags = tags.clone();
            let c = compile(&files, &v, &BTreeMap::new()).unwrap();
            for (s, p, member) in packets {
                let src = ip(SRCS[s]);
                let (mut proto, port) = PACKETS[p];
                if proto == 1 && src.is_ipv6() {
                    proto = 58;
                }
                let want = direct(&files, &tags, (proto, port), src, member);
                let got = c.evaluate(0, proto, port, src, member);
                prop_assert_eq!(got.action, want, "{} {}/{} member={}", src, port, proto, member);
            }
        }
    }
}
