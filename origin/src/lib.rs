//! Origin server: serves files under a root directory (MP4, WebM, HLS, ...) and deterministic
//! synthetic objects, with byte ranges, strong validators, Content-Digest and Cache-Control
//! per path pattern. Edges fetch from it; its metrics measure what the edges save.
//!
//! Modules: [`config`] (the TOML file), [`files`] (safe path resolution, validators and the
//! background content digest, disk streams), [`synthetic`] (generated objects). The RFC 9110 logic (ranges, preconditions)
//! is `cdn_http::respond`, shared with the edge.

pub mod config;
pub mod files;
pub mod metric_names;
pub mod synthetic;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use serde::Deserialize;

use cdn_http::conditional::Validators;
use cdn_http::digest;
use cdn_http::metrics::NodeMetrics;
use cdn_http::server::{NodeHandle, TlsAccept, bind, serve_both, shutdown_signal};
use cdn_http::{Representation, respond};

pub use config::OriginConfig;

/// `cdn origin` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct OriginArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Directory whose files are served.
    #[arg(long, default_value = "testdata/media")]
    pub root: PathBuf,
    /// Origin configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// HTTPS listener (TCP).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of the HTTPS listener (the default one when `[tls]` lists
    /// more for SNI).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Load and check FILE as `cdn origin --config FILE` would, print one line and exit: 0
    /// when it is valid, 1 with the error (file:line:column: field) when not. Nothing is
    /// bound or started (the `--root` directory is opened at start, not here).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
}

impl OriginArgs {
    /// `--check-config FILE`: the configuration `cdn origin --config FILE` would run with
    /// (the same loader, the same errors), summarised in one line; binds nothing.
    pub fn check_config(
        &self,
        file: &std::path::Path,
    ) -> Result<String, cdn_http::config::ConfigError> {
        let c = OriginConfig::load(file)?;
        Ok(format!(
            "{}: OK: origin, {} cache-control rules, synthetic objects up to {} MiB, max {} connections",
            file.display(),
            c.cache_control.len(),
            c.synthetic_max_bytes >> 20,
            c.limits.max_connections,
        ))
    }
}

/// Shared state of one origin instance.
struct Origin {
    root: PathBuf,
    rules: config::CacheRules,
    serve_dotfiles: bool,
    synthetic_max: u64,
    metas: files::MetaCache,
    synthetic_digests: moka::future::Cache<(String, u64), [u8; 32]>,
    metrics: NodeMetrics,
}

/// Builds the origin's router. `root` must exist.
pub fn app(root: PathBuf, cfg: &OriginConfig) -> std::io::Result<Router> {
    let root = std::fs::canonicalize(&root)
        .map_err(|e| std::io::Error::new(e.kind(), format!("root {}: {e}", root.display())))?;
    let state = Arc::new(Origin {
        root,
        rules: cfg.rules(),
        serve_dotfiles: cfg.serve_dotfiles,
        synthetic_max: cfg.synthetic_max_bytes,
        metas: files::MetaCache::default(),
        synthetic_digests: moka::future::Cache::new(1024),
        metrics: NodeMetrics::new(),
    });
    let timeout = Duration::from_secs(cfg.request_timeout_secs.max(1));
    let counted = Router::new()
        .route("/synthetic/{id}", get(synthetic_object))
        .fallback(file)
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ));
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .merge(counted)
        .with_state(state))
}

/// Starts an origin serving HTTPS on `listener` in the background.
pub fn spawn_tls(
    listener: tokio::net::TcpListener,
    root: PathBuf,
    cfg: &OriginConfig,
    tls: TlsAccept,
) -> std::io::Result<NodeHandle> {
    NodeHandle::spawn_tls(listener, app(root, cfg)?, cfg.serve_options(), tls)
}

/// Starts an origin on `listener` in the background.
pub fn spawn(
    listener: tokio::net::TcpListener,
    root: PathBuf,
    cfg: &OriginConfig,
) -> std::io::Result<NodeHandle> {
    NodeHandle::spawn(listener, app(root, cfg)?, cfg.serve_options())
}

