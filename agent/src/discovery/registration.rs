//! A service registration: `/services/<env>/<service>/<port>/<host_port>/<id>` holding the
//! seed's JSON (at least `ipaddress` and `host_port`). Anything that writes this format (a
//! registrator, an operator by hand) is discovered like Viking's own.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Deserializer, Serialize};

use crate::{datapath::Proto, store::BadValue};

pub const PREFIX: &str = "/services/";

/// The record, as seed 002 shows it. Numbers may be strings or numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub host: String,
    pub ipaddress: IpAddr,
    #[serde(deserialize_with = "port_from_any")]
    pub host_port: u16,
    #[serde(default, deserialize_with = "opt_port_from_any")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Proto>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn to_port(v: NumOrText) -> Result<u16, String> {
    let n = match v {
        NumOrText::Num(n) => n,
        NumOrText::Text(t) => {
            t.trim().parse::<u64>().map_err(|_| format!("{t:?} is not a port"))?
        }
    };
    u16::try_from(n).ok().filter(|p| *p != 0).ok_or_else(|| format!("{n} is not a port"))
}

fn port_from_any<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    to_port(NumOrText::deserialize(d)?).map_err(serde::de::Error::custom)
}

fn opt_port_from_any<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match Option::<NumOrText>::deserialize(d)? {
        None => Ok(None),
        Some(v) => to_port(v).map(Some).map_err(serde::de::Error::custom),
    }
}

/// Where a registration lives in the store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RegistrationKey {
    pub env: String,
    /// The service path between env and port: `apache`, or `db/slaves` (seed 004 nests).
    pub service: String,
    pub port: u16,
    pub host_port: u16,
    pub id: String,
}

impl RegistrationKey {
    pub fn to_key(&self) -> String {
        format!(
            "{PREFIX}{}/{}/{}/{}/{}",
            self.env, self.service, self.port, self.host_port, self.id
        )
    }

    /// Where `service` sits in `to_key()`, so that a reader holding the key needs no copy of it.
    pub fn service_span(&self) -> std::ops::Range<usize> {
        let start = PREFIX.len() + self.env.len() + 1;
        start..start + self.service.len()
    }

    /// Parses `/services/<env>/<service...>/<port>/<host_port>/<id>`.
    pub fn parse(key: &str) -> Result<Self, String> {
        let rest =
            key.strip_prefix(PREFIX).ok_or_else(|| format!("{key} is not under {PREFIX}"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 5 || parts.iter().any(|p| p.is_empty()) {
            return Err(format!("{key} is not {PREFIX}<env>/<service>/<port>/<host_port>/<id>"));
        }
        let n = parts.len();
        let num = |s: &str| s.parse::<u16>().ok().filter(|p| *p != 0);
        let (port, host_port) = match (num(parts[n - 3]), num(parts[n - 2])) {
            (Some(p), Some(h)) => (p, h),
            _ => return Err(format!("{key}: port and host port must be numbers 1-65535")),
        };
        Ok(Self {
            env: parts[0].to_owned(),
            service: parts[1..n - 3].join("/"),
            port,
            host_port,
            id: parts[n - 1].to_owned(),
        })
    }
}

/// A registration read from the store: where it is, what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub key: RegistrationKey,
    pub record: Registration,
}

impl Endpoint {
    /// The address to send connections to (seed 002: "192.168.13.90:49161").
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.record.ipaddress, self.record.host_port)
    }

    pub fn parse(key: &str, value: &[u8]) -> Result<Self, BadValue> {
        let bad = |reason: String| BadValue {
            key: key.to_owned(),
            value: String::from_utf8_lossy(value).into_owned(),
            reason,
        };
        let k = RegistrationKey::parse(key).map_err(bad)?;
        let record: Registration =
            serde_json::from_slice(value).map_err(|e| bad(format!("not a registration: {e}")))?;
        let addr = SocketAddr::new(record.ipaddress, record.host_port);
        crate::datapath::check_backend(&addr)
            .map_err(|why| bad(format!("ipaddress {}: {why}", record.ipaddress)))?;
        Ok(Self { key: k, record })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seed_example() {
        let value = br#"{
          "id": "13532987eae2831eb7d41f38172cb82db668b3c72d10f513551026b2525e634f",
          "host": "fury", "ipaddress": "192.168.13.90",
          "env": {"ENVIRONMENT": "prod", "NAME": "apache"},
          "tags": [], "name": "/trusting_shockley", "image": "eboraas/apache",
          "hostname": "13532987eae2", "host_port": "49161", "proto": "tcp", "port": "80",
          "path": "/services/prod/apache/80/49161/13532987eae2"
        }"#;
        let e = Endpoint::parse("/services/prod/apache/80/49161/13532987eae2", value).unwrap();
        assert_eq!(e.addr(), "192.168.13.90:49161".parse().unwrap());
        assert_eq!(e.key.service, "apache");
        assert_eq!(e.key.env, "prod");
        let nested = RegistrationKey::parse("/services/prod/db/slaves/3306/40000/abc").unwrap();
        assert_eq!(nested.service, "db/slaves");
        assert_eq!(nested.to_key(), "/services/prod/db/slaves/3306/40000/abc");
        assert_eq!(&nested.to_key()[nested.service_span()], "db/slaves");
    }

    #[test]
    fn bad_records_name_their_key() {
        let e = Endpoint::parse("/services/prod/apache/80/49161/x", br#"{"host_port": "x"}"#)
            .unwrap_err();
        assert_eq!(e.key, "/services/prod/apache/80/49161/x");
        assert!(RegistrationKey::parse("/services/prod/apache/80").is_err());
        for ip in ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1"] {
            let v = format!(r#"{{"ipaddress": "{ip}", "host_port": 80}}"#);
            let e = Endpoint::parse("/services/prod/apache/80/80/x", v.as_bytes()).unwrap_err();
            assert!(e.reason.contains("no host"), "{ip}: {e}");
        }
        let huge = format!(r#"{{"ipaddress": "{}"}}"#, "x".repeat(1 << 20));
        let e = Endpoint::parse("/services/prod/apache/80/80/x", huge.as_bytes()).unwrap_err();
        assert!(e.to_string().len() < 1000, "a 1 MB value is shown as a bounded prefix");
        assert!(RegistrationKey::parse("/services/prod/apache/http/1/x").is_err());
    }
}
