//! What the probe (src/bin/vk-probe.rs) reports, one JSON object per line.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Conn {
    /// `getpeername()` of the client socket (TCP, connected UDP), or the datagram's source
    /// (`recvfrom`) for unconnected UDP.
    pub peer: Option<String>,
    /// The backend's greeting: `NAME CLIENT_ADDR_AS_SEEN_BY_BACKEND`.
    pub reply: Option<String>,
    /// The connect/send error, if any: its errno.
    pub errno: Option<i32>,
    pub error: Option<String>,
}

impl Conn {
    /// The name of the backend that answered.
    pub fn backend(&self) -> Option<&str> {
        self.reply.as_deref().and_then(|r| r.split_whitespace().next())
    }
    /// The client address the backend saw.
    pub fn seen_as(&self) -> Option<&str> {
        self.reply.as_deref().and_then(|r| r.split_whitespace().nth(1))
    }
}

/// Final line of `hold`, `stream` and `loop`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Summary {
    pub ok: u64,
    pub failed: u64,
    pub bytes: u64,
    pub errors: Vec<String>,
}
