//! Bad input (issue 8): the limits every node enforces (431, 414, 413, 408, idle close, 503
//! over the connection cap), checked on the origin, the edge and the router over raw TCP, and
//! cache-key safety: request headers a cache does not key on (X-Forwarded-Host and the like),
//! Host, the query and Vary-selected values cannot make the edge hand one client's response to
//! another. Everything runs on 127.0.0.1 with ports the OS assigns. Timeouts are checked by
//! their effect (a 408, a closed connection, a freed connection slot), each with the other
//! timers set far out so that only the one under test can cause it; waits are bounded only by
//! [`SAFETY_NET`], which no passing test comes near.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::IntoResponse;
use cdn_http::limits::Limits;
use cdn_http::server::{NodeHandle, ServeOptions};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Stop = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A running node of any kind: its address and how to stop it.
struct AnyNode {
    kind: &'static str,
    addr: SocketAddr,
    stop: Vec<Stop>,
}

impl AnyNode {
    async fn stop(self) {
        for s in self.stop {
            s().await;
        }
    }
}

fn stop_node(h: NodeHandle) -> Stop {
    Box::new(move || Box::pin(h.stop()))
}

async fn origin_with(limits: &Limits) -> AnyNode {
    let cfg = cdn_origin::OriginConfig {
        limits: limits.clone(),
        ..Default::default()
    };
    let h = start_origin(&media_root(), &cfg).await;
    AnyNode {
        kind: "origin",
        addr: h.addr,
        stop: vec![stop_node(h)],
    }
}

async fn edge_with(limits: &Limits) -> AnyNode {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let l = limits.clone();
    let (h, _) = start_edge(&origin.url(), move |c| c.limits = l).await;
    AnyNode {
        kind: "edge",
        addr: h.addr,
        stop: vec![stop_node(h), stop_node(origin)],
    }
}

/// A router config with one (unused) edge, as TOML.
fn router_toml(edge_url: &str) -> String {
    format!(
        "origin_url = \"http://127.0.0.1:9\"\n[geo_miss]\nlatitude = 0.0\nlongitude = 0.0\n\
         [[edge]]\nname = \"e1\"\nregion = \"r\"\nlatitude = 0.0\nlongitude = 0.0\n\
         url = \"{edge_url}\"\n"
    )
}

fn router_config(limits: &Limits, edge_url: &str) -> cdn_geo_router::RouterConfig {
    let mut c = cdn_geo_router::RouterConfig::parse(&router_toml(edge_url), "router.toml")
        .expect("router config");
    c.limits = limits.clone();
    c
}

async fn router_with(limits: &Limits) -> AnyNode {
    let db = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/geo/lab-geo.mmdb");
    let r = cdn_geo_router::spawn(
        router_config(limits, "http://127.0.0.1:9"),
        &db,
        listener().await,
    )
    .await
    .expect("router starts");
    AnyNode {
        kind: "router",
        addr: r.addr(),
        stop: vec![Box::new(move || Box::pin(r.stop()))],
    }
}

async fn every_node(limits: &Limits) -> Vec<AnyNode> {
    vec![
        origin_with(limits).await,
        edge_with(limits).await,
        router_with(limits).await,
    ]
}

/// How long a test waits for the server to do something before it gives up: protection
/// against hanging, not a bound on how fast a node must be.
const SAFETY_NET: Duration = Duration::from_secs(30);

/// Far beyond [`SAFETY_NET`]: a timer set to this cannot cause what a test waits for.
const NEVER_MS: u64 = 3_600_000;

/// What [`exchange`] saw.
struct Exchange {
    text: String,
    /// From the write to the end of the connection (or to the safety net).
    took: Duration,
    /// The server closed (or reset) the connection; false when the safety net ran out.
    closed: bool,
}

