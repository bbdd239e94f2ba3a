//! Active health checks of the edges: one task per edge probes its `/healthz` every interval
//! with a timeout; hysteresis turns the results into up/down (down after `down_after` failures
//! in a row, up after `up_after` successes); a `load` field in the JSON body is the passive
//! overload signal. The table keeps an edge's state across config reloads as long as its name
//! and health URL stay the same. A report (`/healthz`) is one consistent moment of an edge's
//! record, including the number of the check that set its state.
//!
//! Edge contract: `GET /healthz` answers 2xx when the edge takes traffic and 503 (or any other
//! status, or no answer in time) when not. A JSON body like
//! `{"status":"ok","name":"eu-1","region":"europe","load":0.35}` may report `load` (0 = idle,
//! 1 = saturated); a missing or unreadable body means healthy with unknown load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdn_http::metrics::NodeMetrics;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::config::{EdgeConfig, HealthConfig};
use crate::select::EdgeState;

/// Most bytes of a `/healthz` body read.
const MAX_BODY: usize = 64 * 1024;

const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// One edge's health, shared by its checker task and the request path (lock-free reads).
#[derive(Debug)]
pub struct EdgeHealth {
    state: AtomicU8,
    load_bits: AtomicU64,
    failures: AtomicU32,
    successes: AtomicU32,
    checks: AtomicU64,
    /// The check that set the current state (0: none yet).
    since_check: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Held by `record` and `report`, so a report is one consistent moment (state, counters).
    consistent: Mutex<()>,
}

impl Default for EdgeHealth {
    fn default() -> Self {
        EdgeHealth {
            state: AtomicU8::new(UNKNOWN),
            load_bits: AtomicU64::new(f64::NAN.to_bits()),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            checks: AtomicU64::new(0),
            since_check: AtomicU64::new(0),
            last_error: Mutex::new(None),
            consistent: Mutex::new(()),
        }
    }
}

/// What one probe found.
pub type ProbeOutcome = Result<Option<f64>, String>;

/// A change of up/down state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// A snapshot of one edge's health, for status answers, taken at one moment: no check is
/// half-recorded in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    pub state: EdgeState,
    pub load: Option<f64>,
    pub consecutive_failures: u32,
    pub consecutive_successes: u32,
    /// Checks done so far.
    pub checks: u64,
    /// The number of the check that set the current state (up or down; 0 while unknown). With
    /// `checks` and the consecutive counts it tells how many failures took the edge down:
    /// `state_since_check - (checks - consecutive_failures)`.
    pub state_since_check: u64,
    pub last_error: Option<String>,
}

impl EdgeHealth {
    /// Up, overloaded (up with load at or above `overload_threshold`), down or unknown.
    pub fn state(&self, overload_threshold: f64) -> EdgeState {
        match self.state.load(Ordering::Acquire) {
            UP => match self.load() {
                Some(l) if l >= overload_threshold => EdgeState::Overloaded,
                _ => EdgeState::Up,
            },
            DOWN => EdgeState::Down,
            _ => EdgeState::Unknown,
        }
    }

