//! The HTTP layer: turns the cache's decisions ([`Decision`]) into responses; it reaches the
//! store and the fills only through the [`crate::cache::Cache`], and the origin only through
//! [`passthrough`]. Serves stored objects through
//! the shared responder (ranges, conditionals) with chunks streamed as they arrive, passes
//! other requests through to the origin, invalidates on unsafe methods, and decorates every
//! response with Age, Via and Cache-Status. One access-log line and metrics per request.
//!
//! A hit is the hot path: the request's Range and preconditions are evaluated once (a
//! [`represent::Plan`]), which both decides whether every chunk the body needs is stored and
//! shapes the response; a body within one chunk is sent from the chunk taken in that same
//! lookup, without a stream; the response fields are assembled once, straight into the map
//! that is sent; metric handles are kept per thread rather than looked up per request.
//! A stored negative entry is replayed whole ([`replay`]). [`body`] holds what a stored
//! body needs: its chunks, the origin-cost bounds, the chunk stream.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};

use cdn_http::conditional::{Precondition, Validators};
use cdn_http::metrics::NodeMetrics;
use cdn_http::represent::{self, Plan, Shape};

use crate::cache::{CacheOutcome, Decision, Verdict};
use crate::node::Edge;
use crate::passthrough;

mod body;
pub mod express;
use crate::store::{Negative, ObjectMeta};
use body::{Chunks, stored, within_bounds};

const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("content-digest");

/// Every request that is not an admin endpoint.
pub async fn handle(State(edge): State<Arc<Edge>>, req: Request) -> Response {
    let started = Instant::now();
    edge.inflight.fetch_add(1, Ordering::Relaxed);
    // What the access line says, taken only when the line will be written.
    let line = tracing::enabled!(target: "cdn_edge::access", tracing::Level::INFO).then(|| {
        Box::new(AccessLine {
            client: req
                .extensions()
                .get::<ConnectInfo<std::net::SocketAddr>>()
                .map(|c| c.0.ip()),
            method: req.method().clone(),
            uri: req.uri().clone(),
            range: req.headers().get(header::RANGE).cloned(),
        })
    });
    let method = req.method();
    let (resp, kind) = if let Some(why) = passthrough::bodiless_with_body(&req) {
        // A GET or HEAD with a body: refused, never forwarded without it (the origin would
        // read the next request on the connection as this one's body).
        let verdict = Verdict::new(CacheOutcome::Pass, Some("request"));
        let mut r = (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
        decorate(&edge, r.headers_mut(), &verdict, None);
        (r, CacheOutcome::Pass)
    } else if method == Method::GET || method == Method::HEAD {
        let (parts, _) = req.into_parts();
        let client = parts
            .extensions
            .get::<ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip());
        let decision = edge.cache.decide(&parts.uri, &parts.headers, client).await;
        respond_to(&edge, &parts, decision).await
    } else if method.as_str() == "PURGE" {
        let (parts, _) = req.into_parts();
        (
            crate::admin::purge_method(&edge, &parts).await,
            CacheOutcome::Pass,
        )
    } else {
        (
            pass(&edge, req, Verdict::new(CacheOutcome::Pass, Some("method"))).await,
            CacheOutcome::Pass,
        )
    };
    finish(&edge, resp, kind, started, line)
}

async fn respond_to(
    edge: &Arc<Edge>,
    parts: &http::request::Parts,
    decision: Decision,
) -> (Response, CacheOutcome) {
    match decision {
        Decision::Serve { meta, verdict } => serve(edge, parts, meta, verdict).await,
        Decision::Pass { verdict } => {
            let kind = verdict.kind;
            let req = Request::from_parts(parts.clone(), Body::empty());
            (pass(edge, req, verdict).await, kind)
        }
        Decision::Unstored { answer, verdict } => {
            let kind = verdict.kind;
            match passthrough::reshape(edge, &parts.method, &parts.headers, answer) {
                Ok(mut r) => {
                    decorate(edge, r.headers_mut(), &verdict, None);
                    (r, kind)
                }
                Err(_) => {
                    // Not shapeable for this request: it goes to the origin as it is.
                    let req = Request::from_parts(parts.clone(), Body::empty());
                    (pass(edge, req, verdict).await, kind)
                }
            }
        }
        Decision::Fail {
            status,
            verdict,
            why,
        } => {
            tracing::warn!(path = %parts.uri.path(), %why, "cannot answer from origin");
            let mut r = (status, format!("{why}\n")).into_response();
            decorate(edge, r.headers_mut(), &verdict, None);
            (r, verdict.kind)
        }
    }
}

