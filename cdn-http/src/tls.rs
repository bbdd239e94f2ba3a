//! TLS for viewers, shared by every node: certificates and keys loaded from PEM files, several
//! certificates chosen by SNI ([`CertResolver`], a rustls `ResolvesServerCert`), reloaded
//! without a restart when the files change (their mtime, size or inode, polled, and at once
//! on SIGHUP; a broken new file is logged and the certificates in use stay), TLS 1.2 and 1.3
//! with the `ring` provider only, session resumption (stateless tickets and a bounded
//! session-id cache), and ALPN `h2` + `http/1.1` ([`Tls::server_config`]) or `h3`
//! ([`Tls::server_config_h3`], for QUIC). Both configurations share one resolver, so a
//! rotation applies to every listener at once.
//!
//! The accept loop that uses these configurations is [`crate::server::serve_tls`]; the
//! `[tls]` section of each node's config file is [`TlsSettings`]. [`redirect_to_https`]
//! turns a plain HTTP listener into one that redirects to the HTTPS one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};

/// ALPN of the TCP listener, in the server's order of preference.
pub const ALPN_TCP: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN of HTTP/3.
pub const ALPN_H3: &[u8] = b"h3";

/// The crypto provider of every TLS configuration in the tree: `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs `ring` as the process's default rustls provider (once; later calls do nothing).
/// Clients that do not name a provider (reqwest's) need it: call it before building one.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err only when another provider was installed first, which is then used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// One certificate (chain, leaf first) and its private key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The `[tls]` section of a node's config file. `--tls-listen`, `--tls-cert` and `--tls-key`
/// override or extend it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// Address of the HTTPS listener (TCP). No HTTPS when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// The certificates (`[[tls.certificates]]`, each `cert` and `key`). SNI picks the one
    /// whose DNS names match (exact names before wildcards); the first one answers clients
    /// that send no SNI or a name none has.
    pub certificates: Vec<CertFiles>,
    /// Time a client has to complete the TLS handshake after connecting.
    pub handshake_timeout_ms: u64,
    /// Whether the plain HTTP listener answers with a redirect (308) to the HTTPS listener
    /// (except `/healthz` and `/metrics`, which health checks and scrapers read over HTTP).
    pub redirect_http: bool,
    /// How often the certificate files are looked at for changes (SIGHUP looks at once).
    pub reload_poll_ms: u64,
    /// Sessions kept for TLS 1.2 session-id resumption (tickets need no server state).
    pub session_cache: usize,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            listen: None,
            certificates: Vec::new(),
            handshake_timeout_ms: 10_000,
            redirect_http: false,
            reload_poll_ms: 1_000,
            session_cache: 4096,
        }
    }
}

impl TlsSettings {
    /// Whether these are the defaults (no HTTPS).
    pub fn is_default(&self) -> bool {
        *self == TlsSettings::default()
    }

    /// Applies the command-line flags: `listen` replaces the file's address; a `cert`/`key`
    /// pair goes first (it becomes the default certificate).
    pub fn with_flags(
        mut self,
        listen: Option<SocketAddr>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, String> {
        if let Some(l) = listen {
            self.listen = Some(l);
        }
        match (cert, key) {
            (Some(c), Some(k)) => self.certificates.insert(
                0,
                CertFiles {
                    cert: c.to_path_buf(),
                    key: k.to_path_buf(),
                },
            ),
            (None, None) => {}
            _ => return Err("--tls-cert and --tls-key go together".into()),
        }
        Ok(self)
    }

    /// Checks what serde cannot: a listener needs a certificate; a redirect needs a listener.
    pub fn check(&self) -> Result<(), String> {
        if self.listen.is_some() && self.certificates.is_empty() {
            return Err(
                "an HTTPS listener needs a certificate (--tls-cert and --tls-key, or [[tls.certificates]])"
                    .into(),
            );
        }
        if self.redirect_http && self.listen.is_none() {
            return Err("redirect_http needs an HTTPS listener (listen)".into());
        }
        if self.handshake_timeout_ms == 0 {
            return Err("handshake_timeout_ms must be positive".into());
        }
        Ok(())
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1))
    }
}

/// Why certificates could not be loaded. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate configured")]
    NoCertificates,
    #[error("[tls]: {0}")]
    Settings(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{cert} and {key} do not go together: {message}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// One loaded certificate: the names it serves and the chain with its key.
#[derive(Debug)]
struct Entry {
    /// DNS names, lowercase (wildcards as `*.example.com`).
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// The certificates in force.
#[derive(Debug)]
struct CertSet {
    entries: Vec<Entry>,
}

impl CertSet {
    fn pick(&self, sni: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let default = self.entries.first().map(|e| &e.key);
        let Some(name) = sni else { return default };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(e) = self.entries.iter().find(|e| e.names.contains(&name)) {
            return Some(&e.key);
        }
        // A wildcard covers exactly one leftmost label.
        if let Some((_, parent)) = name.split_once('.') {
            let wild = format!("*.{parent}");
            if let Some(e) = self.entries.iter().find(|e| e.names.contains(&wild)) {
                return Some(&e.key);
            }
        }
        default
    }
}

/// Chooses the certificate by SNI from the set in force, which [`Tls::reload`] swaps.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertSet>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load().pick(hello.server_name()).cloned()
    }
}

