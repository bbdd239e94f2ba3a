//! Edge cache node: an HTTP caching reverse proxy in front of one origin. Objects are cached
//! in fixed-size chunks (weighted by bytes; S3-FIFO by default, or moka TinyLFU/LRU), ranges
//! are served from chunks, concurrent misses are coalesced into one origin fetch, and RFC 9111
//! is followed as a shared cache.
//!
//! Layers, outermost first (a request goes down, never back up):
//! [`proxy`] (HTTP, with [`passthrough`] for what is not stored) → [`cache`] (RFC 9111
//! decisions, probes, negative entries; its own types, no HTTP response types) → [`store`]
//! (chunks and metadata behind a small API), [`fill`] (chunk fills from [`fill::FillSource`]s:
//! peers, then [`origin`]) and [`origin`]. [`node`] holds the node's shared state and wires
//! the parts from the config; [`peer`] is replication between edges over QUIC (another fill
//! source, hot-object push; its server reaches the node through
//! [`peer::server::ChunkSource`], never the cache). [`freshness`] is the pure RFC 9111
//! arithmetic, [`coalesce`] the one-fill-per-key table, [`growing`] a chunk readable while
//! it is filled, [`budget`] per-client amplification budgets, [`admin`] health, metrics and
//! purge, [`config`] the settings, [`reload`] following the config file at runtime (the
//! peer list is applied on change and on SIGHUP), [`http3`] HTTP/3 to viewers over QUIC
//! (the same router behind another transport).

pub mod admin;
pub mod arena;
pub mod budget;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod fill;
pub mod freshness;
pub mod growing;
pub mod http3;
pub mod metric_names;
pub mod node;
pub mod origin;
pub mod passthrough;
pub mod peer;
pub mod proxy;
pub mod reload;
pub mod s3fifo;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use cdn_http::config::ConfigError;
use cdn_http::metrics::NodeMetrics;
use cdn_http::server::{NodeHandle, ServeOptions, TlsAccept, bind, serve_both, shutdown_signal};

pub use config::{EdgeConfig, Policy};
pub use node::Edge;

/// `cdn edge` arguments; flags override the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Origin base URL, e.g. http://127.0.0.1:8081
    #[arg(long)]
    pub origin: Option<String>,
    /// Node name (Via, Cache-Status, metrics).
    #[arg(long)]
    pub name: Option<String>,
    /// Region of this node.
    #[arg(long)]
    pub region: Option<String>,
    /// Cache memory budget, e.g. 512MiB.
    #[arg(long, value_parser = config::parse_bytes)]
    pub capacity: Option<u64>,
    /// Chunk size, e.g. 1MiB.
    #[arg(long, value_parser = config::parse_bytes)]
    pub chunk_size: Option<u64>,
    /// Eviction policy.
    #[arg(long, value_enum)]
    pub policy: Option<Policy>,
    /// UDP address of the QUIC peer endpoint (peers and certificates come from the config).
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Edge configuration file (TOML). Followed while running: a changed `peers` list is
    /// applied (polled every second, and on SIGHUP); other fields need a restart.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HTTPS listener (TCP; HTTP/3 on the same port over UDP unless --no-http3).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of the HTTPS listener; the default one when the config's
    /// `[tls]` lists more for SNI.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// No HTTP/3 on the HTTPS port.
    #[arg(long)]
    pub no_http3: bool,
    /// A separate listener for purging (PURGE, POST /_admin/purge), /healthz and /metrics;
    /// when set, the viewers' listeners refuse purges with 403.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// CA (PEM) an https:// origin's certificate must chain to, instead of the system roots.
    #[arg(long)]
    pub origin_ca: Option<PathBuf>,
    /// Load and check FILE as `cdn edge --config FILE` would (the other flags applied), print
    /// one line and exit: 0 when it is valid, 1 with the error (file:line:column: field) when
    /// not. Nothing is bound or started; the files it names (peer certificates) are read at
    /// start, not here.
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
}

