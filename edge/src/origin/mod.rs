//! The origin as seen from the edge: an HTTP client (reqwest, pooled, with connect and read
//! timeouts) that fetches chunks by Range (as a [`FillSource`]), sends probes and
//! revalidations, and forwards requests the cache passes through. Every request is counted.
//! The cache reads a probe's answer through [`OriginResponse`] (status, fields, body length,
//! bounded reads; `response.rs`), so reqwest's types stay in this module and the passthrough.
//!
//! A chunk fill's answer is checked against the stored version before its bytes are used
//! ([`check_version`]: length, ETag, Last-Modified), so an origin that ignores Range and has
//! no strong validator cannot slip a span of a changed object into the old version.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use cdn_http::metrics::NodeMetrics;

use crate::fill::{FillError, FillSource};
use crate::store::ObjectMeta;

mod response;
pub use response::{OriginResponse, SmallBody, validators_of};

pub struct OriginClient {
    http: reqwest::Client,
    base: String,
    via: HeaderValue,
    metrics: Arc<NodeMetrics>,
    /// Client fields a fill forwards besides those the cache key includes
    /// (`fill_request_headers`).
    fill_fields: Vec<HeaderName>,
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

/// Longest value of a client's field a fill forwards: a longer one (a header oversize attack
/// on the origin, whose error would then be shared) is left out of the fill.
const FILL_FIELD_MAX: usize = 1024;

/// How the edge reaches its origin beyond the URL: the CA its certificate must chain to
/// (`None`: the system's roots), an address to connect to instead of resolving the URL's
/// host (the TLS name stays the host's), and HTTP/2.
#[derive(Debug, Clone, Default)]
pub struct OriginTransport {
    pub ca: Option<std::path::PathBuf>,
    pub connect: Option<std::net::SocketAddr>,
    pub http2: bool,
}

/// Why the origin client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum OriginClientError {
    #[error("origin CA {path}: {message}")]
    Ca {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("origin TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("origin client: {0}")]
    Client(#[from] reqwest::Error),
}

/// The trust roots of origin certificates: the CA file only, or the system's roots.
fn origin_roots(ca: Option<&std::path::Path>) -> Result<rustls::RootCertStore, OriginClientError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let err = |message: String| OriginClientError::Ca {
                path: path.to_path_buf(),
                message,
            };
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))? {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(err("no CERTIFICATE in the file".into()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the system's trust roots");
            }
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!(
                    ignored,
                    "no system trust roots found: an https:// origin will be refused unless origin_ca names its CA"
                );
            }
        }
    }
    Ok(roots)
}

