//! The responder's sockets and loop: one UDP socket where instances ask (in the host's
//! namespace, bound with IP_FREEBIND so it can be bound before the first instance's veth
//! brings the address), one UDP socket toward the upstream resolvers. Each packet is answered
//! inline from the current zone; nothing is queued but what the kernel's socket buffers hold,
//! and forwarding keeps a bounded table (`forward.rs`).
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket as StdUdp},
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use hickory_proto::op::{OpCode, ResponseCode};
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use tokio::{net::UdpSocket, sync::watch};

use super::{
    answer::{error_reply, respond, Outcome},
    forward::Forwarder,
    zone::Zone,
};
use crate::netns::NetnsError;

/// Largest packet read; a longer datagram is cut to this and then does not parse.
const MAX_PACKET: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error("names: network namespace {path}: {source}")]
    Netns { path: PathBuf, source: std::io::Error },
    #[error("names: binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("names: only IPv4 addresses are served for now, not {0}")]
    NotV4(SocketAddr),
}

fn udp_v4(addr: SocketAddrV4, freebind: bool) -> Result<StdUdp, NamesError> {
    let err = |e: nix::Error| NamesError::Bind { addr: addr.into(), source: e.into() };
    let fd: OwnedFd = socket::socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    if freebind {
        socket::setsockopt(&fd.as_fd(), sockopt::IpFreebind, &true).map_err(err)?;
    }
    socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(addr)).map_err(err)?;
    Ok(StdUdp::from(fd))
}

/// The listening socket at `listen` and a socket toward the upstreams, both made in `netns`
/// (or the agent's own namespace).
pub async fn bind(
    listen: SocketAddr,
    netns: Option<&Path>,
) -> Result<(UdpSocket, UdpSocket), NamesError> {
    let SocketAddr::V4(listen4) = listen else { return Err(NamesError::NotV4(listen)) };
    let (l, u) = crate::netns::run_in(netns, move || -> Result<(StdUdp, StdUdp), NamesError> {
        let l = udp_v4(listen4, true)?;
        let u = udp_v4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), false)?;
        Ok((l, u))
    })
    .await
    .map_err(|e| match e {
        NetnsError::Enter { path, source } => NamesError::Netns { path, source },
        NetnsError::Died => NamesError::Bind {
            addr: listen,
            source: std::io::Error::other("the binding thread died"),
        },
    })??;
    let tokio = |s: StdUdp| {
        UdpSocket::from_std(s).map_err(|source| NamesError::Bind { addr: listen, source })
    };
    Ok((tokio(l)?, tokio(u)?))
}

/// Counters of what the responder did (for tests and logs).
#[derive(Debug, Default, Clone, Copy)]
pub struct Served {
    pub answered: u64,
    pub forwarded: u64,
    pub dropped: u64,
}

/// Answers on `listen` until `stop`.
pub async fn serve(
    listen: UdpSocket,
    upstream: UdpSocket,
    upstreams: Vec<SocketAddr>,
    zone: watch::Receiver<Arc<Zone>>,
    mut stop: watch::Receiver<bool>,
) -> Served {
    let mut fwd = Forwarder::new(upstreams);
    let mut served = Served::default();
    let (mut buf, mut ubuf) = (vec![0u8; MAX_PACKET], vec![0u8; MAX_PACKET]);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            r = listen.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let packet = &buf[..n];
                let current = zone.borrow().clone();
                let out = match respond(packet, &current) {
                    Outcome::Forward => match fwd.start(packet, from, Instant::now()) {
                        Some((q, to)) => {
                            served.forwarded += 1;
                            let _ = upstream.send_to(&q, to).await;
                            continue;
                        }
                        None => {
                            let id = u16::from_be_bytes([packet[0], packet[1]]);
                            error_reply(id, OpCode::Query, ResponseCode::ServFail)
                        }
                    },
                    o => o,
                };
                match out {
                    Outcome::Reply(b) => {
                        served.answered += 1;
                        let _ = listen.send_to(&b, from).await;
                    }
                    _ => served.dropped += 1,
                }
            }
            r = upstream.recv_from(&mut ubuf) => {
                let Ok((n, from)) = r else { continue };
                if let Some((b, to)) = fwd.finish(&ubuf[..n], from) {
                    let _ = listen.send_to(&b, to).await;
                }
            }
            _ = tick.tick() => {
                let expired = fwd.expire(Instant::now());
                if expired > 0 {
                    tracing::debug!(expired, "names: upstream queries unanswered");
                }
            }
            _ = stop.changed() => break,
        }
    }
    served
}