async fn serve(
    edge: &Arc<Edge>,
    parts: &http::request::Parts,
    meta: Arc<ObjectMeta>,
    mut verdict: Verdict,
) -> (Response, CacheOutcome) {
    if let Some(neg) = &meta.negative {
        // A stored 404, 410, 301...: replayed whole with its own fields.
        let (age, ttl) = age_and_ttl(&meta);
        let mut headers = meta.headers.clone();
        headers.insert(header::AGE, HeaderValue::from(age));
        decorate(edge, &mut headers, &verdict, Some(ttl));
        let resp = replay(&meta, neg, &parts.method, &parts.headers, headers);
        return (resp, verdict.kind);
    }
    let (method, len) = (&parts.method, meta.len);
    // Preconditions, If-Range and Range, evaluated once. The validators are only needed
    // (and only built) when the request has a field that reads them.
    let plan = if represent::has_conditionals(&parts.headers) {
        let validators = Validators {
            etag: meta.etag.clone(),
            last_modified: meta.last_modified,
        };
        represent::plan(method, &parts.headers, len, &validators)
    } else {
        represent::plan(method, &parts.headers, len, &Validators::default())
    };
    let mut at_hand = None;
    // A hit whose body needs a chunk that is not stored goes to the origin for the rest.
    if verdict.kind == CacheOutcome::Hit && !stored(edge, &meta, &plan, method, &mut at_hand).await
    {
        if crate::freshness::CacheControl::parse(&parts.headers).only_if_cached {
            // RFC 9111 §5.2.1.7: what is stored does not answer, and the origin is not asked.
            let verdict = Verdict::new(CacheOutcome::Miss, Some("miss"));
            let mut r = (
                StatusCode::GATEWAY_TIMEOUT,
                "only-if-cached and not in cache\n",
            )
                .into_response();
            decorate(edge, r.headers_mut(), &verdict, None);
            return (r, CacheOutcome::Miss);
        }
        verdict.kind = CacheOutcome::Miss;
        verdict.fwd = Some("partial");
    }
    let multi = matches!(&plan, Plan::Ranges(r) if r.len() > 1);
    if verdict.kind != CacheOutcome::Hit && !within_bounds(edge, parts, &meta, &plan, &verdict) {
        // Filling the chunks this body needs would cost the origin far more than the request
        // asks for: the request goes to the origin as it is, uncached.
        verdict.kind = CacheOutcome::Pass;
        verdict.stored = false;
        let req = Request::from_parts(parts.clone(), Body::empty());
        return (pass(edge, req, verdict).await, CacheOutcome::Pass);
    }
    edge.cache.note_served(&meta);
    let fields = match plan {
        Plan::Failed => HeaderMap::new(),
        Plan::Full => fields(edge, &meta, &verdict),
        // A stored 200's own Content-Range (RFC 9111 §3.1) belongs to that 200 alone.
        _ => {
            let mut f = fields(edge, &meta, &verdict);
            f.remove(header::CONTENT_RANGE);
            f
        }
    };
    let mut full_headers = HeaderMap::new();
    if plan == Plan::Full
        && let Some(d) = &meta.digest
    {
        full_headers.insert(CONTENT_DIGEST, d.clone());
    }
    let shape = Shape {
        len,
        content_type: &meta.content_type,
        full_headers: &full_headers,
    };
    let source = Chunks {
        edge: edge.clone(),
        meta: meta.clone(),
        at_hand,
        // A multipart body reads no chunk beyond its ranges (see `within_bounds`).
        readahead: !multi,
    };
    let resp = represent::respond_planned(method, plan, fields, shape, source);
    (resp, verdict.kind)
}

