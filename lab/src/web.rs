//! The lab's web UI and API, served by the `cdn lab` process (the router forwards `/` and
//! `/_lab/` to it): the player page and its assets (embedded in the binary), the live state
//! the dashboard draws (nodes, per-edge series from the nodes' metrics polled every second,
//! the exchanges seen on viewers' links, viewers' reports), and stopping and starting edges;
//! and the guard that keeps pages of other sites from driving that API (cross-site request
//! forgery): every request but GET and HEAD must come from the lab's own origins.
//!
//! API: `GET /_lab/api/status`, `POST /_lab/api/edges/{name}/stop|start`,
//! `POST /_lab/api/viewers` (a player's report: time to first frame, stalls).
//!
//! A POST (any method but GET/HEAD) is refused with `403` unless (1) its `Origin`, when sent,
//! is the router's (over HTTP or HTTPS) or the lab API's own (`http://127.0.0.1:PORT`, or
//! `localhost` / `[::1]` with the same port when they listen on loopback); without `Origin`, `Sec-Fetch-Site` must not be
//! `cross-site` or `same-site`; and (2) it carries `Content-Type: application/json` or an
//! `X-CDN-Lab` header, which a page can only send cross-origin after a CORS preflight this API
//! never grants. The dashboard sends both; so must scripts (`curl -H 'X-CDN-Lab: 1' -X POST`).

use crate::scrape::{Metrics, Scraper};
use cdn_edge::metric_names as names;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::{Control, Lab, NodeKind};

/// The renditions the player offers: (id, label, path, MIME type).
pub const RENDITIONS: &[(&str, &str, &str, &str)] = &[
    (
        "hls",
        "HLS (fMP4, H.264/AAC)",
        "/media/demo/index.m3u8",
        "application/vnd.apple.mpegurl",
    ),
    ("mp4", "MP4 (H.264/AAC)", "/media/demo.mp4", "video/mp4"),
    ("webm", "WebM (VP9/Opus)", "/media/demo.webm", "video/webm"),
];

/// Seconds of history kept for the charts.
const HISTORY_SECS: usize = 300;
/// Trailing window of the hit ratio, seconds.
const HIT_WINDOW: usize = 10;
/// Viewer reports kept.
const VIEWERS_KEPT: usize = 30;

const PLAYER_HTML: &str = include_str!("../../web/player.html");
const LAB_JS: &str = include_str!("../../web/lab.js");
const LAB_CSS: &str = include_str!("../../web/lab.css");
const HLS_JS: &str = include_str!("../../web/vendor/hls.light.min.js");
const HLS_LICENSE: &str = include_str!("../../web/vendor/hls.js-LICENSE.txt");

/// One poll of an edge's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct EdgeSample {
    pub hit: f64,
    pub miss: f64,
    pub stale: f64,
    pub pass: f64,
    pub served: f64,
    pub origin: f64,
    pub peer_in: f64,
    /// Chunk bytes from the upper tier (`cdn_edge_tier_bytes_total`; part of `peer_in`).
    pub tier_in: f64,
    pub up: bool,
}

/// Polled counters, one entry per second.
#[derive(Debug, Default)]
pub struct History {
    /// Seconds since the lab started, per poll.
    pub t: VecDeque<f64>,
    pub edges: HashMap<String, VecDeque<EdgeSample>>,
    /// The origin's body bytes sent.
    pub origin_bytes: VecDeque<f64>,
    /// The router's view of each edge (`up`, `down`, ...).
    pub router_view: HashMap<String, String>,
}

#[derive(Serialize, Default)]
struct EdgeSeries {
    req_s: Vec<Option<f64>>,
    hit_ratio: Vec<Option<f64>>,
    origin_mbps: Vec<Option<f64>>,
    peer_mbps: Vec<Option<f64>>,
    tier_mbps: Vec<Option<f64>>,
    served_mbps: Vec<Option<f64>>,
}

fn rate(a: f64, b: f64, dt: f64) -> Option<f64> {
    (dt > 0.0 && b >= a).then(|| (b - a) / dt)
}

