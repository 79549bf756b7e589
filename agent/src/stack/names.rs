//! Names: what a job or stack may be called, and the names Viking derives from them.
//!
//! Job and stack names are DNS labels (lowercase letters, digits, `-`; at most 63; starting
//! and ending with a letter or digit), which Docker accepts as container names and
//! Kubernetes as Service names. `_` is reserved: it joins stack and job into a service name
//! (`shared_mongo`), so that no two (stack, job) pairs share one.
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::datapath::Algo;

/// Why a name is refused, or Ok.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if name.is_empty() {
        return Err("a name may not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!("{name:?} is longer than 63 characters"));
    }
    if let Some(c) = name.chars().find(|&c| !ok_char(c)) {
        let hint = if c.is_ascii_uppercase() {
            " (use lowercase)"
        } else if c == '_' || c == '.' {
            " (use '-': '_' joins stack and job names)"
        } else {
            ""
        };
        return Err(format!(
            "{name:?} has {c:?}: names are lowercase letters, digits and '-'{hint}"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!("{name:?} must start and end with a letter or digit"));
    }
    Ok(())
}

/// `<stack>_<job>`: the service a job provides, as registered and allocated.
pub fn service_name(stack: &str, job: &str) -> String {
    format!("{stack}_{job}")
}

/// Upper case, with every character outside `[A-Z0-9]` turned into `_` (Docker's and
/// Kubernetes' rule for link and service env vars).
pub fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect()
}

/// A link from a job to a service: `stack/job`, `job` (same stack), or fig's `job:alias`; with
/// the balance this link wants, when it is not the service's own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Link {
    pub stack: Option<String>,
    pub job: String,
    pub alias: Option<String>,
    pub balance: Option<Algo>,
}

impl Link {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (target, alias) = match s.split_once(':') {
            Some((t, a)) => (t, Some(a.to_owned())),
            None => (s, None),
        };
        let (stack, job) = match target.split_once('/') {
            Some((st, j)) => (Some(st.to_owned()), j.to_owned()),
            None => (None, target.to_owned()),
        };
        if let Some(st) = &stack {
            check_name(st).map_err(|e| format!("link {s:?}: stack {e}"))?;
        }
        check_name(&job).map_err(|e| format!("link {s:?}: job {e}"))?;
        if let Some(a) = &alias {
            check_name(a).map_err(|e| format!("link {s:?}: alias {e}"))?;
        }
        Ok(Self { stack, job, alias, balance: None })
    }

    /// The stack the linked job is in, given the stack the link is written in.
    pub fn stack_or<'a>(&'a self, own: &'a str) -> &'a str {
        self.stack.as_deref().unwrap_or(own)
    }

    /// The link name (`shared_mongo`; the bare job or alias within one stack).
    pub fn name(&self, own_stack: &str) -> String {
        if let Some(a) = &self.alias {
            return a.clone();
        }
        match &self.stack {
            Some(st) if st != own_stack => service_name(st, &self.job),
            _ => self.job.clone(),
        }
    }

    /// The env var prefix (`SHARED_MONGO`, `MIDDLEWARE`).
    pub fn env_prefix(&self, own_stack: &str) -> String {
        env_name(&self.name(own_stack))
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(st) = &self.stack {
            write!(f, "{st}/")?;
        }
        f.write_str(&self.job)?;
        if let Some(a) = &self.alias {
            write!(f, ":{a}")?;
        }
        Ok(())
    }
}

/// A link with a balance of its own, as a record holds it.
#[derive(Serialize, Deserialize)]
struct LinkWithBalance {
    to: String,
    balance: Algo,
}

/// In a job record: `"shared/mongo"`, or `{"to": "shared/mongo", "balance": "least_conn"}`.
impl Serialize for Link {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.balance {
            None => s.collect_str(self),
            Some(balance) => LinkWithBalance { to: self.to_string(), balance }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Link {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Plain(String),
            Balanced(LinkWithBalance),
        }
        let (text, balance) = match Either::deserialize(d)? {
            Either::Plain(s) => (s, None),
            Either::Balanced(l) => (l.to, Some(l.balance)),
        };
        let mut link = Self::parse(&text).map_err(serde::de::Error::custom)?;
        link.balance = balance;
        Ok(link)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_seed() {
        let l = Link::parse("shared/mongo").unwrap();
        assert_eq!(l.name("web"), "shared_mongo");
        assert_eq!(l.env_prefix("web"), "SHARED_MONGO");
        assert_eq!(Link::parse("middleware").unwrap().env_prefix("web"), "MIDDLEWARE");
        assert_eq!(Link::parse("web/middleware").unwrap().env_prefix("web"), "MIDDLEWARE");
        assert_eq!(Link::parse("db:store").unwrap().env_prefix("web"), "STORE");
        assert_eq!(Link::parse("my-db").unwrap().env_prefix("web"), "MY_DB");
        assert_eq!(service_name("shared", "mongo"), "shared_mongo");
    }

    #[test]
    fn links_keep_their_balance_in_records() {
        let mut l = Link::parse("shared/mongo:db").unwrap();
        assert_eq!(serde_json::to_string(&l).unwrap(), r#""shared/mongo:db""#);
        l.balance = Some(Algo::LeastConn);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(json, r#"{"to":"shared/mongo:db","balance":"least_conn"}"#);
        assert_eq!(serde_json::from_str::<Link>(&json).unwrap(), l);
        assert!(serde_json::from_str::<Link>(r#"{"to":"x","balance":"fastest"}"#).is_err());
    }

    #[test]
    fn names_docker_would_reject_are_refused() {
        for bad in ["", "-web", "web-", "Web", "my job", "web!", "a_b", "a.b", &"x".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["web", "a", "mongo-2", "0db"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