/// Writes `head`, then reads until the server closes the connection (or [`SAFETY_NET`]).
async fn exchange(addr: SocketAddr, head: &[u8]) -> Exchange {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    s.write_all(head).await.expect("write");
    let mut out = Vec::new();
    let closed = tokio::time::timeout(SAFETY_NET, s.read_to_end(&mut out))
        .await
        .is_ok();
    Exchange {
        text: String::from_utf8_lossy(&out).to_string(),
        took: started.elapsed(),
        closed,
    }
}

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn ok_after(node: &AnyNode) {
    let (status, _, _) = raw_request(
        node.addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{} still serves", node.kind);
}

#[tokio::test]
async fn oversized_heads_get_431_and_long_targets_414_on_every_node() {
    let limits = Limits {
        max_header_bytes: 4096,
        max_headers: 20,
        max_uri_bytes: 1024,
        ..Default::default()
    };
    for node in every_node(&limits).await {
        let kind = node.kind;
        // Header fields over max_header_bytes.
        let big = "b".repeat(5000);
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n");
        let (status, head, _) = raw_request(node.addr, &req).await;
        assert_eq!(status, 431, "{kind}: {head}");
        // More fields than max_headers (hyper counts them for HTTP/1.1).
        let many: String = (0..25).map(|i| format!("X-H{i}: v\r\n")).collect();
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        let (status, head, _) = raw_request(node.addr, &req).await;
        assert_eq!(status, 431, "{kind}: {head}");
        // A request target over max_uri_bytes.
        let path = format!("/{}", "u".repeat(1100));
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, head, _) = raw_request(node.addr, &req).await;
        assert_eq!(status, 414, "{kind}: {head}");
        // Also in absolute form.
        let req = format!("GET http://x{path} HTTP/1.1\r\nHost: x\r\n\r\n");
        let (status, _, _) = raw_request(node.addr, &req).await;
        assert_eq!(status, 414, "{kind}");
        // A head hyper cannot even buffer: 431 before the request line is looked at.
        let huge = "h".repeat(64 * 1024);
        let req = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: {huge}\r\n\r\n");
        let (status, _, _) = raw_request(node.addr, &req).await;
        assert_eq!(status, 431, "{kind}");
        // Just under every limit is fine.
        let fields: String = (0..15).map(|i| format!("X-H{i}: v\r\n")).collect();
        let path = format!("/healthz?{}", "q".repeat(900));
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\n{fields}X-Mid: {}\r\nConnection: close\r\n\r\n",
            "m".repeat(3000)
        );
        let (status, _, _) = raw_request(node.addr, &req).await;
        assert_eq!(status, 200, "{kind}");
        ok_after(&node).await;
        node.stop().await;
    }
}

