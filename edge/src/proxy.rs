//! The HTTP layer: turns the cache's decisions into responses. Serves stored objects through
//! the shared responder (ranges, conditionals) with chunks streamed as they arrive, passes
//! other requests through to the origin, invalidates on unsafe methods, and decorates every
//! response with Age, Via and Cache-Status. One access-log line and metrics per request.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;

use cdn_http::conditional::Validators;
use cdn_http::range::RangeRequest;
use cdn_http::{ByteStream, Representation};

use crate::cache::{Decision, Edge, Kind, Verdict};
use crate::origin::strip_hop_by_hop;
use crate::store::ObjectMeta;

/// Every request that is not an admin endpoint.
pub async fn handle(State(edge): State<Arc<Edge>>, req: Request) -> Response {
    let started = Instant::now();
    edge.inflight.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let range = req.headers().get(header::RANGE).cloned();
    let (resp, kind) = if method == Method::GET || method == Method::HEAD {
        let (parts, _) = req.into_parts();
        let decision = edge.decide(&parts.method, &parts.uri, &parts.headers).await;
        respond_to(&edge, &parts, decision).await
    } else if method.as_str() == "PURGE" {
        let (parts, _) = req.into_parts();
        (crate::admin::purge_method(&edge, &parts).await, Kind::Pass)
    } else {
        (
            pass(&edge, req, Verdict::new(Kind::Pass, Some("method"))).await,
            Kind::Pass,
        )
    };
    finish(&edge, resp, kind, started, method, path, range)
}

