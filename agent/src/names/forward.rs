//! Forwarding (pure): queries outside Viking's domains go to an upstream resolver under an ID
//! of the responder's own choosing; the reply goes back to the asker under its own ID. The
//! table of queries in flight is bounded: when it is full a query gets SERVFAIL at once, and an
//! entry the upstream never answers expires. Nothing else is kept per query.
use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use rand::Rng as _;

/// Queries in flight at most.
pub const CAPACITY: usize = 4096;
/// How long an upstream has to answer.
pub const TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug)]
struct Pending {
    client: SocketAddr,
    id: u16,
    upstream: SocketAddr,
    since: Instant,
}

#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    next: usize,
    inflight: HashMap<u16, Pending>,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Self {
        Self { upstreams, next: 0, inflight: HashMap::new() }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// The packet to send upstream and where, or `None` (no upstream, table full, not a query
    /// header): the caller answers SERVFAIL.
    pub fn start(
        &mut self,
        packet: &[u8],
        client: SocketAddr,
        now: Instant,
    ) -> Option<(Vec<u8>, SocketAddr)> {
        if packet.len() < 12 || self.upstreams.is_empty() || self.inflight.len() >= CAPACITY {
            return None;
        }
        let upstream = self.upstreams[self.next % self.upstreams.len()];
        self.next = self.next.wrapping_add(1);
        let mut rng = rand::thread_rng();
        let ours = loop {
            let id: u16 = rng.gen();
            if !self.inflight.contains_key(&id) {
                break id;
            }
        };
        let id = u16::from_be_bytes([packet[0], packet[1]]);
        self.inflight.insert(ours, Pending { client, id, upstream, since: now });
        let mut out = packet.to_vec();
        out[..2].copy_from_slice(&ours.to_be_bytes());
        Some((out, upstream))
    }

    /// An upstream's reply: the packet for the asker and its address, or `None` (not one we
    /// wait for, from elsewhere, not a response).
    pub fn finish(&mut self, packet: &[u8], from: SocketAddr) -> Option<(Vec<u8>, SocketAddr)> {
        if packet.len() < 12 || packet[2] & 0x80 == 0 {
            return None;
        }
        let ours = u16::from_be_bytes([packet[0], packet[1]]);
        if self.inflight.get(&ours)?.upstream != from {
            return None;
        }
        let p = self.inflight.remove(&ours)?;
        let mut out = packet.to_vec();
        out[..2].copy_from_slice(&p.id.to_be_bytes());
        Some((out, p.client))
    }

    /// Forgets queries older than `TIMEOUT`; how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.inflight.len();
        self.inflight.retain(|_, p| now.duration_since(p.since) < TIMEOUT);
        before - self.inflight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_go_back_to_their_asker_under_its_id_and_the_table_is_bounded() {
        let up: SocketAddr = "10.0.0.53:53".parse().unwrap();
        let client: SocketAddr = "10.32.0.5:40000".parse().unwrap();
        let mut f = Forwarder::new(vec![up]);
        let now = Instant::now();
        let q = [0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        let (sent, to) = f.start(&q, client, now).unwrap();
        assert_eq!(to, up);
        let mut reply = sent.clone();
        reply[2] |= 0x80;
        assert_eq!(f.finish(&reply, "10.9.9.9:53".parse().unwrap()), None, "not from upstream");
        let (back, who) = f.finish(&reply, up).unwrap();
        assert_eq!((&back[..2], who), (&[0xab, 0xcd][..], client));
        assert_eq!(f.finish(&reply, up), None, "answered once");
        for _ in 0..CAPACITY {
            assert!(f.start(&q, client, now).is_some());
        }
        assert!(f.start(&q, client, now).is_none(), "full");
        assert_eq!(f.expire(now + TIMEOUT), CAPACITY);
        assert!(f.start(&q, client, now).is_some());
        assert!(Forwarder::new(vec![]).start(&q, client, now).is_none());
        assert!(f.start(&q[..5], client, now).is_none());
    }
}
