//! The edge as a safe shared cache (issue 12), end to end on 127.0.0.1: no viewer receives a
//! response caused by another viewer's request, no request can leave bytes on a pooled origin
//! connection, an uncacheable miss costs the origin one request, no request (or client) can
//! make the origin send much more than it asks for, empty objects, and arithmetic on request
//! values. Each test failed before its fix; the comment on each says how.
//!
//! Origins here are the project's own (counted by its metrics), an axum app when a test needs
//! to see or hold requests, or a raw TCP server ([`RawOrigin`]) when the behaviour is about
//! bytes on a connection.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use cdn_http::server::{NodeHandle, ServeOptions};
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Mutex, Notify};

const MIB: u64 = 1 << 20;

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Polls `cond` every 10 ms until it holds, for at most 30 s (a hang guard, not a bound).
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..3000 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

// ---------------------------------------------------------------------------------------------
// A raw HTTP/1.1 origin.

/// One request as a raw origin read it.
#[derive(Debug, Clone)]
struct Seen {
    conn: usize,
    head: String,
    body: Vec<u8>,
}

/// What a raw origin does with a request: answer it (bytes written as they are), or close the
/// connection without answering.
enum Act {
    Answer(Vec<u8>),
    Close,
}

/// A raw HTTP/1.1 origin: reads request heads and the bodies their Content-Length announces
/// (as a strict origin does), records them, and acts as `act(connection, request on it)`
/// says.
struct RawOrigin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Connections accepted so far.
    connections: Arc<AtomicU64>,
}