/// Reads one certificate chain and key, checking that they belong together.
fn load_pair(files: &CertFiles, provider: &CryptoProvider) -> Result<Entry, TlsError> {
    let file_err = |path: &Path, message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| file_err(&files.cert, format!("cannot read: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(&files.cert, format!("not a PEM certificate: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err(file_err(&files.cert, "no CERTIFICATE in the file".into()));
    };
    let names = cert_dns_names(leaf);
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| file_err(&files.key, format!("no private key: {e}")))?;
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| TlsError::Pair {
        cert: files.cert.clone(),
        key: files.key.clone(),
        message: e.to_string(),
    })?;
    Ok(Entry {
        names,
        key: Arc::new(key),
    })
}

/// The DNS names of a certificate (DER) for SNI: [`cert_names`], lowercase.
pub fn cert_dns_names(der: &[u8]) -> Vec<String> {
    cert_names(der)
        .into_iter()
        .map(|n| n.to_ascii_lowercase())
        .collect()
}

/// The names a certificate (DER) is issued to, as written: its DNS subject alternative
/// names, or, only when it has none, its subject's common names. Empty when it cannot be
/// parsed, and when it has two SAN extensions (malformed: it names nobody). The peer PKI
/// takes them literally as node names (a wildcard names no node); SNI lowercases them
/// ([`cert_dns_names`]).
pub fn cert_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let dns: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        Err(_) => return Vec::new(),
        Ok(None) => Vec::new(),
    };
    if !dns.is_empty() {
        return dns;
    }
    cert.subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(String::from))
        .collect()
}

/// What identifies a version of a file: modified time, length, inode (a rename over it is a
/// new inode even within the mtime's resolution).
type Fingerprint = Option<(std::time::SystemTime, u64, u64)>;

