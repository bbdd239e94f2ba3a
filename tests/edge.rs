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

/// `only-if-cached` (RFC 9111 §5.2.1.7) on an object whose metadata is stored but not the
/// chunk the request needs: 504 and no origin request (before: the chunk was filled from the
/// origin as for any partial hit).
#[tokio::test]
async fn only_if_cached_does_not_fill_a_missing_chunk() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |c| c.chunk_size = MIB).await;
    let url = format!("{}/synthetic/oic?size={}", edge.url(), 3 * MIB);
    let c = client();
    // The first chunk and the metadata are stored; the third chunk is not.
    let r = c
        .get(&url)
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let before = origin_requests(&origin.url()).await;
    let r = c
        .get(&url)
        .header("range", format!("bytes={}-{}", 2 * MIB, 2 * MIB + 9))
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin_requests(&origin.url()).await, before);
    // What is stored still answers it.
    let r = c
        .get(&url)
        .header("range", "bytes=0-9")
        .header("cache-control", "only-if-cached")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), synthetic("oic", 0..=9));
    assert_eq!(origin_requests(&origin.url()).await, before);
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
    // 3 s of freshness: the hits below must come within it on a loaded machine too.
    let cfg = "[[cache_control]]\npattern = \"/synthetic/short-*\"\nvalue = \"max-age=3\"\n";
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
    tokio::time::sleep(Duration::from_millis(3100)).await;
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
            // The probe's 206 reshaped into the 200 the client asked for.
            assert_eq!(r.headers()["content-length"], "5000");
            assert!(!r.headers().contains_key("content-range"));
            assert_eq!(r.bytes().await.unwrap(), synthetic(id, 0..=4999));
        }
        // One origin request per request: the first request's probe answer is its own
        // answer (not asked again), the others pass straight through.
        assert_eq!(origin_requests(&origin.url()).await - before, 3.0, "{id}");
    }
    edge_state.store().settle().await;
    assert_eq!(edge_state.store().object_count(), 0);
    assert_eq!(edge_state.store().chunks_held().len(), 0);
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
    // must-revalidate forbids it: a gateway error instead of stale bytes, its message sized
    // (Content-Length, not chunked).
    let r = client().get(&strict).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(!r.headers().contains_key("transfer-encoding"));
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), len);
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
    edge_state.store().settle().await;
    assert_eq!(
        edge_state.store().chunks_held().len(),
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
        cdn_edge::Policy::GroupedS3Fifo,
        cdn_edge::Policy::S3FifoRate,
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
        let held = state.store().weighted_size().await;
        assert!(held <= capacity, "{policy:?}: {held} > {capacity}");
        assert!(
            held >= capacity / 2,
            "{policy:?}: the cache is used: {held}"
        );
        let reported = metric_sum(&edge.url(), "cdn_edge_cache_bytes").await;
        assert!(reported <= capacity as f64, "{policy:?}");
        // s3-fifo-rate learned its memory from the chunks it evicted (200,000 requests
        // before the first); the other policies have none to report.
        let half_life = metric_sum(&edge.url(), "cdn_edge_cache_rate_half_life_requests").await;
        if policy == cdn_edge::Policy::S3FifoRate {
            assert!(half_life > 0.0 && half_life < 200_000.0, "{half_life}");
        } else {
            assert_eq!(half_life, 0.0, "{policy:?}");
        }
        edge.stop().await;
    }
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_404_storm_makes_one_origin_request_per_ttl() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, state) = start_edge(&origin.url(), |c| {
        c.negative_ttl_secs = 3;
        c.purge_token = Some("t".into());
    })
    .await;
    let url = format!("{}/segments/missing-1.ts", edge.url());
    let storm = |n: usize| {
        let url = url.clone();
        async move {
            let client = client();
            let tasks: Vec<_> = (0..n)
                .map(|_| {
                    let (c, u) = (client.clone(), url.clone());
                    tokio::spawn(async move {
                        let r = c.get(u).send().await.unwrap();
                        let cs = cache_status(&r);
                        (r.status(), cs, r.text().await.unwrap())
                    })
                })
                .collect();
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        }
    };
    // Cold: 50 concurrent misses, one origin request; everyone gets the origin's 404.
    let round = storm(50).await;
    for (status, _, body) in &round {
        assert_eq!(*status, StatusCode::NOT_FOUND);
        assert_eq!(body, "not found\n");
    }
    assert!(
        round.iter().any(|(_, cs, _)| cs.contains("fwd=miss")
            && cs.contains("fwd-status=404")
            && cs.contains("; stored")),
        "{:?}",
        round.iter().map(|r| &r.1).collect::<Vec<_>>()
    );
    assert_eq!(origin_requests(&origin.url()).await, 1.0);
    // Within the TTL: all hits, no origin request.
    let round = storm(50).await;
    for (status, cs, body) in &round {
        assert_eq!(*status, StatusCode::NOT_FOUND);
        assert!(cs.contains("; hit"), "{cs}");
        assert_eq!(body, "not found\n");
    }
    // HEAD is answered from it too, with the stored body's length.
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.headers()["content-length"], "10");
    assert!(r.headers().contains_key("age"));
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert!(r.bytes().await.unwrap().is_empty());
    assert_eq!(origin_requests(&origin.url()).await, 1.0);
    state.store().settle().await;
    assert_eq!(state.store().object_count(), 1);
    assert_eq!(state.store().chunks_held().len(), 0, "a 404 has no chunks");
    // After the TTL: one new origin request, however many ask.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let round = storm(20).await;
    for (status, _, body) in &round {
        assert_eq!(*status, StatusCode::NOT_FOUND);
        assert_eq!(body, "not found\n");
    }
    assert_eq!(origin_requests(&origin.url()).await, 2.0);
    let r = client().get(&url).send().await.unwrap();
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    // Purged like an object.
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    let r = client()
        .request(purge, &url)
        .bearer_auth("t")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        cache_status(&r).contains("fwd=miss"),
        "{}",
        cache_status(&r)
    );
    assert_eq!(origin_requests(&origin.url()).await, 3.0);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_later_200_replaces_a_stored_404() {
    let root = std::env::temp_dir().join(format!("cdn-edge-neg-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let root = std::fs::canonicalize(&root).unwrap();
    let _ = std::fs::remove_file(root.join("late.ts"));
    let origin = start_origin(&root, &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |c| c.negative_ttl_secs = 2).await;
    let url = format!("{}/late.ts", edge.url());
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The segment appears; the stored 404 answers until it expires.
    let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("late.ts"), &body).unwrap();
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert_eq!(origin_requests(&origin.url()).await, 1.0);
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cs = cache_status(&r);
    assert!(cs.contains("fwd=stale") && cs.contains("; stored"), "{cs}");
    assert_eq!(r.bytes().await.unwrap(), body);
    assert_eq!(origin_requests(&origin.url()).await, 2.0);
    // The object replaced the 404: hits, ranges included.
    let r = client()
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert_eq!(r.bytes().await.unwrap(), body[10..20]);
    assert_eq!(origin_requests(&origin.url()).await, 2.0);
    edge.stop().await;
    origin.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

/// An origin answering each path with a fixed status, headers and body, counting requests
/// per path.
async fn status_origin(
    hits: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
) -> cdn_http::server::NodeHandle {
    use axum::body::Body;
    use axum::response::{IntoResponse, Response};
    let app = axum::Router::new().fallback(move |uri: http::Uri| {
        let hits = hits.clone();
        async move {
            *hits
                .lock()
                .unwrap()
                .entry(uri.path().to_string())
                .or_default() += 1;
            let stream = |parts: Vec<Vec<u8>>| {
                Body::from_stream(futures::stream::iter(
                    parts
                        .into_iter()
                        .map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p))),
                ))
            };
            let r: Response = match uri.path() {
                "/gone" => (
                    StatusCode::GONE,
                    [("cache-control", "max-age=60")],
                    "gone\n",
                )
                    .into_response(),
                "/nostore" => (
                    StatusCode::NOT_FOUND,
                    [("cache-control", "no-store")],
                    "nope\n",
                )
                    .into_response(),
                "/error" => (StatusCode::INTERNAL_SERVER_ERROR, "boom\n").into_response(),
                "/error-cc" => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("cache-control", "max-age=60")],
                    "busy\n",
                )
                    .into_response(),
                "/cookie" => {
                    (StatusCode::NOT_FOUND, [("set-cookie", "s=1")], "cookie\n").into_response()
                }
                "/big" => (StatusCode::NOT_FOUND, vec![b'b'; 100_000]).into_response(),
                "/big-chunked" => {
                    (StatusCode::NOT_FOUND, stream(vec![vec![b'c'; 50_000]; 2])).into_response()
                }
                "/chunked" => (
                    StatusCode::NOT_FOUND,
                    [("content-type", "text/plain")],
                    stream(vec![b"no such ".to_vec(), b"segment\n".to_vec()]),
                )
                    .into_response(),
                "/nocontent" => (
                    StatusCode::NO_CONTENT,
                    [("cache-control", "max-age=60"), ("etag", "\"n1\"")],
                )
                    .into_response(),
                "/moved" => {
                    (StatusCode::MOVED_PERMANENTLY, [("location", "/elsewhere")]).into_response()
                }
                "/found" => (StatusCode::FOUND, [("location", "/elsewhere")]).into_response(),
                "/bad" => (
                    StatusCode::BAD_REQUEST,
                    [("cache-control", "max-age=60")],
                    "bad\n",
                )
                    .into_response(),
                _ => StatusCode::NOT_FOUND.into_response(),
            };
            r
        }
    });
    cdn_http::server::NodeHandle::spawn(listener().await, app, Default::default()).unwrap()
}