impl EdgeArgs {
    /// `cdn edge --listen LISTEN` and no other flag (for embedders and tests, with `..` to
    /// set the others).
    pub fn listening_at(listen: SocketAddr) -> Self {
        EdgeArgs {
            listen,
            origin: None,
            name: None,
            region: None,
            capacity: None,
            chunk_size: None,
            policy: None,
            peer_listen: None,
            config: None,
            check_config: None,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            no_http3: false,
            admin_listen: None,
            origin_ca: None,
        }
    }

    /// The configuration: the file (or defaults) with the flags applied.
    pub fn resolve(&self) -> anyhow::Result<EdgeConfig> {
        Ok(self.resolve_file()?.0)
    }

    /// `--check-config FILE`: the configuration `cdn edge --config FILE` would run with (the
    /// same loader, the same errors), summarised in one line; binds nothing.
    pub fn check_config(&self, file: &std::path::Path) -> Result<String, ConfigError> {
        let text = config::read(file)?;
        let c = self.resolve_text(&text, &file.display().to_string())?;
        Ok(format!(
            "{}: OK: edge `{}` in region `{}`, origin {}, capacity {} MiB in {} KiB chunks, {} peers{}{}{}",
            file.display(),
            c.name,
            c.region,
            c.origin,
            c.capacity >> 20,
            c.chunk_size >> 10,
            c.peers.len(),
            match c.peer_listen {
                Some(a) => format!(", peer endpoint {a}"),
                None => String::new(),
            },
            match c.peers_dns.len() {
                0 => String::new(),
                n => format!(", {n} peer names in DNS"),
            },
            match c.admin_listen {
                Some(a) => format!(", admin listener {a}"),
                None => String::new(),
            }
        ))
    }

    /// The configuration and the text of the config file it came from (`None` without one).
    fn resolve_file(&self) -> Result<(EdgeConfig, Option<String>), ConfigError> {
        match &self.config {
            Some(p) => {
                let text = config::read(p)?;
                let cfg = self.resolve_text(&text, &p.display().to_string())?;
                Ok((cfg, Some(text)))
            }
            None => self.apply_flags(EdgeConfig::default()).map(|c| (c, None)),
        }
    }

    /// The configuration from the text of a config file (`file` names it in errors), with the
    /// flags applied: what `cdn edge` runs with, at start and at each reload.
    pub fn resolve_text(&self, text: &str, file: &str) -> Result<EdgeConfig, ConfigError> {
        self.apply_flags(EdgeConfig::parse(text, file)?)
    }

    fn apply_flags(&self, mut cfg: EdgeConfig) -> Result<EdgeConfig, ConfigError> {
        if let Some(v) = &self.origin {
            cfg.origin = v.clone();
        }
        if let Some(v) = &self.name {
            cfg.name = v.clone();
        }
        if let Some(v) = &self.region {
            cfg.region = v.clone();
        }
        if let Some(v) = self.capacity {
            cfg.capacity = v;
        }
        if let Some(v) = self.chunk_size {
            cfg.chunk_size = v;
        }
        if let Some(v) = self.policy {
            cfg.policy = v;
        }
        if let Some(v) = self.peer_listen {
            cfg.peer_listen = Some(v);
        }
        if let Some(v) = &self.origin_ca {
            cfg.origin_ca = Some(v.clone());
        }
        if self.no_http3 {
            cfg.http3_on_https = false;
        }
        if let Some(v) = self.admin_listen {
            cfg.admin_listen = Some(v);
        }
        cfg.tls = cfg
            .tls
            .with_flags(
                self.tls_listen,
                self.tls_cert.as_deref(),
                self.tls_key.as_deref(),
            )
            .map_err(|message| ConfigError::Invalid {
                file: "command line".into(),
                line: 0,
                column: 0,
                field: "tls".into(),
                message,
            })?;
        // Checked with the flags applied: the listener may come from --tls-listen.
        if let Err(message) = cfg.tls.check() {
            return Err(ConfigError::Invalid {
                file: "command line".into(),
                line: 0,
                column: 0,
                field: "tls".into(),
                message,
            });
        }
        cfg.check_complete("command line")
    }
}