/// The response a stored negative entry gives: its status, `headers` (the stored fields plus
/// what the HTTP layer adds: Age, Via, Cache-Status), Content-Length and body (none to
/// HEAD). Preconditions are evaluated for 2xx statuses only (RFC 9110 §13.2.1: a server
/// ignores them when its answer would not be 2xx); Range is ignored (it applies to 200).
pub fn replay(
    meta: &ObjectMeta,
    neg: &Negative,
    method: &Method,
    req: &HeaderMap,
    mut headers: HeaderMap,
) -> axum::response::Response {
    let mut status = neg.status;
    let mut body = neg.body.clone();
    if status.is_success() {
        let v = Validators {
            etag: meta.etag.clone(),
            last_modified: meta.last_modified,
        };
        let precondition = cdn_http::conditional::evaluate(method, req, &v);
        if precondition != Precondition::Proceed {
            status = match precondition {
                Precondition::NotModified => StatusCode::NOT_MODIFIED,
                _ => StatusCode::PRECONDITION_FAILED,
            };
            body = Bytes::new();
            headers.remove(header::CONTENT_TYPE);
            headers.remove("content-digest");
        }
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        headers.remove(header::CONTENT_LENGTH);
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body = if method == Method::HEAD {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from(body)
    };
    let mut resp = axum::response::Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// The fields of a stored response, in the order they are sent: ETag and Last-Modified, the
/// stored end-to-end fields (those rendered once per stored version, `ObjectMeta::rendered`),
/// then Age, Via and Cache-Status.
fn fields(edge: &Edge, meta: &ObjectMeta, verdict: &Verdict) -> HeaderMap {
    let (age, ttl) = age_and_ttl(meta);
    let mut h = meta
        .rendered
        .get_or_init(|| stored_fields(meta.etag.as_deref(), meta.last_modified, &meta.headers))
        .clone();
    h.insert(header::AGE, HeaderValue::from(age));
    add_ours(
        &mut h,
        via(&edge.cfg.name),
        cache_status(verdict, &edge.cfg.name, Some(ttl)),
    );
    h
}

/// The stored response's current age and its remaining freshness, in seconds.
fn age_and_ttl(meta: &ObjectMeta) -> (u64, i64) {
    age_and_ttl_at(meta, SystemTime::now())
}

/// [`age_and_ttl`] at `now`.
fn age_and_ttl_at(meta: &ObjectMeta, now: SystemTime) -> (u64, i64) {
    let age = meta.age(now);
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    (age.as_secs(), secs(meta.lifetime).saturating_sub(secs(age)))
}

/// ETag, Last-Modified and the stored fields of a version, as every hit sends them (see
/// [`fields`]).
fn stored_fields(
    etag: Option<&str>,
    last_modified: Option<SystemTime>,
    stored: &HeaderMap,
) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(stored.len() + 5);
    if let Some(etag) = etag
        && let Ok(v) = HeaderValue::from_str(etag)
    {
        h.insert(header::ETAG, v);
    }
    if let Some(lm) = last_modified
        && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm))
    {
        h.insert(header::LAST_MODIFIED, v);
    }
    for (k, v) in stored {
        h.append(k.clone(), v.clone());
    }
    h
}

/// What the responder's `Representation::fields` would make of the stored fields with Age,
/// Via and Cache-Status added, built in one map: [`stored_fields`], then ours.
#[cfg(test)]
fn assemble(
    etag: Option<&str>,
    last_modified: Option<SystemTime>,
    stored: &HeaderMap,
    age: u64,
    via: Option<HeaderValue>,
    status: Option<HeaderValue>,
) -> HeaderMap {
    let mut h = stored_fields(etag, last_modified, stored);
    h.insert(header::AGE, HeaderValue::from(age));
    add_ours(&mut h, via, status);
    h
}

