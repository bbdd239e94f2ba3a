//! The cache's decisions, one case each (fresh, stale-while-revalidate, stale and
//! revalidated, miss, pass, hit-for-pass, only-if-cached), against a real origin: an HTTP
//! server on 127.0.0.1 whose Cache-Control each test sets and which counts the requests
//! that reach it (a conditional request for the current ETag gets a 304).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};

use cdn_http::metrics::NodeMetrics;

use super::{CacheOutcome, Decision};
use crate::config::EdgeConfig;
use crate::freshness::Timing;
use crate::node::Edge;
use crate::store::ObjectMeta;

const BODY: &[u8] = b"0123456789";
const ETAG: &str = "\"v1\"";

struct Origin {
    /// Cache-Control, ETag and Vary of the answers (a test may change them).
    answer: std::sync::Mutex<(&'static str, &'static str, Option<&'static str>)>,
    requests: AtomicUsize,
}

async fn answer(State(o): State<Arc<Origin>>, req: HeaderMap) -> Response {
    let n = o.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let (cc, etag, vary) = *o.answer.lock().unwrap();
    // `x-answer`: which origin answer this is (a 304 updates it in the stored fields).
    let mut fields = HeaderMap::new();
    fields.insert(header::CACHE_CONTROL, HeaderValue::from_static(cc));
    fields.insert(header::ETAG, HeaderValue::from_static(etag));
    fields.insert("x-answer", HeaderValue::from(n));
    if let Some(v) = vary {
        fields.insert(header::VARY, HeaderValue::from_static(v));
    }
    if req.get(header::IF_NONE_MATCH).is_some_and(|v| v == etag) {
        return (StatusCode::NOT_MODIFIED, fields).into_response();
    }
    (StatusCode::OK, fields, BODY).into_response()
}

/// An edge (no peers) in front of an origin answering with `cc`.
async fn setup(cc: &'static str) -> (Arc<Edge>, Arc<Origin>) {
    let origin = Arc::new(Origin {
        answer: std::sync::Mutex::new((cc, ETAG, None)),
        requests: AtomicUsize::new(0),
    });
    let app = axum::Router::new()
        .fallback(answer)
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr: SocketAddr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cfg = EdgeConfig {
        origin: format!("http://{addr}"),
        ..EdgeConfig::default()
    };
    let edge = Edge::new(cfg, Arc::new(NodeMetrics::new())).expect("edge");
    (edge, origin)
}

async fn decide(edge: &Edge, req: &HeaderMap) -> Decision {
    edge.cache.decide(&Uri::from_static("/a"), req, None).await
}

/// The verdict of a Serve (panics on anything else), with its metadata.
fn served(d: Decision) -> (Arc<ObjectMeta>, super::Verdict) {
    match d {
        Decision::Serve { meta, verdict } => (meta, verdict),
        Decision::Pass { verdict } => panic!("pass: {verdict:?}"),
        Decision::Unstored { verdict, .. } => panic!("unstored: {verdict:?}"),
        Decision::Fail { verdict, why, .. } => panic!("fail: {why} {verdict:?}"),
    }
}

/// Makes the stored metadata `secs` seconds old.
async fn age(edge: &Edge, meta: &ObjectMeta, secs: u64) {
    let then = SystemTime::now() - Duration::from_secs(secs);
    let old = Arc::new(ObjectMeta {
        timing: Timing::new(then, then, &HeaderMap::new()),
        ..meta.clone()
    });
    edge.store().refresh(&old).await;
}

fn requests(o: &Origin) -> usize {
    o.requests.load(Ordering::SeqCst)
}

#[tokio::test]
async fn a_miss_is_probed_and_stored_then_a_hit_asks_nothing() {
    let (edge, origin) = setup("max-age=60").await;
    let (meta, v) = served(decide(&edge, &HeaderMap::new()).await);
    assert_eq!(v.kind, CacheOutcome::Miss);
    assert_eq!((v.fwd, v.stored, v.collapsed), (Some("miss"), true, false));
    assert_eq!(meta.len, BODY.len() as u64);
    assert_eq!(requests(&origin), 1);
    let (_, v) = served(decide(&edge, &HeaderMap::new()).await);
    assert_eq!((v.kind, v.fwd), (CacheOutcome::Hit, None));
    assert_eq!(requests(&origin), 1, "a fresh hit does not ask the origin");
}

#[tokio::test]
async fn stale_within_swr_is_served_and_revalidated_in_the_background() {
    let (edge, origin) = setup("max-age=10, stale-while-revalidate=60").await;
    let (meta, _) = served(decide(&edge, &HeaderMap::new()).await);
    age(&edge, &meta, 20).await;
    let (_, v) = served(decide(&edge, &HeaderMap::new()).await);
    assert_eq!(v.kind, CacheOutcome::Stale);
    assert_eq!((v.fwd, v.detail), (None, Some("stale-while-revalidate")));
    // The one background revalidation reaches the origin, and its 304 makes the entry fresh.
    for _ in 0..1000 {
        if requests(&origin) == 2 {
            let (_, v) = served(decide(&edge, &HeaderMap::new()).await);
            if v.kind == CacheOutcome::Hit {
                assert_eq!(requests(&origin), 2);
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no background revalidation: {} requests", requests(&origin));
}

#[tokio::test]
async fn stale_is_revalidated_before_it_is_served() {
    let (edge, origin) = setup("max-age=10").await;
    let (meta, _) = served(decide(&edge, &HeaderMap::new()).await);
    age(&edge, &meta, 20).await;
    let (fresh, v) = served(decide(&edge, &HeaderMap::new()).await);
    assert_eq!(v.kind, CacheOutcome::Stale);
    assert_eq!(
        (v.fwd, v.fwd_status, v.stored),
        (Some("stale"), Some(304), true)
    );
    assert_eq!(
        fresh.version, meta.version,
        "a 304 keeps the version and its chunks"
    );
    assert_eq!(requests(&origin), 2);
}

/// A GET of `/a` through the proxy: its status, `x-answer` and Cache-Status.
async fn through_proxy(edge: &Arc<Edge>) -> (StatusCode, String, String) {
    let req = http::Request::get("/a")
        .body(axum::body::Body::empty())
        .expect("request");
    let r = crate::proxy::handle(State(edge.clone()), req).await;
    let field = |n: &str| {
        r.headers()
            .get(n)
            .map(|v| v.to_str().expect("text").to_string())
            .unwrap_or_default()
    };
    (r.status(), field("x-answer"), field("cache-status"))
}

#[tokio::test]
async fn a_304_s_fields_are_sent_not_those_rendered_for_the_hits_before() {
    // The fields a hit sends are rendered once per stored version and kept with it; a 304
    // makes new metadata from a copy of the old, which must not carry them along.
    let (edge, origin) = setup("max-age=10, stale-while-revalidate=60").await;
    let (st, answer, _) = through_proxy(&edge).await;
    assert_eq!((st, answer.as_str()), (StatusCode::OK, "1"));
    let (meta, _) = served(decide(&edge, &HeaderMap::new()).await);
    age(&edge, &meta, 20).await;
    // Stale within SWR: served (rendering the aged version's fields) and revalidated.
    let (st, answer, status) = through_proxy(&edge).await;
    assert_eq!((st, answer.as_str()), (StatusCode::OK, "1"), "{status}");
    assert!(status.contains("stale-while-revalidate"), "{status}");
    let mut last = String::new();
    for _ in 0..1_000 {
        let (st, answer, status) = through_proxy(&edge).await;
        assert_eq!(st, StatusCode::OK);
        if status.contains("; hit") && !status.contains("stale") {
            last = answer;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(requests(&origin), 2, "one revalidation");
    assert_eq!(last, "2", "a hit after the 304 sends the 304's fields");
}

#[tokio::test]
async fn requests_the_cache_may_not_answer_pass() {
    let (edge, origin) = setup("max-age=60").await;
    for (name, value) in [
        (header::AUTHORIZATION, "Bearer x"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        let mut req = HeaderMap::new();
        req.insert(name, HeaderValue::from_static(value));
        match decide(&edge, &req).await {
            Decision::Pass { verdict } => {
                assert_eq!(
                    (verdict.kind, verdict.fwd),
                    (CacheOutcome::Pass, Some("request"))
                );
            }
            _ => panic!("{value}: not a pass"),
        }
    }
    assert_eq!(requests(&origin), 0, "a pass is the proxy's to forward");
}

#[tokio::test]
async fn an_unstorable_answer_goes_to_its_request_then_the_url_passes() {
    let (edge, origin) = setup("no-store").await;
    match decide(&edge, &HeaderMap::new()).await {
        Decision::Unstored { answer, verdict } => {
            assert_eq!(answer.resp.status(), StatusCode::OK);
            assert_eq!(
                (verdict.kind, verdict.fwd_status),
                (CacheOutcome::Pass, Some(200))
            );
        }
        _ => panic!("not the probe's own answer"),
    }
    match decide(&edge, &HeaderMap::new()).await {
        Decision::Pass { verdict } => assert_eq!(verdict.detail, Some("hit-for-pass")),
        _ => panic!("not hit-for-pass"),
    }
    assert_eq!(requests(&origin), 1);
}

/// A fresh hit is one lookup when the stored response has no Vary (`Cache::decide`): so a
/// URL turned hit-for-pass must not find one there.
#[tokio::test]
async fn a_url_turned_hit_for_pass_is_not_served_its_stored_response() {
    let (edge, origin) = setup("max-age=60").await;
    served(decide(&edge, &HeaderMap::new()).await);
    let (_, v) = served(decide(&edge, &HeaderMap::new()).await);
    assert_eq!(v.kind, CacheOutcome::Hit);
    // What a later unstorable answer for the URL does (say a racing probe's).
    let primary = edge.cache.primary_key(&Uri::from_static("/a"));
    let until = std::time::Instant::now() + Duration::from_secs(60);
    edge.store().pass_until(&primary, until).await;
    match decide(&edge, &HeaderMap::new()).await {
        Decision::Pass { verdict } => assert_eq!(verdict.detail, Some("hit-for-pass")),
        _ => panic!("the response stored before the hit-for-pass was served"),
    }
    assert_eq!(requests(&origin), 1);
}

/// The same for a URL whose newer response has Vary: the older one without Vary, held
/// under the bare URL, must not be found first.
#[tokio::test]
async fn a_response_with_vary_replaces_the_one_without_it() {
    let (edge, origin) = setup("max-age=0").await;
    let (_, v) = served(decide(&edge, &HeaderMap::new()).await);
    assert_eq!(v.kind, CacheOutcome::Miss);
    // The origin now answers with Vary, a new version, fresh for a minute.
    *origin.answer.lock().unwrap() = ("max-age=60", "\"v2\"", Some("accept-language"));
    let mut en = HeaderMap::new();
    en.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("en"));
    let (meta, v) = served(decide(&edge, &en).await);
    assert_eq!(v.kind, CacheOutcome::Stale, "revalidated: {v:?}");
    assert_eq!(meta.etag.as_deref(), Some("\"v2\""));
    assert_eq!(requests(&origin), 2);
    // English is now a fresh hit of the new version, without asking (not the old version
    // without Vary, which is stale and would be revalidated).
    let (meta, v) = served(decide(&edge, &en).await);
    assert_eq!(
        (v.kind, meta.etag.as_deref()),
        (CacheOutcome::Hit, Some("\"v2\""))
    );
    assert_eq!(requests(&origin), 2);
}

#[tokio::test]
async fn only_if_cached_fails_a_miss_without_asking() {
    let (edge, origin) = setup("max-age=60").await;
    let mut req = HeaderMap::new();
    req.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("only-if-cached"),
    );
    match decide(&edge, &req).await {
        Decision::Fail { status, .. } => assert_eq!(status, StatusCode::GATEWAY_TIMEOUT),
        _ => panic!("not a 504"),
    }
    assert_eq!(requests(&origin), 0);
}
