//! Responses the cache does not keep: requests passed through to the origin, and the origin's
//! answer to a miss that turned out not to be storable, shaped for the one request that
//! caused it.
//!
//! What is forwarded carries the edge's own framing, never the client's: a GET or HEAD with a
//! body is refused ([`bodiless_with_body`]), and a body of another method is sent with the
//! length hyper read from the client ([`ForwardBody`]), so no request can leave bytes on a
//! pooled origin connection that the origin would read as the start of the next viewer's
//! request.
//!
//! A miss probes the origin with a Range for one chunk. When the answer is not stored it is
//! still this request's answer: [`answer`] reshapes it (a 206 of the whole object becomes the
//! 200 the client asked for; a client's range is cut from it) and, for an object longer than
//! the probe, asks the origin for the rest only, from the byte after the probe's last, with
//! the probe's validator as a precondition. One origin request per miss of an object that
//! fits a chunk, and no byte fetched twice for a larger one.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use cdn_http::ByteStream;
use cdn_http::conditional::Validators;
use cdn_http::represent::{self, Plan, Shape, Source};

use crate::cache::Unstored;
use crate::node::Edge;
use crate::origin::{OriginClient, error_chain, require_version, strip_hop_by_hop, validators_of};

/// Why a GET or HEAD request is refused for carrying a body (RFC 9110 §9.3.1: a body on
/// them has no defined meaning, and some origins read it while others do not, which is how
/// requests are smuggled through a shared connection); `None` for an acceptable request.
pub fn bodiless_with_body(req: &Request) -> Option<&'static str> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return None;
    }
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        return Some("a GET or HEAD request must not carry a body (Transfer-Encoding)");
    }
    let zero = |v: &HeaderValue| v.as_bytes().trim_ascii() == b"0";
    if !h.get_all(header::CONTENT_LENGTH).iter().all(zero) {
        return Some("a GET or HEAD request must not carry a body (Content-Length)");
    }
    None
}

/// Forwards a request body with the edge's own framing: the length the client's framing
/// proved (hyper reads exactly the client's Content-Length, or chunks to their end) becomes
/// the body's exact size, from which the origin request's framing is made afresh.
struct ForwardBody {
    // A Mutex only to be Sync, as reqwest requires: `poll_frame` has `&mut` and never locks.
    inner: Mutex<Body>,
    hint: http_body::SizeHint,
}

impl ForwardBody {
    fn new(body: Body) -> Self {
        let hint = http_body::Body::size_hint(&body);
        ForwardBody {
            inner: Mutex::new(body),
            hint,
        }
    }
}

impl http_body::Body for ForwardBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let body = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        std::pin::Pin::new(body).poll_frame(cx)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.hint
    }
}

/// Forwards a request to the origin as it is (with the edge's framing) and relays the
/// answer, uncached; `Err` carries the text of a 502. Unsafe methods that succeed invalidate
/// what is stored for the URL (RFC 9111 §4.4). Returns the origin's status with the response.
pub async fn pass(edge: &Arc<Edge>, req: Request) -> Result<Response, String> {
    let (parts, body) = req.into_parts();
    let mut h = parts.headers.clone();
    strip_hop_by_hop(&mut h);
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::TRANSFER_ENCODING);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let has_body = !matches!(parts.method, Method::GET | Method::HEAD);
    let body = has_body.then(|| reqwest::Body::wrap(ForwardBody::new(body)));
    let resp = edge
        .origin
        .send_as("pass", parts.method.clone(), pq, h, body, parts.version)
        .await
        .map_err(|e| e.to_string())?;
    let unsafe_method = !matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if unsafe_method && (resp.status().is_success() || resp.status().is_redirection()) {
        let primary = edge.cache.primary_key(&parts.uri);
        if let Err(e) = edge.cache.invalidate(&primary, false).await {
            tracing::warn!(error = %e, "invalidation failed");
        }
    }
    Ok(relay(&edge.origin, resp, &parts.method))
}

/// Relays an origin response: status, end-to-end fields and the body as it streams (none
/// to HEAD). A broken origin body aborts the client's response.
pub fn relay(origin: &Arc<OriginClient>, resp: reqwest::Response, method: &Method) -> Response {
    let status = resp.status();
    let mut headers = resp.headers().clone();
    strip_hop_by_hop(&mut headers);
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(counted(origin, resp))
    };
    let mut out = Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// The body of an origin response, its bytes counted as they arrive.
fn counted(origin: &Arc<OriginClient>, resp: reqwest::Response) -> ByteStream {
    let origin = origin.clone();
    resp.bytes_stream()
        .map(move |r| {
            r.inspect(|b| origin.count_bytes(b.len()))
                .map_err(|e| std::io::Error::other(error_chain(&e)))
        })
        .boxed()
}

/// [`answer`] with this node's origin client.
#[allow(clippy::result_large_err)] // once per uncacheable miss: the answer moves back
pub fn reshape(
    edge: &Edge,
    method: &Method,
    req: &HeaderMap,
    answer: Unstored,
) -> Result<Response, Unstored> {
    self::answer(&edge.origin, method, req, answer)
}

