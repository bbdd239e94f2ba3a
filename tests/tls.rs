//! HTTPS end to end, on 127.0.0.1 with certificates made per test (rcgen): SNI chooses the
//! certificate and sessions resume (TLS 1.3 and 1.2), a rotated certificate is served without
//! a restart, HTTP/2 range requests through the edge over TLS are byte exact, an HTTPS origin
//! fills the edge (verified against its CA, SNI its host name while connecting to an
//! address), an expired or wrongly named origin certificate is refused (502 and a clear log
//! line from the `cdn edge` process, never a cleartext retry), and the HTTP/2 rapid-reset and
//! CONTINUATION floods end in `GOAWAY` while other clients keep being served.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{listener, synthetic};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test CA writing leaf certificates into a scratch directory.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
    ca_path: PathBuf,
}

impl Pki {
    fn new(tag: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("cdn-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "test CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(p, KeyPair::generate().expect("key")).expect("ca");
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca.pem()).expect("write ca");
        Pki { dir, ca, ca_path }
    }

    /// Writes `<file>.pem` and `<file>.key` for `names`; `expired` puts its validity in the
    /// past. Returns the paths and the certificate's DER.
    fn leaf(&self, file: &str, names: &[&str], expired: bool) -> (PathBuf, PathBuf, Vec<u8>) {
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.ca).expect("sign");
        let (c, k) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}.key")),
        );
        // Written beside and renamed, as a certificate manager would.
        let tmp = self.dir.join(format!("{file}.tmp"));
        std::fs::write(&tmp, cert.pem()).expect("write");
        std::fs::rename(&tmp, &c).expect("rename");
        std::fs::write(&tmp, key.serialize_pem()).expect("write");
        std::fs::rename(&tmp, &k).expect("rename");
        (c, k, cert.der().to_vec())
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&self.ca_path).expect("ca") {
            roots.add(c.expect("ca cert")).expect("add");
        }
        roots
    }

    /// A rustls client trusting this CA, with `alpn`.
    fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
        alpn: &[&[u8]],
    ) -> Arc<rustls::ClientConfig> {
        let mut c = rustls::ClientConfig::builder_with_provider(cdn_http::tls::provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }

    /// A reqwest client trusting this CA (HTTP/2 when `h2`), `localhost` resolving to `at`.
    fn https_client(&self, at: std::net::SocketAddr, h2: bool) -> reqwest::Client {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = Arc::unwrap_or_clone(
            self.client_config(&[&rustls::version::TLS13, &rustls::version::TLS12], alpn),
        );
        let mut b = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .resolve("localhost", at)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(30));
        if !h2 {
            b = b.http1_only();
        }
        b.build().expect("client")
    }
}

fn settings(certs: &[(&Path, &Path)]) -> cdn_http::tls::TlsSettings {
    cdn_http::tls::TlsSettings {
        certificates: certs
            .iter()
            .map(|(c, k)| cdn_http::tls::CertFiles {
                cert: c.to_path_buf(),
                key: k.to_path_buf(),
            })
            .collect(),
        reload_poll_ms: 100,
        ..Default::default()
    }
}

/// An origin serving HTTPS with `tls`.
async fn tls_origin(tls: &cdn_http::tls::Tls) -> cdn_http::server::NodeHandle {
    cdn_origin::spawn_tls(
        listener().await,
        common::media_root(),
        &cdn_origin::OriginConfig::default(),
        cdn_http::server::TlsAccept::from_tls(tls),
    )
    .expect("origin starts")
}

/// One TLS handshake with `name` as SNI; the end-entity certificate the server sent and
/// whether the session was resumed. Sends a request and reads the answer, so TLS 1.3
/// session tickets (sent after the handshake) reach the client.
async fn handshake(
    at: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    name: &str,
) -> (Vec<u8>, bool, Option<rustls::ProtocolVersion>) {
    let tcp = tokio::net::TcpStream::connect(at).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(config);
    let sni = ServerName::try_from(name.to_string()).expect("name");
    let mut tls = connector.connect(sni, tcp).await.expect("handshake");
    let (cert, resumed, version) = {
        let (_, conn) = tls.get_ref();
        (
            conn.peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec())
                .unwrap_or_default(),
            conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed),
            conn.protocol_version(),
        )
    };
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    (cert, resumed, version)
}