    pub fn is_up(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// The last load the edge reported.
    pub fn load(&self) -> Option<f64> {
        let l = f64::from_bits(self.load_bits.load(Ordering::Relaxed));
        (!l.is_nan()).then_some(l)
    }

    pub fn report(&self, overload_threshold: f64) -> HealthReport {
        let _moment = self.consistent.lock().unwrap_or_else(|p| p.into_inner());
        HealthReport {
            state: self.state(overload_threshold),
            load: self.load(),
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            consecutive_successes: self.successes.load(Ordering::Relaxed),
            checks: self.checks.load(Ordering::Relaxed),
            state_since_check: self.since_check.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .map(|e| e.clone())
                .unwrap_or_default(),
        }
    }

    /// Applies one probe result. The first result sets the state directly; later ones go
    /// through the hysteresis.
    pub fn record(&self, outcome: &ProbeOutcome, cfg: &HealthConfig) -> Option<Transition> {
        let _moment = self.consistent.lock().unwrap_or_else(|p| p.into_inner());
        let check = self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let state = self.state.load(Ordering::Acquire);
        match outcome {
            Ok(load) => {
                self.load_bits
                    .store(load.unwrap_or(f64::NAN).to_bits(), Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
                let ok = self
                    .successes
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                if state == UNKNOWN || (state == DOWN && ok >= cfg.up_after) {
                    self.since_check.store(check, Ordering::Relaxed);
                    self.state.store(UP, Ordering::Release);
                    return Some(Transition::Up);
                }
            }
            Err(msg) => {
                self.successes.store(0, Ordering::Relaxed);
                let bad = self
                    .failures
                    .fetch_add(1, Ordering::Relaxed)
                    .saturating_add(1);
                if let Ok(mut e) = self.last_error.lock() {
                    *e = Some(msg.clone());
                }
                if state == UNKNOWN || (state == UP && bad >= cfg.down_after) {
                    self.since_check.store(check, Ordering::Relaxed);
                    self.state.store(DOWN, Ordering::Release);
                    return Some(Transition::Down);
                }
            }
        }
        None
    }
}

#[derive(Deserialize)]
struct HealthBody {
    load: Option<f64>,
}

/// Probes one health URL once.
pub async fn probe(client: &reqwest::Client, url: &str, timeout: Duration) -> ProbeOutcome {
    let fut = async {
        let mut resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| format!("no answer: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("body: {e}"))? {
            if body.len() + chunk.len() > MAX_BODY {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(serde_json::from_slice::<HealthBody>(&body)
            .ok()
            .and_then(|b| b.load)
            .filter(|l| l.is_finite() && *l >= 0.0))
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(format!("timed out after {} ms", timeout.as_millis())),
    }
}

/// The HTTP client of the checks: no proxies, no connection reuse (every probe opens a fresh
/// connection, so a restarted or dead edge is seen at once).
pub fn http_client() -> reqwest::Client {
    cdn_http::tls::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("cdn-geo-router/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

struct Entry {
    url: String,
    health: Arc<EdgeHealth>,
    task: tokio::task::JoinHandle<()>,
}

/// The checker tasks, one per edge.
pub struct HealthTable {
    client: reqwest::Client,
    metrics: Arc<NodeMetrics>,
    config: watch::Receiver<HealthConfig>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl HealthTable {
    pub fn new(metrics: Arc<NodeMetrics>, config: watch::Receiver<HealthConfig>) -> Self {
        HealthTable {
            client: http_client(),
            metrics,
            config,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the running checkers match `edges`: keeps those whose name and health URL are
    /// unchanged, starts new ones, stops removed ones. Returns each edge's health (in order)
    /// and waits (at most the check timeout plus a little) for the first probe of new edges.
    pub async fn reconcile(&self, edges: &[EdgeConfig]) -> Vec<Arc<EdgeHealth>> {
        let mut firsts = Vec::new();
        let healths = {
            let Ok(mut entries) = self.entries.lock() else {
                return edges.iter().map(|_| Arc::default()).collect();
            };
            entries.retain(|name, entry| {
                let keep = edges
                    .iter()
                    .any(|e| &e.name == name && e.health_url() == entry.url);
                if !keep {
                    entry.task.abort();
                    tracing::info!(edge = %name, "health checks stopped");
                }
                keep
            });
            edges
                .iter()
                .map(|e| {
                    if let Some(entry) = entries.get(&e.name) {
                        return entry.health.clone();
                    }
                    let health = Arc::new(EdgeHealth::default());
                    let (tx, rx) = oneshot::channel();
                    firsts.push(rx);
                    let url = e.health_url();
                    let task = tokio::spawn(check_loop(
                        e.name.clone(),
                        url.clone(),
                        health.clone(),
                        self.client.clone(),
                        self.config.clone(),
                        self.metrics.clone(),
                        tx,
                    ));
                    entries.insert(
                        e.name.clone(),
                        Entry {
                            url,
                            health: health.clone(),
                            task,
                        },
                    );
                    health
                })
                .collect()
        };
        let wait = self.config.borrow().timeout() + Duration::from_millis(250);
        let _ = tokio::time::timeout(wait, async {
            for rx in firsts {
                let _ = rx.await;
            }
        })
        .await;
        healths
    }

    /// Stops every checker.
    pub fn stop_all(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            for (_, e) in entries.drain() {
                e.task.abort();
            }
        }
    }
}

impl Drop for HealthTable {
    fn drop(&mut self) {
        self.stop_all();
    }
}

async fn check_loop(
    name: String,
    url: String,
    health: Arc<EdgeHealth>,
    client: reqwest::Client,
    config: watch::Receiver<HealthConfig>,
    metrics: Arc<NodeMetrics>,
    first: oneshot::Sender<()>,
) {
    let mut first = Some(first);
    loop {
        let cfg = config.borrow().clone();
        let started = Instant::now();
        let outcome = probe(&client, &url, cfg.timeout()).await;
        let transition = health.record(&outcome, &cfg);
        let up = health.is_up();
        metrics.with(|| {
            let result = if outcome.is_ok() { "ok" } else { "fail" };
            metrics::counter!(crate::metric_names::HEALTH_CHECKS_TOTAL, "edge" => name.clone(), "result" => result)
                .increment(1);
            metrics::gauge!(crate::metric_names::EDGE_UP, "edge" => name.clone()).set(if up { 1.0 } else { 0.0 });
            if let Some(load) = health.load() {
                metrics::gauge!(crate::metric_names::EDGE_LOAD, "edge" => name.clone()).set(load);
            }
        });
        match (transition, &outcome) {
            (Some(Transition::Up), _) => {
                tracing::info!(edge = %name, %url, load = ?health.load(), "edge is up")
            }
            (Some(Transition::Down), Err(e)) => {
                tracing::warn!(edge = %name, %url, error = %e, "edge is down")
            }
            (_, Err(e)) => tracing::debug!(edge = %name, %url, error = %e, "health check failed"),
            _ => {}
        }
        if let Some(tx) = first.take() {
            let _ = tx.send(());
        }
        tokio::time::sleep_until(started + cfg.interval()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_down_after_n_up_after_m() {
        let cfg = HealthConfig::default();
        let h = EdgeHealth::default();
        assert_eq!(h.state(0.9), EdgeState::Unknown);
        assert_eq!(h.record(&Ok(None), &cfg), Some(Transition::Up));
        assert_eq!(h.record(&Err("x".into()), &cfg), None);
        assert_eq!(h.record(&Err("x".into()), &cfg), None);
        assert_eq!(h.state(0.9), EdgeState::Up);
        assert_eq!(h.record(&Err("x".into()), &cfg), Some(Transition::Down));
        assert_eq!(h.state(0.9), EdgeState::Down);
        let r = h.report(0.9);
        assert_eq!(
            (r.checks, r.state_since_check, r.consecutive_failures),
            (4, 4, 3)
        );
        assert_eq!(h.record(&Ok(Some(0.5)), &cfg), None);
        assert_eq!(
            h.record(&Err("x".into()), &cfg),
            None,
            "a failure resets the successes"
        );
        assert_eq!(h.record(&Ok(Some(0.5)), &cfg), None);
        assert_eq!(h.record(&Ok(Some(0.95)), &cfg), Some(Transition::Up));
        assert_eq!(h.state(0.9), EdgeState::Overloaded);
        assert_eq!(h.record(&Ok(None), &cfg), None);
        assert_eq!(h.state(0.9), EdgeState::Up, "unknown load is not overload");
        let first_fail = EdgeHealth::default();
        assert_eq!(
            first_fail.record(&Err("x".into()), &cfg),
            Some(Transition::Down)
        );
        assert_eq!(first_fail.report(0.9).last_error.as_deref(), Some("x"));
    }
}