/// The response to the request whose own probe got `answer`, which is not stored: the
/// origin's answer shaped for what the request asked (see the module's documentation).
/// `Err` gives the answer back when it cannot be shaped for the request (several ranges, or
/// a range starting outside what the probe fetched): the request then goes to the origin as
/// it is.
#[allow(clippy::result_large_err)] // once per uncacheable miss: the answer moves back
pub fn answer(
    origin: &Arc<OriginClient>,
    method: &Method,
    req: &HeaderMap,
    answer: Unstored,
) -> Result<Response, Unstored> {
    let resp = &answer.resp;
    let status = resp.status();
    let h = resp.headers();
    let fetched = match status {
        StatusCode::PARTIAL_CONTENT => h
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(cdn_http::range::parse_content_range)
            .and_then(|(span, len)| Some((span, len?))),
        StatusCode::OK => h
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&len| len > 0)
            .map(|len| (0..=len - 1, len)),
        _ => None,
    };
    let Some((span, len)) = fetched else {
        if status == StatusCode::PARTIAL_CONTENT {
            // A part of unknown extent answers the probe's range, not the client's request:
            // the request goes to the origin as it is.
            return Err(answer);
        }
        // Another status, or a body whose length is not known: the answer as it is.
        return Ok(relay(origin, answer.resp.into_inner(), method));
    };
    let (etag, last_modified) = validators_of(h);
    let validators = Validators {
        etag,
        last_modified,
    };
    let plan = represent::plan(method, req, len, &validators);
    let wanted = match &plan {
        Plan::Full => Some(0..=len - 1),
        Plan::Ranges(r) if r.len() == 1 => Some(r[0].clone()),
        Plan::Ranges(_) => return Err(answer),
        _ => None,
    };
    if method != Method::HEAD
        && let Some(r) = &wanted
        && !span.contains(r.start())
    {
        return Err(answer);
    }
    let mut fields = h.clone();
    strip_hop_by_hop(&mut fields);
    for n in [
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::CONTENT_TYPE,
        header::ACCEPT_RANGES,
    ] {
        fields.remove(n);
    }
    // Content-Digest describes the content the origin sent: a whole 200's goes with a 200.
    let digest = fields.remove("content-digest");
    let mut full_headers = HeaderMap::new();
    if status == StatusCode::OK
        && let Some(d) = digest
    {
        full_headers.insert("content-digest", d);
    }
    let content_type = h
        .get(header::CONTENT_TYPE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let shape = Shape {
        len,
        content_type: &content_type,
        full_headers: &full_headers,
    };
    let source = ProbeBody {
        rest: Mutex::new(Some(Rest {
            origin: origin.clone(),
            span,
            len,
            validators,
            answer,
        })),
    };
    Ok(represent::respond_planned(
        method, plan, fields, shape, source,
    ))
}

/// The body of a reshaped answer: the probe's bytes, then the rest from the origin.
struct ProbeBody {
    rest: Mutex<Option<Rest>>,
}

struct Rest {
    origin: Arc<OriginClient>,
    /// What the probe's answer carries, and the representation's length.
    span: RangeInclusive<u64>,
    len: u64,
    validators: Validators,
    answer: Unstored,
}

impl Source for ProbeBody {
    fn stream(&self, range: RangeInclusive<u64>) -> ByteStream {
        let Some(rest) = self.rest.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            // `answer` plans at most one range, so the body is asked for once.
            let e = std::io::Error::other("the origin's answer was already used");
            return futures::stream::once(async move { Err(e) }).boxed();
        };
        let want = range.end() - range.start() + 1;
        represent::exact_len(rest.stream(range), want)
    }
}

impl Rest {
    fn stream(self, range: RangeInclusive<u64>) -> ByteStream {
        let (start, end) = (*range.start(), *range.end());
        let (s0, s1) = (*self.span.start(), *self.span.end());
        // From the probe's answer: skip to `start`, take up to the end of what it carries.
        let mut skip = start.saturating_sub(s0);
        let first =
            counted(&self.origin, self.answer.resp.into_inner()).try_filter_map(move |mut b| {
                let cut = usize::try_from(skip.min(b.len() as u64)).unwrap_or(b.len());
                skip -= cut as u64;
                let _ = b.split_to(cut);
                futures::future::ready(Ok((!b.is_empty()).then_some(b)))
            });
        // Take the probe's part only, and stop reading its answer there (the rest of it, if
        // any, is left unread and its connection closed).
        let first = limit(first.boxed(), end.min(s1) - start + 1);
        if end <= s1 {
            return first;
        }
        // The rest, from the byte after the probe's last, of the same version only.
        let (origin, validators, len) = (self.origin, self.validators, self.len);
        let (pq, mut h) = (self.answer.path_and_query, self.answer.sent);
        let from = s1 + 1;
        let rest = async move {
            let range = format!("bytes={from}-{end}");
            h.insert(header::RANGE, HeaderValue::from_str(&range).expect("ascii"));
            require_version(&mut h, validators.etag.as_deref(), validators.last_modified);
            let resp = origin
                .send("pass", Method::GET, &pq, h, None)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let same = resp.status() == StatusCode::PARTIAL_CONTENT
                && resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(cdn_http::range::parse_content_range)
                    .is_some_and(|(span, total)| *span.start() == from && total == Some(len));
            if !same {
                return Err(std::io::Error::other(format!(
                    "the rest of an unstored answer came back as {} (the object changed?)",
                    resp.status()
                )));
            }
            Ok(counted(&origin, resp))
        };
        first
            .chain(futures::stream::once(rest).try_flatten())
            .boxed()
    }
}

