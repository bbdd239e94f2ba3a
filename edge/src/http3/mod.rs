//! HTTP/3 to viewers: a QUIC endpoint (quinn) speaking HTTP/3 (the `h3` crates) in front of
//! the same axum [`Router`] (or any tower service) the TCP listeners serve, so a request over
//! HTTP/3 takes the one request path of the edge (ranges, conditionals, coalescing,
//! Cache-Status all come from it). This module owns the QUIC side only: the transport limits,
//! address validation, the connection cap, the translation of each h3 request stream into an
//! `http::Request` with a streaming body (and of the response back, frame by frame under QUIC
//! flow control), graceful shutdown with GOAWAY, and the `Alt-Svc` field that advertises it.
//!
//! What a client sees at each limit (SECURITY.md, "HTTP/3 and QUIC"):
//! - more than `max_concurrent_streams` requests at once on a connection: the QUIC stream
//!   credit (MAX_STREAMS) is not extended until one finishes, so the client queues them;
//! - a request head over the field-section limit (`[limits] max_header_bytes +
//!   max_uri_bytes`, announced as SETTINGS_MAX_FIELD_SECTION_SIZE): `431` on that stream, the
//!   connection goes on; more than `max_headers` fields or over `max_header_bytes`: `431`; a
//!   target over `max_uri_bytes`: `414`; a body over `max_body_bytes`: `413`;
//! - a head not complete within `header_read_timeout_ms`, or a response the client stops
//!   reading for `idle_timeout_ms`: the stream is reset;
//! - no packet for `idle_timeout_ms` of `[http3]`: the connection is closed (QUIC idle
//!   timeout);
//! - more than `max_connections` connections: the handshake is refused (CONNECTION_REFUSED);
//! - more than `retry_above_handshakes` handshakes in progress: new clients must prove their
//!   address with a Retry round trip first (0: always), so spoofed sources cannot hold
//!   handshake state; before validation quinn sends at most three times what it received
//!   (RFC 9000 §8.1, the amplification limit).
//!
//! On shutdown the endpoint stops accepting connections, every connection is sent GOAWAY
//! (requests already accepted finish, later ones are rejected with H3_REQUEST_REJECTED so the
//! client retries them elsewhere), and what is still running at the drain deadline is cut.

pub mod client;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use bytes::{Buf, Bytes};
use http::{HeaderName, HeaderValue, Method, StatusCode, header};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use ::h3::error::Code;
use ::h3::server::{RequestResolver, RequestStream};
use cdn_http::limits::Limits;
use cdn_http::metrics::NodeMetrics;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN protocol id of HTTP/3 (RFC 9114).
pub const ALPN: &[u8] = b"h3";

/// `[http3]` of the edge's config: HTTP/3 on a UDP address, with its certificate and the
/// QUIC limits. The request limits (head size, URI, body, head timeout) are the node's
/// `[limits]`, shared with HTTP/1.1 and HTTP/2.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http3Config {
    /// UDP address of the HTTP/3 endpoint (in production the port of the HTTPS listener).
    pub listen: SocketAddr,
    /// Certificate chain (PEM, leaf first) and private key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Requests in flight at once on one connection (QUIC bidirectional stream credit).
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A connection with no packet either way for this long is closed, milliseconds; also
    /// how long a response may wait for a client that stopped reading.
    #[serde(default = "defaults::idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// Most QUIC connections at once; further handshakes are refused.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    /// Handshakes in progress above which a new client must first validate its address with
    /// a Retry (one more round trip); 0: always.
    #[serde(default = "defaults::retry_above_handshakes")]
    pub retry_above_handshakes: usize,
    /// `ma` of the `Alt-Svc` advertisement on TCP responses, seconds.
    #[serde(default = "defaults::alt_svc_max_age_secs")]
    pub alt_svc_max_age_secs: u64,
}

