//! Registrations (`/services/..` key, seed 002 JSON): parsing never panics, a parsed one has
//! an address a connection can go to, and its key reads back the same.
#![no_main]
use libfuzzer_sys::fuzz_target;
use viking::discovery::registration::{Endpoint, RegistrationKey};

fuzz_target!(|data: &[u8]| {
    let Some((key, value)) = viking_fuzz::key_and_value(data) else { return };
    let Ok(e) = Endpoint::parse(key, value) else { return };
    assert!(viking::datapath::check_backend(&e.addr()).is_ok(), "{key}: {}", e.addr());
    assert_eq!(RegistrationKey::parse(&e.key.to_key()).as_ref(), Ok(&e.key), "{key}");
});
