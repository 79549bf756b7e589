//! VPC policy files: parsing never panics, and a policy that parses compiles for a host (or
//! is refused with an error) and answers every packet without panicking.
#![no_main]
use std::{collections::BTreeMap, path::Path};

use libfuzzer_sys::fuzz_target;
use viking::vpc::{
    compile::{compile, HostView},
    parse_policy,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(policy) = parse_policy(Path::new("fuzz.yml"), text) else { return };
    let view = HostView {
        tags: vec!["edge".into()],
        cluster_iface: Some("eth0".into()),
        ifaces: [("eth0".to_owned(), 2), ("eth1".to_owned(), 3)].into(),
    };
    let Ok(c) = compile(&[policy], &view, &BTreeMap::new()) else { return };
    for slot in &c.slots {
        for (proto, port) in [(6, 22), (6, 80), (17, 53), (1, 0), (58, 0), (47, 0)] {
            for src in ["10.0.0.1", "192.168.50.66", "fd00::1", "2001:db8::1"] {
                let src = src.parse().expect("an address");
                for member in [false, true] {
                    let _ = c.evaluate(slot.slot, proto, port, src, member);
                }
            }
        }
    }
});
