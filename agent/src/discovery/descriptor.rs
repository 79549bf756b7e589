//! `BACKEND_*` service descriptors (seeds 002, 004):
//!
//! ```text
//! BACKEND_REDIS=redis.master[prod,stats];6379/tcp
//! BACKEND_REDIS=/services/prod/redis.master[prod,stats];6379/tcp
//! BACKEND_APP1=/services/prod/app1/80[prod,app1];80/tcp
//! BACKEND_DB_SLAVES=/services/prod/db/slaves/3306;3306/tcp
//! ```
//!
//! The part before `;` names the service: a bare name (any environment) or an etcd path
//! under `/services/` (a path may end at the service or go on to its port); `[...]` lists
//! tags every endpoint must carry. After `;`: the port the container connects to on
//! 127.0.0.1, and the protocol (tcp when left out). Viking adds an optional last part,
//! `;balance=least_conn` (random, round_robin, least_conn; round robin when left out).
use std::fmt;

use super::registration::PREFIX;
use crate::datapath::{Algo, Proto};

pub const ENV_PREFIX: &str = "BACKEND_";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceRef {
    /// `redis.master`: that service in any environment.
    Name(String),
    /// `/services/prod/redis.master`: registrations under this path.
    Path(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// The variable it came from (`BACKEND_REDIS`).
    pub var: String,
    pub service: ServiceRef,
    pub tags: Vec<String>,
    pub port: u16,
    pub proto: Proto,
    /// How connections spread over the endpoints (`None`: the agent's default).
    pub balance: Option<Algo>,
}

/// A descriptor that does not parse: the variable's name and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}={}: {reason}", crate::store::bounded(value))]
pub struct DescriptorError {
    pub var: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for Descriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.service {
            ServiceRef::Name(n) => f.write_str(n)?,
            ServiceRef::Path(p) => f.write_str(p)?,
        }
        if !self.tags.is_empty() {
            write!(f, "[{}]", self.tags.join(","))?;
        }
        write!(f, ";{}/{}", self.port, self.proto)?;
        if let Some(b) = self.balance {
            write!(f, ";balance={b}")?;
        }
        Ok(())
    }
}

impl Descriptor {
    pub fn parse(var: &str, value: &str) -> Result<Self, DescriptorError> {
        let err = |reason: &str| DescriptorError {
            var: var.to_owned(),
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let (value_part, balance) = match value.rsplit_once(';') {
            Some((head, opt)) if opt.trim().starts_with("balance=") => {
                let algo = opt.trim().trim_start_matches("balance=");
                let algo = match algo {
                    "random" | "round_robin" | "least_conn" => {
                        algo.parse::<Algo>().map_err(|e| err(&e))?
                    }
                    _ => return Err(err("balance= is random, round_robin or least_conn")),
                };
                (head, Some(algo))
            }
            _ => (value, None),
        };
        let (spec, local) = value_part
            .rsplit_once(';')
            .ok_or_else(|| err("expected NAME[TAGS];PORT/PROTO (no ';')"))?;
        let (port, proto) = match local.trim().split_once('/') {
            Some((p, proto)) => (p, proto.parse::<Proto>().map_err(|e| err(&e))?),
            None => (local.trim(), Proto::Tcp),
        };
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| err("the port after ';' must be 1-65535"))?;
        let spec = spec.trim();
        let (name, tags) = match spec.strip_suffix(']') {
            Some(head) => {
                let open = head.rfind('[').ok_or_else(|| err("']' without '['"))?;
                let tags: Vec<String> = head[open + 1..]
                    .split(',')
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .collect();
                (&head[..open], tags)
            }
            None => (spec, Vec::new()),
        };
        if name.contains(['[', ']']) {
            return Err(err("tags go in one [...] at the end of the name"));
        }
        // NB: whitespace and control characters would not survive the descriptor's own text
        // (it is trimmed) and are in no store key a registration is written under.
        let odd = |c: char| c.is_whitespace() || c.is_control();
        if tags.iter().any(|t| t.contains(|c: char| odd(c) || matches!(c, '/' | '[' | ']'))) {
            return Err(err("a tag may not hold spaces, control characters, '/', '[' or ']'"));
        }
        let name = name.trim_end_matches('/');
        let service = if name.starts_with('/') {
            // NB: under `/services/` itself: `/servicesX/..` is not.
            if !name.starts_with(PREFIX) || name.len() <= PREFIX.len() {
                return Err(err("a path must be under /services/<env>/"));
            }
            if name.contains(odd) {
                return Err(err("a path may not hold spaces or control characters"));
            }
            ServiceRef::Path(name.to_owned())
        } else {
            if name.is_empty() || name.contains(odd) || name.contains('/') {
                return Err(err(
                    "the service name is empty or holds spaces, control characters or '/'",
                ));
            }
            ServiceRef::Name(name.to_owned())
        };
        Ok(Self { var: var.to_owned(), service, tags, port, proto, balance })
    }

