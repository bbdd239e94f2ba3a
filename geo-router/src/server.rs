//! The router's HTTP face: `GET /{path}` answers `302 Found` to the chosen edge (path and query
//! kept, `Cache-Control: no-store`, `X-CDN-Edge` and `X-CDN-Route-Reason` headers);
//! `GET /_route?ip=IP&path=P[&region=R]` explains a decision as JSON; `/healthz`; `/metrics`.
//! Also the lab's `?client_ip=` / `?region=` overrides, honoured only when the config allows,
//! and, with `[lab] ui_url`, `/` and `/_lab/*` forwarded to the lab's player and dashboard.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, Method, StatusCode, header};
use percent_encoding::percent_decode_str;

use crate::client::{ClientSource, client_ip};
use crate::state::{ClientSpec, RouteDecision, Shared};

/// The header naming the chosen edge (`origin` for the origin fallback).
pub const EDGE_HEADER: &str = "x-cdn-edge";
/// The header with the reason of the choice.
pub const REASON_HEADER: &str = "x-cdn-route-reason";

pub(crate) fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/_route", get(explain))
        .fallback(redirect)
        .with_state(shared)
}

fn peer_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.into(),
    )
        .into_response()
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// An override from the lab's query parameters.
enum Override {
    ClientIp(IpAddr),
    Region(String),
}

/// Splits `client_ip` and `region` out of a raw query; the rest is kept byte for byte.
/// `region` wins when both are given.
fn split_overrides(query: Option<&str>) -> Result<(Option<String>, Option<Override>), String> {
    let Some(query) = query else {
        return Ok((None, None));
    };
    let mut kept = Vec::new();
    let mut client = None;
    let mut region = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let value = || {
            percent_decode_str(&v.replace('+', " "))
                .decode_utf8()
                .map(|s| s.trim().to_owned())
                .map_err(|_| format!("`{k}` is not UTF-8"))
        };
        match k {
            "client_ip" => {
                let v = value()?;
                let ip = v
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<IpAddr>()
                    .map_err(|_| format!("client_ip `{v}` is not an IP address"))?;
                client = Some(ip);
            }
            "region" => region = Some(value()?),
            _ => kept.push(pair),
        }
    }
    let ov = match (region, client) {
        (Some(r), _) => Some(Override::Region(r)),
        (None, Some(ip)) => Some(Override::ClientIp(ip)),
        (None, None) => None,
    };
    Ok((Some(kept.join("&")), ov))
}

/// The request fields forwarded to the lab's UI: the content type, and the fields the lab's
/// cross-site request check reads (`Origin`, `Sec-Fetch-Site`, its own `X-CDN-Lab`).
const UI_FORWARDED_HEADERS: &[&str] = &["content-type", "origin", "sec-fetch-site", "x-cdn-lab"];

/// Largest request body forwarded to the lab's UI.
const UI_MAX_BODY: usize = 64 * 1024;

/// Forwards a request to the lab's web UI (`[lab] ui_url`): method, path, query, the fields of
/// [`UI_FORWARDED_HEADERS`] and a small body; the answer's status, content type, cache control and body come back.
async fn forward_to_ui(shared: &Shared, ui_url: &str, req: Request) -> Response {
    let target = format!(
        "{}{}",
        ui_url.trim_end_matches('/'),
        req.uri().path_and_query().map_or("/", |p| p.as_str())
    );
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, UI_MAX_BODY).await else {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n");
    };
    let mut out = shared.ui_client.request(parts.method, &target).body(body);
    // The content type, and what the lab needs to refuse requests other sites' pages make.
    for name in UI_FORWARDED_HEADERS {
        for v in parts.headers.get_all(*name) {
            out = out.header(*name, v.clone());
        }
    }
    match out.send().await {
        Ok(r) => {
            let status = r.status();
            let headers = r.headers().clone();
            let mut resp = Response::new(Body::from_stream(r.bytes_stream()));
            *resp.status_mut() = status;
            for name in [
                header::CONTENT_TYPE,
                header::CACHE_CONTROL,
                header::LOCATION,
            ] {
                if let Some(v) = headers.get(&name) {
                    resp.headers_mut().insert(name, v.clone());
                }
            }
            resp
        }
        Err(e) => text(
            StatusCode::BAD_GATEWAY,
            format!("the lab UI at {ui_url} does not answer: {e}\n"),
        ),
    }
}