impl OriginClient {
    pub fn new(
        base: &str,
        name: &str,
        connect_timeout: Duration,
        read_timeout: Duration,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, OriginClientError> {
        Self::with_transport(
            base,
            name,
            connect_timeout,
            read_timeout,
            &OriginTransport::default(),
            metrics,
        )
    }

    /// The client an edge with `cfg` uses.
    pub fn from_config(
        cfg: &crate::config::EdgeConfig,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, OriginClientError> {
        Self::with_transport(
            &cfg.origin,
            &cfg.name,
            Duration::from_millis(cfg.origin_connect_timeout_ms),
            Duration::from_millis(cfg.origin_read_timeout_ms),
            &OriginTransport {
                ca: cfg.origin_ca.clone(),
                connect: cfg.origin_connect,
                http2: cfg.origin_http2,
            },
            metrics,
        )
    }

    /// A client of the origin at `base`: over TLS for an `https://` base (rustls with the
    /// ring provider, TLS 1.2 and 1.3, the certificate verified against `transport.ca` or
    /// the system's roots and the URL's host name, sent as SNI), never falling back to
    /// cleartext.
    pub fn with_transport(
        base: &str,
        name: &str,
        connect_timeout: Duration,
        read_timeout: Duration,
        transport: &OriginTransport,
        metrics: Arc<NodeMetrics>,
    ) -> Result<Self, OriginClientError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .read_timeout(read_timeout)
            .redirect(reqwest::redirect::Policy::none())
            // Below common origin keep-alive timeouts (Apache 5 s, nginx 75 s, ours 10 s), so
            // a fill is not sent on a connection the origin is closing at that moment.
            .pool_idle_timeout(Duration::from_secs(4))
            .tcp_nodelay(true);
        let url = reqwest::Url::parse(base).ok();
        let https = url.as_ref().is_some_and(|u| u.scheme() == "https");
        if https {
            let roots = origin_roots(transport.ca.as_deref())?;
            let mut tls = rustls::ClientConfig::builder_with_provider(cdn_http::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = if transport.http2 {
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            b = b.tls_backend_preconfigured(tls);
        } else {
            // reqwest builds a TLS configuration even for cleartext: with the ring provider.
            cdn_http::tls::install_crypto_provider();
        }
        if transport.http2 {
            if !https {
                b = b.http2_prior_knowledge();
            }
        } else {
            b = b.http1_only();
        }
        if let (Some(addr), Some(host)) =
            (transport.connect, url.as_ref().and_then(|u| u.host_str()))
        {
            b = b.resolve(host, addr);
        }
        let http = b.build()?;
        Ok(OriginClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            via: HeaderValue::from_str(&format!("1.1 {name}"))
                .unwrap_or(HeaderValue::from_static("1.1 edge")),
            metrics,
            fill_fields: Vec::new(),
        })
    }

    /// The scheme and authority objects are keyed under.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sets the client fields every fill forwards (see [`OriginClient::fill_headers`]).
    pub fn with_fill_fields(mut self, fields: Vec<HeaderName>) -> Self {
        self.fill_fields = fields;
        self
    }

    /// The client's fields a cache fill forwards: an allow list, never a deny list, since the
    /// answer to a fill is shared with every viewer and any field the origin reads but the
    /// cache key does not include could choose what everyone gets (cache poisoning, CPDoS:
    /// `X-Forwarded-Host`, `X-HTTP-Method-Override`, an oversized or malformed field that
    /// makes the origin fail). Forwarded: the fields `vary` names (the stored responses'
    /// Vary: part of the key) and the configured `fill_request_headers`, each only if its
    /// value is at most [`FILL_FIELD_MAX`] bytes. The edge adds its own (Range,
    /// preconditions, Via) to what this returns; Host is the origin's.
    pub fn fill_headers(&self, req: &HeaderMap, vary: &[HeaderName]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for name in self.fill_fields.iter().chain(vary) {
            if h.contains_key(name) {
                continue;
            }
            let values: Vec<_> = req.get_all(name).iter().collect();
            if values.iter().map(|v| v.len()).sum::<usize>() > FILL_FIELD_MAX {
                continue;
            }
            for v in values {
                h.append(name.clone(), v.clone());
            }
        }
        h
    }

    /// This edge's Via member for a message received over `version`.
    pub fn via_for(&self, version: http::Version) -> HeaderValue {
        let proto = match version {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_3 => "3",
            http::Version::HTTP_10 => "1.0",
            _ => return self.via.clone(),
        };
        let name = self.via.as_bytes().strip_prefix(b"1.1 ").unwrap_or(b"edge");
        let mut v = proto.as_bytes().to_vec();
        v.push(b' ');
        v.extend_from_slice(name);
        HeaderValue::from_bytes(&v).unwrap_or_else(|_| self.via.clone())
    }

    /// Sends one request to the origin; `kind` labels it in metrics.
    ///
    /// A request without a body of an idempotent method that fails because its pooled
    /// connection was closed under it (the origin closed an idle keep-alive connection as
    /// the request went out: "connection closed before message completed") is sent once
    /// more: the pool has dropped that connection, so the retry goes on another.
    pub async fn send(
        &self,
        kind: &'static str,
        method: Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, FillError> {
        let v = http::Version::HTTP_11;
        self.send_as(kind, method, path_and_query, headers, body, v)
            .await
    }

    /// [`OriginClient::send`] for a client's request this edge received over `received`
    /// (a pass-through): the Via it adds names that protocol (RFC 9110 §7.6.3: `1.1 NAME`,
    /// `2 NAME`, `3 NAME`).
    pub async fn send_as(
        &self,
        kind: &'static str,
        method: Method,
        path_and_query: &str,
        mut headers: HeaderMap,
        body: Option<reqwest::Body>,
        received: http::Version,
    ) -> Result<reqwest::Response, FillError> {
        headers.remove(header::HOST);
        headers.append(header::VIA, self.via_for(received));
        let url = format!("{}{}", self.base, path_and_query);
        let retry = body.is_none() && method.is_idempotent();
        let count = || {
            self.metrics.with(|| {
                metrics::counter!("cdn_edge_origin_fetches_total", "kind" => kind).increment(1)
            })
        };
        let fail = |e: &reqwest::Error| {
            self.metrics
                .with(|| metrics::counter!("cdn_edge_origin_errors_total").increment(1));
            let chain = error_chain(e);
            if let Some(why) = certificate_refused(&chain) {
                // Never retried in cleartext: the viewer gets a 502.
                tracing::error!(origin = %self.base, reason = %why, error = %chain, "origin TLS certificate refused");
                self.metrics
                    .with(|| metrics::counter!("cdn_edge_origin_tls_refused_total").increment(1));
            }
            FillError::Request(chain)
        };
        count();
        let mut req = self
            .http
            .request(method.clone(), &url)
            .headers(headers.clone());
        if let Some(body) = body {
            req = req.body(body);
        }
        match req.send().await {
            Ok(r) => Ok(r),
            Err(e) if retry && closed_under_us(&e) => {
                tracing::debug!(error = %error_chain(&e), %url, "pooled connection closed; retrying once");
                self.metrics
                    .with(|| metrics::counter!("cdn_edge_origin_retries_total").increment(1));
                count();
                self.http
                    .request(method, &url)
                    .headers(headers)
                    .send()
                    .await
                    .map_err(|e| fail(&e))
            }
            Err(e) => Err(fail(&e)),
        }
    }

    /// A GET for the cache (a probe or a revalidation; `kind` labels it in metrics), its
    /// body left to read.
    pub async fn fetch(
        &self,
        kind: &'static str,
        path_and_query: &str,
        headers: HeaderMap,
    ) -> Result<OriginResponse, FillError> {
        self.send(kind, Method::GET, path_and_query, headers, None)
            .await
            .map(OriginResponse::from)
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

/// The reason when a request failed because the origin's certificate did not verify
/// (expired, another name, an unknown issuer...): rustls's own words, which reach us through
/// hyper-util's and reqwest's wrappers as the text of the error chain.
fn certificate_refused(chain: &str) -> Option<&str> {
    const MARK: &str = "invalid peer certificate: ";
    chain.find(MARK).map(|i| &chain[i + MARK.len()..])
}

/// Whether a request failed because the connection it went out on was closed before any
/// answer came (hyper's "incomplete message", or a reset while the request was written):
/// what happens when an origin closes an idle pooled connection as it is reused.
fn closed_under_us(e: &reqwest::Error) -> bool {
    if e.is_timeout() || e.is_connect() {
        return false;
    }
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(h) = c.downcast_ref::<hyper::Error>()
            && h.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            )
        {
            return true;
        }
        cur = c.source();
    }
    false
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

/// Adds the precondition that lets only the version with these validators answer a request:
/// `If-Match` with a strong ETag, else `If-Unmodified-Since` with Last-Modified.
pub fn require_version(
    h: &mut HeaderMap,
    etag: Option<&str>,
    last_modified: Option<std::time::SystemTime>,
) {
    if let Some(etag) = etag.filter(|e| !e.starts_with("W/"))
        && let Ok(v) = HeaderValue::from_str(etag)
    {
        h.insert(header::IF_MATCH, v);
    } else if let Some(lm) = last_modified
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm))
    {
        h.insert(header::IF_UNMODIFIED_SINCE, v);
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
                require_version(&mut h, meta.etag.as_deref(), meta.last_modified);
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