    /// Every `BACKEND_*` variable of an environment: the good ones, and the bad ones with why.
    pub fn from_env<'a>(
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> (Vec<Self>, Vec<DescriptorError>) {
        let (mut good, mut bad) = (Vec::new(), Vec::new());
        for (k, v) in env {
            if k.starts_with(ENV_PREFIX) {
                match Self::parse(k, v) {
                    Ok(d) => good.push(d),
                    Err(e) => bad.push(e),
                }
            }
        }
        (good, bad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_forms_parse() {
        let d = Descriptor::parse("BACKEND_REDIS", "redis.master[prod,stats];6379/tcp").unwrap();
        assert_eq!(d.service, ServiceRef::Name("redis.master".into()));
        assert_eq!(d.tags, ["prod", "stats"]);
        assert_eq!((d.port, d.proto), (6379, Proto::Tcp));
        let d =
            Descriptor::parse("BACKEND_REDIS", "/services/prod/redis.master[prod,stats];6379/tcp")
                .unwrap();
        assert_eq!(d.service, ServiceRef::Path("/services/prod/redis.master".into()));
        let d =
            Descriptor::parse("BACKEND_APP1", "/services/prod/app1/80[prod,app1];80/tcp").unwrap();
        assert_eq!(d.service, ServiceRef::Path("/services/prod/app1/80".into()));
        let d = Descriptor::parse("BACKEND_DB_SLAVES", "/services/prod/db/slaves/3306;3306/tcp")
            .unwrap();
        assert!(d.tags.is_empty());
        assert_eq!(Descriptor::parse("BACKEND_DNS", "dns;53/udp").unwrap().proto, Proto::Udp);
        assert_eq!(Descriptor::parse("BACKEND_X", "x;80").unwrap().proto, Proto::Tcp);
        let d = Descriptor::parse("BACKEND_X", "redis[prod];6379/tcp;balance=least_conn").unwrap();
        assert_eq!((d.port, d.balance), (6379, Some(Algo::LeastConn)));
        assert_eq!(d.to_string(), "redis[prod];6379/tcp;balance=least_conn");
        assert_eq!(Descriptor::parse("BACKEND_X", "x;80").unwrap().balance, None);
    }

    #[test]
    fn bad_descriptors_say_which_variable_and_why() {
        for (v, why) in [
            ("redis", "no ';'"),
            ("redis;0/tcp", "1-65535"),
            ("redis;http", "1-65535"),
            ("redis;80/sctp", "unknown protocol"),
            ("redis[prod;80", "one [...]"),
            ("/etc/passwd;80", "under /services/"),
            ("/servicesd/prod/x;80", "under /services/"),
            ("/services/prod/a\0\t/;6", "control"),
            ("re\0dis;80", "control"),
            ("redis[a\u{1}];80", "tag"),
            (";80", "empty"),
            ("re dis;80", "spaces"),
            ("redis[a b];80", "tag"),
            ("redis;80;balance=fastest", "balance="),
        ] {
            let e = Descriptor::parse("BACKEND_BAD", v).unwrap_err();
            assert_eq!(e.var, "BACKEND_BAD");
            assert!(e.to_string().contains(why), "{v}: {e}");
        }
    }

    #[test]
    fn a_descriptor_reads_back_from_its_text() {
        for v in [
            "redis.master[prod,stats];6379/tcp",
            "/services/prod/db/slaves/3306;3306",
            "/services/prod/redis.master[prod];6379/udp",
            "dns;53/udp",
        ] {
            let d = Descriptor::parse("BACKEND_X", v).unwrap();
            assert_eq!(Descriptor::parse("BACKEND_X", &d.to_string()).unwrap(), d, "{v}");
        }
    }

    #[test]
    fn from_env_keeps_the_good_ones() {
        let env = [("PATH", "/bin"), ("BACKEND_A", "a;1/tcp"), ("BACKEND_B", "oops")];
        let (good, bad) = Descriptor::from_env(env);
        assert_eq!(good.len(), 1);
        assert_eq!(bad[0].var, "BACKEND_B");
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn no_input_panics(value in ".{0,80}", var in "BACKEND_[A-Z_]{0,10}") {
            let _ = Descriptor::parse(&var, &value);
        }

        #[test]
        fn structured_inputs_parse_or_say_why(
            name in "[a-z./]{0,12}",
            tags in proptest::collection::vec("[a-z ,/]{0,5}", 0..3),
            port in "[0-9a-z]{0,6}",
            proto in "(tcp|udp|sctp|)",
        ) {
            let value = format!("{name}[{}];{port}/{proto}", tags.join(","));
            match Descriptor::parse("BACKEND_X", &value) {
                Ok(d) => prop_assert!(d.port != 0),
                Err(e) => prop_assert!(!e.reason.is_empty() && e.var == "BACKEND_X"),
            }
        }
    }
}
