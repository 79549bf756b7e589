//! VPC policy files (docs/vpc-rules.md): the format, and a parser whose errors name the file,
//! line and field. `parse_policy` is pure (text in, policy or error out): `viking vpc check`,
//! the agent and fuzzing call it alike.
use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::error::PolicyError;
use crate::stack::yaml::{self, Node, Value};

/// What happens to a packet no rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    #[default]
    Deny,
    Allow,
}

impl fmt::Display for DefaultAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Deny => "deny",
            Self::Allow => "allow",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// Where a packet comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Every member host of the cluster, kept current from membership.
    Cluster,
    Net(IpNetwork),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cluster => f.write_str("cluster"),
            Self::Net(n) => write!(f, "{}/{}", n.network(), n.prefix()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    /// ICMP (IPv4) and ICMPv6: the messages the filter does not pass by itself (echo, ...).
    Icmp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Icmp => "icmp",
        })
    }
}

/// `22/tcp`, `30000-32767/tcp`, `tcp` (every port), `icmp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortSpec {
    pub proto: Proto,
    /// `None`: every port of the protocol (always for ICMP).
    pub ports: Option<(u16, u16)>,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ports {
            None => write!(f, "{}", self.proto),
            Some((a, b)) if a == b => write!(f, "{a}/{}", self.proto),
            Some((a, b)) => write!(f, "{a}-{b}/{}", self.proto),
        }
    }
}

impl PortSpec {
    /// Whether a packet of `proto` (6, 17, 1, 58) to `port` matches.
    pub fn matches(&self, proto: u8, port: u16) -> bool {
        match self.proto {
            Proto::Tcp | Proto::Udp => {
                let want = if self.proto == Proto::Tcp { 6 } else { 17 };
                proto == want && self.ports.is_none_or(|(a, b)| (a..=b).contains(&port))
            }
            Proto::Icmp => proto == 1 || proto == 58,
        }
    }
}

/// One rule of a file, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub line: usize,
    /// `allow[2]`.
    pub field: String,
    pub name: Option<String>,
    pub action: Action,
    pub from: Vec<Source>,
    /// Empty: every protocol and port.
    pub ports: Vec<PortSpec>,
    /// Tags a host must all carry for the rule to apply there (empty: every host).
    pub hosts: Vec<String>,
}

impl Rule {
    /// How `viking vpc status` shows it.
    pub fn describe(&self) -> String {
        let from: Vec<String> = self.from.iter().map(ToString::to_string).collect();
        let mut s = format!("{} from {}", self.action, from.join(", "));
        if !self.ports.is_empty() {
            let ports: Vec<String> = self.ports.iter().map(ToString::to_string).collect();
            s.push_str(&format!(" to {}", ports.join(", ")));
        }
        if !self.hosts.is_empty() {
            s.push_str(&format!(" on hosts tagged {}", self.hosts.join(", ")));
        }
        s
    }
}

/// One policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyFile {
    pub file: PathBuf,
    /// The interfaces it filters; `None`: the one that holds the host's cluster address.
    pub interfaces: Option<Vec<String>>,
    pub interface_line: usize,
    pub default: DefaultAction,
    pub default_line: usize,
    /// Tags a host must all carry for this file to apply there.
    pub hosts: Vec<String>,
    pub rules: Vec<Rule>,
}

const FILE_FIELDS: [&str; 5] = ["interface", "default", "hosts", "allow", "deny"];
const RULE_FIELDS: [&str; 4] = ["from", "ports", "hosts", "name"];

