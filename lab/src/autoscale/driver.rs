//! Runs [`Autoscaler`]s on a fixed interval against a real fleet.
//!
//! Every `interval` the driver asks its [`Observer`] for each region's load, ticks the
//! region's autoscaler with it (and the edges the region runs, counting those being started
//! and leaving out those being drained), and carries decisions out on the [`Fleet`] in
//! background tasks: a scale-out starts edges, a scale-in drains and stops the newest ones.
//! Decisions and fleet events (edge started, edge stopped, failures) go to one event log;
//! [`AutoscaleHandle::status`] returns it with each region's edges and history, as JSON for
//! a dashboard.
//!
//! # Use
//! The lab (`start_autoscale` in `lab/src/lib.rs`) does:
//! ```ignore
//! let fleet = Arc::new(LabFleet::new(edges, router_url.clone(), options)); // impl Fleet
//! let observer = HttpObserver::new(&router_url, Duration::from_secs(5));
//! let regions = vec![RegionSpec { region: "europe".into(), config, edges: vec!["eu-1".into()] }];
//! let autoscale = driver::spawn(fleet, observer, regions, Duration::from_secs(1))?;
//! // dashboard: serde_json::to_string(&autoscale.status_since(last_ms))
//! autoscale.abort();                   // at shutdown (tests: `stop().await` lets drains end)
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{
    Action, AutoscaleConfig, AutoscaleError, Autoscaler, EVENT_LIMIT, EventKind, HistoryPoint,
    RegionObservation, ScalingEvent,
};
use crate::plan::lab::{HttpSampler, LabSample};

/// Edges the autoscaler can start and stop.
///
/// Implementations: the lab's process fleet (`crate::fleet`) and the tests' in-process fleet.
pub trait Fleet: Send + Sync + 'static {
    /// Starts one edge in `region` and registers it with the router (admin API or config
    /// reload). Returns the edge's name once the router routes to it: its health check has
    /// passed. A new edge should warm from its region's peers rather than the origin.
    fn start_edge(&self, region: &str) -> impl Future<Output = anyhow::Result<String>> + Send;

    /// Drains `edge` and stops it: the router stops sending to it, responses in flight
    /// finish, then the process stops. No viewer may see an error.
    fn drain_and_stop(&self, edge: &str) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// One region's load, as measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Load {
    /// Requests/s.
    pub rate: f64,
    /// In-flight requests on the region's edges.
    pub inflight: f64,
}

/// Measures the regions.
pub trait Observer: Send + 'static {
    /// The load of every region it can measure now; a region left out is not ticked.
    fn observe(&mut self) -> impl Future<Output = anyhow::Result<BTreeMap<String, Load>>> + Send;
}

/// Measures a lab over HTTP (see [`crate::plan::lab`]): the request rate of each region over
/// the last `window`, the larger of the router's routes to its edges and the requests its
/// edges served; in-flight requests from the edges.
pub struct HttpObserver {
    sampler: HttpSampler,
    window: Duration,
    samples: VecDeque<LabSample>,
}

impl HttpObserver {
    /// Observes the router at `router` (base URL); rates are averaged over `window`.
    pub fn new(router: &str, window: Duration) -> Self {
        HttpObserver {
            sampler: HttpSampler::new(router),
            window,
            samples: VecDeque::new(),
        }
    }
}

impl Observer for HttpObserver {
    async fn observe(&mut self) -> anyhow::Result<BTreeMap<String, Load>> {
        let s = self.sampler.sample().await?;
        let at = s.at;
        self.samples.push_back(s);
        // Keep the newest sample at least `window` old as the start of the rate.
        while self.samples.len() > 2 && self.samples[1].at + self.window <= at {
            self.samples.pop_front();
        }
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return Ok(BTreeMap::new());
        };
        if self.samples.len() < 2 {
            return Ok(BTreeMap::new());
        }
        Ok(self
            .sampler
            .loads(first, last)
            .regions
            .into_iter()
            .map(|(region, l)| {
                (
                    region,
                    Load {
                        // Routes and the edges' own count: whichever sees more load.
                        rate: l.rate.max(l.served_rate),
                        inflight: l.inflight,
                    },
                )
            })
            .collect())
    }
}