impl RawOrigin {
    async fn start(act: impl Fn(usize, usize, &str) -> Act + Send + Sync + 'static) -> Self {
        let listener = listener().await;
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let act = Arc::new(act);
        let (s, c) = (seen.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let conn = c.fetch_add(1, Ordering::SeqCst) as usize;
                let (seen, act) = (s.clone(), act.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    loop {
                        // Read a head.
                        let end = loop {
                            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break p + 4;
                            }
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_string();
                        buf.drain(..end);
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < len {
                            let mut chunk = [0u8; 4096];
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        }
                        let body: Vec<u8> = buf.drain(..len).collect();
                        seen.lock().await.push(Seen {
                            conn,
                            head: head.clone(),
                            body,
                        });
                        match act(conn, n, &head) {
                            Act::Answer(bytes) => {
                                if sock.write_all(&bytes).await.is_err() {
                                    return;
                                }
                            }
                            Act::Close => return,
                        }
                        n += 1;
                    }
                });
            }
        });
        RawOrigin {
            addr,
            seen,
            connections,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A cacheable 200 with `body`, keep-alive.
fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nCache-Control: max-age=600\r\n\
         ETag: \"e\"\r\nContent-Type: text/plain\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// The path of a request head's request line.
fn path_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

// ---------------------------------------------------------------------------------------------
// 1. Request framing on the pass path.

/// Before: a GET with `Authorization` (passed through) was forwarded with the client's
/// `Content-Length` but without its body, so an origin that reads the announced body waited
/// for bytes that never came (the viewer got a 502 after the read timeout), and one that
/// answered first would have read the next request on that connection as the body.
#[tokio::test]
async fn forwarded_requests_carry_the_edges_framing_never_the_clients() {
    let origin = RawOrigin::start(|_, _, head| {
        if head.starts_with("POST") {
            Act::Answer(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok".to_vec())
        } else {
            Act::Answer(ok(&format!("fill of {}", path_of(head))))
        }
    })
    .await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;

    // A GET or HEAD with a body is refused, and nothing reaches the origin.
    for head in [
        "GET /private HTTP/1.1\r\nHost: e\r\nAuthorization: Bearer x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        "GET /a HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        "HEAD /a HTTP/1.1\r\nHost: e\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let (status, _, body) = raw_request(edge.addr, head).await;
        assert_eq!(status, 400, "{head:?}: {}", String::from_utf8_lossy(&body));
    }
    assert!(origin.seen.lock().await.is_empty(), "nothing was forwarded");

    // A GET with an empty body (Content-Length: 0) is fine, and forwarded without it.
    let (status, _, body) = raw_request(
        edge.addr,
        "GET /private HTTP/1.1\r\nHost: e\r\nAuthorization: Bearer x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, b"fill of /private");

    // A POST's body goes with the edge's own framing (the length hyper read from the
    // client, not the client's field), and the pooled connection stays in step: the fill
    // after it is read as a request of its own.
    let (status, _, _) = raw_request(
        edge.addr,
        "POST /form HTTP/1.1\r\nHost: e\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde",
    )
    .await;
    assert_eq!(status, 201);
    let r = client()
        .get(format!("{}/after", edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "fill of /after");
    let seen = origin.seen.lock().await.clone();
    let paths: Vec<_> = seen.iter().map(|s| path_of(&s.head).to_string()).collect();
    assert_eq!(paths, ["/private", "/form", "/after"], "{seen:#?}");
    assert!(!seen[0].head.to_ascii_lowercase().contains("content-length"));
    assert_eq!(seen[1].body, b"abcde");
    assert!(
        seen[1]
            .head
            .to_ascii_lowercase()
            .contains("content-length: 5"),
        "{}",
        seen[1].head
    );
    edge.stop().await;
}

/// Before: an origin that closed an idle keep-alive connection just as the edge reused it
/// failed the fill ("connection closed before message completed") and the viewer got a 502.
#[tokio::test]
async fn a_fill_on_a_pooled_connection_closed_under_it_is_retried_once() {
    // Connection 0 answers its first request, then reads the second and closes.
    let origin = RawOrigin::start(|conn, n, head| {
        if conn == 0 && n == 1 {
            Act::Close
        } else {
            Act::Answer(ok(&format!("fill of {}", path_of(head))))
        }
    })
    .await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    // "/one" twice: the second is a hit, a round trip that leaves the edge time to put
    // connection 0 back in its pool before "/two" needs a connection.
    for path in ["/one", "/one", "/two"] {
        let r = client()
            .get(format!("{}{path}", edge.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.text().await.unwrap(), format!("fill of {path}"));
    }
    let seen = origin.seen.lock().await.clone();
    let by_conn: Vec<_> = seen
        .iter()
        .map(|s| (s.conn, path_of(&s.head).to_string()))
        .collect();
    assert_eq!(
        by_conn,
        [(0, "/one".into()), (0, "/two".into()), (1, "/two".into())],
        "the second fill went out on the pooled connection, then once on a new one"
    );
    assert_eq!(origin.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        metric_sum(&edge.url(), "cdn_edge_origin_retries_total").await,
        1.0
    );
    edge.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Responses that are not stored belong to the request that caused them.

/// An origin answering `403`, `Cache-Control: private` and a cookie made for the viewer
/// (named by the request's Accept-Language, which fills forward): the first request it gets
/// is held until `release`.
struct PersonalOrigin {
    node: NodeHandle,
    requests: Arc<AtomicU64>,
    release: Arc<Notify>,
}

async fn personal_origin() -> PersonalOrigin {
    let requests = Arc::new(AtomicU64::new(0));
    let release = Arc::new(Notify::new());
    let (r, rel) = (requests.clone(), release.clone());
    let app = axum::Router::new().fallback(move |req: Request| {
        let (r, rel) = (r.clone(), rel.clone());
        async move {
            let who = req
                .headers()
                .get("accept-language")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("nobody")
                .to_string();
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                rel.notified().await;
            }
            let mut resp = (StatusCode::FORBIDDEN, format!("page of {who}")).into_response();
            let h = resp.headers_mut();
            h.insert("cache-control", "private".parse().unwrap());
            h.insert("set-cookie", format!("session={who}").parse().unwrap());
            resp
        }
    });
    PersonalOrigin {
        node: NodeHandle::spawn(listener().await, app, ServeOptions::default()).unwrap(),
        requests,
        release,
    }
}

/// Before: the answer to a coalesced miss that was not storable went to whichever request
/// took it first, so a viewer could receive another's `Set-Cookie` and page. Here the viewer
/// whose request started the origin request leaves before the answer comes (so the old code
/// handed its answer to a waiter every time); then with it staying.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unstored_answer_reaches_only_the_request_that_caused_it() {
    for leader_stays in [false, true] {
        let origin = personal_origin().await;
        let (edge, _) = start_edge(&origin.node.url(), |_| {}).await;
        let url = format!("{}/account", edge.url());
        let get = |who: String| {
            let (c, u) = (client(), url.clone());
            async move {
                let r = c
                    .get(u)
                    .header("accept-language", &who)
                    .send()
                    .await
                    .unwrap();
                let cookie = r
                    .headers()
                    .get("set-cookie")
                    .map(|v| v.to_str().unwrap().to_string());
                (who, r.status(), cookie, r.text().await.unwrap())
            }
        };
        let first = tokio::spawn(get("viewer-0".into()));
        let o = origin.requests.clone();
        until("the first probe", || {
            let o = o.clone();
            async move { o.load(Ordering::SeqCst) == 1 }
        })
        .await;
        let others: Vec<_> = (1..6)
            .map(|i| tokio::spawn(get(format!("viewer-{i}"))))
            .collect();
        let e = edge.url();
        until("five coalesced waiters", || {
            let e = e.clone();
            async move { metric_sum(&e, "cdn_edge_coalesced_waits_total").await >= 5.0 }
        })
        .await;
        if !leader_stays {
            first.abort();
        }
        origin.release.notify_one();
        let mut answers = Vec::new();
        if leader_stays {
            answers.push(first.await.unwrap());
        }
        for t in others {
            answers.push(t.await.unwrap());
        }
        for (who, status, cookie, body) in &answers {
            assert_eq!(*status, StatusCode::FORBIDDEN, "{who}");
            assert_eq!(
                cookie.as_deref(),
                Some(format!("session={who}").as_str()),
                "{who} got another viewer's cookie (leader stays: {leader_stays})"
            );
            assert_eq!(*body, format!("page of {who}"));
        }
        // One origin request per viewer: the waiters went on their own.
        assert_eq!(origin.requests.load(Ordering::SeqCst), 6);
        // And later requests pass at once (remembered as uncacheable), without waiting.
        let r = client().get(&url).send().await.unwrap();
        assert!(
            cache_status(&r).contains("detail=hit-for-pass"),
            "{}",
            cache_status(&r)
        );
        edge.stop().await;
        origin.node.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. One origin request per uncacheable miss; no byte fetched twice.

/// Before: a miss on an object whose answer was not storable probed with a chunk Range,
/// dropped the answer and asked the origin again for the whole object: two requests, and the
/// first chunk's bytes twice.
#[tokio::test]
async fn an_uncacheable_miss_costs_one_request_and_each_byte_once() {
    let cfg = "[[cache_control]]\npattern = \"/synthetic/ns-*\"\nvalue = \"no-store\"\n";
    let origin = start_origin_with(&media_root(), cfg).await;
    let chunk = 64 * 1024;
    let (edge, _) = start_edge(&origin.url(), |c| c.chunk_size = chunk).await;
    let size = 200_000u64;
    let origin_url = origin.url();
    let sent = || metric_sum(&origin_url, "cdn_origin_bytes_sent_total");
    let cases: [(&str, Option<(u64, u64)>); 4] = [
        // Whole object, longer than the probe: a 200, the probe's chunk then the rest.
        ("ns-whole", None),
        // A range inside the probed chunk.
        ("ns-inside", Some((100, 200))),
        // A range that starts in the probed chunk and goes on past it.
        ("ns-across", Some((100, 150_000))),
        // A range in a later chunk (the probe asks for the chunk holding its first byte).
        ("ns-later", Some((150_000, 199_999))),
    ];
    for (id, range) in cases {
        let url = format!("{}/synthetic/{id}?size={size}", edge.url());
        let (requests, bytes) = (origin_requests(&origin.url()).await, sent().await);
        let mut req = client().get(&url);
        if let Some((a, b)) = range {
            req = req.header("range", format!("bytes={a}-{b}"));
        }
        let r = req.send().await.unwrap();
        let (a, b) = range.unwrap_or((0, size - 1));
        let expect_status = if range.is_some() { 206 } else { 200 };
        assert_eq!(r.status(), expect_status, "{id}");
        assert_eq!(
            r.headers()["content-length"],
            (b - a + 1).to_string().as_str(),
            "{id}"
        );
        if range.is_some() {
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes {a}-{b}/{size}").as_str()
            );
        } else {
            assert!(!r.headers().contains_key("content-range"));
        }
        assert!(
            cache_status(&r).contains("fwd=miss"),
            "{}",
            cache_status(&r)
        );
        assert_eq!(r.bytes().await.unwrap(), synthetic(id, a..=b), "{id}");
        let requests = origin_requests(&origin.url()).await - requests;
        let bytes = sent().await - bytes;
        // The probe fetched the chunk holding byte `a`; the rest (if any) starts after it.
        let probe_start = a / chunk * chunk;
        let probe_end = (probe_start + chunk - 1).min(size - 1);
        let want_requests = if b > probe_end { 2.0 } else { 1.0 };
        let want_bytes = (probe_end - probe_start + 1) + b.saturating_sub(probe_end);
        assert_eq!(requests, want_requests, "{id}: origin requests");
        assert_eq!(bytes, want_bytes as f64, "{id}: origin bytes");
    }
    // A HEAD miss: the probe's answer, without a body, with the whole object's length.
    let r = client()
        .head(format!("{}/synthetic/ns-head?size={size}", edge.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], size.to_string().as_str());
    edge.stop().await;
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 4. Range amplification.

/// Before: 64 one-byte ranges, one per MiB, on a cold 64 MiB object made the edge fill every
/// chunk: the origin sent 67,108,864 bytes for 64 asked (plus multipart framing).
#[tokio::test]
async fn sparse_ranges_cannot_amplify_what_the_origin_sends() {
    let origin = start_origin_with(&media_root(), "synthetic_max_bytes = 1073741824\n").await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let size = 64 * MIB;
    let offsets: Vec<u64> = (0..64).map(|i| i * MIB + 12_345).collect();
    let spec = offsets
        .iter()
        .map(|o| format!("{o}-{o}"))
        .collect::<Vec<_>>()
        .join(",");
    for round in 0..2 {
        let id = format!("amp-{round}");
        let before = metric_sum(&origin.url(), "cdn_origin_bytes_sent_total").await;
        let r = client()
            .get(format!("{}/synthetic/{id}?size={size}", edge.url()))
            .header("range", format!("bytes={spec}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 206);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        let parts = parse_multipart(&ct, &r.bytes().await.unwrap());
        assert_eq!(parts.len(), 64);
        for ((range, bytes), o) in parts.iter().zip(&offsets) {
            assert_eq!(range, &format!("bytes {o}-{o}/{size}"));
            assert_eq!(bytes, &synthetic(&id, *o..=*o));
        }
        let sent = metric_sum(&origin.url(), "cdn_origin_bytes_sent_total").await - before;
        // At most two chunks plus twice the bytes asked for (and the origin's own multipart
        // framing of what is forwarded as asked, ~100 bytes a part).
        let bound = (2 * MIB + 2 * 64 + 64 * 128) as f64;
        eprintln!("{id}: origin sent {sent} bytes for 64 asked (bound {bound})");
        assert!(sent <= bound, "origin sent {sent} bytes (bound {bound})");
    }
    assert!(metric_sum(&edge.url(), "cdn_edge_amplification_refused_total").await >= 2.0);
    edge.stop().await;
    origin.stop().await;
}

/// Before: nothing limited a client that sent one-byte ranges of cold objects (a new query
/// string each time): each cost the origin a whole chunk. Two ranges, or a suffix range, must
/// not get around the budget either (the probe's chunk is charged).
#[tokio::test]
async fn a_client_has_a_budget_of_amplified_bytes_and_others_are_unaffected() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |c| {
        c.amplification_burst = 4 * MIB;
        c.amplification_bytes_per_sec = 1;
    })
    .await;
    let origin_url = origin.url();
    let sent = || metric_sum(&origin_url, "cdn_origin_bytes_sent_total");
    let size = 8 * MIB;
    for (n, (spec, want)) in [
        ("bytes=5-5", vec![5..=5]),
        ("bytes=0-0,2-2", vec![0..=0, 2..=2]),
        ("bytes=-1", vec![size - 1..=size - 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let attacker = client_from(&format!("127.0.0.{}", 10 + n));
        let before = sent().await;
        let mut forwarded = 0;
        for i in 0..20 {
            let r = attacker
                .get(format!(
                    "{}/synthetic/cold?size={size}&n={n}-{i}",
                    edge.url()
                ))
                .header("range", spec)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206, "{spec}");
            forwarded += cache_status(&r).contains("detail=amplification-budget") as u32;
            let ct = r.headers()["content-type"].to_str().unwrap().to_string();
            let body = r.bytes().await.unwrap();
            if want.len() == 1 {
                assert_eq!(body, synthetic("cold", want[0].clone()), "{spec}");
            } else {
                let parts = parse_multipart(&ct, &body);
                let got: Vec<_> = parts.into_iter().map(|(_, b)| b).collect();
                let expect: Vec<_> = want.iter().map(|r| synthetic("cold", r.clone())).collect();
                assert_eq!(got, expect, "{spec}");
            }
        }
        let spent = sent().await - before;
        eprintln!("{spec}: {forwarded} of 20 forwarded as asked, origin sent {spent} bytes");
        // The budget (4 MiB) plus what the request that overdrew it had fetched (at most two
        // chunks), then only what is asked (and multipart framing).
        assert!(
            spent <= (6 * MIB + 20 * 1024) as f64,
            "{spec}: origin sent {spent} for 20 tiny ranges"
        );
        assert!(forwarded >= 14, "{spec}: only {forwarded} forwarded");
    }
    // Another client fills chunks as usual.
    let before = sent().await;
    let r = client_from("127.0.0.8")
        .get(format!("{}/synthetic/cold?size={size}&n=x", edge.url()))
        .header("range", "bytes=5-5")
        .send()
        .await
        .unwrap();
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    assert_eq!(sent().await - before, MIB as f64);
    edge.stop().await;
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Empty objects; 9. arithmetic on request values.

/// Before: a 0-byte file through the edge was the origin's 416 to the chunk probe
/// (`Content-Range: bytes */0`), never cached.
#[tokio::test]
async fn an_empty_object_is_a_stored_200() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("empty-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("empty.txt"), b"").unwrap();
    let origin = start_origin(&root, &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let url = format!("{}/empty.txt", edge.url());
    let r = client().get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", cache_status(&r));
    assert_eq!(r.headers()["content-length"], "0");
    assert!(cache_status(&r).contains("stored"), "{}", cache_status(&r));
    assert!(r.bytes().await.unwrap().is_empty());
    let misses = origin_requests(&origin.url()).await;
    for _ in 0..3 {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
        assert_eq!(r.headers()["content-length"], "0");
    }
    let r = client().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(cache_status(&r).contains("; hit"), "{}", cache_status(&r));
    // Every range of nothing is unsatisfiable, answered from the cache.
    let r = client()
        .get(&url)
        .header("range", "bytes=0-0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(r.headers()["content-range"], "bytes */0");
    assert_eq!(origin_requests(&origin.url()).await, misses);
    edge.stop().await;
    origin.stop().await;
}

/// Before: `Range: bytes=18446744073709551615-` wrapped the chunk arithmetic of a miss (a
/// debug build panicked and the viewer's connection was cut).
#[tokio::test]
async fn ranges_at_the_end_of_u64_are_unsatisfiable_not_a_panic() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    for (i, spec) in [
        "bytes=18446744073709551615-",
        "bytes=18446744073709551614-18446744073709551615",
        "bytes=18446744073709551615-18446744073709551615",
    ]
    .iter()
    .enumerate()
    {
        let r = client()
            .get(format!(
                "{}/synthetic/edge-of-u64-{i}?size=1000",
                edge.url()
            ))
            .header("range", *spec)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 416, "{spec}");
        assert_eq!(r.headers()["content-range"], "bytes */1000", "{spec}");
    }
    // A range that ends there is satisfiable up to the object's end.
    let r = client()
        .get(format!("{}/synthetic/edge-of-u64-3?size=1000", edge.url()))
        .header("range", "bytes=990-18446744073709551615")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.bytes().await.unwrap(),
        synthetic("edge-of-u64-3", 990..=999)
    );
    edge.stop().await;
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A stuck fill costs the origin one more request, not one per waiting viewer.

/// Before: a viewer whose wait on another request's probe ran out (`coalesce_wait_ms`) went
/// to the origin alone, so a probe stuck on a dead upper-tier node or a hung origin turned a
/// crowd into one origin request per viewer (the flash-crowd failover measured 5.4x). Now the
/// waiters whose wait ran out share one second probe: here 1 + 1 requests, not 1 + 8.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiters_on_a_stuck_probe_share_one_second_request() {
    const BODY: &str = "the same video chunk for every viewer";
    let requests = Arc::new(AtomicU64::new(0));
    let release = Arc::new(Notify::new());
    let (r, rel) = (requests.clone(), release.clone());
    let app = axum::Router::new().fallback(move || {
        let (r, rel) = (r.clone(), rel.clone());
        async move {
            if r.fetch_add(1, Ordering::SeqCst) == 0 {
                rel.notified().await;
            }
            ([("cache-control", "max-age=600")], BODY).into_response()
        }
    });
    let origin = NodeHandle::spawn(listener().await, app, ServeOptions::default()).unwrap();
    let (edge, _) = start_edge(&origin.url(), |c| c.coalesce_wait_ms = 300).await;
    let url = format!("{}/crowd", edge.url());
    let get = || {
        let (c, u) = (client(), url.clone());
        async move {
            let r = c.get(u).send().await.unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };
    let first = tokio::spawn(get());
    let o = requests.clone();
    until("the first probe", || {
        let o = o.clone();
        async move { o.load(Ordering::SeqCst) == 1 }
    })
    .await;
    let crowd: Vec<_> = (0..8).map(|_| tokio::spawn(get())).collect();
    for t in crowd {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, BODY);
    }
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "the held probe and one second probe for the whole crowd"
    );
    release.notify_one();
    let (status, body) = first.await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, BODY));
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    edge.stop().await;
    origin.stop().await;
}