#[tokio::test]
async fn sni_chooses_the_certificate_and_sessions_resume() {
    let pki = Pki::new("sni");
    let (ca, ka, der_a) = pki.leaf("a", &["a.test"], false);
    let (cb, kb, der_b) = pki.leaf("b", &["b.test", "*.wild.test"], false);
    let tls = cdn_http::tls::Tls::load(&settings(&[(&ca, &ka), (&cb, &kb)])).expect("load");
    let origin = tls_origin(&tls).await;
    for versions in [
        &[&rustls::version::TLS13][..],
        &[&rustls::version::TLS12][..],
    ] {
        let config = pki.client_config(versions, &[b"http/1.1"]);
        let (cert, resumed, version) = handshake(origin.addr, config.clone(), "a.test").await;
        assert_eq!(cert, der_a, "a.test gets a's certificate");
        assert!(!resumed);
        assert_eq!(version, Some(versions[0].version));
        let (cert, _, _) = handshake(origin.addr, config.clone(), "b.test").await;
        assert_eq!(cert, der_b, "b.test gets b's certificate");
        let (cert, _, _) = handshake(origin.addr, config.clone(), "x.wild.test").await;
        assert_eq!(cert, der_b, "a wildcard name gets b's certificate");
        // The same client again: the session resumes (ticket or session id).
        let (cert, resumed, _) = handshake(origin.addr, config, "a.test").await;
        assert_eq!(cert, der_a);
        assert!(
            resumed,
            "{:?}: second handshake resumed",
            versions[0].version
        );
    }
    origin.stop().await;
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let pki = Pki::new("rotate");
    let (c, k, first) = pki.leaf("site", &["site.test"], false);
    let tls = cdn_http::tls::Tls::load(&settings(&[(&c, &k)])).expect("load");
    let _watcher = tls.watch();
    let origin = tls_origin(&tls).await;
    let config = pki.client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
    assert_eq!(
        handshake(origin.addr, config.clone(), "site.test").await.0,
        first
    );
    // A new certificate and key replace the files (renamed over them).
    let (_, _, second) = pki.leaf("site", &["site.test"], false);
    assert_ne!(first, second);
    let mut seen = first.clone();
    for _ in 0..300 {
        // A new client each time: a resumed session would show the certificate of the
        // session it resumes.
        let fresh = pki.client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
        seen = handshake(origin.addr, fresh, "site.test").await.0;
        if seen == second {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, second, "the rotated certificate is served");
    // A broken file is refused and the certificate in force stays.
    std::fs::write(&k, "not a key").expect("write");
    let e = tls.reload().expect_err("a broken key is refused");
    assert!(e.to_string().contains("site.key"), "{e}");
    let fresh = pki.client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
    assert_eq!(handshake(origin.addr, fresh, "site.test").await.0, second);
    drop(config);
    origin.stop().await;
}

/// A `cdn edge` in-process (what `cdn edge --tls-listen ... --tls-cert ... --tls-key ...`
/// runs), serving until the returned sender is dropped.
async fn tls_edge(
    origin: &str,
    cert: &Path,
    key: &Path,
    config: Option<PathBuf>,
) -> (
    std::net::SocketAddr,
    std::net::SocketAddr,
    Arc<cdn_edge::Edge>,
    tokio::sync::oneshot::Sender<()>,
) {
    let args = cdn_edge::EdgeArgs {
        origin: Some(origin.to_string()),
        name: Some("tls-edge".into()),
        capacity: Some(64 << 20),
        chunk_size: Some(256 * 1024),
        config,
        tls_listen: Some("127.0.0.1:0".parse().expect("addr")),
        tls_cert: Some(cert.to_path_buf()),
        tls_key: Some(key.to_path_buf()),
        no_http3: true,
        ..cdn_edge::EdgeArgs::listening_at("127.0.0.1:0".parse().expect("addr"))
    };
    let node = cdn_edge::start(&args).await.expect("edge starts");
    let (plain, https, edge) = (
        node.addr,
        node.tls_addr.expect("https listener"),
        node.edge.clone(),
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(node.serve(async move {
        let _ = rx.await;
    }));
    (plain, https, edge, tx)
}

#[tokio::test]
async fn h2_range_requests_through_the_edge_over_tls_are_byte_exact() {
    let pki = Pki::new("h2range");
    let (c, k, _) = pki.leaf("edge", &["localhost"], false);
    let origin = common::start_origin(&common::media_root(), &Default::default()).await;
    let (_, https, _, _stop) = tls_edge(&origin.url(), &c, &k, None).await;
    let size: u64 = 3 * 256 * 1024 + 12_345;
    let url = format!(
        "https://localhost:{}/synthetic/h2r?size={size}",
        https.port()
    );
    for h2 in [true, false] {
        let client = pki.https_client(https, h2);
        for (from, to) in [
            (0, 0),
            (100, 262_243),
            (262_143, 262_144),
            (500_000, size - 1),
            (size - 10, size - 1),
        ] {
            let r = client
                .get(&url)
                .header("range", format!("bytes={from}-{to}"))
                .send()
                .await
                .expect("request");
            let want = if h2 {
                http::Version::HTTP_2
            } else {
                http::Version::HTTP_11
            };
            assert_eq!(r.version(), want);
            assert_eq!(r.status(), 206);
            assert_eq!(
                r.headers()["content-range"],
                format!("bytes {from}-{to}/{size}").as_str()
            );
            let body = r.bytes().await.expect("body");
            assert_eq!(body, synthetic("h2r", from..=to), "bytes {from}-{to}");
        }
        let full = client.get(&url).send().await.expect("request");
        assert_eq!(full.status(), 200);
        assert_eq!(
            full.bytes().await.expect("body"),
            synthetic("h2r", 0..=size - 1)
        );
    }
    origin.stop().await;
}

#[tokio::test]
async fn plain_http_redirects_to_https_when_asked() {
    let pki = Pki::new("redirect");
    let (c, k, _) = pki.leaf("edge", &["localhost"], false);
    let origin = common::start_origin(&common::media_root(), &Default::default()).await;
    let cfg = pki.dir.join("edge.toml");
    std::fs::write(&cfg, "[tls]\nredirect_http = true\n").expect("write");
    let (plain, https, _, _stop) = tls_edge(&origin.url(), &c, &k, Some(cfg)).await;
    let r = common::client()
        .get(format!("http://localhost:{}/a/b.mp4?x=1", plain.port()))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 308);
    assert_eq!(
        r.headers()["location"],
        format!("https://localhost:{}/a/b.mp4?x=1", https.port()).as_str()
    );
    // Health checks and scrapers keep plain HTTP.
    let r = common::client()
        .get(format!("http://127.0.0.1:{}/healthz", plain.port()))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    origin.stop().await;
}

#[tokio::test]
async fn an_https_origin_fills_the_edge_with_sni_its_host_name() {
    let pki = Pki::new("origin");
    let (c, k, _) = pki.leaf("origin", &["origin.test"], false);
    let tls = cdn_http::tls::Tls::load(&settings(&[(&c, &k)])).expect("load");
    let origin = tls_origin(&tls).await;
    let port = origin.addr.port();
    for http2 in [false, true] {
        // `origin.test` resolves nowhere: the edge connects to the address, and TLS asks for
        // and verifies `origin.test`.
        let (edge, _) = common::start_edge(&format!("https://origin.test:{port}"), |c| {
            c.origin_ca = Some(pki.ca_path.clone());
            c.origin_connect = Some(origin.addr);
            c.origin_http2 = http2;
            c.chunk_size = 64 * 1024;
        })
        .await;
        let id = format!("fill{http2}");
        let url = format!("{}/synthetic/{id}?size=200000", edge.url());
        for round in 0..2 {
            let r = common::client().get(&url).send().await.expect("request");
            assert_eq!(r.status(), 200, "round {round}, http2 {http2}");
            let status = r.headers()["cache-status"].to_str().unwrap().to_string();
            assert_eq!(r.bytes().await.expect("body"), synthetic(&id, 0..=199_999));
            if round == 1 {
                assert!(status.contains("hit"), "{status}");
            }
        }
        // The origin saw the chunk fills once (4 chunks of 64 KiB), none for the hit.
        let fetches = common::metric_sum(&edge.url(), "cdn_edge_origin_fetches_total").await;
        assert_eq!(fetches, 4.0, "http2 {http2}");
        edge.stop().await;
    }
    origin.stop().await;
}

/// A `cdn edge` process in front of `origin_url` (connecting to `connect`), trusting
/// `ca`; its log lines (JSON) are collected.
struct EdgeProcess {
    child: tokio::process::Child,
    url: String,
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl EdgeProcess {
    async fn start(dir: &Path, origin_url: &str, connect: std::net::SocketAddr, ca: &Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let cfg = dir.join(format!("edge-{}.toml", connect.port()));
        std::fs::write(&cfg, format!("origin_connect = \"{connect}\"\n")).expect("write");
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_cdn"))
            .args([
                "--log-json",
                "--log",
                "info",
                "edge",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(["--origin", origin_url, "--origin-ca"])
            .arg(ca)
            .arg("--config")
            .arg(&cfg)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start cdn edge");
        let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let url = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if v["fields"]["message"] == "edge serving" {
                    return format!("http://{}", v["fields"]["listen"].as_str().expect("listen"));
                }
            }
            panic!("cdn edge ended before serving");
        })
        .await
        .expect("cdn edge starts");
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().expect("log").push(line);
            }
        });
        EdgeProcess { child, url, log }
    }

    /// Waits for a log line with every one of `words`.
    async fn wait_log(&self, words: &[&str]) -> String {
        for _ in 0..600 {
            if let Some(l) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .find(|l| words.iter().all(|w| l.contains(w)))
            {
                return l.clone();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "no log line with {words:?}: {:?}",
            self.log.lock().expect("log")
        );
    }
}

