//! The host's own sockets, from `/proc/thread-self/net/{tcp,tcp6,udp,udp6}` of a thread in
//! the host's network namespace: the connections the lockout guard protects, and the ones
//! the connection table is seeded with when the filter is attached.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SockProto {
    Tcp,
    Udp,
}

/// One connected socket: TCP established, or UDP connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conn {
    pub proto: SockProto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// TCP: its local port is a listening port (someone connected to this host).
    pub inbound: bool,
}

const TCP_ESTABLISHED: u8 = 0x01;
const TCP_LISTEN: u8 = 0x0a;

/// `0100007F:1F90` (the kernel prints each 32-bit word of the address as a native integer).
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let w = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
        Some(w.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// (local, remote, state) of every line of a `/proc/net/{tcp,udp}[6]` table.
pub fn parse_table(text: &str) -> Vec<(SocketAddr, SocketAddr, u8)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _slot = f.next()?;
            let local = parse_addr(f.next()?)?;
            let remote = parse_addr(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            Some((local, remote, state))
        })
        .collect()
}

/// The connected sockets in the four tables' texts (tcp, tcp6, udp, udp6).
pub fn connections(tcp: &[&str], udp: &[&str]) -> Vec<Conn> {
    let tcp: Vec<_> = tcp.iter().flat_map(|t| parse_table(t)).collect();
    let listening: Vec<SocketAddr> =
        tcp.iter().filter(|(_, _, s)| *s == TCP_LISTEN).map(|(l, _, _)| *l).collect();
    let listens_on = |local: &SocketAddr| {
        listening.iter().any(|l| {
            l.port() == local.port()
                && (l.ip() == local.ip()
                    || l.ip().is_unspecified()
                    || to_v6(l.ip()) == to_v6(local.ip()))
        })
    };
    let mut out: Vec<Conn> = tcp
        .iter()
        .filter(|(_, _, s)| *s == TCP_ESTABLISHED)
        .map(|(local, remote, _)| Conn {
            proto: SockProto::Tcp,
            local: unmap(*local),
            remote: unmap(*remote),
            inbound: listens_on(local),
        })
        .collect();
    for t in udp {
        for (local, remote, _) in parse_table(t) {
            if remote.port() != 0 && !remote.ip().is_unspecified() {
                out.push(Conn {
                    proto: SockProto::Udp,
                    local: unmap(local),
                    remote: unmap(remote),
                    inbound: false,
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A v4-mapped address on a dual-stack socket is the IPv4 address the packets carry.
fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// The connected sockets of the calling thread's network namespace.
pub fn read_own() -> std::io::Result<Vec<Conn>> {
    let read = |name: &str| std::fs::read_to_string(format!("/proc/thread-self/net/{name}"));
    let (tcp, tcp6) = (read("tcp")?, read("tcp6").unwrap_or_default());
    let (udp, udp6) = (read("udp")?, read("udp6").unwrap_or_default());
    Ok(connections(&[&tcp, &tcp6], &[&udp, &udp6]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0200630A:0016 6400630A:D431 01 00000000:00000000 02:000A7C2B 00000000     0        0 2 4 0 20 4 30 10 -1
   2: 0200630A:9C40 0300630A:0050 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st
   0: 000080FE000000000000000001000000:1F90 000080FE000000000000000002000000:C350 01 00000000:00000000
   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000
   2: 0000000000000000FFFF00000200630A:1F90 0000000000000000FFFF00006400630A:C351 01 00000000:00000000
";
    const UDP: &str = "   sl  local_address rem_address   st
  10: 0200630A:D000 0300630A:0035 01 00000000:00000000
  11: 00000000:0044 00000000:0000 07 00000000:00000000
";

    #[test]
    fn finds_inbound_outbound_and_connected_udp() {
        let c = connections(&[TCP, TCP6], &[UDP]);
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        let expect = [
            Conn {
                proto: SockProto::Tcp,
                local: sa("10.99.0.2:22"),
                remote: sa("10.99.0.100:54321"),
                inbound: true,
            },
            Conn {
                proto: SockProto::Tcp,
                local: sa("10.99.0.2:40000"),
                remote: sa("10.99.0.3:80"),
                inbound: false,
            },
            Conn {
                proto: SockProto::Tcp,
                local: sa("[fe80::1]:8080"),
                remote: sa("[fe80::2]:50000"),
                inbound: true,
            },
            Conn {
                proto: SockProto::Tcp,
                local: sa("10.99.0.2:8080"),
                remote: sa("10.99.0.100:50001"),
                inbound: true,
            },
            Conn {
                proto: SockProto::Udp,
                local: sa("10.99.0.2:53248"),
                remote: sa("10.99.0.3:53"),
                inbound: false,
            },
        ];
        for e in expect {
            assert!(c.contains(&e), "{e:?} missing from {c:#?}");
        }
        assert_eq!(c.len(), expect.len());
    }
}