struct Ctx<'a> {
    file: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, node: &Node, field: &str, msg: impl Into<String>) -> PolicyError {
        PolicyError::new(self.file, node.line, field, msg)
    }

    fn scalar<'n>(&self, node: &'n Node, field: &str) -> Result<&'n str, PolicyError> {
        node.as_scalar().ok_or_else(|| {
            self.err(node, field, format!("expected a value, found {}", node.kind()))
        })
    }

    /// A value or a list of values: `eth0` or `[eth0, eth1]`.
    fn one_or_many<'n>(
        &self,
        node: &'n Node,
        field: &str,
    ) -> Result<Vec<(&'n Node, String)>, PolicyError> {
        match &node.value {
            Value::Scalar(_) => Ok(vec![(node, field.to_owned())]),
            Value::Seq(items) if !items.is_empty() => {
                Ok(items.iter().enumerate().map(|(i, n)| (n, format!("{field}[{i}]"))).collect())
            }
            Value::Seq(_) => Err(self.err(node, field, "an empty list")),
            _ => Err(self.err(
                node,
                field,
                format!("expected a value or a list, found {}", node.kind()),
            )),
        }
    }

    fn tags(&self, node: &Node, field: &str) -> Result<Vec<String>, PolicyError> {
        let mut tags = Vec::new();
        for (n, f) in self.one_or_many(node, field)? {
            let t = self.scalar(n, &f)?;
            if t.is_empty() || t.chars().any(char::is_whitespace) {
                return Err(self.err(n, &f, format!("{t:?} is not a host tag")));
            }
            tags.push(t.to_owned());
        }
        Ok(tags)
    }

    fn unknown(&self, key: &Node, field: &str, known: &[&str]) -> PolicyError {
        let name = key.as_scalar().unwrap_or("?");
        let close = known.iter().find(|k| {
            k.starts_with(name) || name.starts_with(*k) || name.trim_end_matches('s') == **k
        });
        let hint = match close {
            Some(k) => format!("; did you mean `{k}`?"),
            None => format!(" (the fields are: {})", known.join(", ")),
        };
        self.err(key, field, format!("unknown field `{name}`{hint}"))
    }
}

/// Parses one policy file. `file` is the name errors give.
pub fn parse_policy(file: &Path, text: &str) -> Result<PolicyFile, PolicyError> {
    let cx = Ctx { file };
    let root = yaml::parse(file, text).map_err(|e| {
        PolicyError::new(file, e.line, e.field, e.message.replace("stack", "policy"))
    })?;
    let Some(map) = root.as_map() else {
        let msg = match root.value {
            Value::Null => {
                "an empty policy file (it needs at least `default: deny` or rules)".to_owned()
            }
            _ => format!(
                "expected a mapping of interface, default, hosts, allow, deny; found {}",
                root.kind()
            ),
        };
        return Err(PolicyError::new(file, root.line.max(1), "", msg));
    };
    let mut policy = PolicyFile {
        file: file.to_owned(),
        interfaces: None,
        interface_line: 0,
        default: DefaultAction::Deny,
        default_line: 0,
        hosts: Vec::new(),
        rules: Vec::new(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in map {
        let name = cx.scalar(key, "")?;
        if seen.contains(&name) {
            return Err(cx.err(key, name, "given twice"));
        }
        seen.push(name);
        match name {
            "interface" => {
                let mut names = Vec::new();
                for (n, f) in cx.one_or_many(value, "interface")? {
                    let iface = cx.scalar(n, &f)?;
                    if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ']) {
                        return Err(cx.err(n, &f, format!("{iface:?} is not an interface name")));
                    }
                    if names.iter().any(|x: &String| x == iface) {
                        return Err(cx.err(n, &f, format!("{iface} is named twice")));
                    }
                    names.push(iface.to_owned());
                }
                policy.interfaces = Some(names);
                policy.interface_line = value.line;
            }
            "default" => {
                policy.default = match cx.scalar(value, "default")? {
                    "deny" => DefaultAction::Deny,
                    "allow" => DefaultAction::Allow,
                    other => {
                        return Err(cx.err(
                            value,
                            "default",
                            format!("{other:?}: write deny or allow"),
                        ))
                    }
                };
                policy.default_line = value.line;
            }
            "hosts" => policy.hosts = cx.tags(value, "hosts")?,
            "allow" | "deny" => {
                let action = if name == "allow" { Action::Allow } else { Action::Deny };
                let Value::Seq(items) = &value.value else {
                    if value.value == Value::Null {
                        continue;
                    }
                    return Err(cx.err(
                        value,
                        name,
                        format!("expected a list of rules, found {}", value.kind()),
                    ));
                };
                for (i, item) in items.iter().enumerate() {
                    policy.rules.push(rule(&cx, item, action, &format!("{name}[{i}]"))?);
                }
            }
            _ => return Err(cx.unknown(key, name, &FILE_FIELDS)),
        }
    }
    Ok(policy)
}

fn rule(cx: &Ctx, node: &Node, action: Action, field: &str) -> Result<Rule, PolicyError> {
    let Some(map) = node.as_map() else {
        return Err(cx.err(
            node,
            field,
            format!("expected a rule (from, ports, hosts, name), found {}", node.kind()),
        ));
    };
    let mut rule = Rule {
        line: node.line,
        field: field.to_owned(),
        name: None,
        action,
        from: Vec::new(),
        ports: Vec::new(),
        hosts: Vec::new(),
    };
    let mut has_from = false;
    let mut seen: Vec<&str> = Vec::new();
    for (key, value) in map {
        let name = cx.scalar(key, field)?;
        let f = format!("{field}.{name}");
        if seen.contains(&name) {
            return Err(cx.err(key, &f, "given twice"));
        }
        seen.push(name);
        match name {
            "from" => {
                has_from = true;
                for (n, nf) in cx.one_or_many(value, &f)? {
                    rule.from.push(source(cx, n, &nf)?);
                }
            }
            "ports" => {
                for (n, nf) in cx.one_or_many(value, &f)? {
                    rule.ports.push(port_spec(cx, n, &nf)?);
                }
            }
            "hosts" => rule.hosts = cx.tags(value, &f)?,
            "name" => rule.name = Some(cx.scalar(value, &f)?.to_owned()),
            _ => return Err(cx.unknown(key, &f, &RULE_FIELDS)),
        }
    }
    if !has_from {
        return Err(cx.err(
            node,
            &format!("{field}.from"),
            "missing: say where packets come from (`cluster`, a CIDR, or a list)",
        ));
    }
    Ok(rule)
}

fn source(cx: &Ctx, node: &Node, field: &str) -> Result<Source, PolicyError> {
    let s = cx.scalar(node, field)?;
    if s == "cluster" {
        return Ok(Source::Cluster);
    }
    let net = if s.contains('/') {
        s.parse::<IpNetwork>()
            .map_err(|e| cx.err(node, field, format!("{s:?} is not `cluster` or a CIDR: {e}")))?
    } else {
        let ip: IpAddr = s.parse().map_err(|_| {
            cx.err(node, field, format!("{s:?} is not `cluster`, a CIDR or an address"))
        })?;
        IpNetwork::from(ip)
    };
    if net.network() != net.ip() {
        return Err(cx.err(
            node,
            field,
            format!("{s} has host bits set; did you mean {}/{}?", net.network(), net.prefix()),
        ));
    }
    Ok(Source::Net(net))
}

fn port_spec(cx: &Ctx, node: &Node, field: &str) -> Result<PortSpec, PolicyError> {
    let s = cx.scalar(node, field)?;
    let bad = |why: &str| {
        cx.err(
            node,
            field,
            format!("{s:?}: {why} (write 22/tcp, 53/udp, 30000-32767/tcp, tcp, udp or icmp)"),
        )
    };
    let proto_of = |p: &str| match p {
        "tcp" => Some(Proto::Tcp),
        "udp" => Some(Proto::Udp),
        "icmp" => Some(Proto::Icmp),
        _ => None,
    };
    let Some((ports, proto)) = s.split_once('/') else {
        return match proto_of(s) {
            Some(proto) => Ok(PortSpec { proto, ports: None }),
            None if s.parse::<u32>().is_ok() => Err(bad("no protocol")),
            None => Err(bad("not a port")),
        };
    };
    let proto = proto_of(proto).ok_or_else(|| bad("unknown protocol"))?;
    if proto == Proto::Icmp {
        return Err(bad("ICMP has no ports"));
    }
    let port = |p: &str| -> Result<u16, PolicyError> {
        match p.parse::<u16>() {
            Ok(0) => Err(bad("port 0")),
            Ok(n) => Ok(n),
            Err(_) => Err(bad("not a port number (1-65535)")),
        }
    };
    let range = match ports.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (port(a)?, port(b)?);
            if a > b {
                return Err(bad("the range ends before it starts"));
            }
            (a, b)
        }
        None => {
            let p = port(ports)?;
            (p, p)
        }
    };
    Ok(PortSpec { proto, ports: Some(range) })
}

