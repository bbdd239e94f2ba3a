//! The edge's express lane (`cdn_http::server::express`, `cdn_edge::proxy::express`): hits it
//! answers are the full stack's answers (status, every field's values in order, the body byte
//! for byte); what it must not answer reaches the full stack, on the same connection, with
//! nothing lost; its connections keep the server's timeouts and drain. Raw HTTP/1.1 over
//! 127.0.0.1, so that what is on the wire is what is compared.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::response::IntoResponse;
use cdn_http::server::NodeHandle;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: u64 = 1 << 20;
const EXPRESS: &str = cdn_edge::metric_names::EXPRESS_TOTAL;

/// A request (method, path, fields) and the body it must get, when the test knows it.
type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, Option<Vec<u8>>);

/// A response as read off the wire.
#[derive(Debug, Clone)]
struct Resp {
    status: u16,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    /// The values of each field name, in order, without `date` (checked apart).
    fn by_name(&self) -> BTreeMap<String, Vec<String>> {
        let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &self.fields {
            if k != "date" {
                m.entry(k.clone()).or_default().push(v.clone());
            }
        }
        m
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One kept-alive HTTP/1.1 connection, read with Content-Length framing only (a chunked or
/// unframed answer fails the test).
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// Whether a chunked answer is expected (else it fails the test).
    chunked_ok: bool,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
            chunked_ok: false,
        }
    }

    async fn send(&mut self, text: &str) {
        self.s.write_all(text.as_bytes()).await.expect("write");
    }

    async fn fill(&mut self) -> usize {
        // On the heap: an array here would sit in every future that awaits this one (64 KiB
        // each, and debug builds move futures on the stack: the tests overflowed it).
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(20), self.s.read(&mut chunk))
            .await
            .expect("bytes in time")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next response; `head` when it answers a HEAD (no body follows).
    async fn response(&mut self, head: bool) -> Resp {
        let end = loop {
            if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break p;
            }
            assert!(self.fill().await > 0, "connection closed before a response");
        };
        let text = String::from_utf8(self.buf[..end].to_vec()).expect("ascii head");
        self.buf.drain(..end + 4);
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1."), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let fields: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("a field line");
                (k.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        if fields.iter().any(|(k, _)| k == "transfer-encoding") {
            assert!(self.chunked_ok, "a chunked answer: {fields:?}");
            let body = self.chunked_body().await;
            return Resp {
                status,
                fields,
                body,
            };
        }
        let len: usize = if head || status == 304 || status == 204 {
            0
        } else {
            fields
                .iter()
                .find(|(k, _)| k == "content-length")
                .map(|(_, v)| v.parse().unwrap())
                .expect("content-length")
        };
        while self.buf.len() < len {
            assert!(self.fill().await > 0, "connection closed mid-body");
        }
        let body = self.buf.drain(..len).collect();
        Resp {
            status,
            fields,
            body,
        }
    }

    /// A chunked body (its chunks joined), trailers skipped.
    async fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await;
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16)
                .expect("a chunk size");
            if size == 0 {
                while !self.line().await.is_empty() {}
                return body;
            }
            while self.buf.len() < size + 2 {
                assert!(self.fill().await > 0, "connection closed mid-chunk");
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    async fn line(&mut self) -> String {
        let end = loop {
            if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            assert!(self.fill().await > 0, "connection closed mid-line");
        };
        let line = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 2);
        line
    }

    /// Whether the server closed the connection with nothing more to say.
    async fn closed(&mut self) -> bool {
        self.fill().await == 0 && self.buf.is_empty()
    }
}

