//! Operations endpoints: `/healthz` (with a load figure for the router), `/metrics`, and
//! purging (`PURGE /path`, `POST /_admin/purge`), which needs the configured bearer token.
//! With `admin_listen` set, purging is served on that listener only ([`router`], whose
//! requests carry [`ViaAdmin`]); the viewers' listeners answer 403 to it, so a network
//! policy on the admin port decides who may purge.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;

use crate::node::Edge;

/// `GET /healthz`: 200 with the node's name, region and load (in-flight requests over the
/// configured overload level; the router steers away from ≥ 0.9).
/// While the node is joining its region (peers from DNS not all admitting it yet,
/// `peer::membership`): 503 with status `joining`, so that it is not routed to before it can
/// warm from its siblings.
pub async fn healthz(State(edge): State<Arc<Edge>>) -> Response {
    let inflight = edge.inflight.load(Ordering::Relaxed);
    let load = inflight as f64 / edge.cfg.overload_inflight.max(1) as f64;
    if edge.peers.as_ref().is_some_and(|p| p.joining()) {
        let body = serde_json::json!({
            "status": "joining",
            "name": edge.cfg.name,
            "region": edge.cfg.region,
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    Json(serde_json::json!({
        "status": "ok",
        "name": edge.cfg.name,
        "region": edge.cfg.region,
        "inflight": inflight,
        "load": load,
    }))
    .into_response()
}

/// `GET /metrics`: Prometheus text; refreshes the cache and peer-table size gauges first.
pub async fn metrics(State(edge): State<Arc<Edge>>) -> Response {
    let bytes = edge.store().weighted_size().await;
    let objects = edge.store().object_count();
    let half_life = edge.store().rate_half_life();
    let peer_tables = edge.peers.as_ref().map(|p| p.table_sizes());
    edge.metrics.with(|| {
        for t in peer_tables.iter().flatten() {
            metrics::gauge!("cdn_edge_peer_table_bytes", "table" => t.table).set(t.bytes as f64);
            metrics::gauge!("cdn_edge_peer_table_entries", "table" => t.table)
                .set(t.entries as f64);
        }
        metrics::gauge!("cdn_edge_cache_bytes").set(bytes as f64);
        metrics::gauge!("cdn_edge_cache_capacity_bytes").set(edge.store().capacity() as f64);
        metrics::gauge!("cdn_edge_cache_objects").set(objects as f64);
        if let Some(half) = half_life {
            metrics::gauge!(crate::metric_names::CACHE_RATE_HALF_LIFE_REQUESTS).set(half);
        }
        metrics::gauge!(crate::metric_names::ARENA_BYTES).set(edge.store().arena_bytes() as f64);
        metrics::gauge!("cdn_edge_inflight_requests")
            .set(edge.inflight.load(Ordering::Relaxed) as f64);
        // Log lines the buffered writer dropped because its output was behind (only when
        // the process logs through it: the `cdn` binary).
        if let Some(log) = cdn_http::access::sink() {
            metrics::counter!(crate::metric_names::LOG_LINES_DROPPED_TOTAL).absolute(log.dropped());
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        edge.metrics.render(),
    )
        .into_response()
}

/// Marks a request that came in on the admin listener.
#[derive(Debug, Clone, Copy)]
pub struct ViaAdmin;

/// The admin listener's app: health, metrics and purging; everything else is 404.
pub fn router(edge: Arc<Edge>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", axum::routing::get(healthz))
        .route("/metrics", axum::routing::get(metrics))
        .route("/_admin/purge", axum::routing::post(purge_admin))
        .fallback(admin_fallback)
        .layer(axum::Extension(ViaAdmin))
        .with_state(edge)
}

async fn admin_fallback(State(edge): State<Arc<Edge>>, req: axum::extract::Request) -> Response {
    if req.method().as_str() == "PURGE" {
        let (parts, _) = req.into_parts();
        return purge_method(&edge, &parts).await;
    }
    (
        StatusCode::NOT_FOUND,
        "the admin listener serves /healthz, /metrics, PURGE and POST /_admin/purge\n",
    )
        .into_response()
}

/// 403 when this edge has an admin listener and the request did not come in on it.
fn not_here(edge: &Edge, extensions: &http::Extensions) -> Option<Response> {
    let admin = edge.cfg.admin_listen?;
    if extensions.get::<ViaAdmin>().is_some() {
        return None;
    }
    edge.metrics
        .with(|| metrics::counter!(crate::metric_names::ADMIN_REFUSED_TOTAL).increment(1));
    Some(
        (
            StatusCode::FORBIDDEN,
            format!(
                "purging is served on this edge's admin listener only (port {})\n",
                admin.port()
            ),
        )
            .into_response(),
    )
}

fn authorized(edge: &Edge, headers: &HeaderMap) -> bool {
    let Some(token) = edge.cfg.purge_token.as_deref().filter(|t| !t.is_empty()) else {
        return false;
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Constant-time comparison: the token must not leak through timing.
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "purge needs the admin bearer token\n",
    )
        .into_response()
}

async fn purge(edge: &Edge, path: &str, prefix: bool) -> Response {
    if !path.starts_with('/') {
        return (StatusCode::BAD_REQUEST, "path must start with /\n").into_response();
    }
    let key = edge.cache.path_key(path);
    match edge.cache.invalidate(&key, prefix).await {
        Ok(()) => {
            edge.metrics
                .with(|| metrics::counter!("cdn_edge_purges_total").increment(1));
            tracing::info!(path, prefix, "purged");
            Json(serde_json::json!({"purged": path, "prefix": prefix})).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `PURGE /path` (exact URL, query included).
pub async fn purge_method(edge: &Arc<Edge>, req: &http::request::Parts) -> Response {
    if let Some(refused) = not_here(edge, &req.extensions) {
        return refused;
    }
    if !authorized(edge, &req.headers) {
        return unauthorized();
    }
    let pq = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    purge(edge, pq, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeRequest {
    /// An exact path (with query) or, with `prefix: true`, a path prefix.
    pub path: String,
    #[serde(default)]
    pub prefix: bool,
}

/// `POST /_admin/purge` with `{"path": "/videos/", "prefix": true}`.
pub async fn purge_admin(
    State(edge): State<Arc<Edge>>,
    via: Option<axum::Extension<ViaAdmin>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if via.is_none()
        && let Some(refused) = not_here(&edge, &http::Extensions::new())
    {
        return refused;
    }
    if !authorized(&edge, &headers) {
        return unauthorized();
    }
    match serde_json::from_slice::<PurgeRequest>(&body) {
        Ok(p) => purge(&edge, &p.path, p.prefix).await,
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad purge request: {e}\n")).into_response(),
    }
}
