//! Helpers shared by the fuzz targets in `src/bin/`.

/// Splits an input at its first newline: a store key and the value written under it.
pub fn key_and_value(data: &[u8]) -> Option<(&str, &[u8])> {
    let nl = data.iter().position(|b| *b == b'\n')?;
    let key = std::str::from_utf8(&data[..nl]).ok()?;
    Some((key, &data[nl + 1..]))
}