impl History {
    fn push(&mut self, t: f64, edges: Vec<(String, EdgeSample)>, origin: Option<f64>) {
        if self.t.len() >= HISTORY_SECS {
            self.t.pop_front();
            self.origin_bytes.pop_front();
            for v in self.edges.values_mut() {
                v.pop_front();
            }
        }
        let last_origin = self.origin_bytes.back().copied().unwrap_or(0.0);
        self.t.push_back(t);
        self.origin_bytes.push_back(origin.unwrap_or(last_origin));
        let n = self.t.len();
        for (name, s) in edges {
            let v = self.edges.entry(name).or_default();
            // A new edge gets a flat history: no fake spike.
            while v.len() + 1 < n {
                v.push_front(s);
            }
            // A stopped edge keeps its last counters (down); a restarted one starts over.
            v.push_back(s);
        }
    }

    /// Per-second series for the charts.
    fn series(&self) -> serde_json::Value {
        let n = self.t.len();
        let mut edges = serde_json::Map::new();
        for (name, v) in &self.edges {
            let mut s = EdgeSeries::default();
            for i in 1..n.min(v.len()) {
                let dt = self.t[i] - self.t[i - 1];
                let (a, b) = (&v[i - 1], &v[i]);
                let total = |x: &EdgeSample| x.hit + x.miss + x.stale + x.pass;
                if !b.up {
                    s.req_s.push(None);
                    s.hit_ratio.push(None);
                    s.origin_mbps.push(None);
                    s.peer_mbps.push(None);
                    s.tier_mbps.push(None);
                    s.served_mbps.push(None);
                    continue;
                }
                s.req_s.push(rate(total(a), total(b), dt));
                let w = &v[i.saturating_sub(HIT_WINDOW)];
                let looked = (b.hit + b.miss + b.stale) - (w.hit + w.miss + w.stale);
                s.hit_ratio
                    .push((looked > 0.0 && b.hit >= w.hit).then(|| (b.hit - w.hit) / looked));
                let mbps = |x: Option<f64>| x.map(|r| r * 8.0 / 1e6);
                s.origin_mbps.push(mbps(rate(a.origin, b.origin, dt)));
                s.peer_mbps.push(mbps(rate(a.peer_in, b.peer_in, dt)));
                s.tier_mbps.push(mbps(rate(a.tier_in, b.tier_in, dt)));
                s.served_mbps.push(mbps(rate(a.served, b.served, dt)));
            }
            edges.insert(name.clone(), serde_json::to_value(s).unwrap_or_default());
        }
        let origin: Vec<Option<f64>> = (1..n)
            .map(|i| {
                rate(
                    self.origin_bytes[i - 1],
                    self.origin_bytes[i],
                    self.t[i] - self.t[i - 1],
                )
                .map(|r| r * 8.0 / 1e6)
            })
            .collect();
        serde_json::json!({
            "t": self.t.iter().skip(1).collect::<Vec<_>>(),
            "edges": edges,
            "origin_mbps": origin,
        })
    }
}

fn parse_edge(m: &Metrics) -> EdgeSample {
    let req = |c: &str| m.sum_where(names::REQUESTS_TOTAL, "cache", c);
    EdgeSample {
        hit: req("hit"),
        miss: req("miss"),
        stale: req("stale"),
        pass: req("pass"),
        served: m.sum(names::BYTES_SERVED_TOTAL),
        origin: m.sum(names::ORIGIN_BYTES_TOTAL),
        peer_in: m.sum_where(names::PEER_BYTES_TOTAL, "direction", "in"),
        tier_in: m.sum(names::TIER_BYTES_TOTAL),
        up: true,
    }
}

