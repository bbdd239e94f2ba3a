//! Faults (issue 8), on loopback: an origin that stops mid-body, stalls past the edge's read
//! timeout, sends fewer or more bytes than it announced, or answers 5xx; an edge killed under
//! load behind the router; a peer link cut. The edge must never store a bad body, never pass a
//! short body off as complete, serve stale only where allowed, and recover with the origin.
//!
//! Every body a client receives is checked against the origin's bytes: a complete body by its
//! SHA-256, an aborted one byte for byte as far as it got. Every chunk left in the store is
//! checked the same way. A wrong byte anywhere fails the test.

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cdn_edge::Edge;
use common::*;
use futures::StreamExt;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHUNK: u64 = 64 * 1024;
/// Four chunks, the last one partial.
const SIZE: u64 = 3 * CHUNK + 3392;
/// The edge's origin read timeout in these tests.
const READ_TIMEOUT: Duration = Duration::from_millis(300);
/// How long a test waits for something to happen before it gives up: protection against
/// hanging, not a bound on how fast anything must be.
const SAFETY_NET: Duration = Duration::from_secs(30);
/// How long a stalling origin stays silent unless the edge hangs up first: past every wait of
/// these tests (the client's own timeout included), so only the edge's read timeout ends a
/// stall in a passing test.
const STALL: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// A raw origin whose misbehaviour a test switches on and off.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Headers with the right length, half the body, then the connection closes.
    StopMidBody,
    /// Headers, half the body, then silence for [`STALL`].
    StallMidBody,
    /// The request is read and nothing is said for [`STALL`].
    StallHead,
    /// A 206 whose Content-Length (and body) is half of what its Content-Range announces.
    ShortLength,
    /// A 206 whose Content-Length (and body) is 1000 bytes more than its Content-Range says,
    /// the extra bytes being garbage.
    LongLength,
    /// A correct response followed by 1000 garbage bytes on the same connection.
    TrailingGarbage,
    /// This status with a small body.
    Status(u16),
}

struct RawOrigin {
    addr: SocketAddr,
    fault: Mutex<Fault>,
    /// Only requests whose first byte is at or past this get the fault.
    fault_from: AtomicU64,
    cache_control: Mutex<String>,
    requests: AtomicU64,
    /// Stalled responses the edge hung up on (closed the connection during the stall).
    hangups: AtomicU64,
}

impl RawOrigin {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn set(&self, fault: Fault, from: u64) {
        self.fault_from.store(from, Ordering::SeqCst);
        *self.fault.lock().unwrap() = fault;
    }
    fn set_cache_control(&self, cc: &str) {
        *self.cache_control.lock().unwrap() = cc.to_string();
    }
    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    fn hangups(&self) -> u64 {
        self.hangups.load(Ordering::SeqCst)
    }
}

