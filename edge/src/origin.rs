//! The origin as seen from the edge: an HTTP client (reqwest, pooled, with connect and read
//! timeouts) that fetches chunks by Range (as a [`FillSource`]), sends probes and
//! revalidations, and forwards requests the cache passes through. Every request is counted.
//!
//! A chunk fill's answer is checked against the stored version before its bytes are used
//! ([`check_version`]: length, ETag, Last-Modified), so an origin that ignores Range and has
//! no strong validator cannot slip a span of a changed object into the old version.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use cdn_http::metrics::NodeMetrics;

use crate::fill::{FillError, FillSource};
use crate::store::ObjectMeta;

pub struct OriginClient {
    http: reqwest::Client,
    base: String,
    via: HeaderValue,
    metrics: Arc<NodeMetrics>,
}

/// Hop-by-hop fields (RFC 9110 §7.6.1), never forwarded nor stored.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop fields, including those the Connection field names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in HOP_BY_HOP {
        headers.remove(*n);
    }
}

/// Request fields a cache fill must not forward: the client's own range and conditionals
/// (the edge sets its own), and the host (the origin's is used).
const FILL_DROPPED: &[HeaderName] = &[
    header::HOST,
    header::RANGE,
    header::IF_RANGE,
    header::IF_MATCH,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_UNMODIFIED_SINCE,
    header::CONTENT_LENGTH,
];

/// Request fields that frameworks read to decide the host, scheme, path or method of a
/// request, and that are not part of the cache key: forwarded on a cache fill, one client
/// could make the origin build the response every other client then gets from the cache
/// (cache poisoning). Every `x-forwarded-*` field is dropped too. Pass-through requests (never
/// stored) keep them.
const FILL_UNKEYED: &[&str] = &[
    "forwarded",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

impl OriginClient {
    pub fn new(
        base: &str,
        name: &str,
        connect_timeout: Duration,
        read_timeout: Duration,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Below common origin keep-alive timeouts (Apache 5 s, nginx 75 s, ours 10 s), so
            // a fill is not sent on a connection the origin is closing at that moment.
            .pool_idle_timeout(Duration::from_secs(4))
            .tcp_nodelay(true)
            .build()?;
        Ok(OriginClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            via: HeaderValue::from_str(&format!("1.1 {name}"))
                .unwrap_or(HeaderValue::from_static("1.1 edge")),
            metrics,
        })
    }

    /// The scheme and authority objects are keyed under.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Headers for a cache fill derived from a client's request.
    pub fn fill_headers(req: &HeaderMap) -> HeaderMap {
        let mut h = req.clone();
        strip_hop_by_hop(&mut h);
        for n in FILL_DROPPED {
            h.remove(n);
        }
        for n in FILL_UNKEYED {
            h.remove(*n);
        }
        let forwarded: Vec<HeaderName> = h
            .keys()
            .filter(|n| n.as_str().starts_with("x-forwarded-"))
            .cloned()
            .collect();
        for n in forwarded {
            h.remove(n);
        }
        h
    }

    /// Sends one request to the origin; `kind` labels it in metrics.
    pub async fn send(
        &self,
        kind: &'static str,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, FillError> {
        headers.remove(header::HOST);
        headers.append(header::VIA, self.via.clone());
        self.metrics.with(|| {
            metrics::counter!("cdn_edge_origin_fetches_total", "kind" => kind).increment(1)
        });
        let mut req = self
            .http
            .request(method, format!("{}{}", self.base, path_and_query))
            .headers(headers);
        if let Some(body) = body {
            req = req.body(body);
        }
        req.send().await.map_err(|e| {
            self.metrics
                .with(|| metrics::counter!("cdn_edge_origin_errors_total").increment(1));
            FillError::Request(error_chain(&e))
        })
    }

    /// Counts body bytes received from the origin.
    pub fn count_bytes(&self, n: usize) {
        self.metrics
            .with(|| metrics::counter!("cdn_edge_origin_bytes_total").increment(n as u64));
    }

    /// Reads bytes `[start, start+len)` of the representation from a 206 or 200 response
    /// (skipping what precedes `start` in a 200), failing on a short body.
    pub async fn read_span(
        &self,
        mut resp: reqwest::Response,
        start: u64,
        len: u64,
    ) -> Result<Bytes, FillError> {
        let mut skip = match resp.status().as_u16() {
            206 => {
                let (span, _) = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(cdn_http::range::parse_content_range)
                    .ok_or_else(|| {
                        FillError::Mismatch("206 without a valid Content-Range".into())
                    })?;
                if *span.start() != start || span.end() - span.start() + 1 < len {
                    return Err(FillError::Mismatch(format!(
                        "asked {start}+{len}, got {}-{}",
                        span.start(),
                        span.end()
                    )));
                }
                0
            }
            200 => start,
            s => return Err(FillError::Status(s)),
        };
        let mut out = BytesMut::with_capacity(len as usize);
        while (out.len() as u64) < len {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(FillError::Request(error_chain(&e))),
            };
            self.count_bytes(chunk.len());
            let mut c = &chunk[..];
            if skip > 0 {
                let n = skip.min(c.len() as u64) as usize;
                c = &c[n..];
                skip -= n as u64;
            }
            let room = (len - out.len() as u64) as usize;
            out.extend_from_slice(&c[..c.len().min(room)]);
        }
        if (out.len() as u64) < len {
            return Err(FillError::Truncated {
                got: out.len() as u64,
                want: len,
            });
        }
        Ok(out.freeze())
    }
}