/// Polls every node's metrics and the router's health view once a second.
pub async fn poll_metrics(lab: Arc<Lab>) {
    let scrape = Scraper::new(Duration::from_millis(800));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let nodes = lab.nodes.lock().map(|n| n.clone()).unwrap_or_default();
        let t = lab.started.elapsed().as_secs_f64();
        let edge_polls = nodes.iter().filter(|n| n.kind == NodeKind::Edge).map(|n| {
            let (name, url, running) = (n.name.clone(), n.url.clone(), n.running);
            let scrape = &scrape;
            async move {
                let m = if running {
                    scrape.metrics(&url).await.ok()
                } else {
                    None
                };
                (name, m)
            }
        });
        let origin_url = nodes
            .iter()
            .find(|n| n.kind == NodeKind::Origin)
            .map(|n| n.url.clone());
        let router_url = nodes
            .iter()
            .find(|n| n.kind == NodeKind::Router)
            .map(|n| n.url.clone());
        let (edges, origin, router) = tokio::join!(
            futures::future::join_all(edge_polls),
            async {
                match origin_url {
                    Some(u) => scrape.metrics(&u).await.ok(),
                    None => None,
                }
            },
            async {
                match router_url {
                    Some(u) => scrape.text(&format!("{u}/healthz")).await.ok(),
                    None => None,
                }
            }
        );
        let Ok(mut h) = lab.history.lock() else {
            return;
        };
        let samples = edges
            .into_iter()
            .map(|(name, m)| {
                let s = match m {
                    Some(m) => parse_edge(&m),
                    None => {
                        let mut last = h
                            .edges
                            .get(&name)
                            .and_then(|v| v.back().copied())
                            .unwrap_or_default();
                        last.up = false;
                        last
                    }
                };
                (name, s)
            })
            .collect();
        let origin_bytes = origin.map(|m| m.sum(cdn_origin::metric_names::BYTES_SENT_TOTAL));
        h.push(t, samples, origin_bytes);
        if let Some(v) = router.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
            h.router_view = v["edges"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|e| {
                            Some((
                                e["name"].as_str()?.to_owned(),
                                e["state"].as_str().unwrap_or("?").to_owned(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn json(status: StatusCode, v: serde_json::Value) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], axum::Json(v)).into_response()
}

/// `?since=MS`: only history points and events after `MS` on the autoscaler's clock.
#[derive(serde::Deserialize)]
struct Since {
    since: Option<u64>,
}

/// The autoscaler's regions, edges over time and events; `{"enabled": false}` without one.
async fn autoscale(
    State(lab): State<Arc<Lab>>,
    axum::extract::Query(q): axum::extract::Query<Since>,
) -> Response {
    let Some(a) = lab.autoscale.get() else {
        return json(StatusCode::OK, serde_json::json!({"enabled": false}));
    };
    let status = a.status_since(q.since);
    // The autoscaler's clock starts once the lab is healthy; the dashboard draws on the lab's.
    let lab_offset_ms = (lab.started.elapsed().as_millis() as u64).saturating_sub(status.now_ms);
    let mut v = serde_json::to_value(status).unwrap_or_default();
    v["enabled"] = true.into();
    v["lab_offset_ms"] = lab_offset_ms.into();
    json(StatusCode::OK, v)
}

async fn status(State(lab): State<Arc<Lab>>) -> Response {
    let nodes = lab.nodes.lock().map(|n| n.clone()).unwrap_or_default();
    let (series, view) = match lab.history.lock() {
        Ok(h) => (h.series(), h.router_view.clone()),
        Err(_) => (serde_json::Value::Null, HashMap::new()),
    };
    let nodes: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            let mut v = serde_json::to_value(n).unwrap_or_default();
            if let Some(s) = view.get(&n.name) {
                v["router_view"] = s.clone().into();
            }
            v
        })
        .collect();
    let exchanges: Vec<_> = lab
        .exchanges
        .lock()
        .map(|q| q.iter().rev().take(100).cloned().collect())
        .unwrap_or_default();
    let viewers: Vec<_> = lab
        .viewers
        .lock()
        .map(|q| q.iter().rev().cloned().collect())
        .unwrap_or_default();
    json(
        StatusCode::OK,
        serde_json::json!({
            "t": lab.started.elapsed().as_secs_f64(),
            "info": lab.info(),
            "nodes": nodes,
            "series": series,
            "exchanges": exchanges,
            "viewers": viewers,
        }),
    )
}

async fn edge_action(
    State(lab): State<Arc<Lab>>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let (tx, rx) = oneshot::channel();
    let cmd = match action.as_str() {
        "stop" => Control::StopEdge(name.clone(), tx),
        "start" => Control::StartEdge(name.clone(), tx),
        _ => {
            return json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "use stop or start"}),
            );
        }
    };
    if lab.control.send(cmd).await.is_err() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": "the lab is stopping"}),
        );
    }
    match tokio::time::timeout(Duration::from_secs(40), rx).await {
        Ok(Ok(Ok(()))) => json(
            StatusCode::OK,
            serde_json::json!({"ok": true, "edge": name}),
        ),
        Ok(Ok(Err(e))) => json(StatusCode::CONFLICT, serde_json::json!({"error": e})),
        _ => json(
            StatusCode::GATEWAY_TIMEOUT,
            serde_json::json!({"error": "no answer from the lab"}),
        ),
    }
}

