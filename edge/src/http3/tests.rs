//! Tests of the HTTP/3 endpoint over real QUIC on 127.0.0.1: the client's address reaching
//! the app as `ConnectInfo`, a request body and the Via of a pass-through to a real origin,
//! Content-Length checks, and the drain (GOAWAY) at shutdown.

use std::sync::Arc;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::{get, post};
use tokio::sync::Notify;

use super::client::{Client, config_trusting_pem};
use super::*;
use crate::config::EdgeConfig;

struct Certs {
    dir: PathBuf,
}

impl Certs {
    fn new(name: &str) -> Certs {
        let dir = std::env::temp_dir().join(format!("cdn-h3-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::peer::pki::write_lab_pki(&dir, &["localhost".to_string()]).expect("certs");
        Certs { dir }
    }

    fn config(&self) -> Http3Config {
        Http3Config::new(
            "127.0.0.1:0".parse().expect("addr"),
            self.dir.join("localhost.pem"),
            self.dir.join("localhost.key"),
        )
    }

    async fn client(&self, addr: SocketAddr) -> Client {
        let cfg = config_trusting_pem(&self.dir.join("ca.pem")).expect("client config");
        Client::connect(addr, "localhost", cfg)
            .await
            .expect("connects")
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Serves `app` over HTTP/3 until the returned sender fires; the task returns `serve`'s result.
fn start<S: App>(
    certs: &Certs,
    app: S,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), Http3Error>>,
) {
    let cfg = certs.config();
    let tls = tls_from_pem(&cfg.cert, &cfg.key).expect("tls");
    let endpoint = bind(&cfg, tls).expect("bind");
    let addr = endpoint.local_addr().expect("addr");
    let opts = Http3Options {
        quic: cfg,
        limits: Limits::default(),
        drain_deadline: Duration::from_secs(30),
        metrics: None,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(endpoint, app, opts, async move {
        let _ = stopped.await;
    }));
    (addr, stop, task)
}

#[tokio::test]
async fn the_clients_address_reaches_the_app_as_connect_info() {
    let certs = Certs::new("who");
    let app = Router::new().route(
        "/who",
        get(|ConnectInfo(a): ConnectInfo<SocketAddr>| async move { a.to_string() }),
    );
    let (addr, stop, task) = start(&certs, app);
    let c = certs.client(addr).await;
    let r = c.get("/who", &[]).await.expect("GET");
    assert_eq!(r.status(), StatusCode::OK);
    let me = c.local_addr().expect("local addr");
    assert_eq!(std::str::from_utf8(&r.body).expect("utf-8"), me.to_string());
    c.close().await;
    let _ = stop.send(());
    task.await.expect("task").expect("serve");
}

/// A real origin (HTTP/1.1 on TCP) that echoes a POST's body and the Via it received.
async fn echo_origin() -> cdn_http::server::NodeHandle {
    let app = Router::new().route(
        "/echo",
        post(|headers: http::HeaderMap, body: Bytes| async move {
            let via = headers
                .get_all(header::VIA)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ");
            ([("x-seen-via", via)], body)
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    cdn_http::server::NodeHandle::spawn(l, app, Default::default()).expect("origin")
}

#[tokio::test]
async fn a_pass_through_forwards_the_body_and_says_http3_in_via() {
    let origin = echo_origin().await;
    let cfg = EdgeConfig {
        name: "edge-u".into(),
        origin: origin.url(),
        capacity: 64 << 20,
        ..Default::default()
    };
    let (router, _edge) = crate::app(cfg).expect("edge");
    let certs = Certs::new("via");
    let (addr, stop, task) = start(&certs, router);
    let c = certs.client(addr).await;
    let body = Bytes::from((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    let req = http::Request::post(c.uri("/echo"))
        .header("content-length", body.len())
        .body(())
        .expect("req");
    let r = c.send(req, Some(body.clone())).await.expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.body == body, "the body reached the origin byte for byte");
    // The request was received over HTTP/3: the edge's Via member says so.
    assert_eq!(r.header("x-seen-via"), "3 edge-u");
    assert!(r.header("cache-status").contains("fwd=method"), "{r:?}");

    // A body longer than its Content-Length is malformed: never forwarded as it is.
    let req = http::Request::post(c.uri("/echo"))
        .header("content-length", "10")
        .body(())
        .expect("req");
    match c
        .send(req, Some(Bytes::from_static(b"0123456789abcdef")))
        .await
    {
        Ok(r) => assert_eq!(r.status(), StatusCode::BAD_GATEWAY, "{r:?}"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // A declared body over the limit: 413 before anything is read.
    let req = http::Request::post(c.uri("/echo"))
        .header(
            "content-length",
            (Limits::default().max_body_bytes + 1).to_string(),
        )
        .body(())
        .expect("req");
    let r = c.send(req, None).await.expect("answered");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // The connection still serves.
    let req = http::Request::post(c.uri("/echo"))
        .header("content-length", "3")
        .body(())
        .expect("req");
    let r = c
        .send(req, Some(Bytes::from_static(b"abc")))
        .await
        .expect("POST");
    assert_eq!((r.status(), &r.body[..]), (StatusCode::OK, &b"abc"[..]));
    c.close().await;
    let _ = stop.send(());
    task.await.expect("task").expect("serve");
    origin.stop().await;
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_the_request_in_flight_finish() {
    let arrived = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let (a, r) = (arrived.clone(), release.clone());
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let (a, r) = (a.clone(), r.clone());
                async move {
                    a.notify_one();
                    r.notified().await;
                    "finished"
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }));
    let certs = Certs::new("drain");
    let (addr, stop, task) = start(&certs, app);
    let c = Arc::new(certs.client(addr).await);
    let c2 = c.clone();
    let inflight = tokio::spawn(async move { c2.get("/slow", &[]).await });
    arrived.notified().await;
    let _ = stop.send(());
    // The GOAWAY reaches the client: a new request on this connection is refused (by the
    // client itself once it has the GOAWAY, or by the server with H3_REQUEST_REJECTED).
    let mut refused = false;
    for _ in 0..300 {
        if c.get("/fast", &[]).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "requests after GOAWAY are refused");
    release.notify_one();
    let r = inflight
        .await
        .expect("task")
        .expect("the request in flight completes");
    assert_eq!(
        (r.status(), &r.body[..]),
        (StatusCode::OK, &b"finished"[..])
    );
    task.await
        .expect("task")
        .expect("serve returns after the drain");
}

#[test]
fn alt_svc_names_the_port_and_max_age() {
    assert_eq!(alt_svc(8443, 86_400), "h3=\":8443\"; ma=86400");
}

#[test]
fn content_length_must_be_one_number() {
    let mut h = http::HeaderMap::new();
    assert_eq!(content_length(&h), None);
    h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
    assert_eq!(content_length(&h), Some(12));
    h.append(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
    assert_eq!(content_length(&h), Some(12));
    h.append(header::CONTENT_LENGTH, HeaderValue::from_static("13"));
    assert_eq!(content_length(&h), None);
    let mut h = http::HeaderMap::new();
    h.append(header::CONTENT_LENGTH, HeaderValue::from_static("-1"));
    assert_eq!(content_length(&h), None);
}

#[test]
fn config_defaults_and_checks() {
    let c: Http3Config = cdn_http::config::parse_toml(
        "listen = \"127.0.0.1:8443\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
        "e.toml",
    )
    .expect("config");
    let addr = "127.0.0.1:8443".parse().expect("addr");
    assert_eq!(c, Http3Config::new(addr, "c.pem".into(), "k.pem".into()));
    assert!(c.check().is_ok());
    let bad = Http3Config {
        max_concurrent_streams: 0,
        ..c
    };
    assert_eq!(bad.check().unwrap_err().0, "http3.max_concurrent_streams");
    // In the edge's config: `[http3]`, its errors named.
    let e = EdgeConfig::parse(
        "[http3]\nlisten = \"127.0.0.1:1\"\ncert = \"c\"\nkey = \"k\"\nidle_timeout_ms = 0\n",
        "edge.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("http3.idle_timeout_ms"), "{e}");
}