/// One region to scale.
#[derive(Debug, Clone)]
pub struct RegionSpec {
    pub region: String,
    pub config: AutoscaleConfig,
    /// Edges already running in the region (the autoscaler may drain them too, newest first).
    pub edges: Vec<String>,
}

/// One region as the dashboard sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionStatus {
    pub region: String,
    pub config: AutoscaleConfig,
    /// Edges serving, oldest first.
    pub edges: Vec<String>,
    /// Edges being started (not yet healthy).
    pub starting: u32,
    /// Edges being drained.
    pub draining: Vec<String>,
    /// One point per tick (edges over time).
    pub history: Vec<HistoryPoint>,
}

/// Everything the dashboard shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AutoscaleStatus {
    /// Wall clock of `at_ms = 0`, milliseconds since the Unix epoch.
    pub started_unix_ms: u64,
    /// Now on the autoscaler's clock.
    pub now_ms: u64,
    pub interval_ms: u64,
    pub regions: Vec<RegionStatus>,
    /// Decisions with their reasons, and fleet events, oldest first.
    pub events: Vec<ScalingEvent>,
}

struct RegionState {
    scaler: Autoscaler,
    edges: Vec<String>,
    starting: u32,
    draining: Vec<String>,
}

struct State {
    regions: BTreeMap<String, RegionState>,
    events: VecDeque<ScalingEvent>,
}

impl State {
    fn event(&mut self, e: ScalingEvent) {
        match e.kind {
            EventKind::Error => {
                tracing::warn!(region = %e.region, edge = ?e.edge, reason = %e.reason, "autoscale")
            }
            _ => {
                tracing::info!(region = %e.region, kind = ?e.kind, from = ?e.from, to = ?e.to, edge = ?e.edge, reason = %e.reason, "autoscale")
            }
        }
        if self.events.len() == EVENT_LIMIT {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }
}

struct Shared {
    started: Instant,
    started_unix_ms: u64,
    interval: Duration,
    state: Mutex<State>,
}

impl Shared {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }

    fn fleet_event(&self, region: &str, kind: EventKind, edge: Option<&str>, reason: String) {
        // The clock is read under the lock, so entries enter the log in time order and a
        // poller's `since` never skips one.
        self.with(|s| {
            let at_ms = self.now().as_millis() as u64;
            s.event(ScalingEvent {
                at_ms,
                region: region.to_owned(),
                kind,
                from: None,
                to: None,
                edge: edge.map(str::to_owned),
                reason,
            })
        });
    }
}