impl Http3Config {
    /// HTTP/3 on `listen` with the default QUIC limits, for an endpoint whose certificates
    /// come from elsewhere (the HTTPS listener's `[tls]`; `cert` and `key` stay empty).
    pub fn on(listen: SocketAddr) -> Self {
        Http3Config {
            listen,
            cert: PathBuf::new(),
            key: PathBuf::new(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            max_connections: defaults::max_connections(),
            retry_above_handshakes: defaults::retry_above_handshakes(),
            alt_svc_max_age_secs: defaults::alt_svc_max_age_secs(),
        }
    }
}

mod defaults {
    pub fn max_concurrent_streams() -> u32 {
        100
    }
    pub fn idle_timeout_ms() -> u64 {
        30_000
    }
    pub fn max_connections() -> usize {
        10_000
    }
    pub fn retry_above_handshakes() -> usize {
        64
    }
    pub fn alt_svc_max_age_secs() -> u64 {
        86_400
    }
}

impl Http3Config {
    /// The config for `listen` with `cert` and `key`, every limit at its default.
    pub fn new(listen: SocketAddr, cert: PathBuf, key: PathBuf) -> Self {
        Http3Config {
            listen,
            cert,
            key,
            max_concurrent_streams: defaults::max_concurrent_streams(),
            idle_timeout_ms: defaults::idle_timeout_ms(),
            max_connections: defaults::max_connections(),
            retry_above_handshakes: defaults::retry_above_handshakes(),
            alt_svc_max_age_secs: defaults::alt_svc_max_age_secs(),
        }
    }

    /// Checks values serde cannot: `Err((field, message))`.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.max_concurrent_streams == 0 {
            return Err(("http3.max_concurrent_streams", "must be at least 1"));
        }
        if self.idle_timeout_ms == 0 || self.idle_timeout_ms > 600_000 {
            return Err(("http3.idle_timeout_ms", "must be between 1 and 600000"));
        }
        if self.max_connections == 0 {
            return Err(("http3.max_connections", "must be at least 1"));
        }
        Ok(())
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1))
    }
}