#[tokio::test]
async fn an_expired_or_wrongly_named_origin_certificate_is_refused_with_a_502() {
    let pki = Pki::new("badorigin");
    let (ec, ek, _) = pki.leaf("expired", &["origin.test"], true);
    let (wc, wk, _) = pki.leaf("wrong", &["other.test"], false);
    // Each origin also holds a good certificate for `localhost`, which the test reads its
    // metrics with (SNI picks it).
    let (lc, lk, _) = pki.leaf("localhost", &["localhost"], false);
    let load = |c: &Path, k: &Path| {
        cdn_http::tls::Tls::load(&settings(&[(c, k), (&lc, &lk)])).expect("load")
    };
    let expired = tls_origin(&load(&ec, &ek)).await;
    let wrong = tls_origin(&load(&wc, &wk)).await;
    for (origin, reason) in [
        (&expired, "certificate expired"),
        (&wrong, "not valid for name"),
    ] {
        let origin_url = format!("https://origin.test:{}", origin.addr.port());
        let mut edge = EdgeProcess::start(&pki.dir, &origin_url, origin.addr, &pki.ca_path).await;
        let r = common::client()
            .get(format!("{}/synthetic/x?size=1000", edge.url))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 502, "{reason}");
        let line = edge
            .wait_log(&["origin TLS certificate refused", reason, "origin.test"])
            .await;
        assert!(line.contains("ERROR"), "{line}");
        // No request reached the origin's application (none in cleartext either).
        assert_eq!(requests_served(&pki, origin.addr).await, 0.0);
        let _ = edge.child.kill().await;
    }
    expired.stop().await;
    wrong.stop().await;
}

