//! `Content-Digest` (RFC 9530) with sha-256, and strong entity-tags derived from digests.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

/// `sha-256=:BASE64:` for a SHA-256 digest.
pub fn content_digest_value(sha256: &[u8; 32]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(sha256))
}

/// Extracts the sha-256 digest from a `Content-Digest` value (other algorithms are skipped).
pub fn parse_content_digest(value: &str) -> Option<[u8; 32]> {
    value.split(',').find_map(|member| {
        let (alg, rest) = member.trim().split_once('=')?;
        if !alg.trim().eq_ignore_ascii_case("sha-256") {
            return None;
        }
        let b64 = rest.trim().strip_prefix(':')?.strip_suffix(':')?;
        STANDARD.decode(b64).ok()?.try_into().ok()
    })
}

/// SHA-256 of a byte slice.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A strong entity-tag (quotes included) derived from a content digest.
pub fn etag_from_digest(sha256: &[u8; 32]) -> String {
    let hex: String = sha256[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let d = sha256(b"hello");
        let v = content_digest_value(&d);
        assert_eq!(v, "sha-256=:LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=:");
        assert_eq!(parse_content_digest(&v), Some(d));
        assert_eq!(parse_content_digest(&format!("md5=:AA==:, {v}")), Some(d));
        assert_eq!(parse_content_digest("sha-256=:bad"), None);
        assert_eq!(etag_from_digest(&d).len(), 34);
    }
}