/// Passes a request through to the origin, uncached, and decorates the answer.
async fn pass(edge: &Arc<Edge>, req: Request, mut verdict: Verdict) -> Response {
    let mut r = match passthrough::pass(edge, req).await {
        Ok(r) => {
            verdict.fwd_status = Some(r.status().as_u16());
            r
        }
        Err(why) => passthrough::bad_gateway(&why),
    };
    decorate(edge, r.headers_mut(), &verdict, None);
    r
}

/// Adds Via and this node's Cache-Status member.
fn decorate(edge: &Edge, headers: &mut HeaderMap, verdict: &Verdict, ttl: Option<i64>) {
    add_ours(
        headers,
        via(&edge.cfg.name),
        cache_status(verdict, &edge.cfg.name, ttl),
    );
}

fn add_ours(headers: &mut HeaderMap, via: Option<HeaderValue>, status: Option<HeaderValue>) {
    if let Some(v) = via {
        headers.append(header::VIA, v);
    }
    // Appended: Cache-Status lists the caches from the origin's side, the one nearest the
    // client last (RFC 9211 §2).
    if let Some(v) = status {
        headers.append(CACHE_STATUS, v);
    }
}

/// `1.1 NAME`, made once per thread (a node's name does not change while it runs).
fn via(name: &str) -> Option<HeaderValue> {
    thread_local! {
        static VIA: RefCell<Option<(String, HeaderValue)>> = const { RefCell::new(None) };
    }
    VIA.with_borrow_mut(|cached| {
        if let Some((n, v)) = cached.as_ref()
            && n == name
        {
            return Some(v.clone());
        }
        let v = HeaderValue::from_str(&format!("1.1 {name}")).ok()?;
        *cached = Some((name.to_string(), v.clone()));
        Some(v)
    })
}

/// This node's Cache-Status member (RFC 9211): the text of [`Verdict::header`], written in
/// one buffer that becomes the value without a copy.
fn cache_status(verdict: &Verdict, node: &str, ttl: Option<i64>) -> Option<HeaderValue> {
    let mut out = Vec::with_capacity(node.len() + 64);
    verdict.write_header(node, ttl, &mut out);
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// The metric handles of one node, kept per thread: looking a series up in the registry
/// (by name and labels) on every request costs more than the request's own bookkeeping.
struct Handles {
    node: Weak<NodeMetrics>,
    /// `cdn_edge_requests_total` and `cdn_edge_response_seconds` per [`CacheOutcome`], registered at
    /// first use (a series appears once it has been counted, as with the macros).
    requests: [Option<(metrics::Counter, metrics::Histogram)>; 4],
    served: metrics::Counter,
    body: metrics::Histogram,
    express: metrics::Counter,
}

fn kind_index(kind: CacheOutcome) -> usize {
    match kind {
        CacheOutcome::Hit => 0,
        CacheOutcome::Miss => 1,
        CacheOutcome::Stale => 2,
        CacheOutcome::Pass => 3,
    }
}

/// Counts a request of `kind` answered (head) after `elapsed` (on the express lane when
/// `express`); returns the handles of the body's byte counter and duration histogram.
fn record(
    node: &Arc<NodeMetrics>,
    kind: CacheOutcome,
    elapsed: std::time::Duration,
    express: bool,
) -> (metrics::Counter, metrics::Histogram) {
    thread_local! {
        static HANDLES: RefCell<Option<Handles>> = const { RefCell::new(None) };
    }
    HANDLES.with_borrow_mut(|slot| {
        // The Weak keeps the NodeMetrics allocation from being reused, so the same address
        // is the same node.
        let h = match slot {
            Some(h) if std::ptr::eq(h.node.as_ptr(), Arc::as_ptr(node)) => h,
            _ => slot.insert(node.with(|| Handles {
                node: Arc::downgrade(node),
                requests: Default::default(),
                served: metrics::counter!("cdn_edge_bytes_served_total"),
                body: metrics::histogram!("cdn_edge_response_body_seconds"),
                express: metrics::counter!(crate::metric_names::EXPRESS_TOTAL),
            })),
        };
        if express {
            h.express.increment(1);
        }
        let (requests, response) = h.requests[kind_index(kind)].get_or_insert_with(|| {
            node.with(|| {
                (
                    metrics::counter!("cdn_edge_requests_total", "cache" => kind.label()),
                    metrics::histogram!("cdn_edge_response_seconds", "cache" => kind.label()),
                )
            })
        });
        requests.increment(1);
        response.record(elapsed.as_secs_f64());
        (h.served.clone(), h.body.clone())
    })
}

/// What the access line of a request says besides its outcome.
struct AccessLine {
    client: Option<std::net::IpAddr>,
    method: Method,
    uri: http::Uri,
    range: Option<HeaderValue>,
}

/// The access line and counters of one response, written when its body is dropped.
struct AccessLog {
    line: Option<Box<AccessLine>>,
    status: u16,
    cache: &'static str,
    bytes: u64,
    started: Instant,
    duration: metrics::Histogram,
    inflight: Arc<std::sync::atomic::AtomicU64>,
}
impl Drop for AccessLog {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
        let elapsed = self.started.elapsed();
        self.duration.record(elapsed.as_secs_f64());
        if let Some(line) = &self.line {
            let l = cdn_http::access::Line {
                target: "cdn_edge::access",
                client: line.client,
                method: &line.method,
                path: line.uri.path(),
                range: line.range.as_ref(),
                status: self.status,
                cache: self.cache,
                bytes: self.bytes,
                duration: elapsed,
            };
            // Straight into the log buffer when the process installed it (`cdn`'s text
            // format); else through tracing (JSON, tests).
            if let Some(l) = cdn_http::access::emit(l) {
                tracing::info!(
                    target: "cdn_edge::access",
                    client = ?l.client,
                    method = %l.method,
                    path = %l.path,
                    range = ?l.range,
                    status = l.status,
                    cache = l.cache,
                    bytes = l.bytes,
                    duration_ms = u64::try_from(l.duration.as_millis()).unwrap_or(u64::MAX),
                );
            }
        }
    }
}

