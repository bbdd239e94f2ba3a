//! Serving one representation: preconditions, If-Range, Range, 206/multipart/416, HEAD.
//!
//! The origin (files, synthetic objects) and the edge (cached chunks) both describe what they
//! serve as a [`Representation`] plus a function that streams any byte range of it, and call
//! [`respond`]. Everything RFC 9110 says about ranges and conditionals lives here, once.
//!
//! [`respond`] is [`plan`] then [`respond_planned`]. A caller that must know what the body will
//! read before answering (the edge: are those chunks stored?) makes the [`Plan`] itself, so the
//! request is evaluated once, and may build the fields itself; a [`Source`] that holds a
//! range's bytes at hand answers with them instead of a stream.

use std::io;
use std::ops::RangeInclusive;
use std::sync::Arc;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use futures::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::conditional::{self, Precondition, Validators};
use crate::multipart::Multipart;
use crate::range::{self, RangeRequest};

/// A body as a stream of byte chunks; an `Err` aborts the response (the client sees a
/// truncated transfer, never a short body that looks complete).
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// Streams the given inclusive byte range of a representation.
pub type SourceFn = dyn Fn(RangeInclusive<u64>) -> ByteStream + Send + Sync;

/// What is known of a representation before any of its bytes are read.
#[derive(Debug, Clone)]
pub struct Representation {
    pub len: u64,
    pub content_type: HeaderValue,
    pub validators: Validators,
    /// Sent with 200, 206 and 304 (Cache-Control, Expires, Vary, Age, Cache-Status...).
    pub headers: HeaderMap,
    /// Sent only with a full 200 (Content-Digest describes the whole content).
    pub full_headers: HeaderMap,
}

impl Representation {
    /// The fields of every 200, 206, 304 and 416 of this representation: ETag and
    /// Last-Modified, then `headers` in order.
    pub fn fields(&self) -> HeaderMap {
        let mut out = HeaderMap::with_capacity(self.headers.len() + 6);
        if let Some(etag) = &self.validators.etag
            && let Ok(v) = HeaderValue::from_str(etag)
        {
            out.insert(header::ETAG, v);
        }
        if let Some(lm) = self.validators.last_modified
            && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm))
        {
            out.insert(header::LAST_MODIFIED, v);
        }
        for (k, v) in &self.headers {
            out.append(k.clone(), v.clone());
        }
        out
    }
}

/// Where the bytes of a representation come from.
///
/// Any `Fn(RangeInclusive<u64>) -> ByteStream` is a source. A source that may hold the bytes
/// of a range at hand overrides [`Source::body`] to answer without a stream.
pub trait Source: Send + Sync + 'static {
    /// Streams the given inclusive byte range.
    fn stream(&self, range: RangeInclusive<u64>) -> ByteStream;

    /// The body of a 200 or single-range 206 for `range` (called at most once per response).
    fn body(&self, range: RangeInclusive<u64>) -> Body {
        Body::from_stream(self.stream(range))
    }
}

impl<F> Source for F
where
    F: Fn(RangeInclusive<u64>) -> ByteStream + Send + Sync + 'static,
{
    fn stream(&self, range: RangeInclusive<u64>) -> ByteStream {
        self(range)
    }
}

/// How a GET or HEAD of a representation is answered, decided from the request alone
/// (preconditions, If-Range, Range) before anything is read: see [`plan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// 304 Not Modified.
    NotModified,
    /// 412 Precondition Failed.
    Failed,
    /// 200 with the whole representation.
    Full,
    /// 416 Range Not Satisfiable.
    Unsatisfiable,
    /// 206 with these inclusive byte ranges (one: plain; several: multipart).
    Ranges(Vec<RangeInclusive<u64>>),
}

impl Plan {
    /// The byte ranges of the representation the body will carry, in order: none for HEAD
    /// and for answers without a body.
    pub fn body_ranges(
        &self,
        method: &Method,
        len: u64,
    ) -> impl Iterator<Item = RangeInclusive<u64>> + '_ {
        let (full, ranges): (_, &[RangeInclusive<u64>]) = match self {
            _ if method == Method::HEAD => (None, &[]),
            Plan::Full if len > 0 => (Some(0..=len - 1), &[]),
            Plan::Ranges(r) => (None, r),
            _ => (None, &[]),
        };
        full.into_iter().chain(ranges.iter().cloned())
    }
}