/// The paths the edge's router serves itself (health, metrics, purge); every other path
/// is the proxy's.
pub const ADMIN_PATHS: [&str; 3] = ["/healthz", "/metrics", "/_admin/purge"];

/// Builds the edge's router and state.
pub fn app(cfg: EdgeConfig) -> anyhow::Result<(Router, Arc<Edge>)> {
    let edge = Edge::new(cfg, Arc::new(NodeMetrics::new()))?;
    let [healthz, metrics, purge] = ADMIN_PATHS;
    let router = Router::new()
        .route(healthz, get(admin::healthz))
        .route(metrics, get(admin::metrics))
        .route(purge, post(admin::purge_admin))
        .fallback(proxy::handle)
        .with_state(edge.clone());
    Ok((router, edge))
}

/// Starts an edge on `listener` in the background; the [`Edge`] gives tests its store.
pub fn spawn(
    listener: tokio::net::TcpListener,
    cfg: EdgeConfig,
) -> anyhow::Result<(NodeHandle, Arc<Edge>)> {
    let mut opts = cfg.serve_options();
    let (router, edge) = app(cfg)?;
    opts.express = express_lane(&edge, Vec::new());
    Ok((NodeHandle::spawn(listener, router, opts)?, edge))
}

/// The express lane of the plain listener (`proxy::express`), unless configured off;
/// `extra` are the fields the node's response layers add when absent.
fn express_lane(
    edge: &Arc<Edge>,
    extra: Vec<(http::HeaderName, http::HeaderValue)>,
) -> Option<Arc<dyn cdn_http::server::express::Express>> {
    if !edge.cfg.express {
        return None;
    }
    let lane = proxy::express::EdgeExpress::new(edge.clone(), extra)?;
    Some(Arc::new(lane))
}

/// `cdn edge`: serves until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    // Handlers first, so a signal right after the "serving" line still drains.
    let shutdown = shutdown_signal();
    start(&args).await?.serve(shutdown).await
}

/// A `cdn edge` ready to serve: built, listening, and following its config file.
pub struct EdgeNode {
    pub edge: Arc<Edge>,
    /// The HTTP address (the real port when bound to port 0).
    pub addr: SocketAddr,
    /// The HTTPS address, when `[tls]` has a listener.
    pub tls_addr: Option<SocketAddr>,
    /// The certificates (reloaded as their files change): the HTTP/3 endpoint takes
    /// [`cdn_http::tls::Tls::server_config_h3`] from here, sharing their rotation.
    pub tls: Option<Arc<cdn_http::tls::Tls>>,
    /// The `Alt-Svc` value every HTTPS response carries (`h3=":PORT"`), set where HTTP/3 is
    /// started; `None` sends none.
    pub alt_svc: Option<http::HeaderValue>,
    listener: tokio::net::TcpListener,
    tls_listener: Option<tokio::net::TcpListener>,
    /// The admin listener's address (`admin_listen`; the real port when bound to port 0).
    pub admin_addr: Option<SocketAddr>,
    admin_listener: Option<tokio::net::TcpListener>,
    /// The HTTP/3 (UDP) address when HTTP/3 is on (`[http3]`, or the HTTPS port unless
    /// --no-http3; the real port when bound to port 0).
    pub http3_addr: Option<SocketAddr>,
    http3: Option<(quinn::Endpoint, http3::Http3Options)>,
    router: Router,
    opts: ServeOptions,
    watcher: Option<reload::Watcher>,
    tls_watcher: Option<cdn_http::tls::TlsWatcher>,
}