/// HTTP/2 frames by hand (RFC 9113 §4.1): a 9-byte header and the payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// A GET of `path` as an HPACK block: static-table `:method GET`, `:scheme https`, and
/// literal `:path` and `:authority` without indexing (RFC 7541 §6.2.2).
fn get_block(path: &str) -> Vec<u8> {
    let mut b = vec![0x82, 0x87];
    for (index, value) in [(4u8, path), (1u8, "localhost")] {
        b.push(index);
        b.push(value.len() as u8);
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// Connects over TLS with ALPN h2 and sends the connection preface and empty SETTINGS.
async fn h2_connection(
    pki: &Pki,
    at: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = pki.client_config(&[&rustls::version::TLS13], &[b"h2"]);
    let tcp = tokio::net::TcpStream::connect(at).await.expect("connect");
    let sni = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(sni, tcp)
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    tls.write_all(&hello).await.expect("preface");
    tls
}

/// Reads frames until a GOAWAY (its error code) or the end of the connection (`None`).
async fn until_goaway(tls: &mut (impl tokio::io::AsyncRead + Unpin)) -> Option<u32> {
    loop {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await.ok()?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await.ok()?;
        if head[3] == GOAWAY && payload.len() >= 8 {
            return Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
}

/// What every flood test checks afterwards: the connection is closed, and a new client
/// is served.
async fn still_serving(
    pki: &Pki,
    at: std::net::SocketAddr,
    flooded: &mut (impl tokio::io::AsyncRead + Unpin),
) {
    let mut rest = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(60), flooded.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the flooding connection is closed");
    let r = pki
        .https_client(at, true)
        .get(format!("https://localhost:{}/healthz", at.port()))
        .send()
        .await
        .expect("another client");
    assert_eq!(
        (r.status().as_u16(), r.version()),
        (200, http::Version::HTTP_2)
    );
}

#[tokio::test]
async fn the_h2_rapid_reset_flood_is_cut_with_goaway() {
    let pki = Pki::new("rapidreset");
    let (c, k, _) = pki.leaf("origin", &["localhost"], false);
    let tls = cdn_http::tls::Tls::load(&settings(&[(&c, &k)])).expect("load");
    let origin = tls_origin(&tls).await;
    let conn = h2_connection(&pki, origin.addr).await;
    // 2000 requests, each cancelled at once (HEADERS then RST_STREAM CANCEL), in one write.
    let mut flood = Vec::new();
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        flood.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            id,
            &get_block("/synthetic/rr?size=1000000"),
        ));
        flood.extend(frame(RST_STREAM, 0, id, &0x8u32.to_be_bytes()));
    }
    let (mut rd, mut wr) = tokio::io::split(conn);
    let writer = tokio::spawn(async move {
        // The server may close before all of it is written.
        let _ = wr.write_all(&flood).await;
        wr
    });
    let code = tokio::time::timeout(Duration::from_secs(60), until_goaway(&mut rd))
        .await
        .expect("an answer to the flood");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "GOAWAY ENHANCE_YOUR_CALM");
    still_serving(&pki, origin.addr, &mut rd).await;
    let _ = writer.await;
    // The application saw few of the 2000 requests.
    let served = requests_served(&pki, origin.addr).await;
    assert!(served < 100.0, "{served} requests reached the application");
    origin.stop().await;
}

