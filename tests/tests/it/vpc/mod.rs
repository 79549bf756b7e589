//! The VPC host filter (docs/vpc-rules.md): member hosts and non-member namespaces on one
//! bridge, real agents with `--vpc-rules`, real servers, traffic that is let through or
//! dropped by the TC programs in the kernel, and the counters `viking vpc status` shows.
mod members;
mod membership;
mod reload;
mod replies;
mod rules;

use viking::vpc::{status::RuleStatus, VpcStatus};

/// The default policy: members may do anything, nobody else anything.
pub const CLUSTER_ONLY: &str = "default: deny\nallow:\n  - from: cluster\n";

/// The rule whose description (or name) contains `what`.
pub fn rule<'a>(s: &'a VpcStatus, what: &str) -> &'a RuleStatus {
    s.rules
        .iter()
        .find(|r| r.description.contains(what) || r.name.as_deref() == Some(what))
        .unwrap_or_else(|| panic!("no rule {what:?} in {:#?}", s.rules))
}

/// The interface default's counters.
pub fn default_rule(s: &VpcStatus) -> &RuleStatus {
    rule(s, "default of ")
}