/// The start of `cdn edge` ([`run`] is this, then [`EdgeNode::serve`]): resolves the config
/// from `args`, builds the edge, binds `args.listen` and, with `--config`, starts following
/// the file ([`reload`]). Tests drive it in-process.
pub async fn start(args: &EdgeArgs) -> anyhow::Result<EdgeNode> {
    let (cfg, text) = args.resolve_file()?;
    let opts = cfg.serve_options();
    let mut running = cfg.clone();
    let (router, edge) = app(cfg)?;
    if let Some(p) = &edge.peers {
        let bound = p.local_addr()?;
        tracing::info!(name = %edge.cfg.name, peer_listen = %bound, peers = p.peer_set().len(), "peering");
        // A file that later names the port the OS chose (as the lab writes it) is no change.
        if let Some(l) = running.peer_listen.as_mut()
            && l.port() == 0
        {
            *l = bound;
        }
    }
    let listener = bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // HTTP/3 on the HTTPS port (no `[http3]` table of its own, and not --no-http3).
    let h3_on_https = edge.cfg.http3.is_none() && edge.cfg.http3_on_https;
    let (tls, tls_listener, tls_watcher, mut same_port_h3) = match running.tls.listen {
        Some(at) => {
            let tls = cdn_http::tls::Tls::load(&running.tls)?;
            let (l, h3) = bind_https(at, h3_on_https.then(|| tls.server_config_h3())).await?;
            let w = tls.watch();
            (Some(tls), Some(l), Some(w), h3)
        }
        None => (None, None, None, None),
    };
    let tls_addr = tls_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let admin_listener = match edge.cfg.admin_listen {
        Some(at) => Some(bind(at).await?),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    // HTTP/3: an explicit `[http3]` (its own certificate), else the HTTPS port over UDP with
    // the `[tls]` certificates (their rotation applies to both) unless --no-http3.
    let h3cfg = match (&edge.cfg.http3, same_port_h3.take()) {
        (Some(h), _) => {
            let endpoint = http3::bind(h, http3::tls_from_pem(&h.cert, &h.key)?)?;
            Some((h.clone(), endpoint))
        }
        (None, on_https) => on_https,
    };
    let http3 = match h3cfg {
        Some((h, endpoint)) => {
            let opts = http3::Http3Options {
                quic: h,
                limits: edge.cfg.limits.clone(),
                drain_deadline: opts.drain_deadline,
                metrics: Some(edge.metrics.clone()),
            };
            Some((endpoint, opts))
        }
        None => None,
    };
    let http3_addr = match &http3 {
        Some((e, _)) => Some(e.local_addr()?),
        None => None,
    };
    let alt_svc = match (&http3, http3_addr) {
        (Some((_, o)), Some(at)) => Some(http3::alt_svc(at.port(), o.quic.alt_svc_max_age_secs)),
        _ => None,
    };
    let watcher = match (&args.config, text) {
        (Some(path), Some(text)) => Some(reload::watch(reload::Reloader::new(
            path.clone(),
            args.clone(),
            text,
            running,
            edge.peers.as_ref(),
            edge.metrics.clone(),
        ))),
        _ => None,
    };
    Ok(EdgeNode {
        edge,
        addr,
        tls_addr,
        tls,
        alt_svc,
        listener,
        tls_listener,
        admin_addr,
        admin_listener,
        http3_addr,
        http3,
        router,
        opts,
        watcher,
        tls_watcher,
    })
}

/// The app of the HTTPS listener: the edge's router, with `Alt-Svc` on every response when
/// `alt_svc` is set (HTTP/3 on).
pub fn https_app(router: Router, alt_svc: Option<http::HeaderValue>) -> Router {
    match alt_svc {
        None => router,
        Some(v) => router.layer(axum::middleware::map_response(
            move |mut r: axum::response::Response| {
                let v = v.clone();
                async move {
                    r.headers_mut().insert(http::header::ALT_SVC, v);
                    r
                }
            },
        )),
    }
}

/// `Alt-Svc: h3=":PORT"` on every response, PORT the one the request came to (its `Host`
/// or `:authority`; 443 when it names none): for relays and port mappings that carry TCP and
/// UDP on the same port number (`alt_svc_request_port`).
fn alt_svc_on_request_port(router: Router, max_age_secs: u64) -> Router {
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            let port = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_owned())
                .or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .map(str::to_owned)
                })
                .and_then(|a| a.parse::<http::uri::Authority>().ok())
                .map_or(443, |a| a.port_u16().unwrap_or(443));
            let mut r = next.run(req).await;
            r.headers_mut()
                .entry(http::header::ALT_SVC)
                .or_insert_with(|| http3::alt_svc(port, max_age_secs));
            r
        },
    ))
}

