//! What a request must satisfy before the application sees it: [`guarded`] answers a
//! request target over `max_uri_bytes` with 414, too many or too large header fields with
//! 431, a body announced or found over `max_body_bytes` with 413 (the application reads the
//! body through a limit, so nothing past it reaches the application), a missing, repeated
//! or invalid Host, or one that differs from an h2 or h3 `:authority` ([`host_ok`]) and
//! the target `*` with any method but OPTIONS with 400; every such answer is a [`refusal`]
//! that closes an HTTP/1 connection. `OPTIONS *` is answered here (200, no content). The
//! express lane applies the same Host rule before it answers anything itself; the edge's
//! HTTP/3 requests get the same checks of the head ([`head_refusal`]), [`refusal`] and
//! [`limited_body`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use http::{HeaderValue, StatusCode, Version, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::{Body as _, Incoming};
use tower::ServiceExt;

use crate::limits::{Limits, header_bytes, uri_len};

/// Runs `app` for a request within the limits, or answers the limit's status.
pub(super) async fn guarded(
    app: Router,
    limits: Arc<Limits>,
    req: hyper::Request<Incoming>,
) -> Result<Response, Infallible> {
    let version = req.version();
    let asterisk = req.uri().path() == "*";
    let refused = head_refusal(version, req.uri(), req.headers(), &limits).or_else(|| {
        if req.body().size_hint().lower() > limits.max_body_bytes {
            Some((StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"))
        } else if asterisk && req.method() != http::Method::OPTIONS {
            Some((
                StatusCode::BAD_REQUEST,
                "the request target * is for OPTIONS only\n",
            ))
        } else {
            None
        }
    });
    if let Some((status, why)) = refused {
        let peer = req
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        tracing::info!(target: "cdn_http::limits", ?peer, status = status.as_u16(), "request refused");
        return Ok(refusal(status, why, version, None));
    }
    if asterisk {
        // `OPTIONS *` asks about the server in general (RFC 9110 §9.3.7): the node answers
        // it, with no content; no application route or origin has anything to say.
        let mut r = Response::new(Body::empty());
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        return Ok(r);
    }
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        // No body (most GETs): nothing to limit.
        let req = http::Request::from_parts(parts, Body::new(body));
        return app.oneshot(req).await;
    }
    let (body, exceeded) = limited_body(body, limits.max_body_bytes);
    let resp = app.oneshot(http::Request::from_parts(parts, body)).await?;
    if exceeded.load(Ordering::Relaxed) {
        // The application gave up on a body that passed the limit (an edge's pass-through
        // fails its origin request): say why.
        tracing::info!(target: "cdn_http::limits", status = 413, "request body over the limit");
        return Ok(refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
            version,
            None,
        ));
    }
    Ok(resp)
}

/// What a request's head breaks, whatever carries it (TCP here, QUIC in the edge's HTTP/3):
/// a target over `max_uri_bytes` (414), too many or too large fields (431), the Host rules
/// of [`host_ok`] (400); `None` when it breaks none.
pub fn head_refusal(
    version: Version,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    limits: &Limits,
) -> Option<(StatusCode, &'static str)> {
    if uri_len(uri) > limits.max_uri_bytes {
        Some((StatusCode::URI_TOO_LONG, "request target too long\n"))
    } else if headers.len() > limits.max_headers || header_bytes(headers) > limits.max_header_bytes
    {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large\n",
        ))
    } else if !host_ok(version, uri, headers) {
        Some((
            StatusCode::BAD_REQUEST,
            "one valid Host field is required (beside :authority, naming the same host)\n",
        ))
    } else {
        None
    }
}

/// `body` ending in an error after `max` bytes, and the flag that says it did: an
/// application that gives up on such a body answers with whatever it answers, and the
/// caller turns that into the 413 it was.
pub fn limited_body<B>(body: B, max: u64) -> (Body, Arc<AtomicBool>)
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let exceeded = Arc::new(AtomicBool::new(false));
    let flag = exceeded.clone();
    let max = usize::try_from(max).unwrap_or(usize::MAX);
    let body = Limited::new(body, max).map_err(move |e| {
        if e.is::<LengthLimitError>() {
            flag.store(true, Ordering::Relaxed);
        }
        e
    });
    (Body::new(body), exceeded)
}

/// The Host rules of every version: [`host_fields_ok`] (RFC 9112 §3.2), and for HTTP/2 and
/// HTTP/3 a Host field beside `:authority` names the same host and port (RFC 9113 §8.3.1,
/// RFC 9114 §4.3.1: else the request is malformed; a node that read one and something
/// behind it the other would answer for another host). An HTTP/1.1 absolute-form target
/// wins over Host (RFC 9112 §3.2.2), so there the two may differ.
pub fn host_ok(version: Version, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
    let hosts = headers.get_all(header::HOST);
    if !host_fields_ok(version, hosts.iter().map(HeaderValue::as_bytes)) {
        return false;
    }
    match (
        version >= Version::HTTP_2,
        uri.authority(),
        hosts.iter().next(),
    ) {
        (true, Some(authority), Some(host)) => {
            same_authority(authority, host.as_bytes(), uri.scheme_str())
        }
        _ => true,
    }
}