/// The first `len` bytes of `inner`: the piece that reaches `len` is cut there, and `inner` is
/// not polled again.
fn limit(inner: ByteStream, len: u64) -> ByteStream {
    futures::stream::unfold((inner, len), |(mut inner, left)| async move {
        if left == 0 {
            return None;
        }
        match inner.next().await {
            Some(Ok(mut b)) => {
                b.truncate(usize::try_from(left).unwrap_or(usize::MAX));
                let n = b.len() as u64;
                Some((Ok(b), (inner, left - n)))
            }
            Some(Err(e)) => Some((Err(e), (inner, 0))),
            None => None,
        }
    })
    .boxed()
}

/// A 502 for an origin that could not be reached.
pub fn bad_gateway(why: &str) -> Response {
    (StatusCode::BAD_GATEWAY, format!("{why}\n")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdn_http::metrics::NodeMetrics;
    use http_body_util::BodyExt;
    use std::time::Duration;

    fn origin() -> Arc<OriginClient> {
        Arc::new(
            OriginClient::new(
                "http://127.0.0.1:9",
                "t",
                Duration::from_secs(1),
                Duration::from_secs(1),
                Arc::new(NodeMetrics::new()),
            )
            .unwrap(),
        )
    }

    /// The probe's answer: a 206 of bytes `from..=to` of a 100-byte representation.
    fn probe_206(from: u64, to: u64) -> Unstored {
        let body: Vec<u8> = (from..=to).map(|i| i as u8).collect();
        let mut r = http::Response::new(reqwest::Body::from(body));
        *r.status_mut() = StatusCode::PARTIAL_CONTENT;
        let h = r.headers_mut();
        h.insert(
            "content-range",
            format!("bytes {from}-{to}/100").parse().unwrap(),
        );
        h.insert(
            "content-length",
            (to - from + 1).to_string().parse().unwrap(),
        );
        h.insert("content-type", "video/mp4".parse().unwrap());
        h.insert("cache-control", "private".parse().unwrap());
        h.insert("set-cookie", "a=1".parse().unwrap());
        Unstored {
            resp: reqwest::Response::from(r).into(),
            path_and_query: "/x".into(),
            sent: HeaderMap::new(),
        }
    }

    fn req(range: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(r) = range {
            h.insert(header::RANGE, r.parse().unwrap());
        }
        h
    }

    async fn body(r: Response) -> Vec<u8> {
        r.into_body().collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_probe_answer_is_shaped_for_the_request_that_caused_it() {
        let all: Vec<u8> = (0..100u8).collect();
        // The whole object in the probe: the 200 the client asked for, with its own fields.
        let r = answer(&origin(), &Method::GET, &req(None), probe_206(0, 99))
            .unwrap_or_else(|_| panic!());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "100");
        assert_eq!(r.headers()["set-cookie"], "a=1");
        assert!(!r.headers().contains_key("content-range"));
        assert_eq!(body(r).await, all);
        // A range within it.
        let r = answer(
            &origin(),
            &Method::GET,
            &req(Some("bytes=10-19")),
            probe_206(0, 99),
        )
        .unwrap_or_else(|_| panic!());
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()["content-range"], "bytes 10-19/100");
        assert_eq!(body(r).await, &all[10..=19]);
        // HEAD: the whole object's fields, no body.
        let r = answer(&origin(), &Method::HEAD, &req(None), probe_206(0, 99))
            .unwrap_or_else(|_| panic!());
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "100");
        assert!(body(r).await.is_empty());
        // Not shapeable: several ranges, or a range that starts before what the probe holds.
        assert!(
            answer(
                &origin(),
                &Method::GET,
                &req(Some("bytes=0-1,5-6")),
                probe_206(0, 99)
            )
            .is_err()
        );
        assert!(
            answer(
                &origin(),
                &Method::GET,
                &req(Some("bytes=0-9")),
                probe_206(50, 99)
            )
            .is_err()
        );
        // A 206 whose complete length is unknown cannot be reshaped.
        let mut unknown = probe_206(0, 9);
        let mut resp = unknown.resp.into_inner();
        resp.headers_mut()
            .insert("content-range", "bytes 0-9/*".parse().unwrap());
        unknown.resp = resp.into();
        assert!(answer(&origin(), &Method::GET, &req(None), unknown).is_err());
    }
}
