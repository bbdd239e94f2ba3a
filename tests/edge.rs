//! End-to-end tests of the edge: a real origin and edge on 127.0.0.1:0; origin fetches are
//! counted from the origin's own metrics.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use http::StatusCode;

const MIB: u64 = 1 << 20;

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cold_requests_make_one_origin_fetch() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let url = format!("{}/synthetic/one-chunk?size={MIB}", edge.url());
    let want = synthetic("one-chunk", 0..=MIB - 1);
    let client = client();
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let (c, u) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let r = c.get(u).send().await.unwrap();
                (r.status(), r.bytes().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, want);
    }
    assert_eq!(origin_requests(&origin.url()).await, 1.0);
    let text = metrics_text(&edge.url()).await;
    assert_eq!(
        cdn_http::metrics::sum(&text, "cdn_edge_origin_fetches_total"),
        1.0
    );
    assert!(cdn_http::metrics::sum(&text, "cdn_edge_coalesced_waits_total") >= 1.0);
    assert_eq!(
        cdn_http::metrics::sum(&text, "cdn_edge_requests_total"),
        200.0
    );
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn small_range_of_a_huge_object_fetches_one_chunk() {
    let origin = start_origin_with(&media_root(), "synthetic_max_bytes = 1073741824\n").await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let at = 900 * MIB + 12345;
    let r = client()
        .get(format!("{}/synthetic/huge?size={}", edge.url(), 1024 * MIB))
        .header("range", format!("bytes={at}-{at}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes {at}-{at}/{}", 1024 * MIB).as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), synthetic("huge", at..=at));
    assert_eq!(origin_requests(&origin.url()).await, 1.0);
    let sent = metric_sum(&origin.url(), "cdn_origin_bytes_sent_total").await;
    assert_eq!(
        sent, MIB as f64,
        "exactly one chunk crossed from the origin"
    );
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn ranges_across_chunk_borders_are_exact_and_then_hits() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |c| {
        c.chunk_size = 64 * 1024;
        c.readahead = 2;
    })
    .await;
    let size = 300_000u64;
    let url = format!("{}/synthetic/borders?size={size}", edge.url());
    let all = synthetic("borders", 0..=size - 1);
    let get = |range: Option<String>| {
        let mut b = client().get(&url);
        if let Some(r) = range {
            b = b.header("range", r);
        }
        b.send()
    };
    for (a, b) in [
        (65_530u64, 65_545u64),
        (0, 131_072),
        (65_536, 65_536),
        (100_000, 299_999),
    ] {
        let r = get(Some(format!("bytes={a}-{b}"))).await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{a}-{b}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {a}-{b}/{size}").as_str()
        );
        assert_eq!(
            r.bytes().await.unwrap(),
            all.slice(a as usize..=b as usize),
            "{a}-{b}"
        );
    }
    let r = get(Some("bytes=-70000".into())).await.unwrap();
    assert_eq!(r.bytes().await.unwrap(), all.slice(230_000..));
    let r = get(Some("bytes=10-20, 131000-131100".into()))
        .await
        .unwrap();
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    let parts = parse_multipart(&ct, &r.bytes().await.unwrap());
    assert_eq!(parts[0].1, all.slice(10..=20));
    assert_eq!(parts[1].1, all.slice(131_000..=131_100));
    let r = get(Some("bytes=300000-".into())).await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */300000");
    let r = get(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), all);
    // Every chunk is stored now: more reads cost the origin nothing.
    let before = origin_requests(&origin.url()).await;
    for range in ["bytes=0-299999", "bytes=12-250000", "bytes=-1"] {
        let r = get(Some(range.into())).await.unwrap();
        assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
        r.bytes().await.unwrap();
    }
    assert_eq!(origin_requests(&origin.url()).await, before);
    // If-Range with the stored ETag is honoured; with another, the whole object comes.
    let etag = get(None).await.unwrap().headers()["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let r = client()
        .get(&url)
        .header("range", "bytes=5-9")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let r = client()
        .get(&url)
        .header("range", "bytes=5-9")
        .header("if-range", "\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn cold_response_starts_before_the_object_is_fetched() {
    let origin = start_origin_with(&media_root(), "synthetic_max_bytes = 104857600\n").await;
    let (edge, _) = start_edge(&origin.url(), |c| c.capacity = 256 * MIB).await;
    let mut r = client()
        .get(format!("{}/synthetic/big?size={}", edge.url(), 100 * MIB))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let first = r.chunk().await.unwrap().unwrap();
    assert_eq!(first, synthetic("big", 0..=first.len() as u64 - 1));
    // The first bytes arrived long before the object was fetched: only what the edge could
    // push into the loopback socket buffers (a few MiB) plus read-ahead had crossed.
    let sent = metric_sum(&origin.url(), "cdn_origin_bytes_sent_total").await;
    assert!(sent <= (20 * MIB) as f64, "origin had sent {sent} bytes");
    let mut total = first.len() as u64;
    while let Some(c) = r.chunk().await.unwrap() {
        total += c.len() as u64;
    }
    assert_eq!(total, 100 * MIB);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn expiry_then_304_revalidation_keeps_chunks() {
    let cfg = "[[cache_control]]\npattern = \"/synthetic/short-*\"\nvalue = \"max-age=1\"\n";
    let origin = start_origin_with(&media_root(), cfg).await;
    let (edge, _) = start_edge(&origin.url(), |c| c.chunk_size = 64 * 1024).await;
    let url = format!("{}/synthetic/short-1?size=200000", edge.url());
    let all = synthetic("short-1", 0..=199_999);
    let r = client().get(&url).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.bytes().await.unwrap(), all);
    let r = client().get(&url).send().await.unwrap();
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    r.bytes().await.unwrap();
    let bytes_before = metric_sum(&origin.url(), "cdn_origin_bytes_sent_total").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = client().get(&url).send().await.unwrap();
    let status = cache_status(&r);
    assert!(
        status.contains("fwd=stale") && status.contains("fwd-status=304"),
        "{status}"
    );
    assert_eq!(r.bytes().await.unwrap(), all);
    let text = metrics_text(&origin.url()).await;
    assert_eq!(
        cdn_http::metrics::sample(&text, "cdn_origin_requests_total{status=\"304\"}"),
        Some(1.0)
    );
    // No chunk was fetched again: only the 304 crossed.
    assert_eq!(
        cdn_http::metrics::sum(&text, "cdn_origin_bytes_sent_total"),
        bytes_before
    );
    // Fresh again after the 304.
    let r = client().get(&url).send().await.unwrap();
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn no_store_and_private_are_never_stored() {
    let cfg = "[[cache_control]]\npattern = \"/synthetic/nostore-*\"\nvalue = \"no-store\"\n\
               [[cache_control]]\npattern = \"/synthetic/private-*\"\nvalue = \"private, max-age=600\"\n";
    let origin = start_origin_with(&media_root(), cfg).await;
    let (edge, edge_state) = start_edge(&origin.url(), |_| {}).await;
    for id in ["nostore-1", "private-1"] {
        let url = format!("{}/synthetic/{id}?size=5000", edge.url());
        let before = origin_requests(&origin.url()).await;
        for _ in 0..3 {
            let r = client().get(&url).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert!(!cache_status(&r).contains("; hit"), "{}", cache_status(&r));
            assert_eq!(r.bytes().await.unwrap(), synthetic(id, 0..=4999));
        }
        // First request: the probe plus its pass; then straight passes.
        assert_eq!(origin_requests(&origin.url()).await - before, 4.0, "{id}");
    }
    edge_state.store.metas.run_pending_tasks().await;
    assert_eq!(edge_state.store.metas.entry_count(), 0);
    assert_eq!(edge_state.store.chunks.iter().count(), 0);
    // A request with Authorization is passed and not stored either.
    let url = format!("{}/synthetic/auth?size=100", edge.url());
    let r = client()
        .get(&url)
        .header("authorization", "Bearer x")
        .send()
        .await
        .unwrap();
    assert!(cache_status(&r).contains("fwd=request"));
    edge.stop().await;
    origin.stop().await;
}

/// A small origin for what the real one does not do: Vary, no range support, unsafe methods.
async fn varying_origin(hits: Arc<AtomicUsize>) -> cdn_http::server::NodeHandle {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/page",
        get({
            let hits = hits.clone();
            move |headers: http::HeaderMap| {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let lang = headers
                        .get("accept-language")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_string();
                    // Ignores Range: always the whole body with 200.
                    (
                        [
                            ("vary", "Accept-Language"),
                            ("cache-control", "max-age=600"),
                        ],
                        format!("page in {lang}"),
                    )
                }
            }
        })
        .post({
            let hits = hits.clone();
            move || {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    "posted"
                }
            }
        }),
    );
    cdn_http::server::NodeHandle::spawn(listener().await, app, Default::default()).unwrap()
}

