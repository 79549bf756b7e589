//! `BACKEND_*` descriptors: parsing never panics, and a parsed descriptor reads back the same
//! from its own text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use viking::discovery::descriptor::Descriptor;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    let Ok(d) = Descriptor::parse("BACKEND_FUZZ", value) else { return };
    let again = Descriptor::parse("BACKEND_FUZZ", &d.to_string())
        .unwrap_or_else(|e| panic!("{value:?} parsed, its text {:?} does not: {e}", d.to_string()));
    assert_eq!(again, d, "{value:?}");
});
