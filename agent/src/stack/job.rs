//! The job model (seed 003): what runs, and the flags that say how.
use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::names::Link;
use crate::datapath::{Algo, Proto};

/// A container port a job listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port {
    pub port: u16,
    pub proto: Proto,
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

impl FromStr for Port {
    type Err = String;
    /// `80`, `80/udp`, and compose's `8080:80`, `127.0.0.1:8080:80/tcp` (the container port
    /// is the last number; publishing on the host is not Viking's business).
    fn from_str(s: &str) -> Result<Self, String> {
        let (spec, proto) = match s.rsplit_once('/') {
            Some((p, proto)) => (p, proto.parse::<Proto>()?),
            None => (s, Proto::Tcp),
        };
        let last = spec.rsplit(':').next().unwrap_or(spec).trim();
        if last.contains('-') {
            return Err(format!("port ranges like {s:?} are not supported: list each port"));
        }
        match last.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535)")),
            Ok(port) => Ok(Self { port, proto }),
        }
    }
}

impl Serialize for Port {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// One job of a stack. Serialised as the job file of the deployment config folder
/// (`/viking/deploy/<stack>/<job>`), which the stack parser also reads back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
    /// The SHA-256 of the `build:` context as deployed (`deploy::context`): set by the deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_hash: Option<String>,
    /// argv; a string command in a stack file becomes `["/bin/sh", "-c", it]` as in Docker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub links: Vec<Link>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Explicit host (seed 003 `--viking-host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Host tags required (seed 003 `--viking-filter`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<String>,
    pub scale: u32,
    /// Long-lived server (restarted when it dies); default: it has ports.
    pub daemonize: bool,
    /// Always on the same host; default: it has volumes or is static.
    pub fixed: bool,
    /// Not restarted on new code pushes.
    #[serde(rename = "static")]
    pub is_static: bool,
    /// How connections through links to this job are balanced (default: round robin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<Algo>,
}

impl Job {
    /// A job with seed 003's defaults for the flags, given its ports and volumes.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            image: None,
            build: None,
            build_hash: None,
            command: Vec::new(),
            ports: Vec::new(),
            volumes: Vec::new(),
            env: BTreeMap::new(),
            links: Vec::new(),
            tags: Vec::new(),
            host: None,
            filter: Vec::new(),
            scale: 1,
            daemonize: false,
            fixed: false,
            is_static: false,
            balance: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_like_compose() {
        assert_eq!("80".parse::<Port>().unwrap(), Port { port: 80, proto: Proto::Tcp });
        assert_eq!("53/udp".parse::<Port>().unwrap(), Port { port: 53, proto: Proto::Udp });
        assert_eq!("8080:80".parse::<Port>().unwrap().port, 80);
        assert_eq!("127.0.0.1:8080:80/tcp".parse::<Port>().unwrap().port, 80);
        for bad in ["0", "70000", "http", "3000-3005", "80/sctp"] {
            assert!(bad.parse::<Port>().is_err(), "{bad}");
        }
    }
}