fn request(method: &str, path: &str, fields: &[(&str, &str)]) -> String {
    let mut r = format!("{method} {path} HTTP/1.1\r\nhost: edge.test\r\n");
    for (k, v) in fields {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

async fn one(addr: SocketAddr, method: &str, path: &str, fields: &[(&str, &str)]) -> Resp {
    let mut c = Raw::connect(addr).await;
    c.send(&request(method, path, fields)).await;
    c.response(method == "HEAD").await
}

/// An origin of its own for what the media origin does not send: Vary, and an upstream
/// cache's Via, Cache-Status, Date and CORS field.
async fn odd_origin() -> NodeHandle {
    let app = axum::Router::new().fallback(|req: Request| async move {
        let path = req.uri().path().to_string();
        let lang = req
            .headers()
            .get("accept-language")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string();
        let mut resp = match path.as_str() {
            "/moved" => {
                let mut r = (StatusCode::MOVED_PERMANENTLY, "moved").into_response();
                r.headers_mut()
                    .insert("location", "/elsewhere".parse().unwrap());
                r
            }
            "/empty" => StatusCode::NO_CONTENT.into_response(),
            "/vary" => {
                let mut r = format!("in {lang}").into_response();
                r.headers_mut()
                    .insert("vary", "accept-language".parse().unwrap());
                r
            }
            _ => {
                let mut r = "from upstream".into_response();
                let h = r.headers_mut();
                h.insert("via", "1.1 parent".parse().unwrap());
                h.append("cache-status", "shield; hit".parse().unwrap());
                h.append("cache-status", "parent; fwd=miss".parse().unwrap());
                h.insert(
                    "access-control-allow-origin",
                    "https://player.example".parse().unwrap(),
                );
                h.insert("etag", "\"v1\"".parse().unwrap());
                h.insert("x-thing", "one".parse().unwrap());
                h.append("x-thing", "two".parse().unwrap());
                r
            }
        };
        resp.headers_mut()
            .insert("cache-control", "public, max-age=600".parse().unwrap());
        resp
    });
    NodeHandle::spawn(listener().await, app, Default::default()).unwrap()
}

/// `cdn edge` with a config file of `extra` lines, serving until the returned future is
/// awaited (which stops it).
async fn start_node(
    origin: &str,
    extra: &str,
) -> (SocketAddr, impl std::future::Future<Output = ()>) {
    let dir = std::env::temp_dir().join(format!(
        "cdn-express-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let config = dir.join("edge.toml");
    std::fs::write(
        &config,
        format!("name = \"edge-test\"\norigin = \"{origin}\"\ncapacity = \"64MiB\"\n{extra}"),
    )
    .expect("write");
    let args = cdn_edge::EdgeArgs {
        config: Some(config),
        ..cdn_edge::EdgeArgs::listening_at("127.0.0.1:0".parse().expect("addr"))
    };
    let node = cdn_edge::start(&args).await.expect("edge starts");
    let addr = node.addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(node.serve(async move {
        let _ = stopped.await;
    }));
    (addr, async move {
        let _ = stop.send(());
        task.await.expect("joined").expect("served");
        let _ = std::fs::remove_dir_all(dir);
    })
}

/// Asks the lane and the full stack (the same request with a field the lane does not know)
/// for `path`; returns both answers once the lane answered the first and the full stack the
/// second, with the same Age (a second may tick between them: asked again).
async fn both(addr: SocketAddr, method: &str, path: &str, fields: &[(&str, &str)]) -> (Resp, Resp) {
    let mut full_fields = fields.to_vec();
    full_fields.push(("x-full-stack", "1"));
    let url = format!("http://{addr}");
    for _ in 0..5 {
        let before = metric_sum(&url, EXPRESS).await;
        let lane = one(addr, method, path, fields).await;
        let after_lane = metric_sum(&url, EXPRESS).await;
        let full = one(addr, method, path, &full_fields).await;
        let after_full = metric_sum(&url, EXPRESS).await;
        assert_eq!(
            after_lane,
            before + 1.0,
            "{method} {path} {fields:?}: the lane"
        );
        assert_eq!(after_full, after_lane, "{method} {path}: the full stack");
        if lane.get("age") == full.get("age") {
            return (lane, full);
        }
    }
    panic!("the age kept changing between the two answers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_answers_every_hit_as_the_full_stack_does() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let odd = odd_origin().await;
    // With `sendfile`: the big object's chunks go out from the arena's files.
    let (edge, node) = start_edge(&origin.url(), |c| {
        c.chunk_size = MIB;
        c.cors_any_origin = true;
        c.sendfile = true;
    })
    .await;
    // The node as `cdn edge` runs it, with its response layers (CORS here).
    let odd_url = odd.url();
    let (odd_edge, stop_odd) = start_node(&odd_url, "cors_any_origin = true\n").await;
    let small = "/synthetic/small?size=16384";
    let big = format!("/synthetic/big?size={}", 3 * MIB + 123);
    // Stored first (through the full stack: a miss is not the lane's).
    for path in [small, big.as_str(), "/demo.mp4"] {
        let r = one(edge.addr, "GET", path, &[]).await;
        assert_eq!(r.status, 200, "{path}");
    }
    assert_eq!(one(odd_edge, "GET", "/up", &[]).await.status, 200);
    assert_eq!(one(odd_edge, "GET", "/moved", &[]).await.status, 301);
    assert_eq!(one(odd_edge, "GET", "/empty", &[]).await.status, 204);
    // A 404 of the media origin is stored for `negative_ttl_secs`.
    assert_eq!(one(edge.addr, "GET", "/missing.mp4", &[]).await.status, 404);
    assert!(
        node.store().arena_bytes() >= 3 * MIB,
        "the big object is in the arena"
    );

    let browser: &[(&str, &str)] = &[
        ("user-agent", "Mozilla/5.0"),
        ("accept", "*/*"),
        ("accept-encoding", "identity;q=1, *;q=0"),
        ("accept-language", "en"),
        ("referer", "http://player.test/"),
        ("origin", "http://player.test"),
        ("sec-fetch-mode", "cors"),
        ("cookie", "a=b"),
        ("connection", "keep-alive"),
    ];
    let cases: Vec<Case> = vec![
        (
            "GET",
            small.into(),
            vec![],
            Some(synthetic("small", 0..=16383).to_vec()),
        ),
        ("HEAD", small.into(), vec![], None),
        (
            "GET",
            small.into(),
            browser.to_vec(),
            Some(synthetic("small", 0..=16383).to_vec()),
        ),
        (
            "GET",
            small.into(),
            vec![("range", "bytes=100-199")],
            Some(synthetic("small", 100..=199).to_vec()),
        ),
        (
            "GET",
            small.into(),
            vec![("range", "bytes=-10")],
            Some(synthetic("small", 16374..=16383).to_vec()),
        ),
        (
            "GET",
            small.into(),
            vec![("range", "bytes=16000-")],
            Some(synthetic("small", 16000..=16383).to_vec()),
        ),
        // Invalid: ignored, the whole object.
        (
            "GET",
            small.into(),
            vec![("range", "bytes=x-y")],
            Some(synthetic("small", 0..=16383).to_vec()),
        ),
        // Range is for GET only.
        ("HEAD", small.into(), vec![("range", "bytes=0-9")], None),
        (
            "GET",
            big.clone(),
            vec![],
            Some(synthetic("big", 0..=3 * MIB + 122).to_vec()),
        ),
        (
            "GET",
            big.clone(),
            vec![("range", "bytes=1048000-2097200")],
            Some(synthetic("big", 1_048_000..=2_097_200).to_vec()),
        ),
        (
            "GET",
            big.clone(),
            vec![("range", "bytes=3145728-")],
            Some(synthetic("big", 3 * MIB..=3 * MIB + 122).to_vec()),
        ),
        ("GET", "/demo.mp4".into(), vec![], None),
        (
            "GET",
            "/demo.mp4".into(),
            vec![("range", "bytes=0-1023")],
            None,
        ),
        ("HEAD", "/demo.mp4".into(), browser.to_vec(), None),
    ];
    for (method, path, fields, want) in &cases {
        let (lane, full) = both(edge.addr, method, path, fields).await;
        assert_eq!(lane.status, full.status, "{method} {path} {fields:?}");
        assert_eq!(lane.by_name(), full.by_name(), "{method} {path} {fields:?}");
        assert_eq!(lane.body, full.body, "{method} {path} {fields:?}");
        if let Some(want) = want {
            assert_eq!(&lane.body, want, "{method} {path} {fields:?}");
        }
        for r in [&lane, &full] {
            let dates: Vec<_> = r.fields.iter().filter(|(k, _)| k == "date").collect();
            assert_eq!(dates.len(), 1, "{r:?}");
            httpdate::parse_http_date(&dates[0].1).expect("an HTTP date");
            assert!(r.get("cache-status").unwrap().starts_with("edge-test; hit"));
        }
    }
    // Stored negative responses, replayed whole (Range does not apply to them).
    for (addr, path, status) in [
        (edge.addr, "/missing.mp4", 404),
        (odd_edge, "/moved", 301),
        (odd_edge, "/empty", 204),
    ] {
        for (method, fields) in [
            ("GET", vec![]),
            ("HEAD", vec![]),
            ("GET", vec![("range", "bytes=0-1")]),
        ] {
            let (lane, full) = both(addr, method, path, &fields).await;
            assert_eq!((lane.status, full.status), (status, status), "{path}");
            let mut full_fields = full.by_name();
            if status == 204 && method == "HEAD" {
                // hyper adds `Content-Length: 0` to a HEAD answered 204, which RFC 9110
                // §8.6 forbids in a 204; the lane sends none, as it does for the GET.
                assert_eq!(full_fields.remove("content-length"), Some(vec!["0".into()]));
            }
            assert_eq!(lane.by_name(), full_fields, "{method} {path} {fields:?}");
            assert_eq!(lane.body, full.body, "{method} {path} {fields:?}");
        }
    }
    assert_eq!(one(odd_edge, "GET", "/moved", &[]).await.body, b"moved");
    // The upstream's fields: its Via and Cache-Status members come first, its own CORS
    // field stays, its Date is the response's only one.
    let (lane, full) = both(odd_edge, "GET", "/up", &[]).await;
    assert_eq!(lane.by_name(), full.by_name());
    assert_eq!(lane.body, b"from upstream");
    let m = lane.by_name();
    assert_eq!(m["via"], ["1.1 parent", "1.1 edge-test"]);
    assert_eq!(m["cache-status"][..2], ["shield; hit", "parent; fwd=miss"]);
    assert_eq!(m["x-thing"], ["one", "two"]);
    assert_eq!(m["access-control-allow-origin"], ["https://player.example"]);
    assert_eq!(m["timing-allow-origin"], ["*"]);
    stop_odd.await;
    for e in [edge, origin, odd] {
        e.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_lane_must_not_answer_reaches_the_full_stack() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let odd = odd_origin().await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let (odd_edge, _) = start_edge(&odd.url(), |_| {}).await;
    let path = "/synthetic/obj?size=20000";
    let first = one(edge.addr, "GET", path, &[]).await;
    assert_eq!(first.status, 200);
    let etag = first.get("etag").expect("an etag").to_string();
    let lane_before = metric_sum(&edge.url(), EXPRESS).await;
    let origin_before = origin_requests(&origin.url()).await;

    // A viewer's credentials: passed to the origin, never answered from the store.
    let r = one(edge.addr, "GET", path, &[("authorization", "Bearer x")]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.get("cache-status").unwrap().contains("fwd=request"),
        "{r:?}"
    );
    // The request's own Cache-Control: revalidated with the origin.
    let r = one(edge.addr, "GET", path, &[("cache-control", "no-cache")]).await;
    assert_eq!(r.status, 200);
    assert!(!r.get("cache-status").unwrap().ends_with("; hit"), "{r:?}");
    let r = one(edge.addr, "GET", path, &[("pragma", "no-cache")]).await;
    assert!(!r.get("cache-status").unwrap().ends_with("; hit"), "{r:?}");
    assert_eq!(origin_requests(&origin.url()).await, origin_before + 3.0);
    // Preconditions, several ranges, a range past the end.
    let r = one(edge.addr, "GET", path, &[("if-none-match", &etag)]).await;
    assert_eq!(r.status, 304);
    let r = one(edge.addr, "GET", path, &[("range", "bytes=0-0,10-10")]).await;
    assert_eq!(r.status, 206);
    assert!(
        r.get("content-type")
            .unwrap()
            .starts_with("multipart/byteranges")
    );
    let r = one(edge.addr, "GET", path, &[("range", "bytes=30000-")]).await;
    assert_eq!(r.status, 416);
    // HTTP/1.0, another method, the node's own paths.
    let mut c = Raw::connect(edge.addr).await;
    c.send(&format!("GET {path} HTTP/1.0\r\n\r\n")).await;
    let r = c.response(false).await;
    assert_eq!((r.status, r.body.len()), (200, 20000));
    let r = one(edge.addr, "GET", "/healthz", &[]).await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).contains("ok"), "{r:?}");
    let r = one(edge.addr, "GET", "/_admin/purge", &[]).await;
    assert_eq!(r.status, 405);
    assert_eq!(metric_sum(&edge.url(), EXPRESS).await, lane_before);

    // A URL whose response varies: each viewer gets the variant of its own request.
    for lang in ["fr", "de", "fr", "de"] {
        let r = one(odd_edge.addr, "GET", "/vary", &[("accept-language", lang)]).await;
        assert_eq!(r.body, format!("in {lang}").as_bytes());
    }
    assert_eq!(metric_sum(&odd_edge.url(), EXPRESS).await, 0.0);
    for e in [edge, odd_edge, origin, odd] {
        e.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_request_takes_the_connection_to_the_full_stack_with_its_bytes() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |_| {}).await;
    let path = "/synthetic/pipe?size=5000";
    let want = synthetic("pipe", 0..=4999).to_vec();
    assert_eq!(one(edge.addr, "GET", path, &[]).await.body, want);
    let before = metric_sum(&edge.url(), EXPRESS).await;
    // Three requests in one write: a hit for the lane, one it declines, another hit (now
    // the full stack's: the connection is handed over for good); then a fourth.
    let mut c = Raw::connect(edge.addr).await;
    let text = [
        request("GET", path, &[]),
        request(
            "GET",
            path,
            &[("x-full-stack", "1"), ("range", "bytes=0-99")],
        ),
        request("HEAD", path, &[]),
    ]
    .concat();
    c.send(&text).await;
    let r1 = c.response(false).await;
    let r2 = c.response(false).await;
    let r3 = c.response(true).await;
    assert_eq!((r1.status, &r1.body), (200, &want));
    assert_eq!((r2.status, &r2.body[..]), (206, &want[..100]));
    assert_eq!((r3.status, r3.get("content-length")), (200, Some("5000")));
    c.send(&request("GET", path, &[])).await;
    let r4 = c.response(false).await;
    assert_eq!((r4.status, &r4.body), (200, &want));
    assert_eq!(metric_sum(&edge.url(), EXPRESS).await, before + 1.0);
    // A head split across writes is put together.
    let mut c = Raw::connect(edge.addr).await;
    let text = request("GET", path, &[("user-agent", "slow")]);
    let (a, b) = text.split_at(17);
    c.send(a).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b).await;
    assert_eq!(c.response(false).await.body, want);
    assert_eq!(metric_sum(&edge.url(), EXPRESS).await, before + 2.0);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lane_connections_keep_the_head_timeout() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |c| c.limits.header_read_timeout_ms = 400).await;
    let path = "/synthetic/t?size=1000";
    assert_eq!(one(edge.addr, "GET", path, &[]).await.status, 200);
    // Part of a head, then nothing: 408 and the connection closed.
    let mut c = Raw::connect(edge.addr).await;
    c.send(&format!("GET {path} HTTP/1.1\r\nhost: a\r\n")).await;
    let r = c.response(false).await;
    assert_eq!(r.status, 408);
    assert!(c.closed().await);
    // A kept-alive connection with no next request: closed without a word.
    let mut c = Raw::connect(edge.addr).await;
    c.send(&request("GET", path, &[])).await;
    assert_eq!(c.response(false).await.status, 200);
    assert!(c.closed().await);
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_lane_connection_does_not_hold_up_the_drain() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, _) = start_edge(&origin.url(), |c| c.drain_secs = 60).await;
    let path = "/synthetic/d?size=1000";
    assert_eq!(one(edge.addr, "GET", path, &[]).await.status, 200);
    let before = metric_sum(&edge.url(), EXPRESS).await;
    let mut idle = Raw::connect(edge.addr).await;
    idle.send(&request("GET", path, &[])).await;
    assert_eq!(idle.response(false).await.status, 200);
    assert_eq!(metric_sum(&edge.url(), EXPRESS).await, before + 1.0);
    // The drain deadline is a minute and the head timeout ten seconds: the lane closes its
    // idle connection as soon as the shutdown begins.
    tokio::time::timeout(Duration::from_secs(8), edge.stop())
        .await
        .expect("the drain does not wait for idle connections");
    assert!(idle.closed().await);
    origin.stop().await;
}

/// The arena (`cdn_edge::arena`) hands the kernel a chunk's pages with `sendfile`; the slot
/// is reused once the response is written, while its bytes may still wait in the socket.
/// Here a whole body (one 64 KiB chunk: it fits any kernel's socket buffers) waits unread in
/// the client's receive buffer while its chunk is evicted and its slot refilled with other
/// objects: the client must still read its own bytes (a slot overwritten in place would hand
/// it the next object's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_from_a_slot_survive_its_reuse() {
    const K: u64 = 64 * 1024;
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (edge, node) = start_edge(&origin.url(), |c| {
        c.chunk_size = K;
        c.capacity = 8 * K;
        c.sendfile = true;
    })
    .await;
    let url = edge.url();
    let a = format!("/synthetic/slot-a?size={K}");
    assert_eq!(one(edge.addr, "GET", &a, &[]).await.status, 200);
    assert!(
        metric_sum(&url, cdn_edge::metric_names::ARENA_BYTES).await >= K as f64,
        "the chunk is held in the arena"
    );
    let served = |url: String| async move {
        metric_sum(&url, cdn_edge::metric_names::BYTES_SERVED_TOTAL).await
    };
    let before = served(url.clone()).await;
    // A client whose receive buffer takes the whole body, which it does not read yet.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(1 << 20).unwrap();
    let mut slow = Raw {
        s: socket.connect(edge.addr).await.expect("connect"),
        buf: Vec::new(),
        chunked_ok: false,
    };
    slow.send(&request("GET", &a, &[])).await;
    // Until the lane has written all of it (the served-bytes counter moves when it is done).
    let mut written = false;
    for _ in 0..400 {
        if served(url.clone()).await >= before + K as f64 {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(written, "the response was written");
    // Other objects until A's chunk is gone (and its slot taken by one of them).
    let store = node.store();
    let primary = node
        .cache
        .primary_key_parts("/synthetic/slot-a", Some(&format!("size={K}")));
    let chunk = store
        .lookup_now(&primary)
        .expect("A's metadata")
        .chunk_key(0);
    let mut gone = false;
    for i in 0..20 {
        let other = format!("/synthetic/slot-{i}?size={K}");
        assert_eq!(one(edge.addr, "GET", &other, &[]).await.status, 200);
        if !store.has_chunk(&chunk) {
            gone = true;
            break;
        }
    }
    assert!(gone, "A's chunk was evicted");
    // More objects, so that its slot is written again.
    for i in 20..24 {
        let other = format!("/synthetic/slot-{i}?size={K}");
        assert_eq!(one(edge.addr, "GET", &other, &[]).await.status, 200);
    }
    let r = slow.response(false).await;
    assert_eq!(r.status, 200);
    assert!(
        r.body == synthetic("slot-a", 0..=K - 1),
        "the body changed after it was sent"
    );
    edge.stop().await;
    origin.stop().await;
}

/// Differential: requests generated from a seeded grammar of methods, targets, field names
/// and values (Range forms, case, duplicates, the fields the lane must decline, unknown
/// ones) go to an edge with the lane and to one without (`express = false`), in the same
/// order, so both caches go through the same states. Every answer must be the same: status,
/// each field's values in order (Age, Date and the TTL left aside: time), the body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lane_and_the_full_stack_agree_on_generated_requests() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (lane, _) = start_edge(&origin.url(), |c| c.chunk_size = MIB).await;
    let (full, _) = start_edge(&origin.url(), |c| {
        c.chunk_size = MIB;
        c.express = false;
    })
    .await;
    let big = 3 * MIB + 5;
    let paths = [
        "/synthetic/g-small?size=20000".to_string(),
        format!("/synthetic/g-big?size={big}"),
        "/demo.mp4".to_string(),
        "/missing.mp4".to_string(),
        "/synthetic/g-small?size=20000&x=1".to_string(),
        "/synthetic/g-small?size=20000#frag".to_string(),
        "/%73ynthetic/g-small?size=20000".to_string(),
        "//synthetic/g-small?size=20000".to_string(),
        "/healthz".to_string(),
    ];
    let methods = ["GET", "GET", "GET", "HEAD", "HEAD", "get", "POST"];
    let ranges = [
        "bytes=0-0",
        "bytes=-1",
        "bytes=5-",
        "bytes=0-99,200-299",
        "bytes=99999999-",
        "bytes=abc",
        "bytes=1-0",
        "items=0-1",
        "bytes= 0-1",
        "bytes=0-1048576",
        "bytes=1048570-1048580",
        "bytes=2097152-3145727",
        "",
    ];
    let fields: [(&str, &str); 16] = [
        ("user-agent", "gen/1"),
        ("Accept", "*/*"),
        ("ACCEPT-ENCODING", "gzip"),
        ("cookie", "a=b"),
        ("sec-fetch-mode", "no-cors"),
        ("origin", "http://x.test"),
        ("connection", "keep-alive"),
        ("Connection", "close"),
        ("cache-control", "max-age=0"),
        ("pragma", "no-cache"),
        ("if-none-match", "*"),
        ("if-modified-since", "Thu, 01 Jan 2037 00:00:00 GMT"),
        ("authorization", "Basic eDp5"),
        ("x-odd", "1"),
        ("te", "trailers"),
        ("referer", "http://x.test/"),
    ];
    let mut rng = StdRng::seed_from_u64(17);
    let (mut lane_answers, mut compared) = (0.0, 0);
    // The origin hashes a file in the background (its first answers have no Content-Digest):
    // both edges must see it hashed.
    let mut hashed = false;
    for _ in 0..200 {
        let r = one(origin.addr, "HEAD", "/demo.mp4", &[]).await;
        if r.get("content-digest").is_some() {
            hashed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hashed, "the origin hashed /demo.mp4");
    for path in &paths[..4] {
        for edge in [&lane, &full] {
            assert!(one(edge.addr, "GET", path, &[]).await.status < 500);
        }
    }
    let lane_before = metric_sum(&lane.url(), EXPRESS).await;
    for _ in 0..300 {
        let method = methods[rng.random_range(0..methods.len())];
        let path = &paths[rng.random_range(0..paths.len())];
        let mut chosen: Vec<(&str, &str)> = Vec::new();
        for _ in 0..rng.random_range(0..4) {
            chosen.push(fields[rng.random_range(0..fields.len())]);
        }
        for _ in 0..rng.random_range(0..3) {
            let name = ["range", "Range", "RANGE"][rng.random_range(0..3)];
            chosen.push((name, ranges[rng.random_range(0..ranges.len())]));
        }
        let text = request(method, path, &chosen);
        let mut answers = Vec::new();
        for edge in [&lane, &full] {
            let mut c = Raw::connect(edge.addr).await;
            c.chunked_ok = true;
            c.send(&text).await;
            answers.push(c.response(method.eq_ignore_ascii_case("HEAD")).await);
        }
        let normal = |r: &Resp| {
            let mut m = r.by_name();
            m.remove("age");
            // A multipart body's boundary is random: the same token for both.
            let mut body = r.body.clone();
            if let Some(ct) = m.get_mut("content-type")
                && let Some((_, boundary)) = ct[0].clone().split_once("boundary=")
            {
                ct[0] = ct[0].replace(boundary, "B");
                body = replace_bytes(&body, boundary.as_bytes(), b"B");
            }
            if let Some(v) = m.get_mut("cache-status") {
                for s in v.iter_mut() {
                    *s = s
                        .split("; ")
                        .filter(|p| !p.starts_with("ttl="))
                        .collect::<Vec<_>>()
                        .join("; ");
                }
            }
            let digest: String = sha256(&body)[..8]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            (r.status, m, body.len(), digest)
        };
        assert_eq!(normal(&answers[0]), normal(&answers[1]), "{text}");
        compared += 1;
        lane_answers = metric_sum(&lane.url(), EXPRESS).await - lane_before;
    }
    assert_eq!(compared, 300);
    // The grammar reaches the lane often and declines it often.
    assert!(
        lane_answers > 30.0 && lane_answers < 270.0,
        "{lane_answers}"
    );
    assert_eq!(metric_sum(&full.url(), EXPRESS).await, 0.0);
    for e in [lane, full, origin] {
        e.stop().await;
    }
}

/// `hay` with every `needle` replaced by `with`.
fn replace_bytes(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if !needle.is_empty() && hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}