/// Whether `host` (a valid Host value) names the host and port of `authority`: hosts
/// compared without case, a missing port taken as the scheme's default.
fn same_authority(authority: &http::uri::Authority, host: &[u8], scheme: Option<&str>) -> bool {
    let Ok(host) = http::uri::Authority::try_from(host) else {
        return false;
    };
    let default = match scheme {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    };
    authority.host().eq_ignore_ascii_case(host.host())
        && authority.port_u16().or(default) == host.port_u16().or(default)
}

/// RFC 9112 §3.2: an HTTP/1.1 request has exactly one Host field, a request of any version
/// at most one, and its value is an authority without user information
/// (`uri-host [ ":" port ]`; empty only for a target without an authority, which an http
/// or https target always has). A server must answer any other with 400 (two fields or an
/// unparsable one could name different hosts to the edge and to whatever is behind it).
pub(crate) fn host_fields_ok<'a>(
    version: Version,
    mut values: impl Iterator<Item = &'a [u8]>,
) -> bool {
    match (values.next(), values.next()) {
        (None, _) => version != Version::HTTP_11,
        (Some(_), Some(_)) => false,
        // Empty only when the target URI has no authority, which an http(s) URI always has.
        (Some(v), None) => host_value_ok(v),
    }
}

/// `uri-host [ ":" port ]` (RFC 3986 §3.2.2–3.2.3; the port a number that fits 16 bits, or
/// empty).
fn host_value_ok(v: &[u8]) -> bool {
    let Ok(a) = http::uri::Authority::try_from(v) else {
        return false;
    };
    let (all, host) = (a.as_str(), a.host());
    // `Authority` allows user information, an unbracketed IPv6-like host, and any text
    // after the colon as the port.
    if all.contains('@') || (host.contains(':') && !host.starts_with('[')) {
        return false;
    }
    match all.get(host.len()..).map(|rest| rest.strip_prefix(':')) {
        Some(None) => all.len() == host.len(),
        Some(Some(port)) => {
            port.is_empty()
                || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
        }
        None => false,
    }
}

/// A short plain-text answer, not stored; it closes an HTTP/1 connection.
pub fn refusal(
    status: StatusCode,
    why: &'static str,
    version: Version,
    retry_after: Option<u64>,
) -> Response {
    let mut r = Response::new(Body::from(why));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(s) = retry_after {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if version < Version::HTTP_2 {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_fields_follow_rfc_9112() {
        let ok = |v: Version, hosts: &[&str]| host_fields_ok(v, hosts.iter().map(|h| h.as_bytes()));
        for good in [
            "example.com",
            "example.com:8080",
            "example.com:",
            "127.0.0.1:65535",
            "[::1]:443",
            "[::1]",
        ] {
            assert!(ok(Version::HTTP_11, &[good]), "{good:?}");
        }
        for bad in [
            "user@example.com",
            "example.com:http",
            "example.com:65536",
            "example.com:-1",
            "a b",
            "::1",
            "example.com/path",
            "",
        ] {
            assert!(!ok(Version::HTTP_11, &[bad]), "{bad:?}");
        }
        assert!(!ok(Version::HTTP_11, &[]), "HTTP/1.1 needs a Host");
        assert!(ok(Version::HTTP_10, &[]), "HTTP/1.0 does not");
        assert!(ok(Version::HTTP_2, &[]), "h2 has :authority");
        // h2 and h3: Host beside :authority must name the same host and port.
        let uri: http::Uri = "https://Example.com/a".parse().expect("uri");
        let with_host = |v: Version, uri: &http::Uri, host: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(host).expect("value"));
            host_ok(v, uri, &h)
        };
        for v in [Version::HTTP_2, Version::HTTP_3] {
            assert!(host_ok(v, &uri, &http::HeaderMap::new()));
            for same in ["example.com", "EXAMPLE.com:443"] {
                assert!(with_host(v, &uri, same), "{v:?} {same}");
            }
            for other in ["other.com", "example.com:8443", "example.com.evil"] {
                assert!(!with_host(v, &uri, other), "{v:?} {other}");
            }
        }
        // HTTP/1.1 absolute form: the target wins, Host may differ.
        assert!(with_host(Version::HTTP_11, &uri, "other.com"));
        let plain: http::Uri = "http://x:80/".parse().expect("uri");
        assert!(with_host(Version::HTTP_2, &plain, "x"));
        assert!(!with_host(Version::HTTP_2, &plain, "x:443"));
        for v in [Version::HTTP_10, Version::HTTP_11, Version::HTTP_2] {
            assert!(!ok(v, &["a", "a"]), "two Hosts, {v:?}");
        }
    }
}