/// What can go wrong setting HTTP/3 up.
#[derive(Debug, thiserror::Error)]
pub enum Http3Error {
    #[error("reading {file}: {source}")]
    Pem {
        file: String,
        source: rustls::pki_types::pem::Error,
    },
    #[error("no certificate in {0}")]
    NoCertificate(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS configuration cannot serve QUIC: {0}")]
    Quic(String),
    #[error("binding UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting: {0}")]
    Connect(String),
    #[error("HTTP/3: {0}")]
    H3(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 server configuration (ring provider, ALPN `h3`) from a PEM certificate chain
/// and key: what `[http3]` loads. (The HTTPS listeners build their own; [`quic_server_config`]
/// takes theirs as well.)
pub fn tls_from_pem(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, Http3Error> {
    let pem = |file: &Path| {
        let file = file.display().to_string();
        move |source| Http3Error::Pem { file, source }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(pem(cert))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem(cert))?;
    if chain.is_empty() {
        return Err(Http3Error::NoCertificate(cert.display().to_string()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(pem(key))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The QUIC transport limits of viewers' connections.
pub fn transport(cfg: &Http3Config) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(cfg.max_concurrent_streams.into());
    // The client's control stream and QPACK encoder and decoder streams, with room for
    // reserved (grease) stream types; the server pushes nothing.
    t.max_concurrent_uni_streams(8u32.into());
    t.max_idle_timeout(quinn::IdleTimeout::try_from(cfg.idle_timeout()).ok());
    // What a client may send before the edge reads it: request bodies are small (a
    // pass-through upload is read as fast as the origin takes it).
    t.stream_receive_window(quinn::VarInt::from_u32(256 * 1024));
    t.receive_window(quinn::VarInt::from_u32(1024 * 1024));
    // Response bytes buffered unacknowledged per connection: bounds the memory a slow or
    // lossy client can hold; a response waits (flow control) rather than buffering.
    t.send_window(4 * 1024 * 1024);
    Arc::new(t)
}

/// The quinn server configuration from a TLS configuration (its ALPN becomes `h3` alone; no
/// 0-RTT: early data could be replayed) and the QUIC limits of `cfg`.
pub fn quic_server_config(
    tls: Arc<rustls::ServerConfig>,
    cfg: &Http3Config,
) -> Result<quinn::ServerConfig, Http3Error> {
    let mut tls = (*tls).clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| Http3Error::Quic(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport(cfg));
    // Connections waiting for `accept` at once: more than the cap is never useful.
    server.max_incoming(cfg.max_connections.clamp(1, 1 << 16));
    Ok(server)
}

/// Binds the UDP endpoint of `cfg.listen` with `tls`.
pub fn bind(
    cfg: &Http3Config,
    tls: Arc<rustls::ServerConfig>,
) -> Result<quinn::Endpoint, Http3Error> {
    let server = quic_server_config(tls, cfg)?;
    quinn::Endpoint::server(server, cfg.listen).map_err(|source| Http3Error::Bind {
        addr: cfg.listen,
        source,
    })
}

/// `h3=":PORT"; ma=MAX_AGE`: the `Alt-Svc` value that advertises HTTP/3 on `port` (RFC 7838;
/// the same host).
pub fn alt_svc(port: u16, max_age_secs: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("h3=\":{port}\"; ma={max_age_secs}"))
        .unwrap_or_else(|_| HeaderValue::from_static("clear"))
}

/// A tower layer adding `Alt-Svc` (see [`alt_svc`]) to every response that has none: put it
/// on the TCP listeners' service while HTTP/3 is on (`router.layer(alt_svc_layer(..))`).
pub fn alt_svc_layer(
    port: u16,
    max_age_secs: u64,
) -> tower_http::set_header::SetResponseHeaderLayer<HeaderValue> {
    tower_http::set_header::SetResponseHeaderLayer::if_not_present(
        header::ALT_SVC,
        alt_svc(port, max_age_secs),
    )
}

/// Base64 of the SHA-256 of a certificate's SubjectPublicKeyInfo: what Chromium's
/// `--ignore-certificate-errors-spki-list` takes. `None` when `der` is not a certificate.
pub fn spki_sha256_base64(der: &[u8]) -> Option<String> {
    use base64::Engine;
    use sha2::Digest;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    Some(base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(spki)))
}

/// [`spki_sha256_base64`] of the first certificate of a PEM file.
pub fn spki_sha256_of_pem(path: &Path) -> Option<String> {
    let der = CertificateDer::from_pem_file(path).ok()?;
    spki_sha256_base64(&der)
}

/// How [`serve`] serves: the QUIC limits, the node's request limits, the drain deadline.
#[derive(Clone)]
pub struct Http3Options {
    pub quic: Http3Config,
    pub limits: Limits,
    pub drain_deadline: Duration,
    /// Where the HTTP/3 counters go (`cdn_edge_http3_*`); none without.
    pub metrics: Option<Arc<NodeMetrics>>,
}

impl Http3Options {
    fn count(&self, name: &'static str) {
        if let Some(m) = &self.metrics {
            m.with(|| metrics::counter!(name).increment(1));
        }
    }
}

/// The service every request goes to: the edge's router, or anything alike.
pub trait App:
    tower::Service<http::Request<Body>, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> App for S where
    S: tower::Service<http::Request<Body>, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves HTTP/3 on `endpoint` with `app` until `shutdown` completes, then drains (GOAWAY,
/// in-flight requests finish within `opts.drain_deadline`) and closes the endpoint.
pub async fn serve<S: App>(
    endpoint: quinn::Endpoint,
    app: S,
    opts: Http3Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Http3Error> {
    let opts = Arc::new(opts);
    let permits = Arc::new(Semaphore::new(opts.quic.max_connections.max(1)));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            _ = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(peer = %incoming.remote_address(), "over http3.max_connections: refused");
            opts.count("cdn_edge_http3_refused_total");
            incoming.refuse();
            continue;
        };
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && handshakes.load(Ordering::Relaxed) >= opts.quic.retry_above_handshakes
        {
            // The client must echo the token from its own address before it costs state.
            opts.count("cdn_edge_http3_retries_total");
            let _ = incoming.retry();
            continue;
        }
        conns.spawn(connection(
            incoming,
            app.clone(),
            opts.clone(),
            permit,
            handshakes.clone(),
            drain_rx.clone(),
        ));
    }
    // Drain: no new connection, GOAWAY on every open one, then wait for their requests.
    endpoint.set_server_config(None);
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(opts.drain_deadline, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("http3: drain deadline passed with requests in flight: cutting them");
    }
    conns.shutdown().await;
    endpoint.close(quinn::VarInt::from_u32(0x100), b"");
    // The CONNECTION_CLOSE frames go out; bounded, a vanished client cannot hold us.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    Ok(())
}

/// Decrements the count of handshakes in progress when dropped.
struct Handshake(Arc<AtomicUsize>);

impl Drop for Handshake {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One QUIC connection: the handshake, then its requests, each on a task of its own.
async fn connection<S: App>(
    incoming: quinn::Incoming,
    app: S,
    opts: Arc<Http3Options>,
    _permit: OwnedSemaphorePermit,
    handshakes: Arc<AtomicUsize>,
    mut drain: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    handshakes.fetch_add(1, Ordering::Relaxed);
    let in_handshake = Handshake(handshakes);
    let conn = match incoming.accept() {
        Ok(c) => c.await,
        Err(e) => Err(e),
    };
    drop(in_handshake);
    let conn = match conn {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "http3 handshake failed");
            return;
        }
    };
    opts.count("cdn_edge_http3_connections_total");
    let quic = conn.clone();
    let max_field_section = u64::try_from(opts.limits.head_buffer_bytes()).unwrap_or(u64::MAX);
    let built = ::h3::server::builder()
        .max_field_section_size(max_field_section)
        .build::<_, Bytes>(h3_quinn::Connection::new(conn))
        .await;
    let mut h3 = match built {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "http3 connection setup failed");
            return;
        }
    };
    let mut requests = JoinSet::new();
    let mut draining = *drain.borrow();
    if draining {
        let _ = h3.shutdown(0).await;
    }
    loop {
        if draining && requests.is_empty() {
            break;
        }
        tokio::select! {
            r = h3.accept() => match r {
                Ok(Some(resolver)) => {
                    requests.spawn(request(resolver, app.clone(), quic.clone(), opts.clone()));
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "http3 connection ended");
                    break;
                }
            },
            Some(_) = requests.join_next(), if !requests.is_empty() => {}
            r = async { drain.wait_for(|d| *d).await.is_ok() }, if !draining => {
                draining = true;
                if r {
                    // GOAWAY: requests already accepted finish; later ones are refused.
                    let _ = h3.shutdown(0).await;
                }
            }
        }
    }
    while requests.join_next().await.is_some() {}
    quic.close(quinn::VarInt::from_u32(0x100), b"");
}

/// One request stream: its head within the head timeout, the limits, the app, and the
/// response streamed back.
async fn request<S: App>(
    resolver: RequestResolver<h3_quinn::Connection, Bytes>,
    app: S,
    quic: quinn::Connection,
    opts: Arc<Http3Options>,
) {
    let head = tokio::time::timeout(
        opts.limits.header_read_timeout(),
        resolver.resolve_request(),
    )
    .await;
    let (req, stream) = match head {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            // A head over the field-section limit was answered 431 by h3 itself.
            tracing::info!(target: "cdn_http::limits", peer = %quic.remote_address(), error = %e, "http3 request refused");
            opts.count("cdn_edge_http3_bad_requests_total");
            return;
        }
        Err(_) => {
            tracing::info!(target: "cdn_http::limits", peer = %quic.remote_address(), "http3 request head not received in time");
            return;
        }
    };
    opts.count("cdn_edge_http3_requests_total");
    let (mut send, recv) = stream.split();
    let method = req.method().clone();
    let mut kept = None;
    let resp = match refused(&req, &opts.limits) {
        Some(r) => {
            // The body is not read: the client is asked to stop (H3_NO_ERROR) once the
            // refusal is sent.
            kept = Some(RecvBody {
                recv,
                declared: None,
                got: 0,
                done: false,
            });
            r
        }
        None => {
            let (mut parts, ()) = req.into_parts();
            // The client's address, as axum's `ConnectInfo` gives it on TCP (taken now: QUIC
            // connections may migrate).
            parts
                .extensions
                .insert(ConnectInfo::<SocketAddr>(quic.remote_address()));
            let declared = content_length(&parts.headers);
            let body = RecvBody {
                recv,
                declared,
                got: 0,
                done: declared == Some(0),
            };
            if declared.is_none() && matches!(parts.method, Method::GET | Method::HEAD) {
                // No body is read for these (a body on them is refused by its framing
                // fields on TCP, and here it has none); the stream is kept until the
                // response is sent, so the client is not told to stop before it is done.
                kept = Some(body);
                call(app, parts, None, &opts.limits).await
            } else {
                call(app, parts, Some(body), &opts.limits).await
            }
        }
    };
    if let Err(e) = respond(&mut send, &method, resp, opts.quic.idle_timeout()).await {
        tracing::debug!(peer = %quic.remote_address(), error = %e, "http3 response not completed");
    }
    drop(kept);
}