/// Whether the request has a field that preconditions or If-Range read: without one, the
/// validators cannot change the [`Plan`] (so a caller need not even build them).
pub fn has_conditionals(req: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
    ]
    .iter()
    .any(|n| req.contains_key(n))
}

/// Plans the answer to a GET or HEAD of a representation of `len` bytes with `validators`
/// (RFC 9110 §13.2.2, §13.1.5, §14.2). The Range header is evaluated here, once.
pub fn plan(method: &Method, req: &HeaderMap, len: u64, validators: &Validators) -> Plan {
    let conditionals = has_conditionals(req);
    if conditionals {
        match conditional::evaluate(method, req, validators) {
            Precondition::NotModified => return Plan::NotModified,
            Precondition::Failed => return Plan::Failed,
            Precondition::Proceed => {}
        }
    }
    // Range is defined for GET only (RFC 9110 §14.2); If-Range can void it.
    if method != Method::GET || (conditionals && !conditional::if_range_allows(req, validators)) {
        return Plan::Full;
    }
    match range::evaluate(req, len) {
        RangeRequest::Full => Plan::Full,
        RangeRequest::Unsatisfiable => Plan::Unsatisfiable,
        RangeRequest::Ranges(r) => Plan::Ranges(r),
    }
}

fn with_headers(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Builds the response to a GET or HEAD of `rep`, streaming ranges from `source`.
pub fn respond(
    method: &Method,
    req: &HeaderMap,
    rep: &Representation,
    source: impl Fn(RangeInclusive<u64>) -> ByteStream + Send + Sync + 'static,
) -> Response {
    let plan = plan(method, req, rep.len, &rep.validators);
    let fields = match plan {
        Plan::Failed => HeaderMap::new(),
        _ => rep.fields(),
    };
    let shape = Shape {
        len: rep.len,
        content_type: &rep.content_type,
        full_headers: &rep.full_headers,
    };
    respond_planned(method, plan, fields, shape, source)
}

/// What the length and range fields of a response are made from.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    /// Length of the whole representation.
    pub len: u64,
    pub content_type: &'a HeaderValue,
    /// Sent only with a full 200 (Content-Digest describes the whole content).
    pub full_headers: &'a HeaderMap,
}

/// Builds the response for a [`plan`]: `fields` are the representation's fields as
/// [`Representation::fields`] gives them (ETag, Last-Modified, then the others; unused for
/// 412), to which this adds Accept-Ranges, Content-Type, Content-Range and Content-Length.
pub fn respond_planned(
    method: &Method,
    plan: Plan,
    fields: HeaderMap,
    shape: Shape<'_>,
    source: impl Source,
) -> Response {
    let head = method == Method::HEAD;
    let mut h = fields;
    let len = shape.len;
    match plan {
        Plan::NotModified => with_headers(StatusCode::NOT_MODIFIED, h, Body::empty()),
        Plan::Failed => {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            with_headers(StatusCode::PRECONDITION_FAILED, h, Body::empty())
        }
        Plan::Full => {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(header::CONTENT_TYPE, shape.content_type.clone());
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            for (k, v) in shape.full_headers {
                h.append(k.clone(), v.clone());
            }
            let body = if head || len == 0 {
                Body::empty()
            } else {
                source.body(0..=len - 1)
            };
            with_headers(StatusCode::OK, h, body)
        }
        Plan::Unsatisfiable => {
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            with_headers(StatusCode::RANGE_NOT_SATISFIABLE, h, Body::empty())
        }
        Plan::Ranges(ranges) if ranges.len() == 1 => {
            let r = ranges[0].clone();
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(header::CONTENT_TYPE, shape.content_type.clone());
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&range::content_range(&r, len)).expect("ascii"),
            );
            h.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(r.end() - r.start() + 1),
            );
            with_headers(StatusCode::PARTIAL_CONTENT, h, source.body(r))
        }
        Plan::Ranges(ranges) => {
            let part_type = shape
                .content_type
                .to_str()
                .unwrap_or("application/octet-stream");
            let mp = Multipart::plan(&ranges, len, part_type);
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&mp.content_type).expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(mp.content_length));
            let source: Arc<SourceFn> = Arc::new(move |r| source.stream(r));
            with_headers(
                StatusCode::PARTIAL_CONTENT,
                h,
                Body::from_stream(mp.into_stream(source)),
            )
        }
    }
}

