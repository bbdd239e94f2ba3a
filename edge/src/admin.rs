//! Operations endpoints: `/healthz` (with a load figure for the router), `/metrics`, and
//! purging (`PURGE /path`, `POST /_admin/purge`), which needs the configured bearer token.

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
pub async fn healthz(State(edge): State<Arc<Edge>>) -> Response {
    let inflight = edge.inflight.load(Ordering::Relaxed);
    let load = inflight as f64 / edge.cfg.overload_inflight.max(1) as f64;
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
        metrics::gauge!("cdn_edge_inflight_requests")
            .set(edge.inflight.load(Ordering::Relaxed) as f64);
    });
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        edge.metrics.render(),
    )
        .into_response()
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
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if !authorized(&edge, &headers) {
        return unauthorized();
    }
    match serde_json::from_slice::<PurgeRequest>(&body) {
        Ok(p) => purge(&edge, &p.path, p.prefix).await,
        Err(e) => (StatusCode::BAD_REQUEST, format!("bad purge request: {e}\n")).into_response(),
    }
}