async fn viewer_report(
    State(lab): State<Arc<Lab>>,
    axum::Json(mut v): axum::Json<serde_json::Value>,
) -> Response {
    if !v.is_object() || v.to_string().len() > 4096 {
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "a small JSON object"}),
        );
    }
    v["t"] = lab.started.elapsed().as_secs_f64().into();
    if let Ok(mut q) = lab.viewers.lock() {
        // A viewer's later report replaces its earlier one.
        if let Some(old) = q
            .iter_mut()
            .find(|o| !v["id"].is_null() && o["id"] == v["id"])
        {
            *old = v;
            return json(StatusCode::OK, serde_json::json!({"ok": true}));
        }
        if q.len() >= VIEWERS_KEPT {
            q.pop_front();
        }
        q.push_back(v);
    }
    json(StatusCode::OK, serde_json::json!({"ok": true}))
}

/// The header a script or the dashboard sends to show a POST is not a cross-site form.
pub const LAB_REQUEST_HEADER: &str = "x-cdn-lab";

/// The origins (`scheme://host:port`, lower case) allowed to change the lab's state: the
/// router's and the lab API's (`urls`: the `router` and `control` of the lab's state), each also under the
/// other loopback names when it listens on loopback.
fn allowed_origins(urls: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for &url in urls {
        let Ok(uri) = url.parse::<http::Uri>() else {
            continue;
        };
        let (Some(scheme), Some(auth)) = (uri.scheme_str(), uri.authority()) else {
            continue;
        };
        let port = auth
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let host = auth.host().to_ascii_lowercase();
        let loopback = host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let hosts = if loopback {
            vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
                "[::1]".to_owned(),
                host,
            ]
        } else {
            vec![host]
        };
        for h in hosts {
            out.push(format!("{scheme}://{h}:{port}"));
            // Browsers leave the default port out of `Origin`.
            if (scheme, port) == ("http", 80) || (scheme, port) == ("https", 443) {
                out.push(format!("{scheme}://{h}"));
            }
        }
    }
    out
}

/// Why a state-changing request is refused, or `Ok` when it comes from the lab's own pages
/// (or from a non-browser client that says it means it).
fn check_same_origin(headers: &HeaderMap, allowed: &[String]) -> Result<(), String> {
    let value = |name: header::HeaderName| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)").trim().to_owned())
    };
    match value(header::ORIGIN) {
        Some(origin) => {
            let o = origin.to_ascii_lowercase();
            if !allowed.contains(&o) {
                return Err(format!(
                    "cross-origin request refused: Origin {origin} is not the lab's own \
                     ({})",
                    allowed.join(", ")
                ));
            }
        }
        None => {
            if let Some(site) = headers
                .get("sec-fetch-site")
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_ascii_lowercase())
                && (site == "cross-site" || site == "same-site")
            {
                return Err(format!(
                    "cross-site request refused (Sec-Fetch-Site: {site})"
                ));
            }
        }
    }
    let json = value(header::CONTENT_TYPE).is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json && !headers.contains_key(LAB_REQUEST_HEADER) {
        return Err(format!(
            "send Content-Type: application/json or an {LAB_REQUEST_HEADER} header \
             (refused as a possible cross-site form)"
        ));
    }
    Ok(())
}

