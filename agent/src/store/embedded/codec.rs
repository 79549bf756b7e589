//! The on-disk encoding of the embedded store's records and history events.
//!
//! A record (table `kv`, value): create, mod, version, lease as little-endian i64, then the
//! value. An event (table `log`, keyed by (revision, index)): a kind byte, the same header,
//! the key's length (u32 LE), the key, the value.
use crate::store::{KeyValue, LeaseId, WatchEvent};

const HEADER: usize = 32;

pub(super) struct Meta {
    pub create: i64,
    pub modified: i64,
    pub version: i64,
    pub lease: i64,
}

fn put_header(out: &mut Vec<u8>, m: &Meta) {
    for v in [m.create, m.modified, m.version, m.lease] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn read_i64(b: &[u8], at: usize) -> Option<i64> {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(i64::from_le_bytes)
}

fn header(b: &[u8]) -> Option<Meta> {
    Some(Meta {
        create: read_i64(b, 0)?,
        modified: read_i64(b, 8)?,
        version: read_i64(b, 16)?,
        lease: read_i64(b, 24)?,
    })
}

pub(super) fn record(m: &Meta, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + value.len());
    put_header(&mut out, m);
    out.extend_from_slice(value);
    out
}

pub(super) fn record_meta(b: &[u8]) -> Option<Meta> {
    header(b)
}

pub(super) fn decode_record(key: &str, b: &[u8]) -> Option<KeyValue> {
    let m = header(b)?;
    Some(KeyValue {
        key: key.to_string(),
        value: b.get(HEADER..)?.to_vec(),
        create_revision: m.create,
        mod_revision: m.modified,
        version: m.version,
        lease: (m.lease != 0).then_some(LeaseId(m.lease)),
    })
}

const PUT: u8 = 0;
const DELETE: u8 = 1;

pub(super) fn encode_event(e: &WatchEvent) -> Vec<u8> {
    let (kind, meta, key, value): (u8, Meta, &str, &[u8]) = match e {
        WatchEvent::Put(kv) => (
            PUT,
            Meta {
                create: kv.create_revision,
                modified: kv.mod_revision,
                version: kv.version,
                lease: kv.lease.map_or(0, |l| l.0),
            },
            &kv.key,
            &kv.value,
        ),
        WatchEvent::Delete { key, revision } => {
            (DELETE, Meta { create: 0, modified: *revision, version: 0, lease: 0 }, key, &[])
        }
        // NB: never stored; a resync is made from the live keys.
        WatchEvent::Resync { revision, .. } => {
            (DELETE, Meta { create: 0, modified: *revision, version: 0, lease: 0 }, "", &[])
        }
    };
    let mut out = Vec::with_capacity(1 + HEADER + 4 + key.len() + value.len());
    out.push(kind);
    put_header(&mut out, &meta);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(value);
    out
}

pub(super) fn decode_event(b: &[u8]) -> Option<WatchEvent> {
    let kind = *b.first()?;
    let m = header(b.get(1..)?)?;
    let at = 1 + HEADER;
    let len = u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize;
    let key = std::str::from_utf8(b.get(at + 4..at + 4 + len)?).ok()?.to_string();
    let value = b.get(at + 4 + len..)?.to_vec();
    Some(match kind {
        PUT => WatchEvent::Put(KeyValue {
            key,
            value,
            create_revision: m.create,
            mod_revision: m.modified,
            version: m.version,
            lease: (m.lease != 0).then_some(LeaseId(m.lease)),
        }),
        _ => WatchEvent::Delete { key, revision: m.modified },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let put = WatchEvent::Put(KeyValue {
            key: "/a/b".into(),
            value: b"hello".to_vec(),
            create_revision: 3,
            mod_revision: 7,
            version: 2,
            lease: Some(LeaseId(9)),
        });
        assert_eq!(decode_event(&encode_event(&put)), Some(put));
        let del = WatchEvent::Delete { key: "/a/c".into(), revision: 8 };
        assert_eq!(decode_event(&encode_event(&del)), Some(del));
        assert_eq!(decode_event(&[1, 2, 3]), None);
        let m = Meta { create: 1, modified: 2, version: 1, lease: 0 };
        let kv = decode_record("/k", &record(&m, b"v")).unwrap();
        assert_eq!((kv.value.as_slice(), kv.create_revision, kv.lease), (&b"v"[..], 1, None));
    }
}
