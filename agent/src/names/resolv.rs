//! What instances get as resolver settings: the responder as nameserver, and
//! `search <stack>.<domain> <domain>` with `ndots:2`, so `pricing` is this deployment's and
//! `mongo.shared` another stack's, each found before anything is asked upstream.
use std::net::IpAddr;

use super::zone::NDOTS;

/// An instance's resolver settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    pub nameserver: IpAddr,
    pub search: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn for_stack(nameserver: IpAddr, domain: &str, stack: &str) -> Self {
        Self {
            nameserver,
            search: vec![format!("{stack}.{domain}"), domain.to_owned()],
            options: vec![format!("ndots:{NDOTS}")],
        }
    }

    /// As /etc/resolv.conf.
    pub fn resolv_conf(&self) -> String {
        format!(
            "# written by viking (docs/names.md)\nnameserver {}\nsearch {}\noptions {}\n",
            self.nameserver,
            self.search.join(" "),
            self.options.join(" ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacks_resolv_conf_searches_the_stack_then_the_domain() {
        let d = Dns::for_stack("169.254.1.1".parse().unwrap(), "viking", "abc");
        assert_eq!(
            d.resolv_conf().lines().skip(1).collect::<Vec<_>>(),
            ["nameserver 169.254.1.1", "search abc.viking viking", "options ndots:2"]
        );
    }
}