#[tokio::test]
async fn vary_is_respected_and_unsafe_methods_invalidate() {
    let hits = Arc::new(AtomicUsize::new(0));
    let origin = varying_origin(hits.clone()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let url = format!("{}/page", edge.url());
    let get = |lang: &'static str| client().get(&url).header("accept-language", lang).send();
    for round in 0..2 {
        for lang in ["de", "en"] {
            let r = get(lang).await.unwrap();
            let cs = cache_status(&r);
            assert_eq!(r.text().await.unwrap(), format!("page in {lang}"));
            if round == 1 {
                assert!(cs.contains("; hit"), "{lang}: {cs}");
            }
        }
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "one origin fetch per variant"
    );
    // A successful POST invalidates the stored responses of the URL.
    let r = client().post(&url).body("x").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "posted");
    let r = get("de").await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.text().await.unwrap(), "page in de");
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn stale_if_error_serves_stale_with_the_origin_stopped() {
    let cfg = "[[cache_control]]\npattern = \"/synthetic/sie-*\"\nvalue = \"max-age=1, stale-if-error=60\"\n\
               [[cache_control]]\npattern = \"/synthetic/strict-*\"\nvalue = \"max-age=1, must-revalidate, stale-if-error=60\"\n";
    let origin = start_origin_with(&media_root(), cfg).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let sie = format!("{}/synthetic/sie-1?size=3000", edge.url());
    let strict = format!("{}/synthetic/strict-1?size=3000", edge.url());
    for url in [&sie, &strict] {
        let r = client().get(url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.bytes().await.unwrap();
    }
    origin.stop().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = client().get(&sie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        cache_status(&r).contains("stale-if-error"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(r.bytes().await.unwrap(), synthetic("sie-1", 0..=2999));
    // must-revalidate forbids it: a gateway error instead of stale bytes.
    let r = client().get(&strict).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    edge.stop().await;
}

/// An origin that announces `len` bytes and sends only half, then closes.
async fn truncating_origin(len: usize, hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let hits = hits.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                hits.fetch_add(1, Ordering::SeqCst);
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\ncache-control: max-age=600\r\n\
                     etag: \"t1\"\r\ncontent-type: video/mp4\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&vec![b'x'; len / 2]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn truncated_origin_body_is_not_cached_and_the_client_sees_an_abort() {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = truncating_origin(200_000, hits.clone()).await;
    let (edge, edge_state) =
        start_edge(&format!("http://{addr}"), |c| c.chunk_size = 64 * 1024).await;
    for attempt in 1..=2 {
        let r = client()
            .get(format!("{}/v.mp4", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-length"], "200000");
        assert!(
            r.bytes().await.is_err(),
            "attempt {attempt}: a short body must not look complete"
        );
        assert_eq!(
            hits.load(Ordering::SeqCst),
            attempt,
            "not served from cache"
        );
    }
    edge_state.store.chunks.run_pending_tasks().await;
    assert_eq!(
        edge_state.store.chunks.iter().count(),
        0,
        "no chunk of the bad body kept"
    );
    let fill_errors = metric_sum(&edge.url(), "cdn_edge_fill_errors_total").await;
    assert!(fill_errors >= 2.0);
    edge.stop().await;
}

#[tokio::test]
async fn purge_needs_the_token() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |c| c.purge_token = Some("s3cret".into())).await;
    let url = format!("{}/synthetic/p1?size=1000", edge.url());
    client()
        .get(&url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let r = client().request(purge.clone(), &url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client()
        .request(purge.clone(), &url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client()
        .post(format!("{}/_admin/purge", edge.url()))
        .body(r#"{"path": "/synthetic/", "prefix": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = client().get(&url).send().await.unwrap();
    assert!(
        cache_status(&r).contains("; hit"),
        "nothing purged: {}",
        cache_status(&r)
    );
    let r = client()
        .request(purge, &url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client().get(&url).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=miss"),
        "{}",
        cache_status(&r)
    );
    // Prefix purge through the admin API.
    let r = client()
        .post(format!("{}/_admin/purge", edge.url()))
        .bearer_auth("s3cret")
        .body(r#"{"path": "/synthetic/", "prefix": true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client().get(&url).send().await.unwrap();
    assert!(
        cache_status(&r).contains("fwd=miss"),
        "{}",
        cache_status(&r)
    );
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn memory_stays_within_capacity_after_filling_four_times_over() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let capacity = 4 * MIB;
    for policy in [
        cdn_edge::Policy::Lru,
        cdn_edge::Policy::TinyLfu,
        cdn_edge::Policy::S3Fifo,
    ] {
        let (edge, state) = start_edge(&origin.url(), |c| {
            c.capacity = capacity;
            c.chunk_size = 256 * 1024;
            c.policy = policy;
        })
        .await;
        for i in 0..16 {
            let url = format!("{}/synthetic/fill-{i}?size={MIB}", edge.url());
            let body = client()
                .get(&url)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            assert_eq!(body.len() as u64, MIB);
        }
        let held = state.store.weighted_size().await;
        assert!(held <= capacity, "{policy:?}: {held} > {capacity}");
        assert!(
            held >= capacity / 2,
            "{policy:?}: the cache is used: {held}"
        );
        let reported = metric_sum(&edge.url(), "cdn_edge_cache_bytes").await;
        assert!(reported <= capacity as f64, "{policy:?}");
        edge.stop().await;
    }
    origin.stop().await;
}
