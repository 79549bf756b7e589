//! What `viking vpc status` shows (`GET /v1/vpc`): the policy in force and where it came
//! from, each rule with its counters, the member set as the filter sees it, and why the last
//! change was not applied.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use viking_common::vpc::{rule, RuleStats};

use super::{attach::AttachMode, compile::RuleInfo, guard::Offender, policy::DefaultAction};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VpcStatus {
    /// The agent runs with `--vpc-rules`.
    pub enabled: bool,
    pub rules_dir: Option<String>,
    /// The overlay's UDP port, open to members only.
    pub overlay_port: u16,
    pub policy: Option<PolicyStatus>,
    pub interfaces: Vec<IfaceStatus>,
    /// Built-in rules first, then the policy's, each with its counters.
    pub rules: Vec<RuleStatus>,
    /// Member addresses in the filter's member set.
    pub members: Vec<IpAddr>,
    /// Entries in the connection table.
    pub connections: usize,
    /// The last change that was not applied, and why (cleared when one is).
    pub error: Option<ErrorStatus>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub files: Vec<String>,
    pub fingerprint: String,
    /// Unix seconds.
    pub applied_at: u64,
    /// Applied over the lockout guard (`viking vpc reload --force`).
    pub forced: bool,
    /// Rules of the files that apply to other hosts (their tags).
    pub elsewhere: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IfaceStatus {
    pub name: String,
    pub ifindex: u32,
    pub slot: u8,
    pub attach: AttachMode,
    pub default: DefaultAction,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    pub id: u32,
    pub builtin: bool,
    pub file: Option<String>,
    pub line: usize,
    pub name: Option<String>,
    pub description: String,
    pub pass_packets: u64,
    pub pass_bytes: u64,
    pub drop_packets: u64,
    pub drop_bytes: u64,
}

impl RuleStatus {
    pub fn with_stats(mut self, s: RuleStats) -> Self {
        self.pass_packets = s.pass_packets;
        self.pass_bytes = s.pass_bytes;
        self.drop_packets = s.drop_packets;
        self.drop_bytes = s.drop_bytes;
        self
    }

    fn builtin(id: u32, description: String) -> Self {
        Self { id, builtin: true, description, ..Default::default() }
    }

    pub fn policy(id: u32, r: &RuleInfo) -> Self {
        Self {
            id,
            builtin: false,
            file: Some(r.file.clone()),
            line: r.line,
            name: r.name.clone(),
            description: r.description.clone(),
            ..Default::default()
        }
    }
}

/// The built-in rules, for a filter on `ifaces` with the overlay on `overlay_port`.
pub fn builtins(ifaces: &[IfaceStatus], overlay_port: u16) -> Vec<RuleStatus> {
    let mut out = vec![
        RuleStatus::builtin(
            rule::REPLY,
            "pass: connections opened from here (host or instances), admitted ones, and ones \
             established before the filter"
                .into(),
        ),
        RuleStatus::builtin(
            rule::ICMP,
            "pass: ICMP for path MTU discovery, IPv6 neighbour discovery".into(),
        ),
        RuleStatus::builtin(rule::RELATED, "pass: ICMP errors about tracked connections".into()),
        RuleStatus::builtin(
            rule::OVERLAY,
            format!("overlay {overlay_port}/udp: members pass, anyone else is dropped"),
        ),
        RuleStatus::builtin(rule::FRAGMENT, "pass: fragments after the first".into()),
    ];
    for i in ifaces {
        out.push(RuleStatus::builtin(
            rule::DEFAULT + u32::from(i.slot),
            format!("default of {}: {}", i.name, i.default),
        ));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// A file does not parse, or does not fit this host.
    Invalid,
    /// The lockout guard refused it.
    Refused,
    /// The kernel refused it (maps, attaching).
    Kernel,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorStatus {
    /// Unix seconds.
    pub at: u64,
    pub kind: ErrorKind,
    pub message: String,
    /// The files it was about.
    pub fingerprint: Option<String>,
    /// For a refusal: the connections the policy would shut out.
    #[serde(default)]
    pub offenders: Vec<Offender>,
}

/// `POST /v1/vpc/reload`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReloadRequest {
    /// Apply it even if the lockout guard refuses it.
    #[serde(default)]
    pub force: bool,
}

/// The answer to a reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadAnswer {
    pub applied: bool,
    /// Why not, when not applied.
    #[serde(default)]
    pub kind: Option<ErrorKind>,
    pub message: String,
    #[serde(default)]
    pub offenders: Vec<Offender>,
}
