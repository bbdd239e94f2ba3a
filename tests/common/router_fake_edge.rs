//! A stand-in edge for the router tests.
//!
//! The real edge (`cdn_edge`) is being built in parallel; until its API exists the router tests
//! run against this small axum server, which speaks the router's side of the edge contract:
//! `GET /healthz` answers 200 with `{"status":"ok","name":..,"region":..,"load":..}`, or 503 when
//! flipped to unhealthy; any other GET answers 200 with `edge NAME: PATH?QUERY`, so a test can
//! follow a redirect and see who served it. It can be killed (connections refused) and
//! restarted on the same port. To switch to the real edge, replace `start_fake_edge` with a
//! function that starts `cdn_edge` on a listener and keep the `FakeEdge` methods the tests use
//! (`url`, `kill`, `restart`; `set_status` / `set_load` map to the edge's drain switch and
//! load report).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cdn_http::server::{NodeHandle, ServeOptions};

struct Control {
    name: String,
    region: String,
    status: AtomicU16,
    load: Mutex<Option<f64>>,
    health_checks: AtomicU64,
}

/// A running (or killed) fake edge.
pub struct FakeEdge {
    pub name: String,
    pub region: String,
    pub addr: SocketAddr,
    control: Arc<Control>,
    node: Option<NodeHandle>,
}

/// Starts a fake edge on 127.0.0.1 at a free port.
pub async fn start_fake_edge(name: &str, region: &str) -> FakeEdge {
    let control = Arc::new(Control {
        name: name.to_owned(),
        region: region.to_owned(),
        status: AtomicU16::new(200),
        load: Mutex::new(None),
        health_checks: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind fake edge");
    let addr = listener.local_addr().expect("local addr");
    let node = serve(listener, control.clone());
    FakeEdge {
        name: name.to_owned(),
        region: region.to_owned(),
        addr,
        control,
        node: Some(node),
    }
}

fn serve(listener: tokio::net::TcpListener, control: Arc<Control>) -> NodeHandle {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .fallback(content)
        .with_state(control);
    let opts = ServeOptions {
        drain_deadline: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    NodeHandle::spawn(listener, app, opts).expect("serve fake edge")
}

async fn healthz(State(c): State<Arc<Control>>) -> Response {
    c.health_checks.fetch_add(1, Ordering::Relaxed);
    let status = http::StatusCode::from_u16(c.status.load(Ordering::Relaxed))
        .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE);
    let load = *c.load.lock().expect("lock");
    let body = serde_json::json!({
        "status": if status.is_success() { "ok" } else { "draining" },
        "name": c.name,
        "region": c.region,
        "load": load,
    });
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn content(State(c): State<Arc<Control>>, req: Request) -> String {
    let pq = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    format!("edge {}: {}", c.name, pq)
}

impl FakeEdge {
    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// 200 = healthy, 503 = draining/unhealthy.
    pub fn set_status(&self, status: u16) {
        self.control.status.store(status, Ordering::Relaxed);
    }

    /// The `load` reported in `/healthz` (0..1+); `None` leaves it out.
    pub fn set_load(&self, load: Option<f64>) {
        *self.control.load.lock().expect("lock") = load;
    }

    /// How many health checks this edge has answered.
    pub fn health_checks(&self) -> u64 {
        self.control.health_checks.load(Ordering::Relaxed)
    }

    /// Stops the server: new connections are refused.
    pub async fn kill(&mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }

    /// Serves again on the same port.
    pub async fn restart(&mut self) {
        assert!(self.node.is_none(), "restart of a running fake edge");
        let mut last = None;
        for _ in 0..50 {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.node = Some(serve(listener, self.control.clone()));
                    return;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cannot rebind {}: {last:?}", self.addr);
    }

    pub async fn stop(mut self) {
        self.kill().await;
    }
}
