//! A passive HTTP/1.1 observer for the relays of client links: it follows requests and
//! responses as the bytes pass, and reports each finished exchange (path, status,
//! `Cache-Status`, body bytes, time) to an [`Observer`], which is how the dashboard shows the
//! Cache-Status of the last segments a browser's `<video>` fetched.
//!
//! It changes one thing: response heads get `Access-Control-Allow-Origin: *` (and expose
//! `Cache-Status`), so players that fetch media with XHR from the lab's page (hls.js) may read
//! them. Bodies are never touched. Anything it cannot follow (a malformed head, a chunked
//! request body) switches it off for that connection; the bytes still pass unchanged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::{Bytes, BytesMut};

/// Largest request or response head followed.
const MAX_HEAD: usize = 64 * 1024;

const CORS: &[u8] = b"Access-Control-Allow-Origin: *\r\n\
Access-Control-Expose-Headers: Cache-Status, Age, Content-Range, Content-Length\r\n";

/// One finished request/response exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    pub method: String,
    pub path: String,
    pub status: u16,
    pub cache_status: Option<String>,
    /// Body bytes of the response.
    pub bytes: u64,
    /// From the request head to the end of the response, as seen at the relay.
    pub ms: f64,
}

/// Receives finished exchanges.
pub trait Observer: Send + Sync {
    fn exchange(&self, e: Exchange);
}

#[derive(Debug)]
struct Pending {
    method: String,
    path: String,
    started: Instant,
}

struct Current {
    pending: Option<Pending>,
    status: u16,
    cache_status: Option<String>,
    bytes: u64,
}

enum Req {
    Head(Vec<u8>),
    Body(u64),
}

enum Chunk {
    Size(Vec<u8>),
    Data(u64),
    DataEnd(u8),
    Trailer(Vec<u8>),
}

enum Resp {
    Head(Vec<u8>),
    Fixed(u64),
    Chunked(Chunk),
    UntilClose,
}

struct State {
    observer: Arc<dyn Observer>,
    broken: bool,
    req: Req,
    resp: Resp,
    queue: VecDeque<Pending>,
    current: Option<Current>,
}

/// The observer of one connection; clones share it (one per direction).
#[derive(Clone)]
pub struct Sniffer(Arc<Mutex<State>>);

fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    buf[start..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

impl Sniffer {
    pub fn new(observer: Arc<dyn Observer>) -> Self {
        Sniffer(Arc::new(Mutex::new(State {
            observer,
            broken: false,
            req: Req::Head(Vec::new()),
            resp: Resp::Head(Vec::new()),
            queue: VecDeque::new(),
            current: None,
        })))
    }

    /// Bytes from the client.
    pub fn request_bytes(&self, mut b: &[u8]) {
        let Ok(mut s) = self.0.lock() else { return };
        while !b.is_empty() && !s.broken {
            match &mut s.req {
                Req::Body(n) => {
                    let k = (*n).min(b.len() as u64);
                    *n -= k;
                    b = &b[k as usize..];
                    if *n == 0 {
                        s.req = Req::Head(Vec::new());
                    }
                }
                Req::Head(buf) => {
                    let old = buf.len();
                    buf.extend_from_slice(b);
                    let Some(end) = find_head_end(buf, old) else {
                        if buf.len() > MAX_HEAD {
                            s.broken = true;
                        }
                        return;
                    };
                    let head = std::mem::take(buf);
                    b = &b[end - old..];
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut req = httparse::Request::new(&mut headers);
                    match req.parse(&head[..end]) {
                        Ok(httparse::Status::Complete(_)) => {}
                        _ => {
                            s.broken = true;
                            return;
                        }
                    }
                    let mut body = 0;
                    for h in req.headers.iter() {
                        if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            s.broken = true;
                            return;
                        }
                        if h.name.eq_ignore_ascii_case("content-length") {
                            body = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0);
                        }
                    }
                    let pending = Pending {
                        method: req.method.unwrap_or("GET").to_owned(),
                        path: req.path.unwrap_or("/").to_owned(),
                        started: Instant::now(),
                    };
                    s.queue.push_back(pending);
                    s.req = if body > 0 {
                        Req::Body(body)
                    } else {
                        Req::Head(Vec::new())
                    };
                }
            }
        }
    }

    /// Bytes from the server; returns what to send on (heads with CORS headers added).
    pub fn response_bytes(&self, input: Bytes) -> Bytes {
        let Ok(mut s) = self.0.lock() else {
            return input;
        };
        if s.broken {
            return input;
        }
        let mut out = BytesMut::with_capacity(input.len() + CORS.len());
        let mut rest = input;
        while !rest.is_empty() {
            if s.broken {
                out.extend_from_slice(&rest);
                break;
            }
            rest = s.response_step(rest, &mut out);
        }
        out.freeze()
    }

    /// The connection closed: a body delimited by the close is complete.
    pub fn closed(&self) {
        let Ok(mut s) = self.0.lock() else { return };
        if matches!(s.resp, Resp::UntilClose) {
            s.finish();
        }
    }
}