#[tokio::test]
async fn default_limits_answer_431_for_a_20_kib_head_and_414_for_a_9_kib_target() {
    for node in every_node(&Limits::default()).await {
        let req = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(20 * 1024)
        );
        assert_eq!(raw_request(node.addr, &req).await.0, 431, "{}", node.kind);
        let req = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9 * 1024));
        assert_eq!(raw_request(node.addr, &req).await.0, 414, "{}", node.kind);
        let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
        let req = format!("GET /healthz HTTP/1.1\r\n{many}\r\n");
        assert_eq!(raw_request(node.addr, &req).await.0, 431, "{}", node.kind);
        ok_after(&node).await;
        node.stop().await;
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request without a Host field, any request with two, and one
/// whose Host is not `host[:port]` get 400 on every node. On the edge the object is a fresh
/// hit first, so the express lane (which would answer it from memory) must hand these over.
#[tokio::test]
async fn a_missing_repeated_or_invalid_host_gets_400_on_every_node() {
    for node in every_node(&Limits::default()).await {
        let path = match node.kind {
            "router" => "/healthz",
            _ => "/synthetic/host-check?size=1000",
        };
        let good = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        for _ in 0..2 {
            assert_eq!(raw_request(node.addr, &good).await.0, 200, "{}", node.kind);
        }
        for (what, fields) in [
            ("no Host", ""),
            ("two Hosts", "Host: x\r\nHost: y\r\n"),
            ("user information", "Host: evil@x\r\n"),
            ("a bad port", "Host: x:port\r\n"),
            ("a space", "Host: x y\r\n"),
            ("an empty Host", "Host:\r\n"),
        ] {
            // Kept alive (the lane takes only such requests), a closing request behind it.
            let req = format!(
                "GET {path} HTTP/1.1\r\n{fields}\r\n\
                 GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            );
            let (status, _, body) = raw_request(node.addr, &req).await;
            assert_eq!(
                status,
                400,
                "{} with {what}: {}",
                node.kind,
                String::from_utf8_lossy(&body)
            );
        }
        // HTTP/1.0 needs no Host.
        let req = format!("GET {path} HTTP/1.0\r\n\r\n");
        assert_eq!(raw_request(node.addr, &req).await.0, 200, "{}", node.kind);
        ok_after(&node).await;
        node.stop().await;
    }
}

/// HTTP/2 (here cleartext, prior knowledge): a Host field beside `:authority` must name the
/// same host and port (RFC 9113 §8.3.1), else 400 on every node; the same Host in other
/// case, or none, is served.
#[tokio::test]
async fn an_h2_host_that_differs_from_the_authority_gets_400_on_every_node() {
    cdn_http::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for node in every_node(&Limits::default()).await {
        let path = match node.kind {
            "router" => "/healthz",
            _ => "/synthetic/h2-host?size=1000",
        };
        let url = format!("http://{}{path}", node.addr);
        let authority = node.addr.to_string();
        for (host, want) in [
            (None, 200),
            (Some(authority.clone()), 200),
            (Some(authority.to_uppercase()), 200),
            (Some(format!("127.0.0.1:{}", node.addr.port() ^ 1)), 400),
            (Some("evil.example".to_string()), 400),
        ] {
            let mut req = client.get(&url);
            if let Some(h) = &host {
                req = req.header(http::header::HOST, h);
            }
            let r = req.send().await.expect("answered");
            assert_eq!(r.version(), http::Version::HTTP_2, "{}", node.kind);
            assert_eq!(
                r.status().as_u16(),
                want,
                "{} with Host {host:?}",
                node.kind
            );
        }
        ok_after(&node).await;
        node.stop().await;
    }
}

/// The asterisk form (RFC 9112 §3.2.4, RFC 9110 §9.3.7): `OPTIONS *` is about the server and
/// every node answers it itself (200, no content; the edge sent it to its origin and
/// answered 502), and `*` with another method is a 400.
#[tokio::test]
async fn options_star_is_answered_by_the_node_and_other_methods_on_star_get_400() {
    for node in every_node(&Limits::default()).await {
        let (status, head, body) = raw_request(
            node.addr,
            "OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 200, "{}: {head}", node.kind);
        assert!(
            head.to_ascii_lowercase().contains("content-length: 0"),
            "{}: {head}",
            node.kind
        );
        assert!(body.is_empty(), "{}", node.kind);
        for method in ["GET", "HEAD", "POST", "DELETE"] {
            let req = format!("{method} * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let (status, head, _) = raw_request(node.addr, &req).await;
            assert_eq!(status, 400, "{} {method} *: {head}", node.kind);
        }
        ok_after(&node).await;
        node.stop().await;
    }
}

/// An origin that reads whole request bodies and says how many bytes it got; counts every
/// body byte it ever received.
async fn counting_origin(received: Arc<AtomicU64>) -> NodeHandle {
    let app = axum::Router::new().fallback(move |req: Request| {
        let received = received.clone();
        async move {
            use futures::StreamExt;
            let mut body = req.into_body().into_data_stream();
            let mut n = 0u64;
            while let Some(part) = body.next().await {
                match part {
                    Ok(d) => {
                        n += d.len() as u64;
                        received.fetch_add(d.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        return (http::StatusCode::BAD_REQUEST, "broken body\n").into_response();
                    }
                }
            }
            format!("got {n}\n").into_response()
        }
    });
    NodeHandle::spawn(listener().await, app, ServeOptions::default()).expect("origin")
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_and_no_byte_past_the_limit_reaches_the_origin() {
    let received = Arc::new(AtomicU64::new(0));
    let origin = counting_origin(received.clone()).await;
    let max = 64 * 1024u64;
    let (edge, _) = start_edge(&origin.url(), |c| {
        c.limits.max_body_bytes = max;
    })
    .await;
    // Announced by Content-Length: refused before a byte of the body is sent, and the
    // connection closed rather than left waiting for the body.
    let x = exchange(
        edge.addr,
        format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            max + 1
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&x.text), 413, "{}", x.text);
    assert!(
        x.closed,
        "the edge waited for a body it refused: {}",
        x.text
    );
    assert_eq!(received.load(Ordering::Relaxed), 0);

    // Chunked, no length: refused when it passes the limit.
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..40)
        .map(|_| Ok(bytes::Bytes::from(vec![b'x'; 4096])))
        .collect();
    let r = client()
        .post(format!("{}/upload", edge.url()))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 413),
        // The edge may answer and close before the client finished sending.
        Err(e) => eprintln!("client saw the connection close while sending: {e}"),
    }
    assert!(
        received.load(Ordering::Relaxed) <= max,
        "origin got {} bytes",
        received.load(Ordering::Relaxed)
    );

    // Within the limit, with and without Content-Length: passed through whole.
    let before = received.load(Ordering::Relaxed);
    let r = client()
        .post(format!("{}/upload", edge.url()))
        .body(vec![b'y'; 10_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "got 10000\n");
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..15)
        .map(|_| Ok(bytes::Bytes::from(vec![b'z'; 4096])))
        .collect();
    let r = client()
        .put(format!("{}/upload", edge.url()))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), format!("got {}\n", 15 * 4096));
    assert_eq!(
        received.load(Ordering::Relaxed) - before,
        10_000 + 15 * 4096
    );

    // The origin's own limit too (it does not take bodies: 413 before its 405).
    let o = start_origin_with(&media_root(), "[limits]\nmax_body_bytes = 100\n").await;
    let x = exchange(
        o.addr,
        b"POST /demo.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&x.text), 413, "{}", x.text);
    o.stop().await;
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn slow_heads_get_408_after_the_timeout_and_silent_connections_are_closed() {
    let timeout = Duration::from_millis(400);
    // The idle timeout cannot close anything here: every close is the head timeout's.
    let limits = Limits {
        header_read_timeout_ms: timeout.as_millis() as u64,
        idle_timeout_ms: NEVER_MS,
        ..Default::default()
    };
    for node in every_node(&limits).await {
        let kind = node.kind;
        // Part of a head, then nothing: 408 and close, not before the timeout.
        let x = exchange(node.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await;
        assert_eq!(status_of(&x.text), 408, "{kind}: {:?}", x.text);
        assert!(
            x.closed,
            "{kind}: the connection was left open after the 408"
        );
        assert!(x.took >= timeout, "{kind}: cut early, after {:?}", x.took);

        // A slowloris trickling one byte every 50 ms does not extend the deadline: the
        // server cuts it (408 or a plain close) before its head is complete, a head that
        // takes at least 20 s to send, fifty times the timeout.
        let head = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n\r\n",
            "a".repeat(360)
        );
        let (mut rd, mut wr) = TcpStream::connect(node.addr).await.unwrap().into_split();
        let cut = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        });
        let mut sent = 0;
        for b in head.as_bytes() {
            if cut.is_finished() || wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let out = tokio::time::timeout(SAFETY_NET, cut)
            .await
            .unwrap_or_else(|_| panic!("{kind}: a slowloris that sent its whole head is kept"))
            .expect("reader");
        assert!(
            sent < head.len(),
            "{kind}: the slowloris sent its whole head"
        );
        let resp = String::from_utf8_lossy(&out);
        assert!(
            resp.is_empty() || status_of(&resp) == 408,
            "{kind}: a slowloris got {resp:?}"
        );

        // Connected, nothing sent: closed without an answer.
        let x = exchange(node.addr, b"").await;
        assert!(x.text.is_empty(), "{kind}: {}", x.text);
        assert!(x.closed, "{kind}: a silent connection is kept open");

        // A kept-alive connection whose second head stalls gets 408 too, and is closed.
        let mut s = TcpStream::connect(node.addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = vec![0u8; 8192];
        let n = tokio::time::timeout(SAFETY_NET, s.read(&mut first))
            .await
            .expect("an answer")
            .unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{kind}");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHo").await.unwrap();
        let mut out = Vec::new();
        let closed = tokio::time::timeout(SAFETY_NET, s.read_to_end(&mut out))
            .await
            .is_ok();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("HTTP/1.1 408"), "{kind}: {text}");
        assert!(closed, "{kind}: left open after the 408");
        ok_after(&node).await;
        node.stop().await;
    }
}

