//! Synthetic objects for benchmarks: `GET /synthetic/{id}?size=BYTES` is `size` bytes that
//! depend only on `id`, produced on the fly for any byte range (no storage), with a strong
//! ETag derived from (id, size).

use std::ops::RangeInclusive;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};

use cdn_http::ByteStream;

/// Bytes generated per body chunk.
const BLOCK: u64 = 64 * 1024;

/// Every synthetic object claims this modification time (2026-01-01T00:00:00Z).
pub fn last_modified() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// Whether an id is acceptable: 1 to 128 of `[A-Za-z0-9._-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The generator seed of an id.
pub fn seed(id: &str) -> u64 {
    let d = Sha256::digest(id.as_bytes());
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Strong ETag for (id, size).
pub fn etag(id: &str, size: u64) -> String {
    let mut h = Sha256::new();
    h.update(id.as_bytes());
    h.update(size.to_le_bytes());
    let d = h.finalize();
    let hex: String = d[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"syn-{hex}\"")
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The bytes at `range` of the object with this seed: byte `i` is byte `i % 8` of
/// `splitmix64(seed ^ (i / 8))`, so any range can be produced without the ones before it.
pub fn fill(seed: u64, range: RangeInclusive<u64>) -> Bytes {
    let (start, end) = (*range.start(), *range.end());
    let first_word = start / 8;
    let last_word = end / 8;
    let mut buf = BytesMut::with_capacity(((last_word - first_word + 1) * 8) as usize);
    for w in first_word..=last_word {
        buf.put_u64_le(splitmix64(seed ^ w));
    }
    let skip = (start - first_word * 8) as usize;
    buf.freeze().slice(skip..skip + (end - start + 1) as usize)
}

/// Streams `range` in 64 KiB blocks.
pub fn range_stream(seed: u64, range: RangeInclusive<u64>) -> ByteStream {
    let (start, end) = (*range.start(), *range.end());
    futures::stream::iter((start..=end).step_by(BLOCK as usize))
        .map(move |s| Ok(fill(seed, s..=(s + BLOCK - 1).min(end))))
        .boxed()
}

/// SHA-256 of a whole object (for Content-Digest on full responses).
pub fn digest(seed: u64, size: u64) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut s = 0;
    while s < size {
        let e = (s + 1024 * 1024).min(size) - 1;
        h.update(fill(seed, s..=e));
        s = e + 1;
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_agree_with_the_whole() {
        let s = seed("abc");
        let whole = fill(s, 0..=9999);
        for (a, b) in [(0, 0), (1, 7), (3, 17), (8, 15), (9995, 9999), (4096, 8191)] {
            assert_eq!(fill(s, a..=b), whole.slice(a as usize..=b as usize));
        }
        assert_ne!(fill(seed("abd"), 0..=63), whole.slice(0..64));
        assert_eq!(etag("abc", 10), etag("abc", 10));
        assert_ne!(etag("abc", 10), etag("abc", 11));
        assert!(valid_id("a-b_c.1"));
        assert!(!valid_id("a/b") && !valid_id("") && !valid_id(&"x".repeat(129)));
    }
}
