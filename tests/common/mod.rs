//! Helpers shared by the end-to-end tests: start real nodes on 127.0.0.1:0, raw HTTP/1.1
//! requests (for paths a URL library would normalise), multipart parsing, metric reading.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use cdn_http::server::NodeHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub fn media_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/media")
}

pub async fn listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// A real origin on 127.0.0.1:0 serving `root`.
pub async fn start_origin(root: &Path, cfg: &cdn_origin::OriginConfig) -> NodeHandle {
    cdn_origin::spawn(listener().await, root.to_path_buf(), cfg).expect("origin starts")
}

pub async fn start_origin_with(root: &Path, toml: &str) -> NodeHandle {
    let cfg = cdn_origin::OriginConfig::parse(toml, "test.toml").expect("test config");
    start_origin(root, &cfg).await
}

pub fn client() -> reqwest::Client {
    cdn_http::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A client whose requests come from `ip` (any 127.0.0.0/8 address is a simulated client;
/// the router places it by that address); no redirects followed, no proxy, 30 s timeout.
pub fn client_from(ip: &str) -> reqwest::Client {
    client_from_with(ip, Duration::from_secs(30))
}

/// [`client_from`] with another timeout.
pub fn client_from_with(ip: &str, timeout: Duration) -> reqwest::Client {
    cdn_http::tls::install_crypto_provider();
    reqwest::Client::builder()
        .local_address(ip.parse::<std::net::IpAddr>().expect("source ip"))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(timeout)
        .build()
        .expect("client")
}

/// Fetches `/metrics` of a node (through the lab's scraper, as the lab and the benchmarks do).
pub async fn metrics_text(base: &str) -> String {
    cdn_lab::scrape::Scraper::new(Duration::from_secs(30))
        .metrics(base)
        .await
        .expect("metrics")
        .0
}

pub async fn metric_sum(base: &str, name: &str) -> f64 {
    cdn_http::metrics::sum(&metrics_text(base).await, name)
}

/// A raw HTTP/1.1 request with `Connection: close`; returns status, head and body.
pub async fn raw_request(addr: SocketAddr, request_head: &str) -> (u16, String, Vec<u8>) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request_head.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response in time")
        .expect("read");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&out[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head, out[split + 4..].to_vec())
}

/// Parses a multipart/byteranges body into (Content-Range, bytes) parts.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Bytes)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("boundary parameter")
        .trim_matches('"');
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    loop {
        let at = find(rest, delim.as_bytes()).expect("delimiter");
        rest = &rest[at + delim.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let head_end = find(rest, b"\r\n\r\n").expect("part head");
        let head = String::from_utf8_lossy(&rest[..head_end]).to_string();
        let content_range = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-range")
                    .then(|| v.trim().to_string())
            })
            .expect("content-range in part");
        let body_start = head_end + 4;
        let next = find(&rest[body_start..], format!("\r\n{delim}").as_bytes()).expect("next");
        parts.push((
            content_range,
            Bytes::copy_from_slice(&rest[body_start..body_start + next]),
        ));
        rest = &rest[body_start + next..];
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

/// A real edge on 127.0.0.1:0 in front of `origin`, with test-friendly settings changed by
/// `tweak`.
pub async fn start_edge(
    origin: &str,
    tweak: impl FnOnce(&mut cdn_edge::EdgeConfig),
) -> (NodeHandle, std::sync::Arc<cdn_edge::Edge>) {
    let mut cfg = cdn_edge::EdgeConfig {
        name: "edge-test".into(),
        origin: origin.to_string(),
        capacity: 64 << 20,
        ..Default::default()
    };
    tweak(&mut cfg);
    let cfg = cfg.check("test").expect("valid edge config");
    cdn_edge::spawn(listener().await, cfg).expect("edge starts")
}

/// Sum of the origin's request counter over all statuses.
pub async fn origin_requests(origin: &str) -> f64 {
    metric_sum(origin, cdn_origin::metric_names::REQUESTS_TOTAL).await
}

/// The expected bytes of a synthetic object (the same generator the origin uses).
pub fn synthetic(id: &str, range: std::ops::RangeInclusive<u64>) -> Bytes {
    cdn_origin::synthetic::fill(cdn_origin::synthetic::seed(id), range)
}
