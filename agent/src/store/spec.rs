//! `--store etcd://HOST:PORT[,HOST:PORT..]` or `--store embedded:DIR`.
use std::{fmt, path::PathBuf, str::FromStr};

use super::StoreError;

/// Where the state of a single machine lives when no etcd is given.
pub const DEFAULT_STORE: &str = "embedded:/var/lib/viking/store";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// etcd members as `host:port` (or full `http(s)://host:port` URLs).
    Etcd(Vec<String>),
    Embedded(PathBuf),
}

impl FromStr for StoreSpec {
    type Err = StoreError;

    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = |reason: &str| StoreError::BadSpec { spec: s.into(), reason: reason.into() };
        if let Some(rest) = s.strip_prefix("embedded:") {
            let dir = rest.trim();
            if dir.is_empty() {
                return Err(bad("no directory after embedded:"));
            }
            return Ok(Self::Embedded(PathBuf::from(dir)));
        }
        let (scheme, rest) = if let Some(rest) = s.strip_prefix("etcd://") {
            ("http://", rest)
        } else if let Some(rest) = s.strip_prefix("etcds://") {
            ("https://", rest)
        } else {
            return Err(bad("unknown kind"));
        };
        let mut endpoints = Vec::new();
        for ep in rest.split(',').map(str::trim) {
            let ep = ep.trim_end_matches('/');
            let (host, port) =
                ep.rsplit_once(':').ok_or_else(|| bad("an endpoint has no :PORT"))?;
            if host.is_empty() || host.contains('/') {
                return Err(bad("an endpoint has no host"));
            }
            port.parse::<u16>().map_err(|_| bad("an endpoint's port is not a number 1-65535"))?;
            endpoints.push(format!("{scheme}{ep}"));
        }
        Ok(Self::Etcd(endpoints))
    }
}

impl fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreSpec::Etcd(eps) => {
                let tls = eps.iter().any(|e| e.starts_with("https://"));
                let hosts: Vec<&str> = eps
                    .iter()
                    .map(|e| e.trim_start_matches("http://").trim_start_matches("https://"))
                    .collect();
                write!(f, "{}://{}", if tls { "etcds" } else { "etcd" }, hosts.join(","))
            }
            StoreSpec::Embedded(dir) => write!(f, "embedded:{}", dir.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            "etcd://127.0.0.1:2379,10.0.0.2:2379".parse::<StoreSpec>().unwrap(),
            StoreSpec::Etcd(vec!["http://127.0.0.1:2379".into(), "http://10.0.0.2:2379".into()])
        );
        assert_eq!(
            "embedded:/var/lib/viking/store".parse::<StoreSpec>().unwrap(),
            StoreSpec::Embedded("/var/lib/viking/store".into())
        );
        assert_eq!(DEFAULT_STORE.parse::<StoreSpec>().unwrap().to_string(), DEFAULT_STORE);
        let s = "etcds://a:1,b:2".parse::<StoreSpec>().unwrap();
        assert_eq!(s.to_string(), "etcds://a:1,b:2");
    }

    #[test]
    fn refuses_nonsense_with_the_spec_in_the_message() {
        for bad in ["etcd://", "etcd://host", "etcd://h:99999", "consul://x:1", "embedded:"] {
            let e = bad.parse::<StoreSpec>().unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