#[tokio::test]
async fn the_h2_continuation_flood_is_cut_with_goaway() {
    let pki = Pki::new("continuation");
    let (c, k, _) = pki.leaf("origin", &["localhost"], false);
    let tls = cdn_http::tls::Tls::load(&settings(&[(&c, &k)])).expect("load");
    let origin = tls_origin(&tls).await;
    let conn = h2_connection(&pki, origin.addr).await;
    // A header block that never ends: HEADERS without END_HEADERS, then 100 000
    // CONTINUATION frames, each with one more small literal field, none with END_HEADERS.
    let mut flood = frame(HEADERS, END_STREAM, 1, &get_block("/healthz"));
    let field = [0x00, 0x01, b'x', 0x01, b'y'];
    for _ in 0..100_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &field));
    }
    let (mut rd, mut wr) = tokio::io::split(conn);
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&flood).await;
        wr
    });
    let code = tokio::time::timeout(Duration::from_secs(60), until_goaway(&mut rd))
        .await
        .expect("an answer to the flood");
    assert_eq!(code, Some(ENHANCE_YOUR_CALM), "GOAWAY ENHANCE_YOUR_CALM");
    still_serving(&pki, origin.addr, &mut rd).await;
    let _ = writer.await;
    assert_eq!(requests_served(&pki, origin.addr).await, 0.0);
    origin.stop().await;
}