/// The answer of a limit the request crosses, if any: the head's as `cdn_http::server` checks
/// it on TCP, then the announced body length.
fn refused(req: &http::Request<()>, limits: &Limits) -> Option<Response> {
    let head =
        cdn_http::server::head_refusal(http::Version::HTTP_3, req.uri(), req.headers(), limits);
    let (status, why) = head.or_else(|| {
        let length = content_length(req.headers());
        if length.is_some_and(|n| n > limits.max_body_bytes) {
            Some((StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"))
        } else if length.is_none() && req.headers().contains_key(header::CONTENT_LENGTH) {
            Some((StatusCode::BAD_REQUEST, "invalid Content-Length\n"))
        } else {
            None
        }
    })?;
    tracing::info!(target: "cdn_http::limits", status = status.as_u16(), "http3 request refused");
    Some(refusal(status, why))
}

fn refusal(status: StatusCode, why: &'static str) -> Response {
    cdn_http::server::refusal(status, why, http::Version::HTTP_3, None)
}

/// The one Content-Length of a request (all its values equal), `None` when absent or invalid.
fn content_length(h: &http::HeaderMap) -> Option<u64> {
    let mut n = None;
    for v in h.get_all(header::CONTENT_LENGTH) {
        let this = v.to_str().ok()?.trim().parse::<u64>().ok()?;
        if n.is_some_and(|m| m != this) {
            return None;
        }
        n = Some(this);
    }
    n
}

/// Calls the app with the body limited to `max_body_bytes` (a 413 when it passed it).
async fn call<S: App>(
    app: S,
    parts: http::request::Parts,
    body: Option<RecvBody>,
    limits: &Limits,
) -> Response {
    let Some(body) = body.filter(|b| !b.done) else {
        let req = http::Request::from_parts(parts, Body::empty());
        return match app.oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    };
    let (body, exceeded) = cdn_http::server::limited_body(body, limits.max_body_bytes);
    let req = http::Request::from_parts(parts, body);
    let resp = match app.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if exceeded.load(Ordering::Relaxed) {
        tracing::info!(target: "cdn_http::limits", status = 413, "http3 request body over the limit");
        return refusal(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
    }
    resp
}

/// A request body read from the h3 stream as the app asks for it (QUIC flow control holds
/// the client back meanwhile). A Content-Length is its exact size: more or fewer bytes are
/// an error (RFC 9114 §4.1.2: a malformed request), which fails whatever reads the body.
struct RecvBody {
    recv: RequestStream<h3_quinn::RecvStream, Bytes>,
    declared: Option<u64>,
    got: u64,
    done: bool,
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if !self.done {
            // The rest of the request is not needed (RFC 9114 §4.1: H3_NO_ERROR), rather
            // than quinn's default code 0 when a stream is dropped unread.
            self.recv.stop_sending(Code::H3_NO_ERROR);
        }
    }
}

impl http_body::Body for RecvBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let polled = ready!(self.recv.poll_recv_data(cx));
        let this = &mut *self;
        match polled {
            Ok(Some(mut buf)) => {
                let bytes = buf.copy_to_bytes(buf.remaining());
                this.got = this.got.saturating_add(bytes.len() as u64);
                if this.declared.is_some_and(|d| this.got > d) {
                    this.done = true;
                    this.recv.stop_sending(Code::H3_MESSAGE_ERROR);
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "request body longer than its Content-Length",
                    ))));
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Ok(None) => {
                this.done = true;
                if this.declared.is_some_and(|d| this.got != d) {
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "request body shorter than its Content-Length",
                    ))));
                }
                Poll::Ready(None)
            }
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        match self.declared {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// Fields that are about one TCP connection and malformed in HTTP/3 (RFC 9114 §4.2).
const CONNECTION_SPECIFIC: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Sends `resp` on the stream: the head, then the body frame by frame, each written only as
/// QUIC flow control lets it (nothing is buffered beyond the connection's send window). A
/// body that fails midway resets the stream, so the client never takes a short body for a
/// whole one; a client that stops reading for `stall` has its stream reset.
async fn respond(
    send: &mut RequestStream<h3_quinn::SendStream<Bytes>, Bytes>,
    method: &Method,
    resp: Response,
    stall: Duration,
) -> Result<(), String> {
    let (mut parts, body) = resp.into_parts();
    for name in &CONNECTION_SPECIFIC {
        parts.headers.remove(name);
    }
    let bodiless = method == Method::HEAD
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED
        || parts.status.is_informational();
    send.send_response(http::Response::from_parts(parts, ()))
        .await
        .map_err(|e| e.to_string())?;
    if !bodiless {
        let mut body = body;
        loop {
            let frame = match body.frame().await {
                None => break,
                Some(Ok(f)) => f,
                Some(Err(e)) => {
                    send.stop_stream(Code::H3_INTERNAL_ERROR);
                    return Err(format!("response body failed: {e}"));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    if data.is_empty() {
                        continue;
                    }
                    match tokio::time::timeout(stall, send.send_data(data)).await {
                        Ok(r) => r.map_err(|e| e.to_string())?,
                        Err(_) => {
                            send.stop_stream(Code::H3_REQUEST_CANCELLED);
                            return Err("client stopped reading".into());
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.send_trailers(trailers)
                            .await
                            .map_err(|e| e.to_string())?;
                        return Ok(());
                    }
                }
            }
        }
    }
    send.finish().await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests;
