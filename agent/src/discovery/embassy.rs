//! Embassy mode (seeds 002 and 004): `BACKEND_*` variables of a running container become
//! services at `127.0.0.1:<port>` scoped to that container's network namespace.
use std::collections::BTreeMap;

/// A running container (docker or exec instance) as embassy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The instance name (`<stack>_<job>_<index>`) or container id.
    pub id: String,
    /// The cookie of its network namespace (`SO_NETNS_COOKIE`).
    pub netns_cookie: u64,
    pub env: BTreeMap<String, String>,
}

/// The running containers of this host, by id. The reconciler publishes it.
pub type Containers = BTreeMap<String, Container>;