/// The fields of `cors_any_origin`: any page may read the responses and their timings.
fn cors_any_origin(router: Router) -> Router {
    use tower_http::set_header::SetResponseHeaderLayer;
    CORS_ANY_ORIGIN.iter().fold(router, |r, (name, value)| {
        r.layer(SetResponseHeaderLayer::if_not_present(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        ))
    })
}

/// The fields `cors_any_origin` adds to every response that lacks them.
const CORS_ANY_ORIGIN: [(&str, &str); 3] = [
    ("access-control-allow-origin", "*"),
    (
        "access-control-expose-headers",
        "Cache-Status, Age, Content-Range, Content-Length",
    ),
    ("timing-allow-origin", "*"),
];

impl EdgeNode {
    /// Serves until `shutdown` completes, then drains, stops following the config file and
    /// closes the peer endpoint.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let EdgeNode {
            edge,
            addr,
            tls_addr,
            tls,
            alt_svc,
            listener,
            tls_listener,
            admin_addr,
            admin_listener,
            http3_addr,
            http3,
            router,
            opts,
            watcher,
            tls_watcher,
        } = self;
        let admin = match admin_listener {
            Some(l) => Some(NodeHandle::spawn(
                l,
                admin::router(edge.clone()),
                opts.clone(),
            )?),
            None => None,
        };
        let name = edge.cfg.name.clone();
        let tls_listen = tls_addr.map(|a| a.to_string()).unwrap_or_default();
        let h3_listen = http3_addr.map(|a| a.to_string()).unwrap_or_default();
        let admin_listen = admin_addr.map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(%name, listen = %addr, %tls_listen, http3 = %h3_listen, %admin_listen, origin = %edge.cfg.origin, "edge serving");
        let router = if edge.cfg.cors_any_origin {
            cors_any_origin(router)
        } else {
            router
        };
        // While HTTP/3 is on, TCP responses (HTTP and HTTPS) advertise it; with
        // `alt_svc_request_port`, HTTPS responses only, on the port each request came to.
        let by_request = edge.cfg.alt_svc_request_port;
        let (router, https_alt_svc) = match &alt_svc {
            Some(v) if !by_request => (
                router.layer(
                    tower_http::set_header::SetResponseHeaderLayer::if_not_present(
                        http::header::ALT_SVC,
                        v.clone(),
                    ),
                ),
                None,
            ),
            _ => (router, alt_svc.clone()),
        };
        let https = match (tls_listener, &tls) {
            (Some(l), Some(t)) => {
                let app = match https_alt_svc.zip(http3.as_ref()) {
                    Some((_, (_, o))) => {
                        alt_svc_on_request_port(router.clone(), o.quic.alt_svc_max_age_secs)
                    }
                    None => router.clone(),
                };
                Some((l, app, TlsAccept::from_tls(t)))
            }
            _ => None,
        };
        // The plain listener's express lane adds what the layers above add (CORS, Alt-Svc);
        // none while plain HTTP only redirects.
        let mut extra = Vec::new();
        if edge.cfg.cors_any_origin {
            extra.extend(CORS_ANY_ORIGIN.map(|(n, v)| {
                (
                    http::HeaderName::from_static(n),
                    http::HeaderValue::from_static(v),
                )
            }));
        }
        if let Some(v) = alt_svc.as_ref().filter(|_| !by_request) {
            extra.push((http::header::ALT_SVC, v.clone()));
        }
        let mut opts = opts;
        let plain = match (&tls, tls_addr) {
            (Some(t), Some(at)) if t.settings().redirect_http => {
                opts.express = None;
                cdn_http::tls::redirect_to_https(router.clone(), at.port())
            }
            _ => {
                opts.express = express_lane(&edge, extra);
                router.clone()
            }
        };
        let served = match http3 {
            Some((endpoint, h3opts)) => {
                // One shutdown for every transport.
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let tcp_shutdown = async move {
                    shutdown.await;
                    let _ = stop.send(true);
                };
                let mut stopped = stopped;
                let h3_shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                let tcp = serve_both(listener, plain, https, opts, tcp_shutdown);
                let udp = http3::serve(endpoint, router, h3opts, h3_shutdown);
                let (tcp, udp) = tokio::join!(tcp, udp);
                udp?;
                tcp
            }
            None => serve_both(listener, plain, https, opts, shutdown).await,
        };
        if let Some(a) = admin {
            a.stop().await;
        }
        drop(watcher);
        drop(tls_watcher);
        edge.close_peers();
        served?;
        tracing::info!(%name, "edge stopped");
        Ok(())
    }
}

