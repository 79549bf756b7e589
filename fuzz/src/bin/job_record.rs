//! Job records (`/viking/deploy/<stack>/<job>`, JSON or YAML by hand): parsing never panics,
//! and a parsed record survives being written back canonically.
#![no_main]
use libfuzzer_sys::fuzz_target;
use viking::deploy::folder;

fuzz_target!(|data: &[u8]| {
    let Some((key, value)) = viking_fuzz::key_and_value(data) else { return };
    let Ok(r) = folder::parse_record(key, value) else { return };
    let back = folder::parse_record(key, &folder::record_value(&r.job))
        .unwrap_or_else(|e| panic!("{key}: its canonical record does not parse: {e}"));
    assert_eq!(back.job, r.job, "{key}");
});
