//! Evaluation of the `Range` request header against a representation length (RFC 9110 §14.2).
//!
//! Parsing is done by `http-range-header`; this module only maps its verdicts onto what a
//! server must do: serve the full body (absent, invalid or abusive Range: the RFC allows a
//! server to ignore it), serve parts, or answer 416.

use std::ops::RangeInclusive;

use http::{HeaderMap, header};
use http_range_header::{RangeUnsatisfiableError, parse_range_header_with_max_ranges};

/// At most this many ranges in one request; more makes the request be served whole
/// (Pingora caps at 200, we are stricter).
pub const MAX_RANGES: usize = 100;

/// What to do with a request's `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable Range header: serve the whole representation with 200.
    Full,
    /// Serve these inclusive byte ranges with 206 (one range: plain; several: multipart).
    Ranges(Vec<RangeInclusive<u64>>),
    /// None of the ranges overlaps the representation: 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Evaluates the request's `Range` header for a representation of `len` bytes.
pub fn evaluate(headers: &HeaderMap, len: u64) -> RangeRequest {
    let mut values = headers.get_all(header::RANGE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        // Absent, or repeated (a field that is not a list): ignore.
        return RangeRequest::Full;
    };
    let Ok(value) = value.to_str() else {
        return RangeRequest::Full;
    };
    evaluate_str(value, len)
}

/// Evaluates one Range field value; see [`evaluate`].
pub fn evaluate_str(value: &str, len: u64) -> RangeRequest {
    let max = std::num::NonZeroUsize::new(MAX_RANGES).expect("MAX_RANGES is not zero");
    let parsed = match parse_range_header_with_max_ranges(value, max) {
        Ok(parsed) => parsed,
        // A syntactically invalid Range is ignored (RFC 9110 §14.2): full 200.
        Err(_) => return RangeRequest::Full,
    };
    match parsed.validate(len) {
        Ok(ranges) if ranges.is_empty() => RangeRequest::Full,
        Ok(ranges) => RangeRequest::Ranges(ranges),
        Err(RangeUnsatisfiableError::Unsatisfiable) => RangeRequest::Unsatisfiable,
        // Too many or overlapping ranges: the RFC lets a server ignore them.
        Err(_) => RangeRequest::Full,
    }
}

/// Formats a `Content-Range` value for a satisfied range.
pub fn content_range(range: &RangeInclusive<u64>, len: u64) -> String {
    format!("bytes {}-{}/{}", range.start(), range.end(), len)
}

/// Parses a `Content-Range: bytes first-last/complete` response value. `complete` is `None`
/// when the origin sent `*`.
pub fn parse_content_range(value: &str) -> Option<(RangeInclusive<u64>, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (span, complete) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    if last < first {
        return None;
    }
    let complete = match complete.trim() {
        "*" => None,
        n => {
            let n: u64 = n.parse().ok()?;
            if last >= n {
                return None;
            }
            Some(n)
        }
    };
    Some((first..=last, complete))
}

/// The first byte a Range header asks for, when that is known without the representation's
/// length (a suffix range is not): lets a cache fetch the right chunk first.
pub fn first_byte_hint(headers: &HeaderMap) -> u64 {
    use http_range_header::SyntacticallyCorrectRange as R;
    headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| http_range_header::parse_range_header(v).ok())
        .and_then(|p| p.into_ranges().into_iter().next())
        .map(|r| match r {
            R::FromStart(s) | R::Indexed(s, _) => s,
            R::FromLast(_) => 0,
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            evaluate_str("bytes=0-9", 100),
            RangeRequest::Ranges(vec![0..=9])
        );
        assert_eq!(
            evaluate_str("bytes=-10", 100),
            RangeRequest::Ranges(vec![90..=99])
        );
        assert_eq!(
            evaluate_str("bytes=90-", 100),
            RangeRequest::Ranges(vec![90..=99])
        );
        assert_eq!(
            evaluate_str("bytes=90-500", 100),
            RangeRequest::Ranges(vec![90..=99])
        );
        assert_eq!(
            evaluate_str("bytes=-500", 100),
            RangeRequest::Ranges(vec![0..=99])
        );
        assert_eq!(
            evaluate_str("bytes=0-0,50-59", 100),
            RangeRequest::Ranges(vec![0..=0, 50..=59])
        );
        assert_eq!(evaluate_str("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(evaluate_str("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(evaluate_str("bytes=9-1", 100), RangeRequest::Full);
        assert_eq!(evaluate_str("items=0-1", 100), RangeRequest::Full);
        assert_eq!(evaluate_str("bytes=abc", 100), RangeRequest::Full);
    }

    #[test]
    fn hints() {
        let mut h = HeaderMap::new();
        assert_eq!(first_byte_hint(&h), 0);
        h.insert(header::RANGE, "bytes=500-600, 0-1".parse().unwrap());
        assert_eq!(first_byte_hint(&h), 500);
        h.insert(header::RANGE, "bytes=-5".parse().unwrap());
        assert_eq!(first_byte_hint(&h), 0);
    }

    #[test]
    fn content_range_round_trip() {
        assert_eq!(content_range(&(5..=9), 10), "bytes 5-9/10");
        assert_eq!(parse_content_range("bytes 5-9/10"), Some((5..=9, Some(10))));
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5..=9, None)));
        assert_eq!(parse_content_range("bytes 5-10/10"), None);
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
    }
}