/// Makes a body stream fail unless it yields exactly `len` bytes, so that a source that ends
/// early (a file truncated under us, an origin that closed mid-body) aborts the response
/// instead of passing for complete.
pub fn exact_len(inner: ByteStream, len: u64) -> ByteStream {
    use futures::StreamExt;
    let mut seen = 0u64;
    inner
        .map(Some)
        .chain(futures::stream::once(async { None }))
        .filter_map(move |item| {
            let out = match item {
                Some(Ok(b)) => {
                    seen += b.len() as u64;
                    if seen > len {
                        Some(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("body longer than the expected {len} bytes"),
                        )))
                    } else {
                        Some(Ok(b))
                    }
                }
                Some(Err(e)) => Some(Err(e)),
                None if seen != len => Some(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body ended after {seen} of {len} bytes"),
                ))),
                None => None,
            };
            futures::future::ready(out)
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    /// The plan as `respond` made it before plans: preconditions, then If-Range, then Range,
    /// each evaluated whatever the request holds.
    fn before(method: &Method, req: &HeaderMap, len: u64, v: &Validators) -> Plan {
        match conditional::evaluate(method, req, v) {
            Precondition::NotModified => return Plan::NotModified,
            Precondition::Failed => return Plan::Failed,
            Precondition::Proceed => {}
        }
        let wanted = if method == Method::GET && conditional::if_range_allows(req, v) {
            range::evaluate(req, len)
        } else {
            RangeRequest::Full
        };
        match wanted {
            RangeRequest::Full => Plan::Full,
            RangeRequest::Unsatisfiable => Plan::Unsatisfiable,
            RangeRequest::Ranges(r) => Plan::Ranges(r),
        }
    }

    #[test]
    fn plans_as_before() {
        let lm = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let date = httpdate::fmt_http_date(lm);
        let earlier = httpdate::fmt_http_date(lm - Duration::from_secs(3600));
        let validators = [
            Validators::default(),
            Validators {
                etag: Some("\"abc\"".into()),
                last_modified: Some(lm),
            },
            Validators {
                etag: Some("W/\"weak\"".into()),
                last_modified: None,
            },
        ];
        let fields: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![("range", "bytes=0-9")],
            vec![("range", "bytes=0-9, 20-29")],
            vec![("range", "bytes=500-")],
            vec![("range", "bytes=x")],
            vec![("range", "bytes=0-1"), ("range", "bytes=2-3")],
            vec![("if-none-match", "\"abc\"")],
            vec![("if-none-match", "*"), ("range", "bytes=0-0")],
            vec![("if-match", "\"zzz\"")],
            vec![("if-match", "\"abc\""), ("range", "bytes=1-2")],
            vec![("if-modified-since", &date)],
            vec![("if-modified-since", &earlier), ("range", "bytes=3-4")],
            vec![("if-unmodified-since", &earlier)],
            vec![("if-range", "\"abc\""), ("range", "bytes=2-5")],
            vec![("if-range", "\"x\""), ("range", "bytes=2-5")],
            vec![("if-range", &date), ("range", "bytes=2-5")],
            vec![("if-range", "W/\"weak\""), ("range", "bytes=2-5")],
        ];
        for method in [Method::GET, Method::HEAD] {
            for v in &validators {
                for f in &fields {
                    let mut req = HeaderMap::new();
                    for (k, val) in f {
                        req.append(*k, HeaderValue::from_str(val).unwrap());
                    }
                    for len in [0, 1, 100] {
                        let got = plan(&method, &req, len, v);
                        assert_eq!(got, before(&method, &req, len, v), "{method} {f:?} {v:?}");
                        if !has_conditionals(&req) {
                            // What the validators are does not matter then.
                            assert_eq!(got, plan(&method, &req, len, &Validators::default()));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn body_ranges() {
        assert_eq!(
            Plan::Full.body_ranges(&Method::GET, 10).collect::<Vec<_>>(),
            [0..=9]
        );
        assert_eq!(Plan::Full.body_ranges(&Method::GET, 0).count(), 0);
        assert_eq!(Plan::Full.body_ranges(&Method::HEAD, 10).count(), 0);
        let parts = Plan::Ranges(vec![0..=1, 5..=6]);
        assert_eq!(
            parts.body_ranges(&Method::GET, 10).collect::<Vec<_>>(),
            [0..=1, 5..=6]
        );
        for p in [Plan::NotModified, Plan::Failed, Plan::Unsatisfiable] {
            assert_eq!(p.body_ranges(&Method::GET, 10).count(), 0);
        }
    }
}