/// Counts the request and its bytes, and logs one access line when the body ends.
fn finish(
    edge: &Arc<Edge>,
    resp: Response,
    kind: CacheOutcome,
    started: Instant,
    line: Option<Box<AccessLine>>,
) -> Response {
    let status = resp.status().as_u16();
    let (served, duration) = record(&edge.metrics, kind, started.elapsed(), false);
    let log = AccessLog {
        line,
        status,
        cache: kind.label(),
        bytes: 0,
        started,
        duration,
        inflight: edge.inflight.clone(),
    };
    let (parts, inner) = resp.into_parts();
    // The whole log moves into the body (not just its counter): it is dropped, and the line
    // written, with the body.
    let body = Counted { inner, log, served };
    Response::from_parts(parts, Body::new(body))
}

/// A response body that counts the bytes it passes (for the access line and the served-bytes
/// counter) and keeps the inner body's size hint, so hyper still sizes a body the handler
/// sized (Content-Length, where the rules allow one) instead of sending it chunked.
struct Counted {
    inner: Body,
    log: AccessLog,
    served: metrics::Counter,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(d) = frame.data_ref()
        {
            this.served.increment(d.len() as u64);
            this.log.bytes += d.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    use cdn_http::Representation;

    /// The fields as they were built before `assemble`: the stored map cloned, Age inserted,
    /// Via and Cache-Status added, then copied behind the validators by the responder.
    fn before(
        etag: Option<&str>,
        last_modified: Option<SystemTime>,
        stored: &HeaderMap,
        age: u64,
        via: HeaderValue,
        status: HeaderValue,
    ) -> HeaderMap {
        let mut headers = stored.clone();
        headers.insert(header::AGE, HeaderValue::from(age));
        headers.append(header::VIA, via);
        headers.append("cache-status", status);
        Representation {
            len: 1,
            content_type: HeaderValue::from_static("video/mp4"),
            validators: Validators {
                etag: etag.map(str::to_string),
                last_modified,
            },
            headers,
            full_headers: HeaderMap::new(),
        }
        .fields()
    }

    fn listed(h: &HeaderMap) -> Vec<(String, String)> {
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn fields_are_assembled_as_before() {
        let lm = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let mut stored = Vec::new();
        let mut h = HeaderMap::new();
        stored.push(h.clone());
        h.insert(
            "date",
            HeaderValue::from_static("Thu, 01 Jan 2026 00:00:00 GMT"),
        );
        h.insert(
            "cache-control",
            HeaderValue::from_static("public, max-age=60"),
        );
        stored.push(h.clone());
        h.append("via", HeaderValue::from_static("1.1 upstream"));
        h.append("x-one", HeaderValue::from_static("1"));
        stored.push(h.clone());
        h.append("cache-status", HeaderValue::from_static("upstream; hit"));
        h.append(
            "cache-status",
            HeaderValue::from_static("origin-shield; fwd=miss"),
        );
        h.append("vary", HeaderValue::from_static("accept-encoding"));
        h.append("x-one", HeaderValue::from_static("2"));
        stored.push(h.clone());
        let mut only_status = HeaderMap::new();
        only_status.append("cache-status", HeaderValue::from_static("up; hit"));
        stored.push(only_status);
        let via = HeaderValue::from_static("1.1 edge-a");
        let status = HeaderValue::from_static("edge-a; hit; ttl=60");
        for s in &stored {
            for (etag, last_modified) in [
                (Some("\"abc\""), Some(lm)),
                (None, Some(lm)),
                (Some("\"x\""), None),
                (None, None),
            ] {
                let want = before(etag, last_modified, s, 7, via.clone(), status.clone());
                let got = assemble(
                    etag,
                    last_modified,
                    s,
                    7,
                    Some(via.clone()),
                    Some(status.clone()),
                );
                assert_eq!(listed(&got), listed(&want), "{s:?}");
            }
        }
    }

    #[test]
    fn our_cache_status_member_comes_last() {
        // RFC 9211 §2: the upstream's members as received, then this cache's, nearest the
        // client last; on a stored response and on a relayed one alike.
        let mut stored = HeaderMap::new();
        stored.append("cache-status", HeaderValue::from_static("shield; hit"));
        stored.append("cache-status", HeaderValue::from_static("mid; fwd=miss"));
        let ours = HeaderValue::from_static("edge-a; hit; ttl=60");
        let members = |h: &HeaderMap| -> Vec<String> {
            h.get_all("cache-status")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        };
        let want = ["shield; hit", "mid; fwd=miss", "edge-a; hit; ttl=60"];
        let got = assemble(None, None, &stored, 0, None, Some(ours.clone()));
        assert_eq!(members(&got), want);
        let mut relayed = stored.clone();
        add_ours(&mut relayed, None, Some(ours));
        assert_eq!(members(&relayed), want);
    }

    #[test]
    fn cache_status_reads_as_the_verdict_says() {
        let v = |fwd, fwd_status, stored, collapsed, detail| Verdict {
            kind: CacheOutcome::Hit,
            fwd,
            fwd_status,
            stored,
            collapsed,
            detail,
        };
        let cases = [
            (
                v(None, None, false, false, None),
                Some(60),
                "edge-1; hit; ttl=60",
            ),
            (
                v(Some("miss"), Some(200), true, true, None),
                Some(-5),
                "edge-1; fwd=miss; fwd-status=200; ttl=-5; stored; collapsed",
            ),
            (
                v(
                    Some("stale"),
                    None,
                    false,
                    false,
                    Some("stale-while-revalidate"),
                ),
                None,
                "edge-1; fwd=stale; detail=stale-while-revalidate",
            ),
        ];
        for (verdict, ttl, want) in cases {
            let got = cache_status(&verdict, "edge-1", ttl).unwrap();
            assert_eq!(got.to_str().unwrap(), want);
        }
    }
}