/// The origin's count of requests its application answered (over HTTPS: its metrics are
/// not counted).
async fn requests_served(pki: &Pki, at: std::net::SocketAddr) -> f64 {
    let text = pki
        .https_client(at, false)
        .get(format!("https://localhost:{}/metrics", at.port()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| l.starts_with("cdn_origin_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn the_router_sends_https_viewers_to_the_edges_https_url() {
    let pki = Pki::new("router");
    let (c, k, _) = pki.leaf("node", &["localhost"], false);
    let origin = common::start_origin(&common::media_root(), &Default::default()).await;
    let (plain, https, _, _stop) = tls_edge(&origin.url(), &c, &k, None).await;
    let edge_http = format!("http://127.0.0.1:{}", plain.port());
    let edge_https = format!("https://localhost:{}", https.port());
    let toml = format!(
        "origin_url = \"{}\"\n[geo_miss]\nlatitude = 0.0\nlongitude = 0.0\n\
         [health]\ninterval_ms = 100\n\
         [[edge]]\nname = \"e1\"\nregion = \"r\"\nlatitude = 0.0\nlongitude = 0.0\n\
         url = \"{edge_http}\"\nhttps_url = \"{edge_https}\"\n",
        origin.url()
    );
    let mut cfg = cdn_geo_router::RouterConfig::parse(&toml, "router.toml").expect("router config");
    cfg.tls = cdn_http::tls::TlsSettings {
        listen: Some("127.0.0.1:0".parse().expect("addr")),
        ..settings(&[(&c, &k)])
    };
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/geo/lab-geo.mmdb");
    let router = cdn_geo_router::spawn(cfg, &db, listener().await)
        .await
        .expect("router starts");
    let router_https = router.tls_addr().expect("https listener");
    let viewer = pki.https_client(router_https, true);
    let url = format!("https://localhost:{}/demo.mp4?t=1", router_https.port());
    // The edge is routed to once its health checks pass.
    let mut location = String::new();
    for _ in 0..600 {
        let r = viewer.get(&url).send().await.expect("router over https");
        assert_eq!(r.version(), http::Version::HTTP_2);
        if r.headers().get("x-cdn-edge").is_some_and(|v| v == "e1") {
            assert_eq!(r.status(), 302);
            location = r.headers()["location"].to_str().unwrap().to_string();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(location, format!("{edge_https}/demo.mp4?t=1"));
    // Over plain HTTP the same route goes to the edge's plain URL.
    let r = common::client()
        .get(format!("{}/demo.mp4?t=1", router.url()))
        .send()
        .await
        .expect("router over http");
    assert_eq!(
        r.headers()["location"],
        format!("{edge_http}/demo.mp4?t=1").as_str()
    );
    // And the HTTPS location serves.
    let r = pki
        .https_client(https, true)
        .get(&location)
        .send()
        .await
        .expect("edge over https");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.bytes().await.expect("body").len() as u64,
        std::fs::metadata(common::media_root().join("demo.mp4"))
            .expect("demo.mp4")
            .len()
    );
    router.stop().await;
    origin.stop().await;
}

#[tokio::test]
async fn a_client_that_does_not_finish_its_handshake_is_closed() {
    let pki = Pki::new("hstimeout");
    let (c, k, _) = pki.leaf("origin", &["localhost"], false);
    let tls = cdn_http::tls::Tls::load(&cdn_http::tls::TlsSettings {
        handshake_timeout_ms: 300,
        ..settings(&[(&c, &k)])
    })
    .expect("load");
    let origin = tls_origin(&tls).await;
    // Half a ClientHello's record header, then silence.
    let mut tcp = tokio::net::TcpStream::connect(origin.addr)
        .await
        .expect("connect");
    tcp.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(60), tcp.read(&mut buf))
        .await
        .expect("the server closes the connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // A client that completes its handshake is served as before.
    let config = pki.client_config(&[&rustls::version::TLS13], &[b"http/1.1"]);
    handshake(origin.addr, config, "localhost").await;
    origin.stop().await;
}