#[tokio::test]
async fn negative_caching_follows_rfc9111() {
    let hits = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let origin = status_origin(hits.clone()).await;
    let (edge, state) = start_edge(&origin.url(), |c| c.negative_ttl_secs = 3).await;
    let count = |path: &str| hits.lock().unwrap().get(path).copied().unwrap_or(0);
    let get = |path: &str| client().get(format!("{}{path}", edge.url())).send();

    // Explicit freshness wins over negative_ttl_secs: 60 s, not 3 s (3 s leaves room for a
    // loaded machine between storing and counting below).
    for i in 0..3 {
        let r = get("/gone").await.unwrap();
        assert_eq!(r.status(), StatusCode::GONE);
        let cs = cache_status(&r);
        if i == 0 {
            assert!(cs.contains("fwd=miss") && cs.contains("; stored"), "{cs}");
        } else {
            assert!(cs.contains("; hit"), "{cs}");
            let ttl: i64 = cs
                .split("ttl=")
                .nth(1)
                .and_then(|t| t.split(';').next())
                .unwrap()
                .parse()
                .unwrap();
            assert!((55..=60).contains(&ttl), "{cs}");
        }
        assert_eq!(r.headers()["cache-control"], "max-age=60");
        assert_eq!(r.text().await.unwrap(), "gone\n");
        if i == 1 {
            tokio::time::sleep(Duration::from_millis(3300)).await;
        }
    }
    assert_eq!(count("/gone"), 1);

    // Never stored: no-store, a 500 without explicit freshness, Set-Cookie, bodies over the
    // bound (with Content-Length or chunked), a 302 without explicit freshness.
    for (path, status, len) in [
        ("/nostore", 404, 5),
        ("/error", 500, 5),
        ("/cookie", 404, 7),
        ("/big", 404, 100_000),
        ("/big-chunked", 404, 100_000),
        ("/found", 302, 0),
    ] {
        for _ in 0..3 {
            let r = get(path).await.unwrap();
            assert_eq!(r.status().as_u16(), status, "{path}");
            assert!(!cache_status(&r).contains("; hit"), "{path}");
            assert!(!cache_status(&r).contains("stored"), "{path}");
            assert_eq!(r.bytes().await.unwrap().len(), len, "{path}");
        }
        assert_eq!(count(path), 3, "{path}: every request reaches the origin");
    }

    // Stored: a chunked 404 (heuristic TTL), a 301, a 204 with its ETag; and, for as long
    // as the origin says, a 503 and a 400 with max-age (RFC 9111 §3: fills carry only keyed
    // and negotiation fields, so no client can make the origin fail for everyone).
    for path in ["/chunked", "/moved", "/nocontent", "/error-cc", "/bad"] {
        for i in 0..2 {
            let r = get(path).await.unwrap();
            let cs = cache_status(&r);
            assert_eq!(cs.contains("; hit"), i == 1, "{path}: {cs}");
        }
        assert_eq!(count(path), 1, "{path}");
    }
    let r = get("/chunked").await.unwrap();
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert_eq!(r.headers()["content-length"], "16");
    assert_eq!(r.text().await.unwrap(), "no such segment\n");
    let r = get("/moved").await.unwrap();
    assert_eq!(r.status(), StatusCode::MOVED_PERMANENTLY);
    assert_eq!(r.headers()["location"], "/elsewhere");
    // Preconditions: evaluated for a stored 2xx, ignored for a stored 404 (RFC 9110 §13.2.1).
    let r = client()
        .get(format!("{}/nocontent", edge.url()))
        .header("if-none-match", "\"n1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(cache_status(&r).contains("; hit"));
    let r = client()
        .get(format!("{}/nocontent", edge.url()))
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(r.headers()["etag"], "\"n1\"");
    let r = client()
        .get(format!("{}/chunked", edge.url()))
        .header("if-none-match", "*")
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(r.text().await.unwrap(), "no such segment\n");
    assert_eq!(count("/chunked"), 1);
    assert_eq!(count("/nocontent"), 1);

    // The heuristic one expires after negative_ttl_secs; the explicit one does not.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let r = get("/chunked").await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert_eq!(count("/chunked"), 2);
    let r = get("/gone").await.unwrap();
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert_eq!(count("/gone"), 1);
    state.store().settle().await;
    let mut stored: Vec<String> = state
        .store()
        .objects_held()
        .into_iter()
        .map(|(k, _)| k.rsplit('/').next().unwrap().to_string())
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        ["bad", "chunked", "error-cc", "gone", "moved", "nocontent"]
    );
    // A HEAD of what is not stored gets the origin's status and length, without a body.
    for (path, status, len) in [("/error", 500, "5"), ("/big", 404, "100000")] {
        let r = client()
            .head(format!("{}{path}", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(r.headers()["content-length"], len, "{path}");
        assert!(r.bytes().await.unwrap().is_empty());
        assert_eq!(count(path), 4, "{path}");
    }
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn negative_ttl_zero_stores_only_explicit_freshness() {
    let hits = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let origin = status_origin(hits.clone()).await;
    let (edge, _) = start_edge(&origin.url(), |c| c.negative_ttl_secs = 0).await;
    for path in ["/chunked", "/chunked", "/gone", "/gone"] {
        client()
            .get(format!("{}{path}", edge.url()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
    }
    let hits = hits.lock().unwrap().clone();
    assert_eq!(hits.get("/chunked"), Some(&2));
    assert_eq!(hits.get("/gone"), Some(&1));
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_truncated_404_is_never_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let hits = h.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let _ = s.read(&mut buf).await;
                hits.fetch_add(1, Ordering::SeqCst);
                let head = "HTTP/1.1 404 Not Found\r\ncontent-length: 100\r\n\
                            cache-control: max-age=600\r\n\r\n";
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(&[b'x'; 50]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    let (edge, state) = start_edge(&format!("http://{addr}"), |_| {}).await;
    for attempt in 1..=2 {
        let r = client()
            .get(format!("{}/seg.ts", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "attempt {attempt}");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            attempt,
            "not served from cache"
        );
    }
    state.store().settle().await;
    assert_eq!(state.store().object_count(), 0);
    edge.stop().await;
}

#[tokio::test]
async fn head_miss_probes_once_then_head_and_get_hit() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let size = MIB + MIB / 2;
    let path = format!("/synthetic/head-1?size={size}");
    let url = format!("{}{path}", edge.url());
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let cs = cache_status(&r);
    assert!(cs.contains("fwd=miss") && cs.contains("; stored"), "{cs}");
    let miss = r.headers().clone();
    assert_eq!(miss["content-length"], size.to_string().as_str());
    assert!(r.bytes().await.unwrap().is_empty());
    // The probe was one chunk-sized Range GET: exactly one chunk crossed.
    assert_eq!(origin_requests(&origin.url()).await, 1.0);
    assert_eq!(
        metric_sum(&origin.url(), "cdn_origin_bytes_sent_total").await,
        MIB as f64
    );
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    let hit = r.headers().clone();
    assert!(r.bytes().await.unwrap().is_empty());
    let r = client()
        .get(&url)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 1000-1999/{size}").as_str()
    );
    assert_eq!(r.bytes().await.unwrap(), synthetic("head-1", 1000..=1999));
    assert_eq!(
        origin_requests(&origin.url()).await,
        1.0,
        "one origin request in all"
    );
    // The full object's headers, as the origin gives them to a HEAD.
    let o = client()
        .head(format!("{}{path}", origin.url()))
        .send()
        .await
        .unwrap();
    for name in [
        "content-length",
        "content-type",
        "etag",
        "last-modified",
        "cache-control",
        "accept-ranges",
    ] {
        assert_eq!(miss.get(name), o.headers().get(name), "{name} (miss)");
        assert_eq!(hit.get(name), o.headers().get(name), "{name} (hit)");
    }
    assert!(miss.contains_key("age") && hit.contains_key("via"));
    assert!(miss.get("content-range").is_none() && hit.get("content-range").is_none());
    // A HEAD miss of a small object stores all of it: a whole GET then is a hit.
    let small = format!("{}/synthetic/head-2?size=5000", edge.url());
    let r = client().head(&small).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "5000");
    let r = client().get(&small).send().await.unwrap();
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    assert_eq!(r.bytes().await.unwrap(), synthetic("head-2", 0..=4999));
    assert_eq!(
        origin_requests(&origin.url()).await,
        3.0,
        "one probe + the direct HEAD"
    );
    edge.stop().await;
    origin.stop().await;
}

/// Read-ahead starts only when a response reads sequentially (it spans two chunks or more, so
/// it crosses from one chunk into the next): a response within one chunk fetches that chunk
/// alone, so a viewer that leaves after it costs the origin nothing more. Counted exactly at
/// the origin, and in the edge's store.
#[tokio::test]
async fn read_ahead_only_when_a_response_reads_across_chunks() {
    const CHUNK: u64 = 64 * 1024;
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, state) = start_edge(&origin.url(), |c| {
        c.chunk_size = CHUNK;
        c.readahead = 2;
    })
    .await;
    let size = 8 * CHUNK;
    let get = |id: &'static str, first: u64, last: u64| {
        let url = format!("{}/synthetic/{id}?size={size}", edge.url());
        async move {
            let r = client()
                .get(url)
                .header("range", format!("bytes={first}-{last}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
            assert_eq!(r.bytes().await.unwrap(), synthetic(id, first..=last));
        }
    };
    // Read-ahead runs in the background: wait until the origin has answered `want` requests
    // (or 10 s), then a while longer, and return the count then.
    let settled = |want: f64| {
        let origin = origin.url();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while origin_requests(&origin).await < want && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            (
                origin_requests(&origin).await,
                metric_sum(&origin, "cdn_origin_bytes_sent_total").await,
            )
        }
    };
    let stored = |id: &str| {
        let mut held: Vec<u64> = state
            .store()
            .chunks_held()
            .into_iter()
            .filter(|(k, _)| k.version.key.contains(&format!("/synthetic/{id}?")))
            .map(|(k, _)| k.index)
            .collect();
        held.sort_unstable();
        held
    };

    // Exactly one chunk of a cold object: the probe fetches it, nothing is read ahead.
    get("ra-one", 0, CHUNK - 1).await;
    assert_eq!(settled(1.0).await, (1.0, CHUNK as f64));
    assert_eq!(stored("ra-one"), [0]);
    // The end of a chunk, within that chunk (a hit on the metadata, the chunk filled): still
    // nothing ahead, though this response reads to the chunk's end.
    get("ra-one", 3 * CHUNK + 100, 4 * CHUNK - 1).await;
    assert_eq!(settled(2.0).await, (2.0, 2.0 * CHUNK as f64));
    assert_eq!(stored("ra-one"), [0, 3]);

    // Two whole chunks of a cold object, read in order: chunk 0 (the probe) reads 1 and 2
    // ahead; chunk 1, reached by crossing from chunk 0 and read to its end, reads 2 (under
    // way already) and 3 ahead. Four fetches, each chunk once.
    get("ra-seq", 0, 2 * CHUNK - 1).await;
    assert_eq!(settled(6.0).await, (6.0, 6.0 * CHUNK as f64));
    assert_eq!(stored("ra-seq"), [0, 1, 2, 3]);

    // Across one border, ending inside the second chunk: read-ahead from the first chunk
    // (1 and 2), none from the second (the response ends before that chunk's end).
    get("ra-mid", CHUNK / 2, CHUNK + 10).await;
    assert_eq!(settled(9.0).await, (9.0, 9.0 * CHUNK as f64));
    assert_eq!(stored("ra-mid"), [0, 1, 2]);

    // Hits read nothing more: the same sequential range again, and one chunk.
    get("ra-seq", 0, 2 * CHUNK - 1).await;
    get("ra-seq", 2 * CHUNK, 3 * CHUNK - 1).await;
    assert_eq!(settled(9.0).await, (9.0, 9.0 * CHUNK as f64));
    edge.stop().await;
    origin.stop().await;
}

/// An origin for targeted cache control (RFC 9213) and stored fields: each path answers 200
/// with its own fields, ignoring Range, and counts its requests.
async fn fields_origin(
    hits: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
) -> cdn_http::server::NodeHandle {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(move |uri: http::Uri| {
        let hits = hits.clone();
        async move {
            let path = uri.path().to_string();
            *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
            let fields: &[(&str, &str)] = match path.as_str() {
                "/cdn-only" => &[
                    ("cache-control", "no-store"),
                    ("cdn-cache-control", "max-age=60"),
                    ("cache-status", "shield; fwd=uri-miss; stored"),
                ],
                "/cc-only" => &[
                    ("cache-control", "max-age=60"),
                    ("cdn-cache-control", "no-store"),
                ],
                "/example" => &[
                    ("cdn-cache-control", "no-store"),
                    ("example-cdn-cache-control", "max-age=60"),
                ],
                "/content-range" => &[
                    ("cache-control", "max-age=60"),
                    ("content-range", "not a range"),
                    ("etag", "\"cr1\""),
                ],
                _ => &[],
            };
            let mut headers = http::HeaderMap::new();
            for (k, v) in fields {
                headers.append(*k, http::HeaderValue::from_static(v));
            }
            (headers, "0123456789").into_response()
        }
    });
    cdn_http::server::NodeHandle::spawn(listener().await, app, Default::default()).unwrap()
}

fn values(r: &reqwest::Response, name: &str) -> Vec<String> {
    r.headers()
        .get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn cdn_cache_control_decides_what_the_edge_stores() {
    let hits = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let origin = fields_origin(hits.clone()).await;
    let count = |path: &str| hits.lock().unwrap().get(path).copied().unwrap_or(0);
    let (edge, state) = start_edge(&origin.url(), |c| c.name = "e1".into()).await;
    let get = |path: &str| client().get(format!("{}{path}", edge.url())).send();

    // `Cache-Control: no-store` for everyone else, `CDN-Cache-Control: max-age=60` for the
    // edge: stored, and the second request is a hit. Both fields reach the client as the
    // origin sent them; the upstream's Cache-Status member comes first, the edge's last.
    for round in 0..2 {
        let r = get("/cdn-only").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(values(&r, "cache-control"), ["no-store"]);
        assert_eq!(values(&r, "cdn-cache-control"), ["max-age=60"]);
        let cs = values(&r, "cache-status");
        assert_eq!(cs.len(), 2, "{cs:?}");
        assert_eq!(cs[0], "shield; fwd=uri-miss; stored");
        let ours = if round == 0 {
            "e1; fwd=miss; ttl=60; stored"
        } else {
            "e1; hit; ttl="
        };
        assert!(cs[1].starts_with(ours), "round {round}: {cs:?}");
        assert_eq!(r.text().await.unwrap(), "0123456789");
    }
    assert_eq!(count("/cdn-only"), 1, "one origin request for two GETs");

    // `Cache-Control: max-age=60` with `CDN-Cache-Control: no-store`: never stored here.
    for _ in 0..2 {
        let before = count("/cc-only");
        let r = get("/cc-only").await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!cache_status(&r).contains("; hit"), "{}", cache_status(&r));
        assert_eq!(values(&r, "cache-control"), ["max-age=60"]);
        assert_eq!(values(&r, "cdn-cache-control"), ["no-store"]);
        assert_eq!(r.text().await.unwrap(), "0123456789");
        assert!(count("/cc-only") > before, "every GET reaches the origin");
    }
    // A field not on the target list changes nothing: CDN-Cache-Control: no-store rules.
    for _ in 0..2 {
        let r = get("/example").await.unwrap();
        assert!(!cache_status(&r).contains("; hit"), "{}", cache_status(&r));
        assert_eq!(values(&r, "example-cdn-cache-control"), ["max-age=60"]);
        r.bytes().await.unwrap();
    }
    let example_hits = count("/example");
    assert!(example_hits >= 2, "{example_hits}");
    state.store().settle().await;
    assert_eq!(state.store().object_count(), 1, "only /cdn-only is stored");
    edge.stop().await;

    // An operator's own field first in the target list wins over CDN-Cache-Control.
    let (edge, _) = start_edge(&origin.url(), |c| {
        c.targeted_cache_control = vec![
            "Example-CDN-Cache-Control".into(),
            "CDN-Cache-Control".into(),
        ]
    })
    .await;
    for round in 0..2 {
        let r = client()
            .get(format!("{}/example", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(cache_status(&r).contains("; hit"), round == 1);
        assert_eq!(values(&r, "cdn-cache-control"), ["no-store"]);
        r.bytes().await.unwrap();
    }
    assert_eq!(count("/example"), example_hits + 1);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_stored_200_keeps_its_content_range_field() {
    let hits = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
    let origin = fields_origin(hits.clone()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let url = format!("{}/content-range", edge.url());
    // RFC 9111 §3.1: a 200's Content-Range is one of its fields, stored and replayed.
    for round in 0..2 {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            values(&r, "content-range"),
            ["not a range"],
            "round {round}"
        );
        assert_eq!(r.text().await.unwrap(), "0123456789");
    }
    assert_eq!(hits.lock().unwrap()["/content-range"], 1);
    // A range of it is a 206 with the edge's own Content-Range, and only that one.
    let r = client()
        .get(&url)
        .header("range", "bytes=2-4")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(values(&r, "content-range"), ["bytes 2-4/10"]);
    assert_eq!(r.text().await.unwrap(), "234");
    // Two ranges: multipart/byteranges, whose parts carry the ranges; none at the top.
    let r = client()
        .get(&url)
        .header("range", "bytes=0-0,5-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert!(values(&r, "content-range").is_empty());
    // A conditional hit: 304, without it.
    let r = client()
        .get(&url)
        .header("if-none-match", "\"cr1\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(values(&r, "content-range").is_empty());
    assert_eq!(hits.lock().unwrap()["/content-range"], 1);
    edge.stop().await;
    origin.stop().await;
}
