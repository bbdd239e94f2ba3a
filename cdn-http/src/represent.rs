//! Serving one representation: preconditions, If-Range, Range, 206/multipart/416, HEAD.
//!
//! The origin (files, synthetic objects) and the edge (cached chunks) both describe what they
//! serve as a [`Representation`] plus a function that streams any byte range of it, and call
//! [`respond`]. Everything RFC 9110 says about ranges and conditionals lives here, once.

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
    fn validator_headers(&self, out: &mut HeaderMap) {
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
    let head = method == Method::HEAD;
    let mut h = HeaderMap::new();
    rep.validator_headers(&mut h);
    match conditional::evaluate(method, req, &rep.validators) {
        Precondition::NotModified => {
            return with_headers(StatusCode::NOT_MODIFIED, h, Body::empty());
        }
        Precondition::Failed => {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            return with_headers(StatusCode::PRECONDITION_FAILED, h, Body::empty());
        }
        Precondition::Proceed => {}
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let len = rep.len;
    // Range is defined for GET only (RFC 9110 §14.2); If-Range can void it.
    let wanted = if method == Method::GET && conditional::if_range_allows(req, &rep.validators) {
        range::evaluate(req, len)
    } else {
        RangeRequest::Full
    };
    match wanted {
        RangeRequest::Full => {
            h.insert(header::CONTENT_TYPE, rep.content_type.clone());
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            for (k, v) in &rep.full_headers {
                h.append(k.clone(), v.clone());
            }
            let body = if head || len == 0 {
                Body::empty()
            } else {
                Body::from_stream(source(0..=len - 1))
            };
            with_headers(StatusCode::OK, h, body)
        }
        RangeRequest::Unsatisfiable => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
            with_headers(StatusCode::RANGE_NOT_SATISFIABLE, h, Body::empty())
        }
        RangeRequest::Ranges(ranges) if ranges.len() == 1 => {
            let r = ranges[0].clone();
            h.insert(header::CONTENT_TYPE, rep.content_type.clone());
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&range::content_range(&r, len)).expect("ascii"),
            );
            h.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(r.end() - r.start() + 1),
            );
            with_headers(StatusCode::PARTIAL_CONTENT, h, Body::from_stream(source(r)))
        }
        RangeRequest::Ranges(ranges) => {
            let part_type = rep
                .content_type
                .to_str()
                .unwrap_or("application/octet-stream");
            let mp = Multipart::plan(&ranges, len, part_type);
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_str(&mp.content_type).expect("ascii"),
            );
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(mp.content_length));
            let source: Arc<SourceFn> = Arc::new(source);
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
