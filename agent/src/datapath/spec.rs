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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub frontend: Frontend,
    #[serde(default)]
    pub algo: Algo,
    pub backends: Vec<SocketAddr>,
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
    fn names_parse() {
        assert_eq!("rr".parse::<Algo>().unwrap(), Algo::RoundRobin);
        assert_eq!("least-conn".parse::<Algo>().unwrap(), Algo::LeastConn);
        assert!("fastest".parse::<Algo>().is_err());
        assert_eq!("UDP".parse::<Proto>().unwrap(), Proto::Udp);
    }
}
