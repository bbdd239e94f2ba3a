//! HTTP/3 to viewers, end to end: a real origin and a real `cdn edge` (started as `cdn edge
//! --config` starts it, with `[http3]`) on 127.0.0.1:0, fetched with an HTTP/3 client (the
//! `h3` crate over quinn) and, in the ignored tests `.ci/run` runs, by headless Chromium over
//! QUIC: a page of the edge's own, and the whole lab's player over HTTPS, playing HLS over
//! HTTP/2 and over HTTP/3 through the lab's simulated links. Origin requests are counted from
//! the origin's own metrics.

mod common;
#[path = "common/lab_cdp.rs"]
mod lab_cdp;
#[path = "common/lab_run.rs"]
mod lab_run;

use std::net::SocketAddr;
use std::path::PathBuf;

use cdn_edge::http3::client::{Client, config_trusting_pem};
use common::*;
use http::StatusCode;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// A `cdn edge` with HTTP/3 on, running in this process.
struct H3Edge {
    tcp: SocketAddr,
    udp: SocketAddr,
    ca: PathBuf,
    cert: PathBuf,
    dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl H3Edge {
    /// Starts an edge in front of `origin` with `[http3]` on 127.0.0.1:0 and `extra` lines
    /// appended to the `[http3]` table (then any other tables).
    async fn start(origin: &str, name: &str, top: &str, extra: &str) -> H3Edge {
        let dir = std::env::temp_dir().join(format!("cdn-h3-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        cdn_edge::peer::pki::write_lab_pki(&dir, &["localhost".to_string()]).expect("certs");
        let (cert, key) = (dir.join("localhost.pem"), dir.join("localhost.key"));
        let config = dir.join("edge.toml");
        let text = format!(
            "name = \"edge-h3\"\norigin = \"{origin}\"\ncapacity = \"64MiB\"\n{top}\n\
             [http3]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
            cert.display(),
            key.display()
        );
        std::fs::write(&config, text).expect("config");
        let args = cdn_edge::EdgeArgs {
            config: Some(config),
            ..cdn_edge::EdgeArgs::listening_at("127.0.0.1:0".parse().expect("addr"))
        };
        let node = cdn_edge::start(&args).await.expect("edge starts");
        let (tcp, udp) = (node.addr, node.http3_addr.expect("http3 is on"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(async move {
            let _ = stopped.await;
        }));
        H3Edge {
            tcp,
            udp,
            ca: dir.join("ca.pem"),
            cert,
            dir,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.tcp)
    }

    async fn client(&self) -> Client {
        let cfg = config_trusting_pem(&self.ca).expect("client config");
        Client::connect(self.udp, "localhost", cfg)
            .await
            .expect("h3 connects")
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        (&mut self.task)
            .await
            .expect("edge task")
            .expect("edge stops cleanly");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h3_serves_the_one_request_path_byte_for_byte() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    // Every connection proves its address with a Retry first.
    let edge = H3Edge::start(
        &origin.url(),
        "path",
        "chunk_size = \"64KiB\"",
        "retry_above_handshakes = 0",
    )
    .await;
    let c = edge.client().await;
    let size = 300 * KIB;
    let path = format!("/synthetic/h3-one?size={size}");
    let want = synthetic("h3-one", 0..=size - 1);

    // A miss, then a hit: the same Cache-Status the TCP listener gives, one origin probe.
    let r = c.get(&path, &[]).await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body, want, "full body byte for byte");
    assert_eq!(r.header("content-length"), size.to_string());
    assert!(r.header("cache-status").contains("fwd=miss"), "{r:?}");
    let r = c.get(&path, &[]).await.expect("GET");
    assert_eq!(r.body, want);
    assert!(r.header("cache-status").contains("hit"), "{r:?}");
    assert!(!r.header("cache-status").contains("fwd="), "{r:?}");
    // No connection-specific field is sent over HTTP/3.
    assert!(r.head.headers().get("connection").is_none());

    // A range: 206 with the exact bytes and Content-Range.
    let r = c
        .get(&path, &[("range", "bytes=70000-70999")])
        .await
        .expect("range");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.header("content-range"),
        format!("bytes 70000-70999/{size}")
    );
    assert_eq!(r.body, want.slice(70000..71000));

    // A conditional: 304, no body.
    let etag = r.header("etag").to_string();
    assert!(!etag.is_empty());
    let r = c
        .get(&path, &[("if-none-match", &etag)])
        .await
        .expect("conditional");
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag"), etag);

    // Several ranges: multipart/byteranges, as on TCP.
    let r = c
        .get(&path, &[("range", "bytes=0-9,200000-200009")])
        .await
        .expect("ranges");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let parts = parse_multipart(r.header("content-type"), &r.body);
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[1].1, want.slice(200000..200010));

    // HEAD: the fields, no body.
    let head = http::Request::head(c.uri(&path)).body(()).expect("req");
    let r = c.send(head, None).await.expect("HEAD");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.header("content-length"), size.to_string());
    assert!(r.body.is_empty());

    assert_eq!(
        origin_requests(&origin.url()).await,
        5.0,
        "probe + 4 chunk fills"
    );

    // TCP responses advertise HTTP/3 on the UDP port.
    let tcp = client()
        .get(format!("{}{path}", edge.url()))
        .send()
        .await
        .expect("tcp");
    assert_eq!(
        tcp.headers().get("alt-svc").expect("alt-svc"),
        &format!("h3=\":{}\"; ma=86400", edge.udp.port())
    );
    let text = metrics_text(&edge.url()).await;
    assert!(cdn_http::metrics::sum(&text, "cdn_edge_http3_retries_total") >= 1.0);
    assert_eq!(
        cdn_http::metrics::sum(&text, "cdn_edge_http3_connections_total"),
        1.0
    );
    c.close().await;
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_object_streams_through_several_chunks_and_concurrent_streams() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let edge = H3Edge::start(&origin.url(), "large", "chunk_size = \"256KiB\"", "").await;
    let c = edge.client().await;
    let size = 6 * MIB + 12345;
    let path = format!("/synthetic/h3-large?size={size}");
    let want = synthetic("h3-large", 0..=size - 1);
    // Cold: the body streams while its chunks are filled.
    let r = c.get(&path, &[]).await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.body.len() as u64, size);
    assert!(r.body == want, "large body byte for byte");
    assert!(r.reads > 1, "streamed in several DATA reads: {}", r.reads);
    // Warm, eight at once on one connection, with ranges across chunk boundaries.
    let c = std::sync::Arc::new(c);
    let tasks: Vec<_> = (0..8u64)
        .map(|i| {
            let (c, path) = (c.clone(), path.clone());
            tokio::spawn(async move {
                let (a, b) = (i * 700_000 + 1, i * 700_000 + 400_000);
                let range = format!("bytes={a}-{b}");
                let r = c.get(&path, &[("range", &range)]).await.expect("range");
                (a, b, r)
            })
        })
        .collect();
    for t in tasks {
        let (a, b, r) = t.await.expect("task");
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert!(
            r.body == want.slice(a as usize..=b as usize),
            "range {a}-{b}"
        );
        assert!(r.header("cache-status").contains("hit"), "{r:?}");
    }
    let fills = origin_requests(&origin.url()).await;
    assert_eq!(
        fills,
        size.div_ceil(256 * KIB) as f64,
        "each chunk fetched once"
    );
    if let Ok(c) = std::sync::Arc::try_unwrap(c) {
        c.close().await;
    }
    edge.stop().await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_limits_answer_clearly_and_the_edge_keeps_serving() {
    use futures::FutureExt;
    let origin = start_origin(&media_root(), &Default::default()).await;
    let edge = H3Edge::start(
        &origin.url(),
        "limits",
        "[limits]\nmax_header_bytes = 2048\nmax_uri_bytes = 1024",
        "max_concurrent_streams = 4\nmax_connections = 2",
    )
    .await;
    let c = edge.client().await;
    let path = "/synthetic/h3-limits?size=1000";
    assert_eq!(
        c.get(path, &[]).await.expect("GET").status(),
        StatusCode::OK
    );

    // Over the announced field-section size (SETTINGS_MAX_FIELD_SECTION_SIZE: 2048 + 1024 +
    // 1024, at least 8 KiB): a client that knows the setting refuses to send it, and one that does not yet
    // gets 431 on that stream; either way the connection goes on.
    let big = "x".repeat(16 * 1024);
    match c.get(path, &[("x-big", &big)]).await {
        Ok(r) => assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(e) => assert!(e.to_string().contains("Header too big"), "{e}"),
    }
    // Within the field section, over max_header_bytes: 431 from the edge's own check.
    let mid = "y".repeat(2500);
    let r = c.get(path, &[("x-mid", &mid)]).await.expect("answered");
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // A long target: 414.
    let long = format!("/synthetic/h3-limits?size=1000&pad={}", "z".repeat(1100));
    assert_eq!(
        c.get(&long, &[]).await.expect("answered").status(),
        StatusCode::URI_TOO_LONG
    );
    let r = c.get(path, &[]).await.expect("still served");
    assert_eq!((r.status(), r.body.len()), (StatusCode::OK, 1000));
    // RFC 9114 §4.3.1: a Host beside :authority is the same (the h3 crates refuse to send
    // or take another), and there is one (RFC 9112 §3.2 for every version: else 400).
    let other = "evil.example";
    for (host, want) in [
        (vec![c.authority()], StatusCode::OK),
        (vec![c.authority(), other], StatusCode::BAD_REQUEST),
    ] {
        let fields: Vec<(&str, &str)> = host.iter().map(|h| ("host", *h)).collect();
        let r = c.get(path, &fields).await.expect("answered");
        assert_eq!(r.status(), want, "Host {host:?}");
    }

    // Stream credit: four streams at once; a fifth waits until one is done.
    let q = c.quic().clone();
    let mut open = Vec::new();
    for _ in 0..4 {
        // The credit is known since the handshake: these complete without a round trip,
        // except for the streams of the requests above still being released.
        let s = tokio::time::timeout(std::time::Duration::from_secs(30), q.open_bi())
            .await
            .expect("credit for 4 streams")
            .expect("stream");
        open.push(s);
    }
    assert!(
        q.open_bi().now_or_never().is_none(),
        "a fifth stream must wait"
    );
    // Finish one without a request: the server ends it, and the credit comes back.
    let (mut send, mut recv) = open.pop().expect("a stream");
    send.finish().expect("finish");
    let _ = recv.read_to_end(1024).await;
    let fifth = tokio::time::timeout(std::time::Duration::from_secs(30), q.open_bi())
        .await
        .expect("credit returned once a stream ended");
    assert!(fifth.is_ok());

    // The connection cap: a third connection is refused while two are open.
    let c2 = edge.client().await;
    let cfg = config_trusting_pem(&edge.ca).expect("cfg");
    let third = Client::connect(edge.udp, "localhost", cfg.clone()).await;
    assert!(third.is_err(), "over max_connections");
    c2.close().await;
    // Once one closes, a new one gets in (the server notices the close at once).
    let mut again = None;
    for _ in 0..600 {
        if let Ok(c) = Client::connect(edge.udp, "localhost", cfg.clone()).await {
            again = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = again.expect("a connection after one closed");
    assert_eq!(
        again.get(path, &[]).await.expect("GET").status(),
        StatusCode::OK
    );
    let text = metrics_text(&edge.url()).await;
    assert!(cdn_http::metrics::sum(&text, "cdn_edge_http3_refused_total") >= 1.0);
    drop(open);
    again.close().await;
    c.close().await;
    edge.stop().await;
    origin.stop().await;
}

/// The test page: fetches a video over the page's own connection and reports what Resource
/// Timing saw.
const PAGE: &str = r#"<!doctype html>
<html><head><title>h3</title></head><body>
<video id="v" muted preload="auto" src="/demo.mp4"></video>
<script>
window.result = (async () => {
  const r = await fetch('/demo.mp4', {headers: {range: 'bytes=0-65535'}});
  const body = await r.arrayBuffer();
  const url = new URL('/demo.mp4', location).href;
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByName(url);
  return {
    status: r.status, len: body.byteLength,
    nav: nav.nextHopProtocol,
    video: res.map(e => e.nextHopProtocol),
  };
})().catch(e => ({error: String(e)}));
</script></body></html>
"#;

#[test]
#[ignore = "needs Debian's chromium; .ci/run runs it"]
fn chromium_loads_a_page_and_its_video_over_http3() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    // An origin serving the page and the demo video.
    let root = std::env::temp_dir().join(format!("cdn-h3-page-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("index.html"), PAGE).expect("page");
    std::fs::copy(media_root().join("demo.mp4"), root.join("demo.mp4")).expect("video");
    let (origin, edge) = rt.block_on(async {
        let origin = start_origin(&root, &Default::default()).await;
        let edge = H3Edge::start(&origin.url(), "chromium", "", "retry_above_handshakes = 0").await;
        (origin, edge)
    });
    let spki = cdn_edge::http3::spki_sha256_of_pem(&edge.cert).expect("spki");
    let port = edge.udp.port();
    let dir = std::env::temp_dir().join(format!("cdn-h3-chromium-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut browser = lab_cdp::Browser::launch_with(
        &dir,
        (800, 600),
        &[
            format!("--origin-to-force-quic-on=127.0.0.1:{port}"),
            format!("--ignore-certificate-errors-spki-list={spki}"),
        ],
    );
    let page = browser.open(&format!("https://127.0.0.1:{port}/index.html"), (800, 600));
    // Wait for the page's script, however long the machine takes (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let result = loop {
        let v = browser.eval(&page, "window.result === undefined ? null : window.result");
        if !v.is_null() {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the page never ran its script"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(result.get("error").is_none(), "{result}");
    assert_eq!(result["status"], 206, "{result}");
    assert_eq!(result["len"], 65536, "{result}");
    assert_eq!(result["nav"], "h3", "the page came over HTTP/3: {result}");
    let video = result["video"].as_array().expect("entries");
    assert!(!video.is_empty(), "{result}");
    assert!(
        video.iter().all(|p| p == "h3"),
        "the video came over HTTP/3: {result}"
    );
    browser.close_page(page);
    drop(browser);
    rt.block_on(async {
        let text = metrics_text(&edge.url()).await;
        assert!(cdn_http::metrics::sum(&text, "cdn_edge_http3_requests_total") >= 2.0);
        edge.stop().await;
        origin.stop().await;
    });
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--tls-listen` alone turns HTTP/3 on, on the same port number over UDP, with the HTTPS
/// listener's certificate; HTTPS responses advertise it. `--no-http3` turns it off (and the
/// advertisement with it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_https_port_serves_http3_unless_turned_off() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = std::env::temp_dir().join(format!("cdn-h3-tlsport-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cdn_edge::peer::pki::write_lab_pki(&dir, &["localhost".to_string()]).expect("certs");
    let ca = dir.join("ca.pem");
    let path = "/synthetic/h3-tlsport?size=5000";
    let want = synthetic("h3-tlsport", 0..=4999);
    for no_http3 in [false, true] {
        let args = cdn_edge::EdgeArgs {
            origin: Some(origin.url()),
            name: Some("edge-tls".into()),
            tls_listen: Some("127.0.0.1:0".parse().expect("addr")),
            tls_cert: Some(dir.join("localhost.pem")),
            tls_key: Some(dir.join("localhost.key")),
            no_http3,
            ..cdn_edge::EdgeArgs::listening_at("127.0.0.1:0".parse().expect("addr"))
        };
        let node = cdn_edge::start(&args).await.expect("edge starts");
        let tls = node.tls_addr.expect("the HTTPS listener");
        let h3 = node.http3_addr;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(node.serve(async move {
            let _ = stopped.await;
        }));
        cdn_http::tls::install_crypto_provider();
        let https = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(&ca).expect("ca")).expect("pem"),
            )
            .resolve("localhost", tls)
            .no_proxy()
            .build()
            .expect("https client");
        let r = https
            .get(format!("https://localhost:{}{path}", tls.port()))
            .send()
            .await
            .expect("https");
        assert_eq!(r.status(), StatusCode::OK);
        let alt = r.headers().get("alt-svc").cloned();
        assert_eq!(r.bytes().await.expect("body"), want);
        if no_http3 {
            assert_eq!(h3, None, "--no-http3: no UDP endpoint");
            assert_eq!(alt, None, "--no-http3: nothing advertised");
        } else {
            let udp = h3.expect("HTTP/3 on the HTTPS port");
            assert_eq!(udp.port(), tls.port(), "the same port number, over UDP");
            assert_eq!(
                alt.expect("alt-svc"),
                format!("h3=\":{}\"; ma=86400", tls.port()).as_str()
            );
            let cfg = config_trusting_pem(&ca).expect("client config");
            let c = Client::connect(udp, "localhost", cfg)
                .await
                .expect("h3 connects");
            let r = c.get(path, &[]).await.expect("GET over h3");
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.body, want, "the same bytes over HTTP/3");
            assert!(r.header("cache-status").contains("hit"), "{r:?}");
            c.close().await;
        }
        let _ = stop.send(());
        task.await.expect("edge task").expect("edge stops cleanly");
    }
    let _ = std::fs::remove_dir_all(&dir);
    origin.stop().await;
}

/// The HLS segments the page fetched, as Resource Timing saw them: `[url, nextHopProtocol]`.
const SEGMENT_ENTRIES: &str = "JSON.stringify(performance.getEntriesByType('resource')\
    .filter(e => /seg_\\d+\\.m4s/.test(e.name)).map(e => [e.name, e.nextHopProtocol]))";

/// What the lab's player measured (`window.labViewer`).
fn lab_viewer(b: &mut lab_cdp::Browser, page: &lab_cdp::Page) -> serde_json::Value {
    b.eval(page, "JSON.stringify(window.labViewer || null)")
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Waits until the player has played `secs` seconds (its `timeupdate` events), bounded.
fn lab_play_for(b: &mut lab_cdp::Browser, page: &lab_cdp::Page, secs: f64) -> serde_json::Value {
    let start = std::time::Instant::now();
    loop {
        let v = lab_viewer(b, page);
        assert!(v["error"].is_null(), "media error: {v}");
        if v["currentTime"].as_f64().unwrap_or(0.0) >= secs {
            return v;
        }
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "not playing: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Plays the lab's HLS rendition from Asia on the player page loaded over HTTPS, in real time,
/// with hls.js (whose segment requests Resource Timing records); returns the segments'
/// `[url, protocol]` entries.
fn play_lab_hls_over_https(
    b: &mut lab_cdp::Browser,
    https_router: &str,
) -> (serde_json::Value, Vec<(String, String)>) {
    let size = (1024, 768);
    let page = b.open(
        &format!("{https_router}/?region=asia&rendition=hls&autoplay=1&hlsjs=1"),
        size,
    );
    let t = std::time::Instant::now();
    let first = lab_play_for(b, &page, 1.0);
    let v = lab_play_for(b, &page, 4.0);
    assert!(
        t.elapsed() >= std::time::Duration::from_secs(3),
        "played faster than real time: {v}"
    );
    assert!(v["currentTime"].as_f64() > first["currentTime"].as_f64());
    assert_eq!(v["player"], "hls.js", "{v}");
    let entries = b.eval(&page, SEGMENT_ENTRIES);
    let entries: Vec<(String, String)> =
        serde_json::from_str(entries.as_str().unwrap_or("[]")).expect("entries");
    b.close_page(page);
    (v, entries)
}

/// The lab over HTTPS in headless Chromium (a fresh profile, the lab's certificate trusted by
/// its SPKI hash): the player page comes from the router over HTTPS, plays the HLS rendition
/// from Asia in real time, and every segment comes from the Asian link's HTTPS relay over
/// HTTP/2; then, QUIC on, the same page plays with every segment over HTTP/3 through the
/// link's UDP relay on the same port number (whose `Alt-Svc` the edge names).
#[test]
#[ignore = "needs Debian's chromium; .ci/run runs it"]
fn chromium_plays_the_lab_over_https_with_http2_and_http3() {
    let lab = lab_run::LabRun::start("https-chromium");
    let https = lab.state.https.clone().expect("the lab serves HTTPS");
    assert!(https.http3, "{https:?}");
    let link = lab.link("client", "asia", "asia-1");
    let relay = link.https_addr.expect("the Asian link has an HTTPS relay");
    let spki = format!(
        "--ignore-certificate-errors-spki-list={}",
        https.spki_sha256
    );

    // The edge names the port the viewer came to in its Alt-Svc: the link's relay, which
    // carries UDP on the same number.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let alt_svc = rt.block_on(async {
        cdn_http::tls::install_crypto_provider();
        let ca = std::fs::read(&https.ca).expect("the lab's CA");
        let c = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("CA")])
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client");
        let r = c
            .get(format!("https://{relay}/media/demo/index.m3u8"))
            .send()
            .await
            .expect("the edge answers over HTTPS through the relay");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.version(), http::Version::HTTP_2, "ALPN chose h2");
        assert_eq!(header_of(&r, "access-control-allow-origin"), "*");
        assert_eq!(header_of(&r, "timing-allow-origin"), "*");
        header_of(&r, "alt-svc")
    });
    assert!(
        alt_svc.starts_with(&format!("h3=\":{}\"", relay.port())),
        "{alt_svc}"
    );

    // HTTP/2: QUIC off.
    let dir = lab.dir.join("chromium-h2");
    std::fs::create_dir_all(&dir).expect("dir");
    let mut b = lab_cdp::Browser::launch_with(&dir, (1024, 768), std::slice::from_ref(&spki));
    let (v, entries) = play_lab_hls_over_https(&mut b, &https.router);
    drop(b);
    assert_eq!(v["edge"], "asia-1", "{v}");
    assert!(entries.len() >= 2, "segments seen: {entries:?}");
    for (url, proto) in &entries {
        assert!(url.starts_with(&format!("https://{relay}/")), "{url}");
        assert_eq!(proto, "h2", "{url} came over {proto}");
    }

    // HTTP/3: QUIC forced on for the relay's origin, UDP on the same port number. Chromium
    // does not act on the edge's Alt-Svc for a certificate of a locally trusted root (with QUIC
    // merely enabled, every segment stayed on h2 in a trial run), hence the flag.
    let dir = lab.dir.join("chromium-h3");
    std::fs::create_dir_all(&dir).expect("dir");
    let before = edge_http3_requests(&rt, &lab.node("asia-1").url);
    let mut b = lab_cdp::Browser::launch_with(
        &dir,
        (1024, 768),
        &[spki.clone(), format!("--origin-to-force-quic-on={relay}")],
    );
    let (v, entries) = play_lab_hls_over_https(&mut b, &https.router);
    drop(b);
    assert_eq!(v["edge"], "asia-1", "{v}");
    assert!(entries.len() >= 2, "segments seen: {entries:?}");
    for (url, proto) in &entries {
        assert!(url.starts_with(&format!("https://{relay}/")), "{url}");
        assert_eq!(proto, "h3", "{url} came over {proto}");
    }
    let after = edge_http3_requests(&rt, &lab.node("asia-1").url);
    assert!(
        after >= before + entries.len() as f64,
        "asia-1 served {} HTTP/3 requests for {} segments",
        after - before,
        entries.len()
    );
}

fn header_of(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn edge_http3_requests(rt: &tokio::runtime::Runtime, edge: &str) -> f64 {
    rt.block_on(async {
        let text = metrics_text(edge).await;
        cdn_http::metrics::sum(&text, "cdn_edge_http3_requests_total")
    })
}