/// Lets GET and HEAD through; anything else only past [`check_same_origin`].
async fn same_origin_only(State(lab): State<Arc<Lab>>, req: Request, next: Next) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let info = lab.info();
        let urls: Vec<&str> = info
            .iter()
            .flat_map(|i| {
                let https = i.https.as_ref().map(|h| h.router.as_str());
                [Some(i.router.as_str()), Some(i.control.as_str()), https]
            })
            .flatten()
            .collect();
        let allowed = allowed_origins(&urls);
        if let Err(why) = check_same_origin(req.headers(), &allowed) {
            tracing::warn!(method = %req.method(), path = %req.uri().path(), %why, "lab API request refused");
            return json(StatusCode::FORBIDDEN, serde_json::json!({ "error": why }));
        }
    }
    next.run(req).await
}

pub fn app(lab: Arc<Lab>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", PLAYER_HTML) }),
        )
        .route(
            "/_lab/",
            get(|| async { asset("text/html; charset=utf-8", PLAYER_HTML) }),
        )
        .route(
            "/_lab/lab.js",
            get(|| async { asset("text/javascript; charset=utf-8", LAB_JS) }),
        )
        .route(
            "/_lab/lab.css",
            get(|| async { asset("text/css; charset=utf-8", LAB_CSS) }),
        )
        .route(
            "/_lab/vendor/hls.light.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", HLS_JS) }),
        )
        .route(
            "/_lab/vendor/hls.js-LICENSE.txt",
            get(|| async { asset("text/plain; charset=utf-8", HLS_LICENSE) }),
        )
        .route("/_lab/api/status", get(status))
        .route("/_lab/api/autoscale", get(autoscale))
        .route("/_lab/api/edges/{name}/{action}", post(edge_action))
        .route("/_lab/api/viewers", post(viewer_report))
        .layer(axum::middleware::from_fn_with_state(
            lab.clone(),
            same_origin_only,
        ))
        .with_state(lab)
}

/// Serves the UI until the task is aborted.
pub async fn serve(listener: tokio::net::TcpListener, lab: Arc<Lab>) {
    let opts = cdn_http::server::ServeOptions {
        drain_deadline: Duration::from_millis(200),
        ..Default::default()
    };
    if let Err(e) = cdn_http::server::serve(listener, app(lab), opts, std::future::pending()).await
    {
        tracing::error!(error = %e, "the lab UI stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, axum::http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn only_the_labs_own_origins_may_post() {
        let allowed = allowed_origins(&["http://127.0.0.1:8080", "http://127.0.0.1:8082"]);
        assert!(allowed.contains(&"http://localhost:8080".to_owned()));
        assert!(allowed.contains(&"http://[::1]:8082".to_owned()));
        let json = ("content-type", "application/json");
        // The dashboard through the router, or on the API's own port; curl with the header.
        for h in [
            headers(&[("origin", "http://127.0.0.1:8080"), json]),
            headers(&[("origin", "http://LOCALHOST:8082"), ("x-cdn-lab", "1")]),
            headers(&[("sec-fetch-site", "same-origin"), json]),
            headers(&[("content-type", "application/json; charset=utf-8")]),
            headers(&[("x-cdn-lab", "1")]),
        ] {
            assert_eq!(check_same_origin(&h, &allowed), Ok(()), "{h:?}");
        }
        for h in [
            headers(&[("origin", "http://evil.example"), json]),
            headers(&[("origin", "http://127.0.0.1:9999"), json]),
            headers(&[("origin", "https://127.0.0.1:8080"), json]),
            headers(&[("origin", "null"), json]),
            headers(&[("sec-fetch-site", "cross-site"), json]),
            headers(&[("sec-fetch-site", "same-site"), ("x-cdn-lab", "1")]),
            // A form a page may send cross-origin without a preflight.
            headers(&[
                ("origin", "http://127.0.0.1:8080"),
                ("content-type", "text/plain"),
            ]),
            headers(&[]),
        ] {
            assert!(check_same_origin(&h, &allowed).is_err(), "{h:?}");
        }
    }
}
