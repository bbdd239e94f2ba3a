//! Helpers shared by the fuzz targets: structured values cut from raw fuzz bytes.
#![allow(dead_code)]

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header fields from bytes: one `name: value` per line; lines that are not a valid field are
/// skipped (the HTTP layer would have refused them before any parser of ours saw them).
pub fn headers(data: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = line[colon + 1..].trim_ascii();
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(value),
        ) {
            h.append(n, v);
        }
    }
    h
}

/// Takes `N` bytes off the front (zero-padded when short).
pub fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

pub fn take_u64(data: &mut &[u8]) -> u64 {
    u64::from_le_bytes(take::<8>(data))
}

/// Splits at the first line that is exactly `---`.
pub fn split_sections(data: &[u8]) -> (&[u8], &[u8]) {
    let sep = b"\n---\n";
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(i) => (&data[..i], &data[i + sep.len()..]),
        None => (data, &[]),
    }
}
