//! The DNS responder's packet handling (`names::answer::respond`): any bytes get a reply,
//! forwarding or nothing, never a panic, and a reply is a DNS message under the packet's ID.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use viking::names::{
    answer::{respond, Outcome},
    zone::{JobNames, Zone},
};

fn zone() -> &'static Zone {
    static ZONE: OnceLock<Zone> = OnceLock::new();
    ZONE.get_or_init(|| {
        let mut z = Zone::new("viking").expect("a zone");
        let names = JobNames {
            vip: Some([10, 96, 0, 1].into()),
            ports: vec!["80/tcp".parse().expect("a port")],
            instances: [(0, [10, 32, 0, 2].into())].into_iter().collect(),
        };
        z.jobs.insert(("abc".into(), "pricing".into()), names);
        z
    })
}

fuzz_target!(|data: &[u8]| {
    if let Outcome::Reply(r) = respond(data, zone()) {
        assert!(r.len() >= 12, "{data:?}: a reply shorter than a header");
        assert_eq!(r[..2], data[..2], "{data:?}: the reply is not under the query's ID");
    }
});