fn fingerprint(p: &Path) -> Fingerprint {
    let m = std::fs::metadata(p).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

/// A node's TLS: the settings, the resolver and the two server configurations built on it.
pub struct Tls {
    settings: TlsSettings,
    provider: Arc<CryptoProvider>,
    resolver: Arc<CertResolver>,
    tcp: Arc<ServerConfig>,
    h3: Arc<ServerConfig>,
    seen: std::sync::Mutex<Vec<(Fingerprint, Fingerprint)>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads every certificate of `settings` and builds the server configurations.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Tls>, TlsError> {
        let provider = provider();
        let seen = Self::fingerprints(settings);
        let set = Self::read(settings, &provider)?;
        let resolver = Arc::new(CertResolver {
            current: ArcSwap::from_pointee(set),
        });
        let sessions = ServerSessionMemoryCache::new(settings.session_cache.max(1));
        let ticketer = rustls::crypto::ring::Ticketer::new()?;
        let build = |versions: &[&'static rustls::SupportedProtocolVersion],
                     alpn: Vec<Vec<u8>>|
         -> Result<Arc<ServerConfig>, TlsError> {
            let mut c = ServerConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(versions)?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
            c.alpn_protocols = alpn;
            c.session_storage = sessions.clone();
            c.ticketer = ticketer.clone();
            Ok(Arc::new(c))
        };
        let tcp = build(
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            ALPN_TCP.iter().map(|p| p.to_vec()).collect(),
        )?;
        let h3 = build(&[&rustls::version::TLS13], vec![ALPN_H3.to_vec()])?;
        Ok(Arc::new(Tls {
            settings: settings.clone(),
            provider,
            resolver,
            tcp,
            h3,
            seen: std::sync::Mutex::new(seen),
        }))
    }

    fn fingerprints(settings: &TlsSettings) -> Vec<(Fingerprint, Fingerprint)> {
        settings
            .certificates
            .iter()
            .map(|c| (fingerprint(&c.cert), fingerprint(&c.key)))
            .collect()
    }

    fn read(settings: &TlsSettings, provider: &CryptoProvider) -> Result<CertSet, TlsError> {
        if settings.certificates.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let entries = settings
            .certificates
            .iter()
            .map(|c| load_pair(c, provider))
            .collect::<Result<Vec<_>, _>>()?;
        for (c, e) in settings.certificates.iter().zip(&entries) {
            tracing::info!(cert = %c.cert.display(), names = ?e.names, "TLS certificate loaded");
        }
        Ok(CertSet { entries })
    }

    /// The configuration of HTTPS over TCP: TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.tcp.clone()
    }

    /// The configuration of HTTP/3 over QUIC: TLS 1.3, ALPN `h3`, the same certificates
    /// (one resolver: a rotation applies to both).
    pub fn server_config_h3(&self) -> Arc<ServerConfig> {
        self.h3.clone()
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Reads every certificate again and, when all load, puts them in force (connections
    /// already established keep theirs). On error the certificates in force stay.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = Self::fingerprints(&self.settings);
        let set = Self::read(&self.settings, &self.provider)?;
        self.resolver.current.store(Arc::new(set));
        *lock(&self.seen) = seen;
        Ok(())
    }

    /// Whether a file changed since the last load (and has stopped changing: two looks
    /// `settle` apart agree, so a file being written is not read half-way).
    async fn changed(&self, settle: Duration) -> bool {
        let now = Self::fingerprints(&self.settings);
        if *lock(&self.seen) == now {
            return false;
        }
        tokio::time::sleep(settle).await;
        Self::fingerprints(&self.settings) == now
    }

    /// Follows the certificate files: reloads when they change (polled every
    /// `reload_poll_ms`) and on SIGHUP. The task stops when the watcher is dropped.
    pub fn watch(self: &Arc<Self>) -> TlsWatcher {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let tls = Arc::downgrade(self);
        let poll = Duration::from_millis(self.settings.reload_poll_ms.max(10));
        TlsWatcher(tokio::spawn(async move {
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                #[cfg(unix)]
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    () = hangup(&mut hup) => true,
                };
                #[cfg(not(unix))]
                let forced = {
                    tick.tick().await;
                    false
                };
                let Some(tls) = tls.upgrade() else { return };
                if forced || tls.changed(Duration::from_millis(100)).await {
                    match tls.reload() {
                        Ok(()) => tracing::info!(forced, "TLS certificates reloaded"),
                        Err(e) => {
                            // Not again until the files change again.
                            *lock(&tls.seen) = Self::fingerprints(&tls.settings);
                            tracing::error!(error = %e, "TLS certificate reload failed: keeping the certificates in force")
                        }
                    }
                }
            }
        }))
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The next SIGHUP from `s`; never, once the signal stream has ended or when there is none
/// (the file watchers of the TLS certificates and of the edge's config share it).
#[cfg(unix)]
pub async fn hangup(s: &mut Option<tokio::signal::unix::Signal>) {
    match s {
        Some(sig) => {
            if sig.recv().await.is_none() {
                *s = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// The task following the certificate files; stops it when dropped.
pub struct TlsWatcher(tokio::task::JoinHandle<()>);

impl Drop for TlsWatcher {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Middleware for a plain HTTP listener: `308 Permanent Redirect` to the same host and path
/// on the HTTPS port, except `/healthz` and `/metrics`. A request without a usable Host gets
/// `400`.
pub fn redirect_to_https(router: Router, https_port: u16) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| redirect(req, next, https_port),
    ))
}

async fn redirect(req: Request, next: Next, https_port: u16) -> Response {
    let path = req.uri().path();
    if path == "/healthz" || path == "/metrics" {
        return next.run(req).await;
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().host().map(str::to_string));
    let Some(host) = host.as_deref().and_then(host_without_port) else {
        return (StatusCode::BAD_REQUEST, "a Host is required\n").into_response();
    };
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let location = if https_port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{https_port}{pq}")
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => (
            StatusCode::PERMANENT_REDIRECT,
            [(header::LOCATION, v)],
            "use HTTPS\n",
        )
            .into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "bad Host\n").into_response(),
    }
}

/// The host of a Host field value, without its port: `[::1]:80` → `[::1]`, `a.b:80` → `a.b`.
/// `None` when it is not a plausible host.
pub fn host_without_port(h: &str) -> Option<&str> {
    let h = h.trim();
    let host = if let Some(rest) = h.strip_prefix('[') {
        let end = rest.find(']')?;
        &h[..end + 2]
    } else {
        h.split(':').next()?
    };
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b));
    ok.then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_port() {
        assert_eq!(host_without_port("a.example:8080"), Some("a.example"));
        assert_eq!(host_without_port("a.example"), Some("a.example"));
        assert_eq!(host_without_port("[::1]:80"), Some("[::1]"));
        assert_eq!(host_without_port("[::1"), None);
        assert_eq!(host_without_port(""), None);
        assert_eq!(host_without_port("a b"), None);
        assert_eq!(host_without_port("a/b:1"), None);
    }

    #[test]
    fn settings_need_a_certificate_and_pair_the_flags() {
        let s = TlsSettings::default();
        assert!(s.check().is_ok());
        let s = s
            .with_flags(Some("127.0.0.1:0".parse().unwrap()), None, None)
            .unwrap();
        assert!(s.check().unwrap_err().contains("certificate"));
        assert!(
            s.clone()
                .with_flags(None, Some(Path::new("c.pem")), None)
                .is_err()
        );
        let s = s
            .with_flags(None, Some(Path::new("c.pem")), Some(Path::new("k.pem")))
            .unwrap();
        assert!(s.check().is_ok());
        assert_eq!(s.certificates[0].cert, Path::new("c.pem"));
    }

    #[test]
    fn missing_files_are_named() {
        let s = TlsSettings {
            certificates: vec![CertFiles {
                cert: "/nonexistent/c.pem".into(),
                key: "/nonexistent/k.pem".into(),
            }],
            ..Default::default()
        };
        let e = Tls::load(&s).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/c.pem"), "{e}");
        assert!(matches!(
            Tls::load(&TlsSettings::default()),
            Err(TlsError::NoCertificates)
        ));
    }
}
