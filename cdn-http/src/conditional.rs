//! Preconditions (RFC 9110 §13): If-Match, If-Unmodified-Since, If-None-Match,
//! If-Modified-Since, evaluated in the order §13.2.2 prescribes, and If-Range (§13.1.5).

use std::time::SystemTime;

use headers::{ETag, HeaderMapExt, IfMatch, IfModifiedSince, IfNoneMatch, IfUnmodifiedSince};
use http::{HeaderMap, Method, header};

/// The validators of the selected representation.
#[derive(Debug, Clone, Default)]
pub struct Validators {
    /// The entity-tag as sent in `ETag`, quotes included (e.g. `"abc"`).
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
}

/// The outcome of evaluating the request's preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    Proceed,
    /// 304 Not Modified (GET/HEAD only).
    NotModified,
    /// 412 Precondition Failed.
    Failed,
}

impl Validators {
    fn etag(&self) -> Option<ETag> {
        self.etag.as_deref().and_then(|e| e.parse().ok())
    }
}

/// Evaluates preconditions per RFC 9110 §13.2.2.
pub fn evaluate(method: &Method, headers: &HeaderMap, v: &Validators) -> Precondition {
    let etag = v.etag();
    let safe = method == Method::GET || method == Method::HEAD;
    // Step 1 and 2.
    if headers.contains_key(header::IF_MATCH) {
        match headers.typed_get::<IfMatch>() {
            Some(im) if im.is_any() => {}
            Some(im) => {
                let passes = etag.as_ref().is_some_and(|e| im.precondition_passes(e));
                if !passes {
                    return Precondition::Failed;
                }
            }
            None => return Precondition::Failed,
        }
    } else if let (Some(ius), Some(lm)) =
        (headers.typed_get::<IfUnmodifiedSince>(), v.last_modified)
        && !ius.precondition_passes(lm)
    {
        return Precondition::Failed;
    }
    // Step 3 and 4.
    if headers.contains_key(header::IF_NONE_MATCH) {
        if let Some(inm) = headers.typed_get::<IfNoneMatch>() {
            let passes = match &etag {
                Some(e) => inm.precondition_passes(e),
                // Without an entity-tag only `*` can match.
                None => inm != IfNoneMatch::any(),
            };
            if !passes {
                return if safe {
                    Precondition::NotModified
                } else {
                    Precondition::Failed
                };
            }
        }
    } else if safe
        && let (Some(ims), Some(lm)) = (headers.typed_get::<IfModifiedSince>(), v.last_modified)
        && !ims.is_modified(lm)
    {
        return Precondition::NotModified;
    }
    Precondition::Proceed
}

/// Whether a `Range` header may be honoured given `If-Range` (RFC 9110 §13.1.5): true when
/// there is no If-Range, or when it names the current representation by a strong entity-tag
/// or by its exact Last-Modified date.
pub fn if_range_allows(headers: &HeaderMap, v: &Validators) -> bool {
    let Some(value) = headers.get(header::IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        // Weak tags never match (strong comparison).
        return !value.starts_with("W/") && v.etag.as_deref() == Some(value);
    }
    match (httpdate::parse_http_date(value), v.last_modified) {
        (Ok(date), Some(lm)) => httpdate::fmt_http_date(date) == httpdate::fmt_http_date(lm),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::time::{Duration, UNIX_EPOCH};

    fn v() -> Validators {
        Validators {
            etag: Some("\"abc\"".into()),
            last_modified: Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        }
    }

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, val) in pairs {
            m.append(*k, HeaderValue::from_str(val).unwrap());
        }
        m
    }

    #[test]
    fn order_and_outcomes() {
        let get = Method::GET;
        assert_eq!(evaluate(&get, &h(&[]), &v()), Precondition::Proceed);
        assert_eq!(
            evaluate(&get, &h(&[("if-none-match", "\"abc\"")]), &v()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-none-match", "W/\"abc\"")]), &v()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-match", "\"zzz\"")]), &v()),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-match", "W/\"abc\"")]), &v()),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-match", "*")]), &v()),
            Precondition::Proceed
        );
        let lm = httpdate::fmt_http_date(v().last_modified.unwrap());
        let earlier = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(1_600_000_000));
        assert_eq!(
            evaluate(&get, &h(&[("if-modified-since", &lm)]), &v()),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-modified-since", &earlier)]), &v()),
            Precondition::Proceed
        );
        // If-None-Match takes precedence over If-Modified-Since.
        assert_eq!(
            evaluate(
                &get,
                &h(&[("if-none-match", "\"other\""), ("if-modified-since", &lm)]),
                &v()
            ),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&get, &h(&[("if-unmodified-since", &earlier)]), &v()),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&Method::PUT, &h(&[("if-none-match", "*")]), &v()),
            Precondition::Failed
        );
    }

    #[test]
    fn if_range() {
        assert!(if_range_allows(&h(&[]), &v()));
        assert!(if_range_allows(&h(&[("if-range", "\"abc\"")]), &v()));
        assert!(!if_range_allows(&h(&[("if-range", "W/\"abc\"")]), &v()));
        assert!(!if_range_allows(&h(&[("if-range", "\"old\"")]), &v()));
        let lm = httpdate::fmt_http_date(v().last_modified.unwrap());
        assert!(if_range_allows(&h(&[("if-range", &lm)]), &v()));
        assert!(!if_range_allows(
            &h(&[("if-range", "Thu, 01 Jan 2015 00:00:00 GMT")]),
            &v()
        ));
    }
}
