//! The service table as the rest of the agent sees it: plain Rust types, no map layouts.
use std::{
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    str::FromStr,
};

use serde::{Deserialize, Serialize};
use viking_common::{algo, Addr, PROTO_TCP, PROTO_UDP};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => PROTO_TCP,
            Self::Udp => PROTO_UDP,
        }
    }
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_TCP => Some(Self::Tcp),
            PROTO_UDP => Some(Self::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        })
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::Tcp),
            "udp" => Ok(Self::Udp),
            other => Err(format!("unknown protocol {other:?} (tcp or udp)")),
        }
    }
}

/// Why a connection could never reach `backend`, if it could not: the unspecified address
/// (`0.0.0.0`, `::`: "any", no host), a multicast or broadcast address, or port 0.
pub fn check_backend(backend: &SocketAddr) -> Result<(), &'static str> {
    let ip = backend.ip();
    if ip.is_unspecified() {
        return Err("the unspecified address (0.0.0.0 or ::) is no host to connect to");
    }
    if ip.is_multicast() || ip == IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        return Err("a multicast or broadcast address is no host to connect to");
    }
    if backend.port() == 0 {
        return Err("port 0 is no port to connect to");
    }
    Ok(())
}

/// How a service spreads new connections over its backends. Round robin by default, as
/// embassy does: an even spread with no state per client.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    Random,
    #[default]
    RoundRobin,
    LeastConn,
}

impl Algo {
    pub fn number(self) -> u8 {
        match self {
            Self::Random => algo::RANDOM,
            Self::RoundRobin => algo::ROUND_ROBIN,
            Self::LeastConn => algo::LEAST_CONN,
        }
    }
    pub fn from_number(n: u8) -> Self {
        match n {
            algo::ROUND_ROBIN => Self::RoundRobin,
            algo::LEAST_CONN => Self::LeastConn,
            _ => Self::Random,
        }
    }
}

impl fmt::Display for Algo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Random => "random",
            Self::RoundRobin => "round_robin",
            Self::LeastConn => "least_conn",
        })
    }
}

impl FromStr for Algo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "random" => Ok(Self::Random),
            "rr" | "round_robin" => Ok(Self::RoundRobin),
            "lc" | "least_conn" | "least_connections" => Ok(Self::LeastConn),
            other => Err(format!("unknown algorithm {other:?} (random, round_robin, least_conn)")),
        }
    }
}

/// The address clients connect to: the ambassador address and port of a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub proto: Proto,
    /// Network-namespace cookie the service is visible in (0: every namespace).
    #[serde(default)]
    pub netns: u64,
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.proto)?;
        if self.netns != 0 {
            write!(f, " netns:{}", self.netns)?;
        }
        Ok(())
    }
}

/// A service as the agent programs it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub frontend: Frontend,
    #[serde(default)]
    pub algo: Algo,
    pub backends: Vec<SocketAddr>,
    /// When a backend leaves the service for failing its connects (docs/datapath.md).
    #[serde(default)]
    pub ejection: Ejection,
    /// When a backend leaves the set, end the TCP connections still open to it as well (the
    /// connected UDP sockets pinned to it are always ended).
    #[serde(default)]
    pub end_tcp: bool,
}

/// Passive health of a service's backends: after `after` failed connects in a row a backend
/// is ejected for `backoff_ms`, twice as long each time it fails again, at most
/// `max_backoff_ms`; its first successful connect brings it back. `after == 0`: never.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Ejection {
    pub after: u32,
    pub backoff_ms: u32,
    pub max_backoff_ms: u32,
}

impl Default for Ejection {
    fn default() -> Self {
        Self { after: 3, backoff_ms: 1_000, max_backoff_ms: 60_000 }
    }
}

impl Ejection {
    pub const OFF: Self = Self { after: 0, backoff_ms: 0, max_backoff_ms: 0 };
    /// Longest accepted ejection: one day.
    pub const MAX_MS: u32 = 86_400_000;

    pub fn is_off(&self) -> bool {
        self.after == 0
    }

    /// What is wrong with it, if anything.
    pub fn problem(&self) -> Option<String> {
        if self.is_off() {
            return None;
        }
        if self.after > 1_000 {
            return Some(format!("after = {} failed connects (at most 1000)", self.after));
        }
        if self.backoff_ms == 0 {
            return Some("backoff_ms = 0 (an ejection must last; use after = 0 for none)".into());
        }
        if self.max_backoff_ms < self.backoff_ms {
            return Some(format!(
                "max_backoff_ms = {} is below backoff_ms = {}",
                self.max_backoff_ms, self.backoff_ms
            ));
        }
        if self.max_backoff_ms > Self::MAX_MS {
            return Some(format!("max_backoff_ms = {} (at most one day)", self.max_backoff_ms));
        }
        None
    }
}

impl fmt::Display for Ejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        write!(f, "after {}, {}-{} ms", self.after, self.backoff_ms, self.max_backoff_ms)
    }
}

/// The 16-byte kernel form of an address (IPv4 mapped into IPv6).
pub fn to_addr(ip: IpAddr) -> Addr {
    let v6 = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let o = v6.octets();
    let mut out = [0u32; 4];
    for (i, w) in out.iter_mut().enumerate() {
        *w = u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]);
    }
    out
}

/// The address back from its kernel form; IPv4-mapped addresses come back as IPv4.
pub fn from_addr(addr: &Addr) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A port in the kernel's network-order form.
pub fn to_port(port: u16) -> u16 {
    port.to_be()
}

pub fn from_port(port: u16) -> u16 {
    u16::from_be(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_the_kernel_form() {
        for ip in ["10.1.2.3", "127.0.0.1", "::1", "fd00::5", "255.255.255.255"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(from_addr(&to_addr(ip)), ip);
        }
    }

    #[test]
    fn ejection_settings_are_checked() {
        assert_eq!(Ejection::default().problem(), None);
        assert_eq!(Ejection::OFF.problem(), None);
        let e = Ejection { after: 3, backoff_ms: 0, max_backoff_ms: 10 };
        assert!(e.problem().unwrap().contains("backoff_ms = 0"));
        let e = Ejection { after: 3, backoff_ms: 100, max_backoff_ms: 10 };
        assert!(e.problem().unwrap().contains("max_backoff_ms = 10"));
        let e: Ejection = serde_json::from_str(r#"{"after": 5}"#).unwrap();
        assert_eq!(e, Ejection { after: 5, ..Ejection::default() });
    }

    #[test]
    fn names_parse() {
        assert_eq!("rr".parse::<Algo>().unwrap(), Algo::RoundRobin);
        assert_eq!("least-conn".parse::<Algo>().unwrap(), Algo::LeastConn);
        assert!("fastest".parse::<Algo>().is_err());
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
    }
}