/// A running autoscaler.
pub struct AutoscaleHandle {
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AutoscaleHandle {
    /// The whole status.
    pub fn status(&self) -> AutoscaleStatus {
        self.status_since(None)
    }

    /// The status with only the history points and events after `after_ms` (for polling).
    pub fn status_since(&self, after_ms: Option<u64>) -> AutoscaleStatus {
        let newer = |at: u64| after_ms.is_none_or(|a| at > a);
        let now_ms = self.shared.now().as_millis() as u64;
        self.shared.with(|s| AutoscaleStatus {
            started_unix_ms: self.shared.started_unix_ms,
            now_ms,
            interval_ms: self.shared.interval.as_millis() as u64,
            regions: s
                .regions
                .values()
                .map(|r| RegionStatus {
                    region: r.scaler.region().to_owned(),
                    config: r.scaler.config().clone(),
                    edges: r.edges.clone(),
                    starting: r.starting,
                    draining: r.draining.clone(),
                    history: r
                        .scaler
                        .history()
                        .filter(|p| newer(p.at_ms))
                        .copied()
                        .collect(),
                })
                .collect(),
            events: s
                .events
                .iter()
                .filter(|e| newer(e.at_ms))
                .cloned()
                .collect(),
        })
    }

    /// The edges serving in `region` now.
    pub fn edges(&self, region: &str) -> Vec<String> {
        self.shared
            .with(|s| s.regions.get(region).map(|r| r.edges.clone()))
            .unwrap_or_default()
    }

    /// Stops at once, abandoning the starts and drains under way (the lab's shutdown stops
    /// every edge anyway).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Stops deciding, then waits for the starts and drains under way.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts the driver: every `interval`, observe, tick each region, act on the fleet.
pub fn spawn<F: Fleet, O: Observer>(
    fleet: Arc<F>,
    observer: O,
    regions: Vec<RegionSpec>,
    interval: Duration,
) -> Result<AutoscaleHandle, AutoscaleError> {
    let mut states = BTreeMap::new();
    for spec in regions {
        states.insert(
            spec.region.clone(),
            RegionState {
                scaler: Autoscaler::new(&spec.region, spec.config)?,
                edges: spec.edges,
                starting: 0,
                draining: Vec::new(),
            },
        );
    }
    let shared = Arc::new(Shared {
        started: Instant::now(),
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        interval: interval.max(Duration::from_millis(1)),
        state: Mutex::new(State {
            regions: states,
            events: VecDeque::new(),
        }),
    });
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(run(shared.clone(), fleet, observer, stop_rx));
    Ok(AutoscaleHandle { shared, stop, task })
}

enum Work {
    Start(String),
    Drain(String, String),
}

async fn run<F: Fleet, O: Observer>(
    shared: Arc<Shared>,
    fleet: Arc<F>,
    mut observer: O,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(shared.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        while tasks.try_join_next().is_some() {}
        let loads = tokio::select! {
            r = observer.observe() => r,
            _ = stop.changed() => break,
        };
        let loads = match loads {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "autoscale: cannot observe the regions");
                continue;
            }
        };
        let work = shared.with(|s| {
            let now = shared.now();
            let mut work = Vec::new();
            let mut events = Vec::new();
            for (region, r) in s.regions.iter_mut() {
                let Some(load) = loads.get(region) else {
                    continue;
                };
                let obs = RegionObservation {
                    rate: load.rate,
                    inflight: load.inflight,
                    edges: r.edges.len() as u32 + r.starting,
                };
                let Some(d) = r.scaler.tick(now, obs) else {
                    continue;
                };
                events.push(ScalingEvent::from((&d, now)));
                match d.action {
                    Action::ScaleOut => {
                        let n = d.to.saturating_sub(d.from);
                        r.starting += n;
                        work.extend((0..n).map(|_| Work::Start(region.clone())));
                    }
                    Action::ScaleIn => {
                        let n = (d.from.saturating_sub(d.to) as usize).min(r.edges.len());
                        for name in r.edges.split_off(r.edges.len() - n).into_iter().rev() {
                            r.draining.push(name.clone());
                            work.push(Work::Drain(region.clone(), name));
                        }
                    }
                }
            }
            for e in events {
                s.event(e);
            }
            work
        });
        for w in work {
            let (shared, fleet) = (shared.clone(), fleet.clone());
            tasks.spawn(async move {
                let began = Instant::now();
                match w {
                    Work::Start(region) => {
                        let r = fleet.start_edge(&region).await;
                        shared.with(|s| {
                            if let Some(rs) = s.regions.get_mut(&region) {
                                rs.starting = rs.starting.saturating_sub(1);
                                if let Ok(name) = &r {
                                    rs.edges.push(name.clone());
                                }
                            }
                        });
                        match r {
                            Ok(name) => shared.fleet_event(
                                &region,
                                EventKind::EdgeStarted,
                                Some(&name),
                                format!(
                                    "healthy and routed to after {} ms",
                                    began.elapsed().as_millis()
                                ),
                            ),
                            Err(e) => shared.fleet_event(
                                &region,
                                EventKind::Error,
                                None,
                                format!("starting an edge failed: {e:#}"),
                            ),
                        }
                    }
                    Work::Drain(region, name) => {
                        let r = fleet.drain_and_stop(&name).await;
                        shared.with(|s| {
                            if let Some(rs) = s.regions.get_mut(&region) {
                                rs.draining.retain(|n| n != &name);
                            }
                        });
                        let (kind, reason) = match r {
                            Ok(()) => (
                                EventKind::EdgeStopped,
                                format!(
                                    "drained and stopped after {} ms",
                                    began.elapsed().as_millis()
                                ),
                            ),
                            Err(e) => (EventKind::Error, format!("draining failed: {e:#}")),
                        };
                        shared.fleet_event(&region, kind, Some(&name), reason);
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
}