/// Binds the HTTPS listener at `at`, and with `h3` (the certificates for HTTP/3 on the same
/// port) the QUIC endpoint on the same port number over UDP. When the OS chooses the port
/// (`:0`), a TCP port whose UDP twin is already taken is chosen again (a few times), so that
/// nodes started side by side on OS-chosen ports do not fail on each other's UDP sockets.
async fn bind_https(
    at: SocketAddr,
    h3: Option<Arc<rustls::ServerConfig>>,
) -> anyhow::Result<(
    tokio::net::TcpListener,
    Option<(http3::Http3Config, quinn::Endpoint)>,
)> {
    const TRIES: usize = 32;
    for _ in 0..TRIES {
        let l = bind(at).await?;
        let Some(tls) = &h3 else {
            return Ok((l, None));
        };
        let h = http3::Http3Config::on(l.local_addr()?);
        match http3::bind(&h, tls.clone()) {
            Ok(endpoint) => return Ok((l, Some((h, endpoint)))),
            Err(http3::Http3Error::Bind { .. }) if at.port() == 0 => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("{at}: no port free over both TCP and UDP after {TRIES} tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: Option<PathBuf>) -> EdgeArgs {
        EdgeArgs {
            name: Some("flag-name".into()),
            capacity: Some(32 << 20),
            config,
            ..EdgeArgs::listening_at("127.0.0.1:0".parse().expect("addr"))
        }
    }

    #[test]
    fn flags_win_over_the_file_at_start_and_on_reload() {
        let text = "name = \"file-name\"\ncapacity = \"64MiB\"\nhot_threshold = 7\n";
        let c = args(None).resolve_text(text, "e.toml").expect("valid");
        assert_eq!(
            (c.name.as_str(), c.capacity, c.hot_threshold),
            ("flag-name", 32 << 20, 7)
        );
    }

    #[tokio::test]
    async fn a_reload_applies_nothing_but_peers_and_refuses_a_broken_file() {
        let dir = std::env::temp_dir().join(format!("cdn-edge-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("edge.toml");
        let text = "capacity = \"64MiB\"\n".to_string();
        std::fs::write(&path, &text).expect("write");
        let a = args(Some(path.clone()));
        let running = a.resolve().expect("valid");
        let mut r = reload::Reloader::new(
            path.clone(),
            a,
            text,
            running,
            None,
            Arc::new(NodeMetrics::new()),
        );
        assert!(matches!(r.check(false).await, reload::Reload::Unchanged));
        // The capacity flag wins: only the file's hot_threshold is a change (for a restart).
        std::fs::write(&path, "capacity = \"128MiB\"\nhot_threshold = 3\n").expect("write");
        match r.check(false).await {
            reload::Reload::Applied { peers, restart } => {
                assert!(peers.is_empty());
                assert_eq!(restart, ["hot_threshold"]);
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&path, "capacity = \"128MiB\"\nhot_threshold = \"x\"\n").expect("write");
        match r.check(false).await {
            reload::Reload::Invalid(e) => {
                let e = e.to_string();
                assert!(
                    e.contains("edge.toml:2:") && e.contains("hot_threshold"),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
        // The same broken text again is not news; SIGHUP looks again.
        assert!(matches!(r.check(false).await, reload::Reload::Unchanged));
        assert!(matches!(r.check(true).await, reload::Reload::Invalid(_)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
