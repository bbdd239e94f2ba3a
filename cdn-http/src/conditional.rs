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
        // An origin's malformed ETag (e.g. a space inside) is no validator at all.
        self.etag
            .as_deref()
            .filter(|e| entity_tag_valid(e.as_bytes()))
            .and_then(|e| e.parse().ok())
    }
}

/// Whether every line of an `If-Match` / `If-None-Match` field is `*` or a list of
/// entity-tags (RFC 9110 §8.8.3: `[W/] DQUOTE *etagc DQUOTE`, separated by OWS "," OWS).
/// The `headers` crate is only asked to parse well-formed lists: it assumes no space inside a
/// tag and asserts so in debug builds.
fn entity_tag_lists_valid(headers: &HeaderMap, name: &header::HeaderName) -> bool {
    headers.get_all(name).iter().all(|value| {
        let bytes = value.as_bytes().trim_ascii();
        if bytes == b"*" {
            return true;
        }
        bytes
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .all(entity_tag_valid)
    })
}

/// `[W/] DQUOTE *etagc DQUOTE`
fn entity_tag_valid(tag: &[u8]) -> bool {
    let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
    tag.len() >= 2
        && tag[0] == b'"'
        && tag[tag.len() - 1] == b'"'
        && tag[1..tag.len() - 1]
            .iter()
            .all(|&c| c == 0x21 || (0x23..=0x7e).contains(&c) || c >= 0x80)
}

fn if_match(headers: &HeaderMap) -> Option<IfMatch> {
    entity_tag_lists_valid(headers, &header::IF_MATCH)
        .then(|| headers.typed_get::<IfMatch>())
        .flatten()
}

fn if_none_match(headers: &HeaderMap) -> Option<IfNoneMatch> {
    entity_tag_lists_valid(headers, &header::IF_NONE_MATCH)
        .then(|| headers.typed_get::<IfNoneMatch>())
        .flatten()
}

/// Evaluates preconditions per RFC 9110 §13.2.2.
pub fn evaluate(method: &Method, headers: &HeaderMap, v: &Validators) -> Precondition {
    let etag = v.etag();
    let safe = method == Method::GET || method == Method::HEAD;
    // Step 1 and 2.
    if headers.contains_key(header::IF_MATCH) {
        match if_match(headers) {
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
        if let Some(inm) = if_none_match(headers) {
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
    #[test]
    fn malformed_entity_tag_lists_do_not_panic() {
        // Regression (fuzz/conditional): a space inside a quoted tag tripped a debug
        // assertion of the `headers` crate. Malformed lists are treated as absent
        // (If-None-Match) or as failing (If-Match), like any other unparsable value.
        let bad = "W/\"abc W/\"ab\", \"x\"";
        assert_eq!(
            evaluate(&Method::GET, &h(&[("if-none-match", bad)]), &v()),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate(&Method::GET, &h(&[("if-match", bad)]), &v()),
            Precondition::Failed
        );
        assert_eq!(
            evaluate(&Method::GET, &h(&[("if-none-match", "\"a b\"")]), &v()),
            Precondition::Proceed
        );
        let odd = Validators {
            etag: Some("\"a b\"".into()),
            last_modified: None,
        };
        assert_eq!(
            evaluate(&Method::GET, &h(&[("if-none-match", "\"x\"")]), &odd),
            Precondition::Proceed
        );
        // Well-formed lists still work, with any spacing between members.
        assert_eq!(
            evaluate(
                &Method::GET,
                &h(&[("if-none-match", "\"x\" ,W/\"abc\"")]),
                &v()
            ),
            Precondition::NotModified
        );
    }
}