/// Stays silent on `s` for [`STALL`], or until the other side closes it (counted).
async fn stall(o: &RawOrigin, s: &mut TcpStream) {
    let mut byte = [0u8; 1];
    tokio::select! {
        _ = tokio::time::sleep(STALL) => {}
        r = s.read(&mut byte) => {
            if matches!(r, Ok(0) | Err(_)) {
                o.hangups.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Polls `done` every 20 ms until it holds; panics with `what` at [`SAFETY_NET`].
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let give_up = Instant::now() + SAFETY_NET;
    while !done() {
        assert!(Instant::now() < give_up, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn raw_origin() -> Arc<RawOrigin> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = Arc::new(RawOrigin {
        addr: listener.local_addr().unwrap(),
        fault: Mutex::new(Fault::None),
        fault_from: AtomicU64::new(0),
        cache_control: Mutex::new("public, max-age=60".into()),
        requests: AtomicU64::new(0),
        hangups: AtomicU64::new(0),
    });
    let o = origin.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let o = o.clone();
            tokio::spawn(async move {
                let _ = serve_raw(o, s).await;
            });
        }
    });
    origin
}

/// The object at a path: `size` bytes (from `?size=`, default [`SIZE`]) generated from the
/// path, with a strong ETag.
fn object_of(target: &str) -> (String, u64) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let size = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("size="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(SIZE);
    (path.to_string(), size)
}

fn etag_of(id: &str, size: u64) -> String {
    format!("\"{}-{size}\"", hex(&sha256(id.as_bytes())[..6]))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn serve_raw(o: Arc<RawOrigin>, mut s: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        // One request head (GET only: no bodies).
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut tmp = [0u8; 4096];
            let n = s.read(&mut tmp).await?;
            if n == 0 || buf.len() > 64 * 1024 {
                return Ok(());
            }
            buf.extend_from_slice(&tmp[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        o.requests.fetch_add(1, Ordering::SeqCst);
        let mut lines = head.split("\r\n");
        let target = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("/")
            .to_string();
        let fields: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let (id, size) = object_of(&target);
        let etag = etag_of(&id, size);
        let cc = o.cache_control.lock().unwrap().clone();
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let common_fields = format!(
            "date: {date}\r\netag: {etag}\r\ncache-control: {cc}\r\n\
             last-modified: Thu, 01 Jan 2026 00:00:00 GMT\r\ncontent-type: video/mp4\r\n"
        );
        let range = fields
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split_once('-'))
            .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)));
        let first = range.map_or(0, |r| r.0);
        let fault = if first >= o.fault_from.load(Ordering::SeqCst) {
            *o.fault.lock().unwrap()
        } else {
            Fault::None
        };
        if let Fault::Status(code) = fault {
            // An error page: its own fields, not the object's (no validators, no caching
            // directives: a 5xx with explicit freshness would be stored, for a few seconds).
            let msg = format!(
                "HTTP/1.1 {code} Injected\r\ndate: {date}\r\ncontent-type: text/plain\r\n\
                 content-length: 6\r\n\r\nboom!\n"
            );
            s.write_all(msg.as_bytes()).await?;
            continue;
        }
        if fault == Fault::StallHead {
            stall(&o, &mut s).await;
            return Ok(());
        }
        if fields.get("if-none-match") == Some(&etag) {
            let msg = format!("HTTP/1.1 304 Not Modified\r\n{common_fields}\r\n");
            s.write_all(msg.as_bytes()).await?;
            continue;
        }
        if let Some(m) = fields.get("if-match")
            && m != &etag
        {
            s.write_all(b"HTTP/1.1 412 Precondition Failed\r\ncontent-length: 0\r\n\r\n")
                .await?;
            continue;
        }
        let (status, span) = match range {
            Some((a, b)) if a < size => ("206 Partial Content", (a, b.min(size - 1))),
            Some(_) => {
                let msg = format!(
                    "HTTP/1.1 416 Range Not Satisfiable\r\ncontent-range: bytes */{size}\r\n\
                     content-length: 0\r\n\r\n"
                );
                s.write_all(msg.as_bytes()).await?;
                continue;
            }
            None => ("200 OK", (0, size - 1)),
        };
        let body = synthetic(&id, span.0..=span.1);
        let content_range = if range.is_some() {
            format!("content-range: bytes {}-{}/{size}\r\n", span.0, span.1)
        } else {
            String::new()
        };
        let half = body.len() / 2;
        let (announced, sent): (usize, Vec<u8>) = match fault {
            Fault::ShortLength => (half, body[..half].to_vec()),
            Fault::LongLength => {
                let mut v = body.to_vec();
                v.extend_from_slice(&[0xEE; 1000]);
                (v.len(), v)
            }
            _ => (body.len(), body.to_vec()),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\n{common_fields}{content_range}content-length: {announced}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await?;
        match fault {
            Fault::StopMidBody => {
                s.write_all(&sent[..half]).await?;
                s.flush().await?;
                return Ok(());
            }
            Fault::StallMidBody => {
                s.write_all(&sent[..half]).await?;
                s.flush().await?;
                stall(&o, &mut s).await;
                return Ok(());
            }
            Fault::TrailingGarbage => {
                s.write_all(&sent).await?;
                s.write_all(&[0xEE; 1000]).await?;
            }
            _ => s.write_all(&sent).await?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// What a client got, checked against the origin's bytes.

enum Got {
    /// A response that ended normally.
    Complete(StatusCode, Bytes, String),
    /// A response whose body broke off (the client can tell it is incomplete).
    Aborted(StatusCode, Bytes),
    /// No response at all.
    Failed(String),
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Got::Complete(s, b, cs) => {
                write!(f, "complete {s}, {} bytes, cache-status {cs:?}", b.len())
            }
            Got::Aborted(s, b) => write!(f, "aborted {s} after {} bytes", b.len()),
            Got::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

async fn fetch(url: &str, range: Option<(u64, u64)>) -> Got {
    let mut req = client().get(url);
    if let Some((a, b)) = range {
        req = req.header("range", format!("bytes={a}-{b}"));
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Got::Failed(e.to_string()),
    };
    let status = resp.status();
    let cache_status = resp
        .headers()
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let mut body = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(part) = stream.next().await {
        match part {
            Ok(b) => body.extend_from_slice(&b),
            Err(_) => return Got::Aborted(status, body.into()),
        }
    }
    Got::Complete(status, body.into(), cache_status)
}

/// Fails on any wrong byte: a complete 200/206 must be exactly `want` (SHA-256), an aborted
/// body a prefix of it. Returns whether the client got the whole, correct body.
fn check(got: &Got, want: &Bytes, what: &str) -> bool {
    match got {
        Got::Complete(s, body, _) if s.is_success() => {
            assert_eq!(
                body.len(),
                want.len(),
                "{what}: a short body passed for complete"
            );
            assert_eq!(sha256(body), sha256(want), "{what}: wrong bytes");
            true
        }
        Got::Complete(..) | Got::Failed(_) => false,
        Got::Aborted(s, partial) => {
            assert!(s.is_success() || partial.is_empty(), "{what}: {s}");
            assert!(
                partial.len() < want.len(),
                "{what}: aborted after the whole body?"
            );
            assert_eq!(
                &partial[..],
                &want[..partial.len()],
                "{what}: wrong bytes before the abort"
            );
            false
        }
    }
}

/// Every chunk in the edge's store holds exactly the origin's bytes for its place, and no
/// stored object claims another length.
async fn assert_store_clean(edge: &Edge) {
    edge.store().settle().await;
    for (key, bytes) in edge.store().chunks_held() {
        let target = key
            .version
            .key
            .split('\0')
            .next()
            .unwrap()
            .splitn(4, '/')
            .nth(3)
            .map(|t| format!("/{t}"))
            .unwrap();
        let (id, size) = object_of(&target);
        let start = key.index * CHUNK;
        let end = (start + CHUNK).min(size) - 1;
        let want = synthetic(&id, start..=end);
        assert_eq!(
            sha256(&bytes),
            sha256(&want),
            "stored chunk {} of {target} is wrong ({} bytes, want {})",
            key.index,
            bytes.len(),
            want.len()
        );
    }
    for (key, meta) in edge.store().objects_held() {
        let target = key.splitn(4, '/').nth(3).map(|t| format!("/{t}")).unwrap();
        assert_eq!(meta.len, object_of(&target).1, "metadata of {target}");
    }
}

async fn has_meta(edge: &Edge, origin: &RawOrigin, target: &str) -> bool {
    edge.store()
        .lookup(&format!("{}{target}", origin.url()))
        .await
        .is_some()
}

async fn fault_edge(origin: &str) -> (cdn_http::server::NodeHandle, Arc<Edge>) {
    start_edge(origin, |c| {
        c.chunk_size = CHUNK;
        c.origin_read_timeout_ms = READ_TIMEOUT.as_millis() as u64;
        c.origin_connect_timeout_ms = 500;
        c.coalesce_wait_ms = 2_000;
    })
    .await
}

/// Recovery: the object is served whole and right, then from the cache.
async fn assert_recovers(edge_url: &str, origin: &RawOrigin, target: &str) {
    origin.set(Fault::None, 0);
    let (id, size) = object_of(target);
    let want = synthetic(&id, 0..=size - 1);
    let url = format!("{edge_url}{target}");
    // Fills started during the fault may still be failing for a moment (their error is shared
    // with whoever joins them), but an error is never cached: no failure is served as a hit,
    // and a request is served whole once those fills have ended.
    let give_up = Instant::now() + SAFETY_NET;
    loop {
        let got = fetch(&url, None).await;
        if check(&got, &want, "recovery") {
            break;
        }
        if let Got::Complete(s, _, cs) = &got {
            assert!(!cs.contains("; hit"), "{target}: a cached {s}: {cs}");
        }
        assert!(
            Instant::now() < give_up,
            "{target} never recovered: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then a hit, without the origin.
    let before = origin.requests();
    let got = fetch(&url, None).await;
    assert!(check(&got, &want, "hit after recovery"));
    match &got {
        Got::Complete(_, _, cs) => assert!(cs.contains("; hit"), "{cs}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(origin.requests(), before, "a hit went to the origin");
}

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_stopping_mid_body_is_never_stored_nor_passed_off_as_complete() {
    let origin = raw_origin().await;
    let (edge, state) = fault_edge(&origin.url()).await;
    let target = "/f/stop";
    let (id, size) = object_of(target);
    let want = synthetic(&id, 0..=size - 1);
    let url = format!("{}{target}", edge.url());

    // Every origin response breaks off: concurrent viewers all see an abort, none a body.
    origin.set(Fault::StopMidBody, 0);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { fetch(&url, None).await })
        })
        .collect();
    for t in tasks {
        let got = t.await.unwrap();
        assert!(!check(&got, &want, "stop at chunk 0"), "{got:?}");
    }
    assert_store_clean(&state).await;
    assert!(
        !has_meta(&state, &origin, target).await,
        "a broken probe left metadata"
    );

    // The probe is fine, the third chunk's fill breaks: the client's body aborts after the
    // chunks that were right; those stay stored, the broken one does not.
    origin.set(Fault::StopMidBody, 2 * CHUNK);
    let got = fetch(&url, None).await;
    assert!(!check(&got, &want, "stop at chunk 2"), "{got:?}");
    if let Got::Aborted(_, partial) = &got {
        assert!(partial.len() as u64 <= 2 * CHUNK, "{}", partial.len());
    }
    // A range inside the broken chunk.
    let got = fetch(&url, Some((2 * CHUNK + 10, 2 * CHUNK + 5000))).await;
    let part = want.slice((2 * CHUNK + 10) as usize..=(2 * CHUNK + 5000) as usize);
    assert!(!check(&got, &part, "range in chunk 2"), "{got:?}");
    assert_store_clean(&state).await;

    assert_recovers(&edge.url(), &origin, target).await;
    assert_store_clean(&state).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_stalling_past_the_read_timeout_fails_fast_and_stores_nothing() {
    let origin = raw_origin().await;
    let (edge, state) = fault_edge(&origin.url()).await;
    for (fault, target) in [
        (Fault::StallHead, "/f/stall-head"),
        (Fault::StallMidBody, "/f/stall-body"),
    ] {
        let (id, size) = object_of(target);
        let want = synthetic(&id, 0..=size - 1);
        origin.set(fault, 0);
        let hangups = origin.hangups();
        let got = fetch(&format!("{}{target}", edge.url()), None).await;
        assert!(!check(&got, &want, "stall"), "{fault:?}: {got:?}");
        match &got {
            Got::Complete(s, _, _) => assert!(s.is_server_error(), "{fault:?}: {s}"),
            Got::Aborted(..) => {}
            // The client's own timeout (the stall outlasts it): the edge waited it out.
            Got::Failed(e) => panic!("{fault:?}: the client got no answer: {e}"),
        }
        // The cause: the edge's read timeout, which gives up on the origin connection (the
        // stall outlasts every wait here, so nothing else ends it).
        until(
            &format!("{fault:?}: the edge never hung up on the stalled origin"),
            || origin.hangups() > hangups,
        )
        .await;
        assert_store_clean(&state).await;
        assert!(!has_meta(&state, &origin, target).await, "{fault:?}");
        assert_recovers(&edge.url(), &origin, target).await;
    }
    // A stall on a later chunk: the body aborts, what came before is right.
    let target = "/f/stall-later";
    let (id, size) = object_of(target);
    let want = synthetic(&id, 0..=size - 1);
    origin.set(Fault::StallMidBody, CHUNK);
    let got = fetch(&format!("{}{target}", edge.url()), None).await;
    assert!(!check(&got, &want, "stall at chunk 1"), "{got:?}");
    assert_store_clean(&state).await;
    assert_recovers(&edge.url(), &origin, target).await;
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_sending_fewer_or_more_bytes_than_announced_is_caught() {
    let origin = raw_origin().await;
    let (edge, state) = fault_edge(&origin.url()).await;
    for (i, fault) in [
        Fault::ShortLength,
        Fault::LongLength,
        Fault::TrailingGarbage,
    ]
    .into_iter()
    .enumerate()
    {
        for from in [0, CHUNK] {
            let target = format!("/f/len-{i}-{from}");
            let (id, size) = object_of(&target);
            let want = synthetic(&id, 0..=size - 1);
            origin.set(fault, from);
            for _ in 0..3 {
                let got = fetch(&format!("{}{target}", edge.url()), None).await;
                // Never a wrong byte. A short answer never completes; a long one may, when
                // the edge took exactly the announced span and dropped the rest.
                let complete = check(&got, &want, &format!("{fault:?} from {from}"));
                assert!(
                    !complete || fault != Fault::ShortLength,
                    "{fault:?} from {from}: {got:?}"
                );
            }
            assert_store_clean(&state).await;
            assert_recovers(&edge.url(), &origin, &target).await;
            assert_store_clean(&state).await;
        }
    }
    // Ranges of every object after all that: still right.
    for i in 0..3 {
        for from in [0, CHUNK] {
            let target = format!("/f/len-{i}-{from}");
            let (id, _) = object_of(&target);
            let (a, b) = (CHUNK - 7, 2 * CHUNK + 11);
            let got = fetch(&format!("{}{target}", edge.url()), Some((a, b))).await;
            assert!(check(&got, &synthetic(&id, a..=b), "range"), "{got:?}");
        }
    }
    edge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_5xx_is_relayed_not_stored_stale_served_only_where_allowed_and_recovery() {
    let origin = raw_origin().await;
    let (edge, state) = fault_edge(&origin.url()).await;
    let url = |t: &str| format!("{}{t}", edge.url());

    // A cold object while the origin fails: its 503 goes through; nothing is stored.
    origin.set(Fault::Status(503), 0);
    let target = "/f/cold";
    let got = fetch(&url(target), None).await;
    match &got {
        Got::Complete(s, body, _) => {
            assert_eq!(*s, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(&body[..], b"boom!\n");
        }
        other => panic!("{other:?}"),
    }
    assert!(!has_meta(&state, &origin, target).await);
    assert_recovers(&edge.url(), &origin, target).await;

    // Stale-if-error: served stale (right bytes) on 5xx and on a stall, not once it expires.
    origin.set_cache_control("max-age=1, stale-if-error=60");
    let sie = "/f/sie";
    let (id, size) = object_of(sie);
    let want = synthetic(&id, 0..=size - 1);
    assert!(check(&fetch(&url(sie), None).await, &want, "warm"));
    // Also a plain max-age=1 object: no permission to serve it stale.
    origin.set_cache_control("max-age=1");
    let strict = "/f/strict";
    let (sid, ssize) = object_of(strict);
    let strict_want = synthetic(&sid, 0..=ssize - 1);
    assert!(check(
        &fetch(&url(strict), None).await,
        &strict_want,
        "warm"
    ));
    tokio::time::sleep(Duration::from_millis(2100)).await;

    for fault in [Fault::Status(500), Fault::Status(502), Fault::StallHead] {
        origin.set(fault, 0);
        let got = fetch(&url(sie), None).await;
        assert!(check(&got, &want, "stale-if-error"), "{fault:?}: {got:?}");
        if let Got::Complete(_, _, cs) = &got {
            assert!(cs.contains("stale-if-error"), "{fault:?}: {cs}");
        }
        let got = fetch(&url(strict), None).await;
        assert!(
            !check(&got, &strict_want, "strict"),
            "{fault:?}: served stale: {got:?}"
        );
        match &got {
            Got::Complete(s, _, _) => assert!(s.is_server_error(), "{fault:?}: {s}"),
            other => panic!("{fault:?}: {other:?}"),
        }
    }
    assert_store_clean(&state).await;

    // The origin comes back: both revalidate (304) and are served fresh.
    origin.set(Fault::None, 0);
    for (t, w) in [(sie, &want), (strict, &strict_want)] {
        let got = fetch(&url(t), None).await;
        assert!(check(&got, w, "back"), "{t}: {got:?}");
    }
    assert_store_clean(&state).await;
    edge.stop().await;
}

// ---------------------------------------------------------------------------------------------
// An edge killed under load behind the real router.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_killed_under_load_is_routed_around_once_its_checks_fail() {
    use cdn_geo_router::{EdgeConfig, GeoMissConfig, HealthConfig, LabConfig, RouterConfig};
    let origin = start_origin(&media_root(), &Default::default()).await;
    let (e1, _) = start_edge(&origin.url(), |c| c.name = "eu-1".into()).await;
    let (e2, _) = start_edge(&origin.url(), |c| c.name = "eu-2".into()).await;
    let edge = |name: &str, url: String| EdgeConfig {
        name: name.into(),
        region: "europe".into(),
        latitude: 50.11,
        longitude: 8.68,
        url,
        weight: 1.0,
        health_url: None,
        https_url: None,
    };
    let config = RouterConfig {
        origin_url: origin.url(),
        origin_https_url: None,
        tls: Default::default(),
        edges_dns: Vec::new(),
        dns: Default::default(),
        trusted_proxies: Vec::new(),
        geo_miss: GeoMissConfig {
            latitude: 50.0,
            longitude: 8.0,
            label: "test".into(),
        },
        health: HealthConfig {
            interval_ms: 200,
            // A killed edge refuses connections at once; a live one may be slow to answer on
            // a loaded machine, and must not be failed for it.
            timeout_ms: 2_000,
            ..HealthConfig::default()
        },
        lab: LabConfig::default(),
        lookup_cache_entries: 1000,
        watch_interval_ms: 0,
        edges: vec![edge("eu-1", e1.url()), edge("eu-2", e2.url())],
        limits: Default::default(),
    };
    let db = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/geo/lab-geo.mmdb");
    let router = cdn_geo_router::spawn(config, &db, listener().await)
        .await
        .unwrap();
    let down_after = HealthConfig::default().down_after;
    let health = |name: &str| {
        router
            .edges()
            .into_iter()
            .find(|e| e.name == name)
            .expect("a listed edge")
            .health
    };
    // Wait until the router has seen both edges up.
    until("both edges up", || {
        ["eu-1", "eu-2"]
            .iter()
            .all(|e| health(e).state == cdn_geo_router::EdgeState::Up)
    })
    .await;

    let size = 128 * 1024u64;
    let paths: Vec<String> = (0..16)
        .map(|i| format!("/synthetic/kill-{i}?size={size}"))
        .collect();
    let wants: Arc<Vec<Bytes>> = Arc::new(
        (0..16)
            .map(|i| synthetic(&format!("kill-{i}"), 0..=size - 1))
            .collect(),
    );
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    // When (since `start`) each redirect to eu-1 was asked for.
    let routed_to_e1: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let served = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let viewers: Vec<_> = (0..40u32)
        .map(|v| {
            let ip: IpAddr = format!("127.1.{}.{}", v / 200, 10 + v % 200)
                .parse()
                .unwrap();
            cdn_http::tls::install_crypto_provider();
            let viewer = reqwest::Client::builder()
                .local_address(ip)
                .redirect(reqwest::redirect::Policy::none())
                .timeout(SAFETY_NET)
                .build()
                .unwrap();
            let (router_url, paths, wants) = (router.url(), paths.clone(), wants.clone());
            let (routed_to_e1, served, retries, stop) = (
                routed_to_e1.clone(),
                served.clone(),
                retries.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut n = v as usize;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let i = n % paths.len();
                    let give_up = Instant::now() + SAFETY_NET;
                    let mut tries = 0;
                    loop {
                        tries += 1;
                        assert!(Instant::now() < give_up, "viewer {v}: never served {i}");
                        // The router decided no earlier than this.
                        let asked = start.elapsed();
                        let r = viewer
                            .get(format!("{router_url}{}", paths[i]))
                            .send()
                            .await
                            .expect("the router answers");
                        assert_eq!(r.status(), 302);
                        let to = r.headers()["x-cdn-edge"].to_str().unwrap().to_string();
                        if to == "eu-1" {
                            routed_to_e1.lock().unwrap().push(asked);
                        }
                        let location = r.headers()["location"].to_str().unwrap().to_string();
                        let got = match viewer.get(&location).send().await {
                            Ok(resp) => {
                                let status = resp.status();
                                match resp.bytes().await {
                                    Ok(b) => Got::Complete(status, b, String::new()),
                                    Err(_) => Got::Aborted(status, Bytes::new()),
                                }
                            }
                            Err(e) => Got::Failed(e.to_string()),
                        };
                        if check(&got, &wants[i], "viewer") {
                            served.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        // Only the killed edge fails a viewer.
                        assert_eq!(to, "eu-1", "viewer {v}: the live edge failed: {got:?}");
                        if let Got::Complete(s, ..) = &got {
                            assert!(!s.is_client_error(), "viewer {v}: {s}");
                        }
                        tokio::time::sleep(Duration::from_millis(30)).await;
                    }
                    if tries > 1 {
                        retries.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Under load on both edges, eu-1 dies.
    until("viewers served by both edges", || {
        served.load(Ordering::Relaxed) >= 100 && !routed_to_e1.lock().unwrap().is_empty()
    })
    .await;
    let checks_at_kill = health("eu-1").checks;
    e1.abort();
    // The router marks it down once `down_after` checks in a row failed: every check since
    // the kill failed, bar one that may have been on its way when it came.
    until("the router never marked the killed edge down", || {
        health("eu-1").state == cdn_geo_router::EdgeState::Down
    })
    .await;
    let down_seen = start.elapsed();
    let h = health("eu-1");
    let since_kill = h.checks - checks_at_kill;
    assert!(
        h.consecutive_failures >= down_after && since_kill <= u64::from(h.consecutive_failures) + 1,
        "down after {since_kill} checks since the kill: {h:?}"
    );
    // Then more load, all of it on eu-2.
    let before = served.load(Ordering::Relaxed);
    until("viewers served after the kill", || {
        served.load(Ordering::Relaxed) >= before + 100
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for v in viewers {
        v.await.expect("every viewer was served every time");
    }
    let last_to_e1 = routed_to_e1.lock().unwrap().iter().copied().max().unwrap();
    eprintln!(
        "served {} bodies, {} needed a retry; last redirect to the killed edge asked at \
         {last_to_e1:?}, down seen at {down_seen:?}",
        served.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed)
    );
    assert!(
        last_to_e1 < down_seen,
        "the router sent a viewer to an edge it had marked down ({last_to_e1:?} >= {down_seen:?})"
    );
    router.stop().await;
    e2.stop().await;
    origin.stop().await;
}

// ---------------------------------------------------------------------------------------------
// A peer link cut: QUIC between two edges goes through a UDP relay the test can black-hole.

struct UdpRelay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Relays datagrams between whoever sends to `addr` and `target`, unless cut.
async fn udp_relay(target: SocketAddr) -> UdpRelay {
    let front = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let back = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let cut = Arc::new(AtomicBool::new(false));
    let addr = front.local_addr().unwrap();
    let c = cut.clone();
    let task = tokio::spawn(async move {
        let mut client: Option<SocketAddr> = None;
        let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
        loop {
            tokio::select! {
                r = front.recv_from(&mut a) => {
                    let Ok((n, from)) = r else { continue };
                    client = Some(from);
                    if !c.load(Ordering::Relaxed) {
                        let _ = back.send_to(&a[..n], target).await;
                    }
                }
                r = back.recv_from(&mut b) => {
                    let Ok((n, _)) = r else { continue };
                    if let (false, Some(to)) = (c.load(Ordering::Relaxed), client) {
                        let _ = front.send_to(&b[..n], to).await;
                    }
                }
            }
        }
    });
    UdpRelay { addr, cut, task }
}

fn udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_peer_link_falls_back_to_origin_and_no_request_fails() {
    use cdn_edge::config::{PeerConfig, PeerTls};
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = std::env::temp_dir().join(format!("cdn-faults-peers-{}", std::process::id()));
    cdn_edge::peer::pki::write_lab_pki(&dir, &["p1".to_string(), "p2".to_string()]).unwrap();
    let tls = |name: &str| PeerTls {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    };
    let (p1_addr, p2_addr) = (udp_port(), udp_port());
    // p1 reaches p2 through one relay, p2 reaches p1 through another.
    let to_p2 = udp_relay(p2_addr).await;
    let to_p1 = udp_relay(p1_addr).await;
    let node = |name: &'static str, me: SocketAddr, other: &'static str, via: SocketAddr| {
        let (origin, tls) = (origin.url(), tls(name));
        async move {
            start_edge(&origin, move |c| {
                c.name = name.into();
                c.region = "r1".into();
                c.chunk_size = CHUNK;
                // Peer waits after the first byte are bounded by twice this.
                c.origin_read_timeout_ms = 1_000;
                c.peer_listen = Some(me);
                c.peer_tls = Some(tls);
                c.peers = vec![PeerConfig {
                    name: other.into(),
                    region: "r1".into(),
                    addr: via,
                    push: None,
                }];
            })
            .await
        }
    };
    let (h1, e1) = node("p1", p1_addr, "p2", to_p2.addr).await;
    let (h2, e2) = node("p2", p2_addr, "p1", to_p1.addr).await;
    const PEER_SIZE: u64 = 4 * CHUNK;
    fn want(i: usize) -> Bytes {
        synthetic(&format!("peer-{i}"), 0..=PEER_SIZE - 1)
    }
    fn path(i: usize) -> String {
        format!("/synthetic/peer-{i}?size={PEER_SIZE}")
    }

    // Load on both edges while the link is up, then cut, then restored.
    let start = Instant::now();
    let phase = Duration::from_millis(1500);
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let urls = [h1.url(), h2.url()];
    let tasks: Vec<_> = (0..16usize)
        .map(|t| {
            let (urls, failures, served, slowest) = (
                urls.clone(),
                failures.clone(),
                served.clone(),
                slowest.clone(),
            );
            tokio::spawn(async move {
                let mut n = t * 7;
                while start.elapsed() < phase * 3 {
                    n += 1;
                    // New objects in every phase (up, cut, restored), so fills ask peers.
                    let p = (start.elapsed().as_millis() / phase.as_millis()) as usize;
                    let i = p * 1000 + n % 64;
                    let url = format!("{}{}", urls[n % 2], path(i));
                    let began = Instant::now();
                    let got = fetch(&url, None).await;
                    let took = began.elapsed();
                    if check(&got, &want(i), "peer load") {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        eprintln!("request for {url} failed: {got:?}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
            })
        })
        .collect();
    let peer_errors = || async {
        let series = "cdn_edge_peer_fetches_total{result=\"error\"}";
        let mut n = 0.0;
        for url in [h1.url(), h2.url()] {
            n += cdn_http::metrics::sample(&metrics_text(&url).await, series).unwrap_or(0.0);
        }
        n
    };
    tokio::time::sleep(phase).await;
    let before_cut = metric_sum(&origin.url(), "cdn_origin_requests_total").await;
    let errors_before_cut = peer_errors().await;
    to_p2.cut.store(true, Ordering::Relaxed);
    to_p1.cut.store(true, Ordering::Relaxed);
    tokio::time::sleep(phase).await;
    let during_cut = metric_sum(&origin.url(), "cdn_origin_requests_total").await - before_cut;
    let errors_during_cut = peer_errors().await - errors_before_cut;
    to_p2.cut.store(false, Ordering::Relaxed);
    to_p1.cut.store(false, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "served {}, origin requests while cut {during_cut}, peer fetch errors while cut \
         {errors_during_cut}, slowest request {:?}",
        served.load(Ordering::Relaxed),
        slowest.lock().unwrap()
    );
    // Every request was served whole (one that waited on the peer past the client's timeout
    // would count as a failure), and while cut the edges did ask the peer, gave up on it and
    // went to the origin.
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "requests failed because of the peer"
    );
    assert!(served.load(Ordering::Relaxed) > 50);
    assert!(errors_during_cut > 0.0, "the cut link was never tried");
    assert!(
        during_cut > 0.0,
        "nothing fell back to the origin while cut"
    );
    // Fresh objects while cut went to the origin (fall back), and bytes stayed right.
    to_p2.cut.store(true, Ordering::Relaxed);
    to_p1.cut.store(true, Ordering::Relaxed);
    let before = metric_sum(&origin.url(), "cdn_origin_requests_total").await;
    for i in 5000..5004 {
        let got = fetch(&format!("{}{}", h1.url(), path(i)), None).await;
        assert!(check(&got, &want(i), "cut"), "{got:?}");
    }
    assert!(metric_sum(&origin.url(), "cdn_origin_requests_total").await > before);
    for e in [&e1, &e2] {
        e.close_peers();
    }
    to_p1.task.abort();
    to_p2.task.abort();
    h1.stop().await;
    h2.stop().await;
    origin.stop().await;
    std::fs::remove_dir_all(&dir).ok();
}

// ---------------------------------------------------------------------------------------------
// An origin that ignores Range and sends no validator, and whose object changes length.

/// Serves `/obj` whole (200, Range ignored, no ETag, no Last-Modified): version A
/// ([`SIZE`] bytes) until `changed`, then version B (other bytes, 5000 more of them). With
/// `chunked`, B's body has no Content-Length (chunked coding; the edge stores nothing without
/// a length, so A always has one).
async fn unvalidated_origin(changed: Arc<AtomicBool>, chunked: bool) -> SocketAddr {
    use axum::response::IntoResponse;
    let app = axum::Router::new().route(
        "/obj",
        axum::routing::get(move || {
            let changed = changed.clone();
            async move {
                let b = changed.load(Ordering::SeqCst);
                let body = if b {
                    synthetic("version-b", 0..=SIZE + 4999)
                } else {
                    synthetic("version-a", 0..=SIZE - 1)
                };
                let body = if chunked && b {
                    let parts: Vec<Result<Bytes, std::io::Error>> = body
                        .chunks(10_000)
                        .map(|c| Ok(Bytes::copy_from_slice(c)))
                        .collect();
                    axum::body::Body::from_stream(futures::stream::iter(parts))
                } else {
                    axum::body::Body::from(body)
                };
                ([("cache-control", "public, max-age=3600")], body).into_response()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    addr
}

/// The object changes length at an origin without ranges or validators between the probe and
/// a later chunk fill: the fill is refused as a change, so the client never gets the two
/// versions mixed as one complete body, and no byte of the new version is stored under the
/// old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_refetched_from_a_changed_unvalidated_origin_is_not_mixed_in() {
    for (chunked, range) in [false, true]
        .into_iter()
        .flat_map(|c| [(c, None), (c, Some((2 * CHUNK + 10, 2 * CHUNK + 20)))])
    {
        let changed = Arc::new(AtomicBool::new(false));
        let addr = unvalidated_origin(changed.clone(), chunked).await;
        let (node, edge) = fault_edge(&format!("http://{addr}")).await;
        let url = format!("{}/obj", node.url());
        let want = synthetic("version-a", 0..=SIZE - 1);
        // The probe gets the whole of version A (a 200) and stores it in chunks.
        let got = fetch(&url, None).await;
        assert!(check(&got, &want, "first fetch"), "{got:?}");
        edge.store().settle().await;
        let stored: Vec<_> = edge
            .store()
            .chunks_held()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(stored.len(), 4, "chunks of version A stored");
        // The origin changes; chunk 2 leaves the store, so the next request refills it.
        changed.store(true, Ordering::SeqCst);
        let evicted = stored.iter().find(|k| k.index == 2).unwrap().clone();
        edge.store().drop_chunk(&evicted).await;
        let fills_before = metric_sum(&node.url(), "cdn_edge_origin_fetches_total").await;
        {
            let got = fetch(&url, range).await;
            let want_part = match range {
                None => want.clone(),
                Some((a, b)) => want.slice(a as usize..=b as usize),
            };
            assert!(
                !check(&got, &want_part, &format!("chunked={chunked} {range:?}")),
                "chunked={chunked} {range:?}: served whole although chunk 2 changed: {got:?}"
            );
        }
        assert!(
            metric_sum(&node.url(), "cdn_edge_origin_fetches_total").await > fills_before,
            "the edge went to the origin for chunk 2"
        );
        // Whatever is stored under version A's key is version A's bytes.
        edge.store().settle().await;
        let old_version = evicted.version.clone();
        let of_old = || {
            edge.store()
                .chunks_held()
                .into_iter()
                .filter(|(k, _)| k.version == old_version)
                .collect::<Vec<_>>()
        };
        for (key, bytes) in of_old() {
            let start = key.index * CHUNK;
            let end = (start + CHUNK).min(SIZE) - 1;
            assert_eq!(
                sha256(&bytes),
                sha256(&synthetic("version-a", start..=end)),
                "chunked={chunked}: chunk {} of version A holds other bytes",
                key.index
            );
        }
        assert!(
            !of_old().iter().any(|(k, _)| k.index == 2),
            "chunked={chunked}: a chunk 2 was stored under version A"
        );
        // And it heals: the change dropped version A's metadata, so the next request gets
        // version B whole instead of failing until A expires.
        let got = fetch(&url, None).await;
        let b = synthetic("version-b", 0..=SIZE + 4999);
        assert!(
            check(&got, &b, "after the change"),
            "chunked={chunked}: {got:?}"
        );
        node.stop().await;
    }
}