async fn redirect(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let ui_url = shared.snapshot.load().config.lab.ui_url.clone();
    if let Some(ui) = ui_url
        && (req.uri().path() == "/" || req.uri().path().starts_with("/_lab/"))
    {
        return forward_to_ui(&shared, &ui, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let snap = shared.snapshot.load_full();
    let path = req.uri().path();
    let (query, ov) = if snap.config.lab.allow_client_override {
        match split_overrides(req.uri().query()) {
            Ok(x) => x,
            Err(msg) => return text(StatusCode::BAD_REQUEST, format!("{msg}\n")),
        }
    } else {
        (req.uri().query().map(str::to_owned), None)
    };
    let spec = match ov {
        Some(Override::Region(r)) => ClientSpec::Region(r),
        Some(Override::ClientIp(ip)) => ClientSpec::Ip(ip, ClientSource::LabClientIp),
        None => {
            let (ip, source) =
                client_ip(peer_ip(&req), req.headers(), &snap.config.trusted_proxies);
            ClientSpec::Ip(ip, source)
        }
    };
    let decision = match snap.decide(spec, path) {
        Ok(d) => d,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let https = req.extensions().get::<cdn_http::server::ViaTls>().is_some();
    let location = decision.location_for(path, query.as_deref(), https);
    record(&shared, &decision);
    tracing::debug!(
        client = ?decision.client.ip,
        source = ?decision.client.source,
        path,
        edge = decision.edge.as_deref().unwrap_or("origin"),
        reason = %decision.reason,
        distance_km = ?decision.distance_km,
        "routed"
    );
    let Ok(location) = HeaderValue::from_str(&location) else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "bad redirect target\n");
    };
    let edge = decision.edge.as_deref().unwrap_or("origin");
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_str(edge) {
        h.insert(EDGE_HEADER, v);
    }
    h.insert(
        REASON_HEADER,
        HeaderValue::from_static(decision.reason.as_str()),
    );
    resp
}

fn record(shared: &Shared, d: &RouteDecision) {
    let edge = d.edge.clone().unwrap_or_else(|| "origin".to_owned());
    let reason = d.reason.as_str();
    let looked_up = d.client.ip.is_some();
    let hit = d.lookup.is_some();
    let miss = d.geo_miss;
    shared.metrics.with(|| {
        metrics::counter!(crate::metric_names::ROUTES_TOTAL, "edge" => edge, "reason" => reason)
            .increment(1);
        if looked_up {
            let result = if hit { "hit" } else { "miss" };
            metrics::counter!(crate::metric_names::GEO_LOOKUPS_TOTAL, "result" => result)
                .increment(1);
        }
        if miss {
            metrics::counter!(crate::metric_names::GEO_MISSES_TOTAL).increment(1);
        }
    });
}

async fn explain(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let snap = shared.snapshot.load_full();
    let mut path = params
        .get("path")
        .cloned()
        .unwrap_or_else(|| "/".to_owned());
    if !path.starts_with('/') {
        path.insert(0, '/');
    }
    let spec = if let Some(region) = params.get("region") {
        ClientSpec::Region(region.clone())
    } else if let Some(ip) = params.get("ip") {
        match ip.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
            Ok(ip) => ClientSpec::Ip(ip.to_canonical(), ClientSource::Query),
            Err(_) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("ip `{ip}` is not an IP address\n"),
                );
            }
        }
    } else {
        let (ip, source) = client_ip(peer_ip(&req), req.headers(), &snap.config.trusted_proxies);
        ClientSpec::Ip(ip, source)
    };
    match snap.decide(spec, &path) {
        Ok(d) => {
            let mut v = serde_json::to_value(&d).unwrap_or_default();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("url".into(), d.location(&d.path, None).into());
            }
            json(StatusCode::OK, &v)
        }
        Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    }
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Response {
    let snap = shared.snapshot.load_full();
    let edges = snap.edge_statuses();
    let up = snap.edges.iter().filter(|e| e.health.is_up()).count();
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "edges_up": up,
            "edges_total": edges.len(),
            "geo_db": snap.geo.path().display().to_string(),
            "geo_database_type": snap.geo.database_type(),
            "edges": edges,
        }),
    )
}

pub(crate) fn render_metrics(shared: &Shared) -> String {
    let snap = shared.snapshot.load_full();
    let up = snap.edges.iter().filter(|e| e.health.is_up()).count();
    shared.metrics.with(|| {
        metrics::gauge!(crate::metric_names::EDGES_UP).set(up as f64);
        metrics::gauge!(crate::metric_names::EDGES_TOTAL).set(snap.edges.len() as f64);
    });
    shared.metrics.render()
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; version=0.0.4"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        render_metrics(&shared),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_split_out_of_the_query() {
        let (q, ov) = split_overrides(Some("a=1&client_ip=81.2.69.142&b=x%20y")).expect("ok");
        assert_eq!(q.as_deref(), Some("a=1&b=x%20y"));
        assert!(matches!(ov, Some(Override::ClientIp(ip)) if ip.to_string() == "81.2.69.142"));
        let (q, ov) = split_overrides(Some("region=asia")).expect("ok");
        assert_eq!(q.as_deref(), Some(""));
        assert!(matches!(ov, Some(Override::Region(r)) if r == "asia"));
        let (_, ov) = split_overrides(Some("client_ip=2001%3A218%3A%3A1")).expect("ok");
        assert!(matches!(ov, Some(Override::ClientIp(ip)) if ip.to_string() == "2001:218::1"));
        assert!(split_overrides(Some("client_ip=nope")).is_err());
        let (q, ov) = split_overrides(Some("x&y=")).expect("ok");
        assert_eq!(q.as_deref(), Some("x&y="));
        assert!(ov.is_none());
    }
}