/// `cdn origin`: serves until SIGTERM or Ctrl-C.
pub async fn run(args: OriginArgs) -> anyhow::Result<()> {
    // Handlers first, so a signal right after the "serving" line still drains.
    let shutdown = shutdown_signal();
    let mut cfg = match &args.config {
        Some(p) => OriginConfig::load(p)?,
        None => OriginConfig::default(),
    };
    cfg.tls = cfg
        .tls
        .with_flags(
            args.tls_listen,
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
    cfg.tls.check().map_err(anyhow::Error::msg)?;
    let app = app(args.root.clone(), &cfg)?;
    let listener = bind(args.listen).await?;
    let (https, _watcher) = match cfg.tls.listen {
        Some(at) => {
            let tls = cdn_http::tls::Tls::load(&cfg.tls)?;
            let l = bind(at).await?;
            let w = tls.watch();
            (Some((l, app.clone(), TlsAccept::from_tls(&tls))), Some(w))
        }
        None => (None, None),
    };
    let tls_listen = match &https {
        Some((l, _, _)) => l.local_addr()?.to_string(),
        None => String::new(),
    };
    let plain = match &https {
        Some((l, _, _)) if cfg.tls.redirect_http => {
            cdn_http::tls::redirect_to_https(app, l.local_addr()?.port())
        }
        _ => app,
    };
    tracing::info!(listen = %listener.local_addr()?, %tls_listen, root = %args.root.display(), "origin serving");
    serve_both(listener, plain, https, cfg.serve_options(), shutdown).await?;
    tracing::info!("origin stopped");
    Ok(())
}

async fn metrics(State(o): State<Arc<Origin>>) -> impl IntoResponse {
    let stats = o.metas.stats();
    o.metrics.with(|| {
        use std::sync::atomic::Ordering::Relaxed;
        metrics::counter!(crate::metric_names::DIGESTS_STARTED_TOTAL)
            .absolute(stats.started.load(Relaxed));
        metrics::counter!(crate::metric_names::DIGESTS_COMPLETED_TOTAL)
            .absolute(stats.completed.load(Relaxed));
        metrics::counter!(crate::metric_names::DIGESTS_FAILED_TOTAL)
            .absolute(stats.failed.load(Relaxed));
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        o.metrics.render(),
    )
}

/// Counts requests by status and body bytes as they are sent; logs one line per request.
async fn count(State(o): State<Arc<Origin>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let range = req.headers().get(header::RANGE).cloned();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    let bytes = o.metrics.with(|| {
        metrics::counter!(crate::metric_names::REQUESTS_TOTAL, "status" => status).increment(1);
        metrics::histogram!(crate::metric_names::RESPONSE_HEAD_SECONDS)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(crate::metric_names::BYTES_SENT_TOTAL)
    });
    tracing::info!(
        target: "cdn_origin::access",
        %method, %path, range = ?range, status = resp.status().as_u16(),
        head_ms = started.elapsed().as_millis() as u64,
    );
    let (parts, body) = resp.into_parts();
    let body = body.map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            bytes.increment(data.len() as u64);
        }
        frame
    });
    Response::from_parts(parts, Body::new(body))
}

fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, HEAD")],
        "method not allowed\n",
    )
        .into_response()
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn file(
    State(o): State<Arc<Origin>>,
    method: Method,
    headers: HeaderMap,
    uri: http::Uri,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    let Some(path) = files::resolve(&o.root, uri.path(), o.serve_dotfiles).await else {
        return not_found();
    };
    let version = match o.metas.get(&path).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read file");
            return not_found();
        }
    };
    // Content-Digest goes only on a full 200: a request for the whole file starts its
    // computation (once per version, in the background) and is answered without waiting.
    let full =
        cdn_http::range::evaluate(&headers, version.len) == cdn_http::range::RangeRequest::Full;
    let digest = if full {
        let d = o.metas.digest_or_start(&version);
        if d.is_none() {
            o.metrics.with(|| {
                metrics::counter!(crate::metric_names::RESPONSES_BEFORE_DIGEST_TOTAL).increment(1)
            });
        }
        d
    } else {
        version.digest()
    };
    let mut rep_headers = HeaderMap::new();
    rep_headers.insert(header::CACHE_CONTROL, o.rules.for_path(uri.path()));
    let rep = Representation {
        len: version.len,
        content_type: HeaderValue::from_static(cdn_http::mime::content_type_for(uri.path())),
        validators: Validators {
            etag: Some(version.etag.clone()),
            last_modified: Some(version.modified),
        },
        headers: rep_headers,
        full_headers: digest.as_ref().map(digest_header).unwrap_or_default(),
    };
    respond(&method, &headers, &rep, move |r| {
        files::range_stream(version.clone(), r)
    })
}

fn digest_header(sha256: &[u8; 32]) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&digest::content_digest_value(sha256)) {
        h.insert("content-digest", v);
    }
    h
}

#[derive(Deserialize)]
struct SyntheticQuery {
    size: Option<String>,
}

async fn synthetic_object(
    State(o): State<Arc<Origin>>,
    Path(id): Path<String>,
    Query(query): Query<SyntheticQuery>,
    method: Method,
    headers: HeaderMap,
    uri: http::Uri,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed();
    }
    if !synthetic::valid_id(&id) {
        return (
            StatusCode::BAD_REQUEST,
            "id must be 1-128 of [A-Za-z0-9._-]\n",
        )
            .into_response();
    }
    let size = match query.size.map(|s| s.parse::<u64>()) {
        Some(Ok(size)) if size <= o.synthetic_max => size,
        Some(Ok(_)) => {
            let msg = format!("size is capped at {} bytes\n", o.synthetic_max);
            return (StatusCode::BAD_REQUEST, msg).into_response();
        }
        _ => {
            return (StatusCode::BAD_REQUEST, "size=BYTES is required\n").into_response();
        }
    };
    let seed = synthetic::seed(&id);
    let mut rep_headers = HeaderMap::new();
    rep_headers.insert(header::CACHE_CONTROL, o.rules.for_path(uri.path()));
    let mut rep = Representation {
        len: size,
        content_type: HeaderValue::from_static("application/octet-stream"),
        validators: Validators {
            etag: Some(synthetic::etag(&id, size)),
            last_modified: Some(synthetic::last_modified()),
        },
        headers: rep_headers,
        full_headers: HeaderMap::new(),
    };
    // Content-Digest only matters on a full 200; compute it (once per object) only then.
    let full_get = method == Method::GET
        && cdn_http::range::evaluate(&headers, size) == cdn_http::range::RangeRequest::Full;
    if full_get {
        let sha = o
            .synthetic_digests
            .get_with((id.clone(), size), async move {
                tokio::task::spawn_blocking(move || synthetic::digest(seed, size))
                    .await
                    .unwrap_or([0; 32])
            })
            .await;
        rep.full_headers = digest_header(&sha);
    }
    respond(&method, &headers, &rep, move |r| {
        synthetic::range_stream(seed, r)
    })
}