/// The policy files of a directory (`*.yml`, `*.yaml`, not hidden), by name, with their text.
pub fn read_dir(dir: &Path) -> Result<Vec<(PathBuf, String)>, PolicyError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| PolicyError::new(dir, 0, "", format!("cannot read the policy folder: {e}")))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|e| PolicyError::new(dir, 0, "", format!("listing: {e}")))?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let is_policy = name.ends_with(".yml") || name.ends_with(".yaml");
        if name.starts_with('.') || !is_policy || !path.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| PolicyError::new(&path, 0, "", format!("cannot read: {e}")))?;
        files.push((path, text));
    }
    files.sort();
    if files.is_empty() {
        return Err(PolicyError::new(
            dir,
            0,
            "",
            "no policy files (*.yml) in the folder; the running policy stays (run the agent \
             without --vpc-rules for no filter)",
        ));
    }
    Ok(files)
}

/// Parses every file; the first error stops it.
pub fn parse_all(files: &[(PathBuf, String)]) -> Result<Vec<PolicyFile>, PolicyError> {
    files.iter().map(|(path, text)| parse_policy(path, text)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PolicyFile, PolicyError> {
        parse_policy(Path::new("p.yml"), text)
    }

    #[test]
    fn reads_the_shipped_files() {
        for name in ["default.yml", "web-frontend.yml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../vpc-rules").join(name);
            let text = std::fs::read_to_string(&path).unwrap();
            let p = parse_policy(&path, &text).unwrap_or_else(|e| panic!("{e}"));
            assert!(!p.rules.is_empty(), "{name}");
        }
    }

    #[test]
    fn reads_every_form() {
        let p = parse(
            "interface: [eth0, eth1]\ndefault: deny\nhosts: edge\nallow:\n  - from: cluster\n  \
             - name: web\n    from: [0.0.0.0/0, '::/0']\n    ports: [80/tcp, 443/tcp, 443/udp, \
             30000-32767/tcp, icmp]\n    hosts: [edge, eu]\ndeny:\n  - from: 192.168.50.66\n",
        )
        .unwrap();
        assert_eq!(p.interfaces, Some(vec!["eth0".to_owned(), "eth1".to_owned()]));
        assert_eq!(p.hosts, vec!["edge"]);
        assert_eq!(p.rules.len(), 3);
        let web = &p.rules[1];
        assert_eq!(web.name.as_deref(), Some("web"));
        assert_eq!(web.line, 6);
        assert_eq!(web.ports.len(), 5);
        assert_eq!(web.ports[3], PortSpec { proto: Proto::Tcp, ports: Some((30000, 32767)) });
        assert_eq!(web.ports[4], PortSpec { proto: Proto::Icmp, ports: None });
        assert_eq!(p.rules[2].action, Action::Deny);
        assert_eq!(p.rules[2].from[0].to_string(), "192.168.50.66/32");
        assert_eq!(
            web.describe(),
            "allow from 0.0.0.0/0, ::/0 to 80/tcp, 443/tcp, 443/udp, 30000-32767/tcp, icmp on \
             hosts tagged edge, eu"
        );
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let cases = [
            ("allow:\n  - from: cluster\n    ports: [22]\n", 3, "allow[0].ports[0]", "no protocol"),
            ("allow:\n  - from: 10.0.0.5/8\n", 2, "allow[0].from", "did you mean 10.0.0.0/8"),
            ("allow:\n  - from: nowhere\n", 2, "allow[0].from", "is not `cluster`"),
            ("allow:\n  - ports: [22/tcp]\n", 2, "allow[0].from", "missing"),
            (
                "allow:\n  - from: cluster\n    port: [22/tcp]\n",
                3,
                "allow[0].port",
                "did you mean `ports`",
            ),
            ("default: drop\n", 1, "default", "write deny or allow"),
            (
                "allow:\n  - from: cluster\n    ports: [2000-1000/tcp]\n",
                3,
                "allow[0].ports[0]",
                "ends before",
            ),
            ("allow:\n  - from: cluster\n    ports: [0/udp]\n", 3, "allow[0].ports[0]", "port 0"),
            (
                "allow:\n  - from: cluster\n    ports: [8/icmp]\n",
                3,
                "allow[0].ports[0]",
                "no ports",
            ),
            ("interfaces: eth0\n", 1, "interfaces", "did you mean `interface`"),
            ("allow: [from: x\n", 2, "", "invalid YAML"),
            ("# nothing\n", 1, "", "empty policy file"),
            ("- 1\n", 1, "", "expected a mapping"),
            ("default: deny\ndefault: allow\n", 2, "default", "given twice"),
        ];
        for (text, line, field, msg) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
            assert!(e.to_string().starts_with("p.yml:"), "{e}");
        }
    }

    proptest::proptest! {
        /// Whatever the text, the parser answers (a policy or an error naming the file).
        #[test]
        fn never_panics(text in "[ -~\n\t]{0,200}") {
            if let Err(e) = parse(&text) {
                proptest::prop_assert_eq!(e.file, PathBuf::from("p.yml"));
            }
        }

        #[test]
        fn never_panics_on_policy_shaped_text(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("allow:".to_owned()),
                    proptest::strategy::Just("deny:".to_owned()),
                    proptest::strategy::Just("  - from: cluster".to_owned()),
                    "  - from: [0-9./:a-f]{0,20}",
                    "    ports: \\[[0-9a-z/, -]{0,20}\\]",
                    "    hosts: [a-z]{0,5}",
                    "interface: [a-z0-9]{0,16}",
                    "default: [a-z]{0,6}",
                ],
                0..12,
            )
        ) {
            let _ = parse(&lines.join("\n"));
        }
    }
}