/// Sends `GET /healthz` on new connections until one is answered 200 rather than 503 (over
/// `max_connections`): the wait for a connection slot to come free. Panics at the safety net.
async fn until_a_slot_is_free(addr: SocketAddr, what: &str) {
    let give_up = Instant::now() + SAFETY_NET;
    loop {
        let (status, head, _) = raw_request(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        match status {
            200 => return,
            503 => assert!(Instant::now() < give_up, "{what}"),
            _ => panic!("{what}: {head}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn idle_connections_and_clients_that_stop_reading_are_closed() {
    let idle = Duration::from_millis(500);
    // The head timeout cannot close anything here: every close is the idle timeout's.
    let limits = Limits {
        idle_timeout_ms: idle.as_millis() as u64,
        header_read_timeout_ms: NEVER_MS,
        ..Default::default()
    };
    let node = origin_with(&limits).await;
    // A kept-alive connection with nothing more to say: closed, not before `idle`.
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(SAFETY_NET, s.read_to_end(&mut out))
        .await
        .is_ok();
    let took = started.elapsed();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert!(closed, "an idle kept-alive connection is kept open");
    assert!(
        took >= idle - Duration::from_millis(50),
        "idle close after {took:?}"
    );
    node.stop().await;

    // A client that asks for 32 MiB and never reads: cut once nothing moves for the idle
    // timeout. With one connection slot, the slot comes free when the server drops the
    // connection. The timeout is longer here: it also runs between the request and the answer's
    // first bytes, and a loaded CI machine has stalled a 32 MiB answer's start for 500 ms.
    let node = origin_with(&Limits {
        max_connections: 1,
        idle_timeout_ms: 3_000,
        ..limits
    })
    .await;
    let size = 32u64 << 20;
    let mut s = TcpStream::connect(node.addr).await.unwrap();
    s.write_all(format!("GET /synthetic/slow?size={size} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // It holds the slot (its answer has begun), then stops reading.
    let mut first = vec![0u8; 16];
    tokio::time::timeout(SAFETY_NET, s.read_exact(&mut first))
        .await
        .expect("an answer")
        .expect("read");
    assert!(first.starts_with(b"HTTP/1.1 200"));
    until_a_slot_is_free(node.addr, "the stalled client was never cut").await;
    let mut got = first.len() as u64;
    let mut buf = vec![0u8; 1 << 16];
    let read_all = tokio::time::timeout(SAFETY_NET, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got += n as u64,
            }
        }
    })
    .await;
    assert!(read_all.is_ok(), "the connection was never closed");
    assert!(got < size, "the whole body came ({got} bytes): not cut");
    node.stop().await;
}

#[tokio::test]
async fn connections_over_the_cap_get_503_with_retry_after_and_the_cap_frees_up() {
    let limits = Limits {
        max_connections: 2,
        retry_after_secs: 7,
        header_read_timeout_ms: NEVER_MS,
        idle_timeout_ms: NEVER_MS,
        ..Default::default()
    };
    for node in every_node(&limits).await {
        let kind = node.kind;
        let a = TcpStream::connect(node.addr).await.unwrap();
        let mut b = TcpStream::connect(node.addr).await.unwrap();
        // Make sure both are accepted and counted: one request on b.
        b.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(SAFETY_NET, b.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        // The third is answered 503 while both slots are held: it does not wait in the
        // backlog for one.
        let (status, head, _) = raw_request(
            node.addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(status, 503, "{kind}: {head}");
        assert!(
            head.to_ascii_lowercase().contains("retry-after: 7"),
            "{head}"
        );
        // A client that says nothing over the cap is not kept either (admitted connections
        // would be: this test's head and idle timeouts are out of reach).
        let x = exchange(node.addr, b"").await;
        assert!(x.text.is_empty(), "{kind}: {}", x.text);
        assert!(x.closed, "{kind}: a silent connection over the cap is kept");
        // Freeing one slot lets the next connection in.
        drop(a);
        until_a_slot_is_free(node.addr, &format!("{kind}: a freed slot was never reused")).await;
        drop(b);
        // And many in a row reuse slots (permits are returned).
        for i in 0..20 {
            until_a_slot_is_free(node.addr, &format!("{kind}: request {i}")).await;
        }
        node.stop().await;
    }
}

#[tokio::test]
async fn every_node_reads_its_limits_from_its_config_file() {
    let t = "[limits]\nmax_header_bytes = 2048\nmax_headers = 10\nmax_uri_bytes = 100\n\
             max_body_bytes = 5\nheader_read_timeout_ms = 300\nidle_timeout_ms = 400\n\
             max_connections = 3\nretry_after_secs = 2\n";
    let want = Limits {
        max_header_bytes: 2048,
        max_headers: 10,
        max_uri_bytes: 100,
        max_body_bytes: 5,
        header_read_timeout_ms: 300,
        idle_timeout_ms: 400,
        max_connections: 3,
        retry_after_secs: 2,
        ..Limits::default()
    };
    let o = cdn_origin::OriginConfig::parse(t, "origin.toml").unwrap();
    assert_eq!(o.limits, want);
    assert_eq!(o.serve_options().limits, want);
    let e = cdn_edge::EdgeConfig::parse(t, "edge.toml").unwrap();
    assert_eq!(e.serve_options().limits, want);
    let r = cdn_geo_router::RouterConfig::parse(
        &format!("{}{t}", router_toml("http://127.0.0.1:9")),
        "router.toml",
    )
    .unwrap();
    assert_eq!(r.limits, want);
    // Defaults when the table is absent; bad values name the field.
    assert_eq!(
        cdn_origin::OriginConfig::parse("", "o").unwrap().limits,
        Limits::default()
    );
    let e = cdn_edge::EdgeConfig::parse("[limits]\nmax_connections = 0\n", "edge.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("limits") && e.contains("max_connections"), "{e}");
    let e = cdn_origin::OriginConfig::parse("[limits]\nmax_header_bytes = 10\n", "o.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_header_bytes"), "{e}");
    let e = cdn_geo_router::RouterConfig::parse(
        &format!(
            "{}[limits]\nmax_uri_bytes = 1\n",
            router_toml("http://127.0.0.1:9")
        ),
        "router.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("max_uri_bytes"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Cache-key safety: what one client sends must not change what another receives.

/// An origin that builds its (cacheable) body from the request, as careless applications do:
/// the host it believes it serves, override headers, the query, a Vary-selected header.
async fn reflecting_origin(hits: Arc<AtomicU64>) -> NodeHandle {
    let app = axum::Router::new().fallback(move |req: Request| {
        let hits = hits.clone();
        async move {
            hits.fetch_add(1, Ordering::Relaxed);
            let h = req.headers();
            let get = |n: &str| {
                h.get(n)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let mut body = format!(
                "path={} q={} host={}",
                req.uri().path(),
                req.uri().query().unwrap_or("-"),
                get("host")
            );
            for n in UNKEYED {
                body.push_str(&format!(" {n}={}", get(n)));
            }
            body.push_str(&format!(" lang={}", get("accept-language")));
            let mut names: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
            names.sort();
            body.push_str(&format!(" names={}\n", names.join(",")));
            let mut resp = body.into_response();
            resp.headers_mut().insert(
                "cache-control",
                http::HeaderValue::from_static("public, max-age=600"),
            );
            if req.uri().path().starts_with("/vary/") {
                resp.headers_mut()
                    .insert("vary", http::HeaderValue::from_static("Accept-Language"));
            }
            resp
        }
    });
    NodeHandle::spawn(listener().await, app, ServeOptions::default()).expect("origin")
}

/// Request fields that select a host, scheme, path or method in common frameworks but are
/// not part of the cache key.
const UNKEYED: &[&str] = &[
    "x-forwarded-host",
    "x-host",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-for",
    "forwarded",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    // CPDoS (Nguyen et al., CCS 2019) and framework fields a deny list would have to know:
    "x-scheme",
    "front-end-https",
    "x-url-scheme",
    "x-forwarded-ssl",
    "x-original-method",
    "x-a-framework-not-written-yet",
    "cookie",
];

/// The request fields a fill may carry: the edge's own and the configured content
/// negotiation fields (the default `fill_request_headers`).
const FILL_ALLOWED: &[&str] = &[
    "host",
    "via",
    "range",
    "if-match",
    "if-none-match",
    "if-modified-since",
    "if-unmodified-since",
    "accept",
    "accept-encoding",
    "accept-language",
];

/// Every field name the reflecting origin received, from its body's `names=`.
fn names_in(body: &str) -> Vec<String> {
    body.trim_end()
        .rsplit_once("names=")
        .map(|(_, n)| {
            n.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// Cache-poisoned denial of service (CPDoS: header oversize, meta characters, method
/// override) and any field a framework may read: a fill forwards an allow list, so whatever a
/// client adds cannot reach the origin on a request whose answer is shared. Before, fills
/// forwarded everything but a deny list, so `X-Scheme`, `Front-End-Https`, `X-Url-Scheme`,
/// cookies and any new framework field went through.
#[tokio::test]
async fn fills_forward_only_an_allow_list_whatever_the_client_adds() {
    let hits = Arc::new(AtomicU64::new(0));
    let origin = reflecting_origin(hits.clone()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let oversize = "x".repeat(6000);
    let meta = http::HeaderValue::from_bytes(b"\x80evil\xff").unwrap();
    let attacks: Vec<(&str, http::HeaderValue)> = UNKEYED
        .iter()
        .map(|n| (*n, http::HeaderValue::from_static("evil")))
        .chain([
            // Header oversize: the origin would answer 400 (or 431) and that would be shared.
            (
                "x-oversized-header",
                http::HeaderValue::from_str(&oversize).unwrap(),
            ),
            // An allowed field with an oversized value is left out too.
            (
                "accept-language",
                http::HeaderValue::from_str(&oversize).unwrap(),
            ),
            // Header meta characters.
            ("x-metachar-header", meta),
        ])
        .collect();
    for (i, (name, value)) in attacks.into_iter().enumerate() {
        let url = format!("{}/cpdos-{i}", edge.url());
        let a = body_of(client().get(&url).header(name, value)).await;
        let names = names_in(&a);
        for n in &names {
            assert!(
                FILL_ALLOWED.contains(&n.as_str()),
                "{name}: the fill carried {n} (all: {names:?})"
            );
        }
        assert!(!a.contains("evil") && !a.contains("xxxx"), "{name}: {a}");
        let before = hits.load(Ordering::Relaxed);
        let v = body_of(client().get(&url)).await;
        assert_eq!(v, a, "{name}: the next viewer gets what was stored");
        assert_eq!(hits.load(Ordering::Relaxed), before, "{name}: a hit");
    }
    edge.stop().await;
    origin.stop().await;
}

async fn body_of(req: reqwest::RequestBuilder) -> String {
    let r = req.send().await.expect("edge answers");
    assert_eq!(r.status(), 200);
    r.text().await.expect("body")
}

#[tokio::test]
async fn unkeyed_headers_and_host_cannot_poison_other_clients() {
    let hits = Arc::new(AtomicU64::new(0));
    let origin = reflecting_origin(hits.clone()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let clean = body_of(client().get(format!("{}/clean", origin.url()))).await;
    assert!(!clean.contains("evil"));
    for (i, name) in UNKEYED.iter().enumerate() {
        let url = format!("{}/page-{i}", edge.url());
        // The attacker fills the cache...
        let a = body_of(client().get(&url).header(*name, "evil.example")).await;
        // ...and whatever it got, the next viewer gets what the origin says without it.
        let v = body_of(client().get(&url)).await;
        assert!(!v.contains("evil"), "{name} poisoned the cache: {v}");
        assert!(
            !a.contains("evil"),
            "{name} reached the origin on a cache fill: {a}"
        );
    }
    // Host: the key is the configured origin, and the origin's own Host is sent.
    let url = format!("{}/page-host", edge.url());
    let a = body_of(client().get(&url).header("host", "evil.example")).await;
    let v = body_of(client().get(&url)).await;
    assert!(!a.contains("evil") && !v.contains("evil"), "{a} / {v}");
    // An absolute-form target naming another host.
    let (status, _, body) = raw_request(
        edge.addr,
        "GET http://evil.example/page-abs HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert!(!String::from_utf8_lossy(&body).contains("evil"));
    let v = body_of(client().get(format!("{}/page-abs", edge.url()))).await;
    assert!(!v.contains("evil"), "{v}");
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn the_query_is_keyed_verbatim_or_not_sent_at_all() {
    let hits = Arc::new(AtomicU64::new(0));
    let origin = reflecting_origin(hits.clone()).await;
    // cache_query = true (default): the query is part of the key exactly as sent. No
    // reordering or decoding: an origin may give order a meaning, and a normalised key would
    // then store one spelling's answer under another's.
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let url = |q: &str| format!("{}/q{q}", edge.url());
    let a = body_of(client().get(url("?a=1&b=evil"))).await;
    assert!(a.contains("q=a=1&b=evil"), "{a}");
    let v = body_of(client().get(url("?a=1"))).await;
    assert!(v.contains("q=a=1 "), "{v}");
    let ab = body_of(client().get(url("?a=1&b=2"))).await;
    let ba = body_of(client().get(url("?b=2&a=1"))).await;
    assert!(
        ab.contains("q=a=1&b=2 ") && ba.contains("q=b=2&a=1 "),
        "{ab} / {ba}"
    );
    let enc = body_of(client().get(url("?a=%31"))).await;
    assert!(enc.contains("q=a=%31 "), "{enc}");
    let v = body_of(client().get(url(""))).await;
    assert!(v.contains("q=- "), "{v}");
    edge.stop().await;

    // cache_query = false: the query is neither keyed nor sent to the origin on a fill, so a
    // query cannot change what is stored under the bare path.
    let (edge, _) = start_edge(&origin.url(), |c| c.cache_query = false).await;
    let a = body_of(client().get(format!("{}/nq?evil=1", edge.url()))).await;
    let v = body_of(client().get(format!("{}/nq", edge.url()))).await;
    assert!(!v.contains("evil"), "the query poisoned the bare path: {v}");
    assert_eq!(a, v);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn vary_selected_values_are_keyed_exactly() {
    let hits = Arc::new(AtomicU64::new(0));
    let origin = reflecting_origin(hits.clone()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let url = format!("{}/vary/page", edge.url());
    let de = body_of(client().get(&url).header("accept-language", "de")).await;
    assert!(de.contains("lang=de"), "{de}");
    // A value that is not text (obs-text bytes) is keyed by its bytes, not dropped.
    let odd = http::HeaderValue::from_bytes(b"\xe9vil").unwrap();
    let a = body_of(client().get(&url).header("accept-language", odd)).await;
    assert!(a.contains("vil"), "{a}");
    let none = body_of(client().get(&url)).await;
    assert!(
        none.contains("lang=-"),
        "no Accept-Language got another variant: {none}"
    );
    // An empty value is not the same as no value.
    let url2 = format!("{}/vary/empty", edge.url());
    let empty = body_of(client().get(&url2).header("accept-language", "")).await;
    assert!(empty.contains("lang= names="), "{empty:?}");
    let none = body_of(client().get(&url2)).await;
    assert!(
        none.contains("lang=-"),
        "absent and empty share a variant: {none}"
    );
    // And each variant is served from the cache after that.
    let before = hits.load(Ordering::Relaxed);
    let again = body_of(client().get(&url).header("accept-language", "de")).await;
    assert_eq!(again, de);
    assert_eq!(hits.load(Ordering::Relaxed), before);
    edge.stop().await;
    origin.stop().await;
}

/// A node started under a low open-file limit (`cdn origin` as a child of `sh`, hard limit
/// 256, soft 100): it raises the soft limit to 256, clamps `max_connections` (10 000 by
/// default) to (256 - 128 - 16) / 2 = 56 with one warning, answers the 57th connection 503
/// instead of leaving it in the backlog, serves again once a connection closes, and a flood
/// of connections beyond does not flood its log.
#[tokio::test]
async fn max_connections_fits_the_open_file_limit() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let script = format!(
        "ulimit -S -n 100 && ulimit -H -n 256 && exec '{}' --log-json origin --listen 127.0.0.1:0 --root '{}'",
        env!("CARGO_BIN_EXE_cdn"),
        media_root().display()
    );
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &script])
        .env("CDN_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn cdn origin");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut log = Vec::new();
    let addr: SocketAddr = loop {
        let line = out
            .next_line()
            .await
            .unwrap()
            .expect("the origin logs its address");
        let found = serde_json::from_str::<serde_json::Value>(&line)
            .ok()
            .and_then(|v| v["fields"]["listen"].as_str()?.parse().ok());
        log.push(line);
        if let Some(a) = found {
            break a;
        }
    };
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    // 56 connections, each accepted and served (kept alive).
    let mut held = Vec::new();
    for i in 0..56 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(healthz).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        let head = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(head.starts_with("HTTP/1.1 200"), "connection {i}: {head}");
        held.push(s);
    }
    // The 57th is answered 503, not left hanging.
    let (status, head, _) = raw_request(
        addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    // A flood beyond the 503 responders: each is answered or closed, none hangs.
    let flood: Vec<_> = futures::future::join_all((0..150).map(|_| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        got
    }))
    .await;
    assert!(
        flood
            .iter()
            .all(|g| g.is_empty() || g.starts_with(b"HTTP/1.1 503")),
        "a flood connection was served past the cap"
    );
    // One leaves: a new client is served again (once the server has seen the close).
    drop(held.pop());
    loop {
        let (status, _, body) = raw_request(
            addr,
            "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        if status == 200 {
            assert_eq!(body, b"ok\n");
            break;
        }
        assert_eq!(status, 503);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(held);
    // The log: the raise, one clamp warning, the serving line; no accept errors.
    child.start_kill().unwrap();
    let _ = child.wait().await;
    while let Ok(Some(line)) = out.next_line().await {
        log.push(line);
    }
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    log.extend(err.lines().map(str::to_string));
    let text = log.join("\n");
    let lines: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_default())
        .collect();
    let with = |needle: &str| {
        lines
            .iter()
            .filter(|v| {
                v["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle))
            })
            .collect::<Vec<_>>()
    };
    let raised = with("raised the open-file limit");
    assert_eq!(raised.len(), 1, "{text}");
    assert_eq!(
        (
            raised[0]["fields"]["from"].as_u64(),
            raised[0]["fields"]["to"].as_u64()
        ),
        (Some(100), Some(256)),
        "{text}"
    );
    let clamped = with("max_connections clamped");
    assert_eq!(clamped.len(), 1, "{text}");
    assert_eq!(
        clamped[0]["fields"]["effective"].as_u64(),
        Some(56),
        "{text}"
    );
    assert_eq!(with("accept failed").len(), 0, "{text}");
    assert!(log.len() <= 5, "{} log lines:\n{text}", log.len());
}
