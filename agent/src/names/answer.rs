//! One query packet -> what to do with it (pure): a reply from the zone, forwarding, or
//! nothing. Whatever the bytes, this returns: a packet that does not parse gets FORMERR when
//! it has a query's header, else it is dropped; responses are never answered.
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};

use super::zone::{Lookup, Zone};

/// The largest UDP reply without EDNS (RFC 1035).
const PLAIN_UDP: usize = 512;
/// What the responder offers with EDNS (the DNS flag day's size: no fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;

/// What to do with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Reply(Vec<u8>),
    /// Not in Viking's domains: to the upstream resolvers, as it came.
    Forward,
    Drop,
}

/// A header-only error reply to a packet's ID.
pub fn error_reply(id: u16, op: OpCode, code: ResponseCode) -> Outcome {
    match Message::error_msg(id, op, code).to_vec() {
        Ok(b) => Outcome::Reply(b),
        Err(_) => Outcome::Drop,
    }
}

/// The reply to `packet`, or why there is none.
pub fn respond(packet: &[u8], zone: &Zone) -> Outcome {
    let query = match Message::from_vec(packet) {
        Ok(m) => m,
        // NB: a query's header (12 bytes, QR clear) is enough to say FORMERR to its sender.
        Err(_) if packet.len() >= 12 && packet[2] & 0x80 == 0 => {
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return error_reply(id, OpCode::Query, ResponseCode::FormErr);
        }
        Err(_) => return Outcome::Drop,
    };
    if query.message_type() != MessageType::Query {
        return Outcome::Drop;
    }
    if query.op_code() != OpCode::Query {
        return error_reply(query.id(), query.op_code(), ResponseCode::NotImp);
    }
    let [q] = query.queries() else {
        return error_reply(query.id(), OpCode::Query, ResponseCode::FormErr);
    };
    let (answers, additionals, code) = match zone.lookup(q.name(), q.query_type()) {
        Lookup::NotOurs => return Outcome::Forward,
        Lookup::Found { answers, additionals } => (answers, additionals, ResponseCode::NoError),
        Lookup::NxDomain => (vec![], vec![], ResponseCode::NXDomain),
    };
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_authoritative(true)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_response_code(code)
        .add_query(q.clone());
    if answers.is_empty() {
        if let Some((domain, _)) = zone.split(q.name()) {
            reply.add_name_server(zone.soa(domain));
        }
    }
    reply.add_answers(answers).add_additionals(additionals);
    let limit = match query.extensions() {
        Some(e) => {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            reply.set_edns(edns);
            usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD))
        }
        None => PLAIN_UDP,
    };
    match reply.to_vec() {
        Ok(b) if b.len() <= limit => Outcome::Reply(b),
        Ok(_) => reply.truncate().to_vec().map_or(Outcome::Drop, Outcome::Reply),
        Err(_) => error_reply(query.id(), OpCode::Query, ResponseCode::ServFail),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use hickory_proto::{
        op::Query,
        rr::{Name, RecordType},
    };
    use rand::{Rng as _, SeedableRng as _};

    use super::*;
    use crate::{names::zone::JobNames, stack::Port};

    fn zone() -> Zone {
        let mut z = Zone::new("viking").unwrap();
        z.jobs.insert(
            ("abc".into(), "pricing".into()),
            JobNames {
                vip: Some("10.96.0.1".parse().unwrap()),
                ports: vec![Port { port: 80, proto: crate::datapath::Proto::Tcp }],
                instances: BTreeMap::new(),
            },
        );
        z
    }

    fn ask(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .set_recursion_desired(true)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    fn reply(o: Outcome) -> Message {
        match o {
            Outcome::Reply(b) => Message::from_vec(&b).unwrap(),
            other => panic!("no reply: {other:?}"),
        }
    }

    #[test]
    fn ours_answered_unknown_nxdomain_with_soa_others_forwarded() {
        let z = zone();
        let r = reply(respond(&ask("pricing.abc.viking.", RecordType::A), &z));
        assert_eq!((r.id(), r.response_code()), (7, ResponseCode::NoError));
        assert_eq!(r.answers()[0].data().to_string(), "10.96.0.1");
        assert!(r.authoritative());
        let r = reply(respond(&ask("web.abc.viking.", RecordType::A), &z));
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        assert_eq!(r.name_servers()[0].record_type(), RecordType::SOA);
        assert_eq!(respond(&ask("example.com.", RecordType::A), &z), Outcome::Forward);
    }

    #[test]
    fn garbage_gets_formerr_or_nothing_never_a_panic() {
        let z = zone();
        let r = reply(respond(&[0x12, 0x34, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 1], &z));
        assert_eq!((r.id(), r.response_code()), (0x1234, ResponseCode::FormErr));
        assert_eq!(respond(&[1, 2, 3], &z), Outcome::Drop);
        let mut resp = ask("pricing.abc.viking.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(respond(&resp, &z), Outcome::Drop, "responses are not answered");
        // Random bytes and every truncation of a good query: each returns.
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let good = ask("_80._tcp.pricing.abc.viking.", RecordType::SRV);
        for n in 0..good.len() {
            let _ = respond(&good[..n], &z);
        }
        for _ in 0..5000 {
            let len = rng.gen_range(0..600);
            let mut b: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if len > 3 && rng.gen_bool(0.5) {
                b[2] &= 0x7f;
            }
            let _ = respond(&b, &z);
        }
    }
}
