//! Reading a packet's IPv4/IPv6 and TCP/UDP/ICMP headers on an Ethernet-type interface.
//! Bytes are read with `bpf_skb_load_bytes`, so headers in paged data (GRO, large packets)
//! read the same as linear ones.
use aya_ebpf::programs::TcContext;
use viking_common::{
    vpc::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6},
    PROTO_TCP, PROTO_UDP,
};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag_off: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Ipv6Hdr {
    vtcfl: u32,
    payload_len: u16,
    nexthdr: u8,
    hop_limit: u8,
    saddr: [u32; 4],
    daddr: [u32; 4],
}

/// What the filter needs of one packet. Addresses and ports stay in network order.
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// TCP/UDP ports; 0 when the packet has none (or is a later fragment).
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// ICMP echo identifier, network order.
    pub icmp_id: u16,
    /// Offset of the transport header.
    pub l4: usize,
    /// A fragment after the first: no transport header.
    pub later_fragment: bool,
}

impl Packet {
    pub fn is_icmp(&self) -> bool {
        self.proto == PROTO_ICMP || self.proto == PROTO_ICMPV6
    }
}

/// Reads the headers of the IPv4 or IPv6 packet in `ctx`; `None` for anything else (ARP,
/// ...), and `Err` when a header is cut short.
#[inline(always)]
pub fn parse(ctx: &TcContext) -> Result<Option<Packet>, i32> {
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let mut p = Packet {
        family: 0,
        proto: 0,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        icmp_id: 0,
        l4: 0,
        later_fragment: false,
    };
    if proto == ETH_P_IP {
        let h: Ipv4Hdr = ctx.load(ETH_HLEN).map_err(|_| -1)?;
        if h.vihl >> 4 != 4 {
            return Ok(None);
        }
        p.family = FAMILY_V4;
        p.proto = h.proto;
        p.src[0] = h.saddr;
        p.dst[0] = h.daddr;
        p.l4 = ETH_HLEN + usize::from(h.vihl & 0x0f) * 4;
        p.later_fragment = u16::from_be(h.frag_off) & 0x1fff != 0;
    } else if proto == ETH_P_IPV6 {
        let h: Ipv6Hdr = ctx.load(ETH_HLEN).map_err(|_| -1)?;
        p.family = FAMILY_V6;
        p.src = h.saddr;
        p.dst = h.daddr;
        let (next, off, later) = skip_extensions(ctx, h.nexthdr, ETH_HLEN + 40)?;
        p.proto = next;
        p.l4 = off;
        p.later_fragment = later;
    } else {
        return Ok(None);
    }
    if p.later_fragment {
        return Ok(Some(p));
    }
    match p.proto {
        PROTO_TCP => {
            let ports: [u16; 2] = ctx.load(p.l4).map_err(|_| -1)?;
            p.sport = ports[0];
            p.dport = ports[1];
            p.tcp_flags = ctx.load(p.l4 + 13).map_err(|_| -1)?;
        }
        PROTO_UDP => {
            let ports: [u16; 2] = ctx.load(p.l4).map_err(|_| -1)?;
            p.sport = ports[0];
            p.dport = ports[1];
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h: [u8; 6] = ctx.load(p.l4).map_err(|_| -1)?;
            p.icmp_type = h[0];
            p.icmp_code = h[1];
            p.icmp_id = u16::from_ne_bytes([h[4], h[5]]);
        }
        _ => {}
    }
    Ok(Some(p))
}

/// Walks IPv6 extension headers (at most 6) to the transport header: (protocol, offset,
/// whether this is a later fragment).
#[inline(always)]
fn skip_extensions(ctx: &TcContext, first: u8, start: usize) -> Result<(u8, usize, bool), i32> {
    let mut next = first;
    let mut off = start;
    for _ in 0..6 {
        match next {
            // Hop-by-hop, routing, destination options: length in 8-byte units, minus one.
            0 | 43 | 60 => {
                let h: [u8; 2] = ctx.load(off).map_err(|_| -1)?;
                next = h[0];
                off += (usize::from(h[1]) + 1) * 8;
            }
            // Authentication header: length in 4-byte units, minus two.
            51 => {
                let h: [u8; 2] = ctx.load(off).map_err(|_| -1)?;
                next = h[0];
                off += (usize::from(h[1]) + 2) * 4;
            }
            // Fragment header: the offset is the top 13 bits of bytes 2-3.
            44 => {
                let h: [u8; 4] = ctx.load(off).map_err(|_| -1)?;
                next = h[0];
                off += 8;
                if u16::from_be_bytes([h[2], h[3]]) >> 3 != 0 {
                    return Ok((next, off, true));
                }
            }
            _ => return Ok((next, off, false)),
        }
    }
    Ok((next, off, false))
}

/// The connection an ICMP error is about: the header of our own packet it quotes (source:
/// this side; destination: the peer). (family, proto, local, remote, local port, remote port)
#[inline(always)]
pub fn quoted(ctx: &TcContext, p: &Packet) -> Result<Option<Packet>, i32> {
    let inner = p.l4 + 8;
    let mut q = Packet { ..*p };
    q.sport = 0;
    q.dport = 0;
    q.icmp_id = 0;
    q.later_fragment = false;
    if p.family == FAMILY_V4 {
        let h: Ipv4Hdr = ctx.load(inner).map_err(|_| -1)?;
        q.proto = h.proto;
        q.src = [h.saddr, 0, 0, 0];
        q.dst = [h.daddr, 0, 0, 0];
        q.l4 = inner + usize::from(h.vihl & 0x0f) * 4;
    } else {
        let h: Ipv6Hdr = ctx.load(inner).map_err(|_| -1)?;
        q.proto = h.nexthdr;
        q.src = h.saddr;
        q.dst = h.daddr;
        q.l4 = inner + 40;
    }
    match q.proto {
        PROTO_TCP | PROTO_UDP => {
            let ports: [u16; 2] = ctx.load(q.l4).map_err(|_| -1)?;
            q.sport = ports[0];
            q.dport = ports[1];
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let h: [u8; 6] = ctx.load(q.l4).map_err(|_| -1)?;
            q.icmp_type = h[0];
            q.icmp_id = u16::from_ne_bytes([h[4], h[5]]);
        }
        _ => return Ok(None),
    }
    Ok(Some(q))
}