async fn respond_to(
    edge: &Arc<Edge>,
    parts: &http::request::Parts,
    decision: Decision,
) -> (Response, Kind) {
    match decision {
        Decision::Serve { meta, verdict } => serve(edge, parts, meta, verdict),
        Decision::Pass { verdict } => {
            let kind = verdict.kind;
            let req = Request::from_parts(parts.clone(), Body::empty());
            (pass(edge, req, verdict).await, kind)
        }
        Decision::Upstream { resp, verdict } => {
            let kind = verdict.kind;
            (relay(edge, resp, &verdict), kind)
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

fn serve(
    edge: &Arc<Edge>,
    parts: &http::request::Parts,
    meta: Arc<ObjectMeta>,
    mut verdict: Verdict,
) -> (Response, Kind) {
    // A hit whose chunks are not all stored goes to the origin for the rest.
    if verdict.kind == Kind::Hit && parts.method == Method::GET && !all_stored(edge, parts, &meta) {
        verdict.kind = Kind::Miss;
        verdict.fwd = Some("partial");
    }
    if let Some(peers) = &edge.peers {
        peers.note_request(&edge.store, &meta);
    }
    let now = SystemTime::now();
    let age = meta.age(now);
    let secs = |d: std::time::Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let ttl = secs(meta.lifetime).saturating_sub(secs(age));
    let mut headers = meta.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    decorate(edge, &mut headers, &verdict, Some(ttl));
    let mut full_headers = HeaderMap::new();
    if let Some(d) = &meta.digest {
        full_headers.insert("content-digest", d.clone());
    }
    let rep = Representation {
        len: meta.len,
        content_type: meta.content_type.clone(),
        validators: Validators {
            etag: meta.etag.clone(),
            last_modified: meta.last_modified,
        },
        headers,
        full_headers,
    };
    let edge = edge.clone();
    let resp = cdn_http::respond(&parts.method, &parts.headers, &rep, move |r| {
        chunk_stream(edge.clone(), meta.clone(), r)
    });
    (resp, verdict.kind)
}

/// Whether every chunk a GET needs is in the store.
fn all_stored(edge: &Edge, parts: &http::request::Parts, meta: &ObjectMeta) -> bool {
    if meta.len == 0 {
        return true;
    }
    let spans: Vec<RangeInclusive<u64>> = match cdn_http::range::evaluate(&parts.headers, meta.len)
    {
        RangeRequest::Ranges(r) => r,
        RangeRequest::Unsatisfiable => return true,
        RangeRequest::Full => vec![0..=meta.len - 1],
    };
    spans.iter().all(|r| {
        (r.start() / meta.chunk_size..=r.end() / meta.chunk_size)
            .all(|i| edge.store.chunks.contains_key(&meta.chunk_key(i)))
    })
}

/// Streams `range` of an object chunk by chunk, starting read-ahead of the following chunks
/// when the reader goes on to the end of the current one.
fn chunk_stream(edge: Arc<Edge>, meta: Arc<ObjectMeta>, range: RangeInclusive<u64>) -> ByteStream {
    let (start, end) = (*range.start(), *range.end());
    let len = end - start + 1;
    let stream = futures::stream::unfold(start, move |pos| {
        let (edge, meta) = (edge.clone(), meta.clone());
        async move {
            if pos > end {
                return None;
            }
            let index = pos / meta.chunk_size;
            let (cstart, cend) = meta.chunk_span(index);
            if end >= cend {
                for ahead in 1..=edge.cfg.readahead {
                    edge.filler.prefetch(&meta, index + ahead);
                }
            }
            match edge.filler.chunk(&meta, index).await {
                Ok((bytes, _)) => {
                    let (from, to) = ((pos - cstart) as usize, (end.min(cend) - cstart + 1) as usize);
                    if bytes.len() < to {
                        let e = std::io::Error::other("stored chunk shorter than its span");
                        return Some((Err(e), u64::MAX));
                    }
                    Some((Ok(bytes.slice(from..to)), end.min(cend) + 1))
                }
                Err(e) => {
                    tracing::warn!(key = %meta.version.key, index, error = %e, "chunk fill failed; aborting response");
                    Some((Err(std::io::Error::other(e.to_string())), u64::MAX))
                }
            }
        }
    })
    .boxed();
    cdn_http::represent::exact_len(stream, len)
}

/// Forwards a request to the origin as it is and relays the answer, uncached. Unsafe methods
/// that succeed invalidate what is stored for the URL (RFC 9111 §4.4).
async fn pass(edge: &Arc<Edge>, req: Request, verdict: Verdict) -> Response {
    let (parts, body) = req.into_parts();
    let mut h = parts.headers.clone();
    strip_hop_by_hop(&mut h);
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let has_body = !matches!(parts.method, Method::GET | Method::HEAD);
    let body = has_body.then(|| reqwest::Body::wrap_stream(body.into_data_stream()));
    let resp = match edge
        .origin
        .send("pass", parts.method.clone(), pq, h, body)
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let mut r = (StatusCode::BAD_GATEWAY, format!("{e}\n")).into_response();
            decorate(edge, r.headers_mut(), &verdict, None);
            return r;
        }
    };
    let unsafe_method = !matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if unsafe_method && (resp.status().is_success() || resp.status().is_redirection()) {
        let primary = edge.primary_key(&parts.uri);
        if let Err(e) = edge.store.invalidate(&primary, false).await {
            tracing::warn!(error = %e, "invalidation failed");
        }
    }
    let mut verdict = verdict;
    verdict.fwd_status = Some(resp.status().as_u16());
    relay(edge, resp, &verdict)
}

/// Relays an origin response: status, end-to-end headers and the body as it streams. A
/// broken origin body aborts the client's response.
fn relay(edge: &Arc<Edge>, resp: reqwest::Response, verdict: &Verdict) -> Response {
    let status = resp.status();
    let mut headers = resp.headers().clone();
    strip_hop_by_hop(&mut headers);
    decorate(edge, &mut headers, verdict, None);
    let origin = edge.origin.clone();
    let body = resp.bytes_stream().map(move |r| {
        r.inspect(|b| origin.count_bytes(b.len()))
            .map_err(|e| std::io::Error::other(crate::origin::error_chain(&e)))
    });
    let mut out = Response::new(Body::from_stream(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

fn decorate(edge: &Edge, headers: &mut HeaderMap, verdict: &Verdict, ttl: Option<i64>) {
    if let Ok(v) = HeaderValue::from_str(&format!("1.1 {}", edge.cfg.name)) {
        headers.append(header::VIA, v);
    }
    if let Ok(v) = HeaderValue::from_str(&verdict.header(&edge.cfg.name, ttl)) {
        // Prepend ours: Cache-Status lists the cache nearest the client first.
        let older: Vec<HeaderValue> = headers.get_all("cache-status").iter().cloned().collect();
        headers.remove("cache-status");
        headers.append("cache-status", v);
        for o in older {
            headers.append("cache-status", o);
        }
    }
}

/// Counts the request and its bytes, and logs one access line when the body ends.
fn finish(
    edge: &Arc<Edge>,
    resp: Response,
    kind: Kind,
    started: Instant,
    method: Method,
    path: String,
    range: Option<HeaderValue>,
) -> Response {
    let status = resp.status().as_u16();
    let (served, duration) = edge.metrics.with(|| {
        metrics::counter!("cdn_edge_requests_total", "cache" => kind.label()).increment(1);
        metrics::histogram!("cdn_edge_response_seconds", "cache" => kind.label())
            .record(started.elapsed().as_secs_f64());
        (
            metrics::counter!("cdn_edge_bytes_served_total"),
            metrics::histogram!("cdn_edge_response_body_seconds"),
        )
    });
    struct AccessLog {
        method: Method,
        path: String,
        range: Option<HeaderValue>,
        status: u16,
        cache: &'static str,
        bytes: AtomicU64,
        started: Instant,
        duration: metrics::Histogram,
        inflight: Arc<AtomicU64>,
    }
    impl Drop for AccessLog {
        fn drop(&mut self) {
            self.inflight.fetch_sub(1, Ordering::Relaxed);
            let elapsed = self.started.elapsed();
            self.duration.record(elapsed.as_secs_f64());
            tracing::info!(
                target: "cdn_edge::access",
                method = %self.method,
                path = %self.path,
                range = ?self.range,
                status = self.status,
                cache = self.cache,
                bytes = self.bytes.load(Ordering::Relaxed),
                duration_ms = elapsed.as_millis() as u64,
            );
        }
    }
    let log = AccessLog {
        method,
        path,
        range,
        status,
        cache: kind.label(),
        bytes: AtomicU64::new(0),
        started,
        duration,
        inflight: edge.inflight.clone(),
    };
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(d) = frame.data_ref() {
            served.increment(d.len() as u64);
            log.bytes.fetch_add(d.len() as u64, Ordering::Relaxed);
        }
        frame
    });
    Response::from_parts(parts, Body::new(body))
}