impl State {
    fn finish(&mut self) {
        if let Some(c) = self.current.take() {
            let (method, path, ms) = match c.pending {
                Some(p) => (p.method, p.path, p.started.elapsed().as_secs_f64() * 1e3),
                None => ("?".into(), "?".into(), 0.0),
            };
            self.observer.exchange(Exchange {
                method,
                path,
                status: c.status,
                cache_status: c.cache_status,
                bytes: c.bytes,
                ms,
            });
        }
        self.resp = Resp::Head(Vec::new());
    }

    fn add_body(&mut self, n: usize) {
        if let Some(c) = &mut self.current {
            c.bytes += n as u64;
        }
    }

    /// Consumes some of `rest`, writing what passes on to `out`; returns what is left.
    fn response_step(&mut self, rest: Bytes, out: &mut BytesMut) -> Bytes {
        match &mut self.resp {
            Resp::Head(buf) => {
                let old = buf.len();
                buf.extend_from_slice(&rest);
                let Some(end) = find_head_end(buf, old) else {
                    if buf.len() > MAX_HEAD {
                        out.extend_from_slice(buf);
                        self.broken = true;
                    }
                    return Bytes::new();
                };
                let head = std::mem::take(buf);
                let left = rest.slice(end - old..);
                self.head(&head[..end], out);
                left
            }
            Resp::Fixed(n) => {
                let k = (*n).min(rest.len() as u64) as usize;
                *n -= k as u64;
                let done = *n == 0;
                out.extend_from_slice(&rest[..k]);
                self.add_body(k);
                if done {
                    self.finish();
                }
                rest.slice(k..)
            }
            Resp::UntilClose => {
                out.extend_from_slice(&rest);
                let n = rest.len();
                self.add_body(n);
                Bytes::new()
            }
            Resp::Chunked(chunk) => match chunk {
                Chunk::Data(n) => {
                    let k = (*n).min(rest.len() as u64) as usize;
                    *n -= k as u64;
                    if *n == 0 {
                        *chunk = Chunk::DataEnd(2);
                    }
                    out.extend_from_slice(&rest[..k]);
                    self.add_body(k);
                    rest.slice(k..)
                }
                Chunk::DataEnd(r) => {
                    let k = (*r as usize).min(rest.len());
                    *r -= k as u8;
                    if *r == 0 {
                        *chunk = Chunk::Size(Vec::new());
                    }
                    out.extend_from_slice(&rest[..k]);
                    rest.slice(k..)
                }
                Chunk::Size(line) | Chunk::Trailer(line) => {
                    let (k, complete) = match rest.iter().position(|&c| c == b'\n') {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    line.extend_from_slice(&rest[..k]);
                    out.extend_from_slice(&rest[..k]);
                    if line.len() > MAX_HEAD {
                        self.broken = true;
                        return rest.slice(k..);
                    }
                    if complete {
                        let text = String::from_utf8_lossy(line).trim().to_owned();
                        if matches!(chunk, Chunk::Trailer(_)) {
                            if text.is_empty() {
                                self.finish();
                            } else {
                                *chunk = Chunk::Trailer(Vec::new());
                            }
                        } else {
                            let hex = text.split(';').next().unwrap_or("").trim();
                            match u64::from_str_radix(hex, 16) {
                                Ok(0) => *chunk = Chunk::Trailer(Vec::new()),
                                Ok(n) => *chunk = Chunk::Data(n),
                                Err(_) => self.broken = true,
                            }
                        }
                    }
                    rest.slice(k..)
                }
            },
        }
    }

    /// A complete response head: note it, pass it on with the CORS headers, pick the body
    /// framing (RFC 9112 §6.3).
    fn head(&mut self, head: &[u8], out: &mut BytesMut) {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
            out.extend_from_slice(head);
            self.broken = true;
            return;
        }
        let status = resp.code.unwrap_or(0);
        let value = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
        };
        let has_cors = value("access-control-allow-origin").is_some();
        let chunked = value("transfer-encoding").is_some_and(|v| v.contains("chunked"));
        let length: Option<u64> = value("content-length").and_then(|v| v.parse().ok());
        let cache_status = value("cache-status");
        if has_cors {
            out.extend_from_slice(head);
        } else {
            out.extend_from_slice(&head[..head.len() - 2]);
            out.extend_from_slice(CORS);
            out.extend_from_slice(b"\r\n");
        }
        if (100..200).contains(&status) {
            // An interim response: the final one follows.
            return;
        }
        let pending = self.queue.pop_front();
        let no_body =
            pending.as_ref().is_some_and(|p| p.method == "HEAD") || status == 204 || status == 304;
        self.current = Some(Current {
            pending,
            status,
            cache_status,
            bytes: 0,
        });
        if no_body {
            self.finish();
        } else if chunked {
            self.resp = Resp::Chunked(Chunk::Size(Vec::new()));
        } else if let Some(n) = length {
            if n == 0 {
                self.finish();
            } else {
                self.resp = Resp::Fixed(n);
            }
        } else {
            self.resp = Resp::UntilClose;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Log(Mutex<Vec<Exchange>>);
    impl Observer for Log {
        fn exchange(&self, e: Exchange) {
            self.0.lock().expect("lock").push(e);
        }
    }

    fn feed(s: &Sniffer, bytes: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for part in bytes.chunks(step) {
            out.extend_from_slice(&s.response_bytes(Bytes::copy_from_slice(part)));
        }
        out
    }

    #[test]
    fn follows_keep_alive_exchanges_in_any_split() {
        for step in [1, 3, 7, 64, 4096] {
            let log = Arc::new(Log::default());
            let s = Sniffer::new(log.clone());
            let reqs = b"GET /a.m4s HTTP/1.1\r\nHost: x\r\nRange: bytes=0-\r\n\r\n\
HEAD /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n";
            for part in reqs.chunks(step) {
                s.request_bytes(part);
            }
            let resps = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 5\r\n\
Cache-Status: asia-1; hit\r\n\r\nhello\
HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
            let out = feed(&s, resps, step);
            let text = String::from_utf8_lossy(&out);
            assert_eq!(text.matches("Access-Control-Allow-Origin: *").count(), 3);
            assert!(text.contains("\r\n\r\nhello"), "{text}");
            assert_eq!(out.len(), resps.len() + 3 * CORS.len());
            let log = log.0.lock().expect("lock");
            let seen: Vec<_> = log
                .iter()
                .map(|e| {
                    (
                        e.path.as_str(),
                        e.status,
                        e.bytes,
                        e.cache_status.as_deref(),
                    )
                })
                .collect();
            assert_eq!(
                seen,
                vec![
                    ("/a.m4s", 206, 5, Some("asia-1; hit")),
                    ("/b", 200, 0, None),
                    ("/c", 200, 5, None),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn garbage_passes_unchanged() {
        let log = Arc::new(Log::default());
        let s = Sniffer::new(log.clone());
        s.request_bytes(b"GET / HTTP/1.1\r\n\r\n");
        let junk = b"NOT HTTP AT ALL\r\n\r\nmore bytes";
        let out = feed(&s, junk, 5);
        assert_eq!(&out[..], &junk[..]);
        assert!(log.0.lock().expect("lock").is_empty());
    }

    #[test]
    fn body_until_close() {
        let log = Arc::new(Log::default());
        let s = Sniffer::new(log.clone());
        s.request_bytes(b"GET /x HTTP/1.1\r\n\r\n");
        feed(
            &s,
            b"HTTP/1.1 200 OK\r\nCache-Status: e; fwd=miss\r\n\r\nabcdef",
            4,
        );
        assert!(log.0.lock().expect("lock").is_empty());
        s.closed();
        let log = log.0.lock().expect("lock");
        assert_eq!(log[0].bytes, 6);
        assert_eq!(log[0].cache_status.as_deref(), Some("e; fwd=miss"));
    }
}