/// Checks that a chunk fill's response is of the version `meta` describes, before any of its
/// bytes are used: the representation's length (Content-Length of a 200, the complete length
/// in Content-Range of a 206), and the ETag and Last-Modified when the stored version has
/// them (a response must then carry the same values). Without this, an origin that ignores
/// Range and sends no strong validator could hand over a span of a new version, stored and
/// served as part of the old one. What cannot be told apart from the headers (a 200 without
/// Content-Length) is checked by [`OriginClient::read_whole_checked`]. Anything else than
/// 200 and 206 is left to [`OriginClient::read_span`].
pub fn check_version(
    meta: &ObjectMeta,
    headers: &HeaderMap,
    status: http::StatusCode,
) -> Result<(), FillError> {
    let text = |name: HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let len = match status.as_u16() {
        200 => text(header::CONTENT_LENGTH).and_then(|v| v.trim().parse::<u64>().ok()),
        206 => match text(header::CONTENT_RANGE).and_then(cdn_http::range::parse_content_range) {
            Some((_, Some(complete))) => Some(complete),
            // `bytes a-b/*`: the origin does not say which length it is serving.
            Some((_, None)) => {
                return Err(FillError::Mismatch(
                    "206 without the complete length in Content-Range".into(),
                ));
            }
            None => return Ok(()), // read_span refuses it
        },
        _ => return Ok(()),
    };
    if let Some(len) = len
        && len != meta.len
    {
        tracing::debug!(key = %meta.version.key, held = meta.len, got = len, "chunk fill: length changed");
        return Err(FillError::Changed);
    }
    // A 206 answered a request carrying the held validator as a precondition, so a field it
    // leaves out is not a change; a 200 (no precondition was applied) must repeat both.
    let required = status == http::StatusCode::OK;
    let etag = text(header::ETAG);
    if let Some(held) = &meta.etag
        && (required || etag.is_some())
        && etag != Some(held.as_str())
    {
        return Err(FillError::Changed);
    }
    let lm = text(header::LAST_MODIFIED);
    if let Some(held) = meta.last_modified
        && (required || lm.is_some())
        && lm.and_then(|v| httpdate::parse_http_date(v).ok()) != Some(held)
    {
        return Err(FillError::Changed);
    }
    Ok(())
}

impl OriginClient {
    /// Like [`OriginClient::read_span`] for a 200 whose length only its end tells: reads the
    /// whole body, keeps `[start, start+len)`, and fails with [`FillError::Changed`] unless the
    /// body is exactly `meta.len` bytes (it stops reading as soon as it is longer).
    async fn read_whole_checked(
        &self,
        mut resp: reqwest::Response,
        meta: &ObjectMeta,
        start: u64,
        len: u64,
    ) -> Result<Bytes, FillError> {
        let end = start.checked_add(len).ok_or(FillError::Changed)?;
        let mut out = BytesMut::with_capacity(usize::try_from(len).unwrap_or(0));
        let mut at = 0u64;
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => return Err(FillError::Request(error_chain(&e))),
            };
            self.count_bytes(chunk.len());
            let next = at.saturating_add(chunk.len() as u64);
            if next > meta.len {
                return Err(FillError::Changed);
            }
            let lo = start.clamp(at, next);
            let hi = end.clamp(at, next);
            if lo < hi {
                // Both within `chunk`, whose length fits in usize.
                out.extend_from_slice(&chunk[(lo - at) as usize..(hi - at) as usize]);
            }
            at = next;
        }
        if at != meta.len {
            return Err(FillError::Changed);
        }
        Ok(out.freeze())
    }
}

/// The message of an error and its causes ("error sending request: connection refused").
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl FillSource for Arc<OriginClient> {
    fn name(&self) -> &'static str {
        "origin"
    }

    fn fetch_chunk(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Result<Bytes, FillError>> {
        let this = self.clone();
        async move {
            let (start, end) = meta.chunk_span(index);
            let mut h = HeaderMap::new();
            for (name, value) in &meta.selecting {
                if let Some(v) = value {
                    h.append(name.clone(), v.clone());
                }
            }
            if meta.ranges {
                let range = format!("bytes={start}-{end}");
                h.insert(header::RANGE, HeaderValue::from_str(&range).expect("ascii"));
                // The chunk must come from the version we hold, or not at all.
                if let Some(etag) = meta.etag.as_deref().filter(|e| !e.starts_with("W/"))
                    && let Ok(v) = HeaderValue::from_str(etag)
                {
                    h.insert(header::IF_MATCH, v);
                } else if let Some(lm) = meta.last_modified
                    && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm))
                {
                    h.insert(header::IF_UNMODIFIED_SINCE, v);
                }
            }
            let resp = this
                .send("chunk", Method::GET, &meta.path_and_query, h, None)
                .await?;
            if resp.status() == http::StatusCode::PRECONDITION_FAILED {
                return Err(FillError::Changed);
            }
            check_version(&meta, resp.headers(), resp.status())?;
            let want = end - start + 1;
            if resp.status() == http::StatusCode::OK && resp.content_length().is_none() {
                // No length to compare before the body: read to its end and count.
                return this.read_whole_checked(resp, &meta, start, want).await;
            }
            this.read_span(resp, start, want).await
        }
        .boxed()
    }
}
