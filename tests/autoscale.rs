//! Tests of auto-scaling (issue 9).
//!
//! - The decision, deterministically: a synthetic rate series on a controlled clock (plain
//!   numbers, no sleeping) scales out on a step, does not flap inside the cooldowns, and
//!   scales in after demand falls.
//! - The driver against a fake fleet and observer.
//! - End to end in this process: origin, router and one edge in Europe; viewers from
//!   127.1.x.y ramp the load up until the autoscaler starts a second edge (which warms from
//!   its sibling and serves), then the load drops and that edge is drained and stopped, with
//!   every response a byte-exact 200.

mod common;

#[path = "common/inprocess_fleet.rs"]
mod inprocess;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdn_lab::autoscale::driver::{self, Fleet, HttpObserver, Load, Observer, RegionSpec};
use cdn_lab::autoscale::{
    Action, AutoscaleConfig, AutoscaleError, Autoscaler, EventKind, RegionObservation,
};
use inprocess::{FleetOptions, InProcessFleet, Site};

/// An observer made of a closure.
pub struct FnObserver<F>(pub F);

impl<F, Fut> Observer for FnObserver<F>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<BTreeMap<String, Load>>> + Send,
{
    fn observe(&mut self) -> impl Future<Output = anyhow::Result<BTreeMap<String, Load>>> + Send {
        (self.0)()
    }
}

const S: Duration = Duration::from_secs(1);

fn config() -> AutoscaleConfig {
    AutoscaleConfig {
        capacity_rps: 100.0,
        target_utilisation_pct: 70.0,
        min_edges: 1,
        max_edges: 10,
        scale_out_cooldown: 30 * S,
        scale_in_cooldown: 120 * S,
        inflight_per_edge: None,
    }
}

/// Feeds `(seconds, rate)` steps (each held until the next) every 5 s up to `end` s, carrying
/// decisions out at once; returns the decisions with their times.
fn drive(
    scaler: &mut Autoscaler,
    edges: &mut u32,
    series: &[(u64, f64)],
    from: u64,
    end: u64,
) -> Vec<(u64, Action, u32, u32, String)> {
    let mut out = Vec::new();
    let mut t = from;
    while t < end {
        let rate = series
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map_or(0.0, |(_, r)| *r);
        let obs = RegionObservation {
            rate,
            inflight: 0.0,
            edges: *edges,
        };
        if let Some(d) = scaler.tick(Duration::from_secs(t), obs) {
            *edges = d.to;
            out.push((t, d.action, d.from, d.to, d.reason));
        }
        t += 5;
    }
    out
}

#[test]
fn scales_out_on_a_step_holds_through_oscillation_and_scales_in_after_the_cooldown() {
    let mut a = Autoscaler::new("europe", config()).expect("valid");
    let mut edges = 1;
    // 0-55 s: 50 req/s (1 edge at 70 % of 100). 60 s: a step to 300 req/s (5 edges).
    // 70 s: 400 req/s (6 edges), inside the scale-out cooldown.
    let series = [(0, 50.0), (60, 300.0), (70, 400.0)];
    let d = drive(&mut a, &mut edges, &series, 0, 100);
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(
        (d[0].0, d[0].1, d[0].2, d[0].3),
        (60, Action::ScaleOut, 1, 5)
    );
    assert!(
        d[0].4.contains("rate 300.0 req/s needs 5 edges"),
        "{}",
        d[0].4
    );
    assert!(d[0].4.contains("utilisation 300% on 1"), "{}", d[0].4);
    // The second step waits for the 30 s cooldown (60 + 30 = 90).
    assert_eq!(
        (d[1].0, d[1].1, d[1].2, d[1].3),
        (90, Action::ScaleOut, 5, 6)
    );
    assert_eq!(edges, 6);

    // 100-395 s: demand swings between 400 and 100 req/s every tick: the low ticks never
    // last a whole scale-in cooldown, so nothing changes (no flapping).
    let swings: Vec<(u64, f64)> = (100..400)
        .step_by(5)
        .map(|t| (t, if t % 10 == 0 { 100.0 } else { 400.0 }))
        .collect();
    let d = drive(&mut a, &mut edges, &swings, 100, 400);
    assert!(d.is_empty(), "flapped: {d:?}");
    assert_eq!(edges, 6);

    // 400 s: demand falls to 100 req/s (2 edges). The scale-in waits 120 s of low demand.
    let fall = [(400, 100.0)];
    let d = drive(&mut a, &mut edges, &fall, 400, 700);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].0, d[0].1, d[0].2, d[0].3),
        (520, Action::ScaleIn, 6, 2)
    );
    assert!(
        d[0].4.contains("at most 2 edges wanted for 120 s"),
        "{}",
        d[0].4
    );

    // Every decision is in the event log, every tick in the history.
    let events: Vec<_> = a.events().collect();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].kind, EventKind::ScaleIn);
    assert_eq!(events[2].at_ms, 520_000);
    let history: Vec<_> = a.history().collect();
    assert_eq!(history.len(), 140);
    assert_eq!(history[12].edges, 1);
    assert_eq!(history[12].wanted, 5);
    assert_eq!(history.last().map(|p| p.edges), Some(2));
    serde_json::to_string(&events).expect("events serialise");
}

#[test]
fn scale_in_goes_to_the_most_wanted_in_the_window() {
    let mut a = Autoscaler::new("asia", config()).expect("valid");
    let mut edges = 6;
    // Demand for 2 edges, then 3, then 2 again, all below 6: after 120 s the scale-in keeps
    // 3 (the most wanted in the window), not 2.
    let series = [(0, 100.0), (40, 200.0), (80, 100.0)];
    let d = drive(&mut a, &mut edges, &series, 0, 200);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (d[0].0, d[0].1, d[0].2, d[0].3),
        (120, Action::ScaleIn, 6, 3)
    );
    // A new window starts at the next tick (125 s): 2 edges 120 s later.
    let d = drive(&mut a, &mut edges, &series, 200, 400);
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!((d[0].0, d[0].3), (245, 2));
}

#[test]
fn a_short_dip_does_not_scale_in() {
    let mut a = Autoscaler::new("europe", config()).expect("valid");
    let mut edges = 1;
    let series = [(0, 300.0), (200, 50.0), (300, 300.0)];
    let d = drive(&mut a, &mut edges, &series, 0, 400);
    assert_eq!(d.len(), 1, "only the first scale-out: {d:?}");
    assert_eq!(edges, 5);
}

#[test]
fn bounds_minimum_and_saturation() {
    let mut a = Autoscaler::new(
        "europe",
        AutoscaleConfig {
            min_edges: 2,
            max_edges: 4,
            inflight_per_edge: Some(50.0),
            ..config()
        },
    )
    .expect("valid");
    let obs = |rate, inflight, edges| RegionObservation {
        rate,
        inflight,
        edges,
    };
    // Below the minimum: up to it at once, whatever the load.
    let d = a
        .tick(Duration::ZERO, obs(0.0, 0.0, 0))
        .expect("to the minimum");
    assert_eq!((d.action, d.to), (Action::ScaleOut, 2));
    assert!(d.reason.contains("minimum"), "{}", d.reason);
    // Rate 0 wants the minimum: nothing to do.
    assert_eq!(a.tick(40 * S, obs(0.0, 0.0, 2)), None);
    // Low rate but the edges are saturated with in-flight requests: 150 in flight at 70 %
    // of 50 per edge → 5, capped at 4.
    let d = a.tick(80 * S, obs(10.0, 150.0, 2)).expect("saturation");
    assert_eq!((d.action, d.from, d.to), (Action::ScaleOut, 2, 4));
    assert!(d.reason.contains("in-flight"), "{}", d.reason);
    assert!(d.reason.contains("maximum 4"), "{}", d.reason);
    // Above the maximum (someone started edges by hand): back to it.
    let d = a.tick(90 * S, obs(10.0, 0.0, 6)).expect("to the maximum");
    assert_eq!((d.action, d.to), (Action::ScaleIn, 4));

    assert!(matches!(
        Autoscaler::new(
            "x",
            AutoscaleConfig {
                min_edges: 3,
                max_edges: 2,
                ..config()
            }
        ),
        Err(AutoscaleError::Bounds { .. })
    ));
    assert!(matches!(
        Autoscaler::new(
            "x",
            AutoscaleConfig {
                capacity_rps: 0.0,
                ..config()
            }
        ),
        Err(AutoscaleError::Plan(cdn_lab::plan::PlanError::Capacity(_)))
    ));
}

/// A fleet that only counts.
#[derive(Default)]
struct FakeFleet {
    log: Mutex<Vec<String>>,
    next: AtomicU64,
}

impl Fleet for FakeFleet {
    async fn start_edge(&self, region: &str) -> anyhow::Result<String> {
        let name = format!("{region}-f{}", self.next.fetch_add(1, Ordering::Relaxed));
        self.log.lock().expect("log").push(format!("start {name}"));
        Ok(name)
    }

    async fn drain_and_stop(&self, edge: &str) -> anyhow::Result<()> {
        self.log.lock().expect("log").push(format!("drain {edge}"));
        Ok(())
    }
}

async fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

#[tokio::test]
async fn driver_starts_and_drains_on_the_fleet_and_reports_status() {
    let fleet = Arc::new(FakeFleet::default());
    let rate = Arc::new(AtomicU64::new(50));
    let r = rate.clone();
    let observer = FnObserver(move || {
        let rate = r.load(Ordering::Relaxed) as f64;
        async move {
            Ok(BTreeMap::from([(
                "europe".to_owned(),
                Load {
                    rate,
                    inflight: 0.0,
                },
            )]))
        }
    });
    let cfg = AutoscaleConfig {
        scale_out_cooldown: Duration::from_millis(100),
        scale_in_cooldown: Duration::from_millis(300),
        ..config()
    };
    let handle = driver::spawn(
        fleet.clone(),
        observer,
        vec![RegionSpec {
            region: "europe".into(),
            config: cfg,
            edges: vec!["eu-1".into()],
        }],
        Duration::from_millis(20),
    )
    .expect("valid");
    rate.store(200, Ordering::Relaxed); // 3 edges
    assert!(
        wait_for(5 * S, || handle.edges("europe").len() == 3).await,
        "{:?}",
        handle.status()
    );
    rate.store(10, Ordering::Relaxed); // 1 edge
    assert!(
        wait_for(5 * S, || handle.edges("europe") == ["eu-1"]).await,
        "{:?}",
        handle.status()
    );
    let status = handle.status();
    let kinds: Vec<EventKind> = status.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::ScaleOut).count(),
        1
    );
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == EventKind::EdgeStarted)
            .count(),
        2
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == EventKind::ScaleIn).count(),
        1
    );
    assert!(
        wait_for(5 * S, || {
            handle
                .status()
                .events
                .iter()
                .filter(|e| e.kind == EventKind::EdgeStopped)
                .count()
                == 2
        })
        .await
    );
    // Newest first: the two started edges are drained, the original stays.
    let log = fleet.log.lock().expect("log").clone();
    assert_eq!(log.len(), 4, "{log:?}");
    assert!(
        log[2..].iter().all(|l| l.starts_with("drain europe-f")),
        "{log:?}"
    );
    let json = serde_json::to_value(handle.status()).expect("status serialises");
    assert_eq!(json["regions"][0]["region"], "europe");
    assert!(
        json["regions"][0]["history"]
            .as_array()
            .is_some_and(|h| !h.is_empty())
    );
    let later = handle.status_since(Some(status.now_ms + 60_000));
    assert!(later.events.is_empty());
    handle.stop().await;
}

// ---------------------------------------------------------------- end to end

const CHUNK: u64 = 16 * 1024;
const SIZE: u64 = 40_000;
const OBJECTS: usize = 24;
const WORKERS: usize = 6;

fn path(i: usize) -> String {
    format!("/synthetic/as-{i}?size={SIZE}")
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// One viewer request through the router; a failure is described.
async fn view(client: &reqwest::Client, router: &str, i: usize) -> Result<(), String> {
    let r = client
        .get(format!("{router}{}", path(i)))
        .send()
        .await
        .map_err(|e| format!("router: {e}"))?;
    if r.status() != 302 {
        return Err(format!("router answered {}", r.status()));
    }
    let edge = r
        .headers()
        .get("x-cdn-edge")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if edge == "origin" || edge.is_empty() {
        return Err("routed to the origin".into());
    }
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Location")?
        .to_owned();
    let r = client
        .get(&location)
        .send()
        .await
        .map_err(|e| format!("{edge}: {e}"))?;
    if r.status() != 200 {
        return Err(format!("{edge} answered {}", r.status()));
    }
    let body = r.bytes().await.map_err(|e| format!("{edge} body: {e}"))?;
    if body != common::synthetic(&format!("as-{i}"), 0..=SIZE - 1) {
        return Err(format!("{edge}: wrong bytes for {}", path(i)));
    }
    Ok(())
}

/// Viewers from 127.1.0.x (Europe) sending `rate` requests/s in total until it is set to
/// `u64::MAX`.
fn viewers(
    router: String,
    rate: Arc<AtomicU64>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..WORKERS)
        .map(|w| {
            let (router, rate, tally) = (router.clone(), rate.clone(), tally.clone());
            tokio::spawn(async move {
                let client = common::client_from_with(
                    &format!("127.1.0.{}", 10 + w),
                    Duration::from_secs(10),
                );
                let mut n = w;
                let mut next = tokio::time::Instant::now();
                loop {
                    let r = rate.load(Ordering::Relaxed);
                    if r == u64::MAX {
                        return;
                    }
                    if r == 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        next = tokio::time::Instant::now();
                        continue;
                    }
                    next += Duration::from_secs_f64(WORKERS as f64 / r as f64);
                    tokio::time::sleep_until(next).await;
                    n = (n + 7) % OBJECTS;
                    match view(&client, &router, n).await {
                        Ok(()) => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => tally.failures.lock().expect("tally").push(e),
                    }
                }
            })
        })
        .collect()
}

fn requests_served(fleet: &InProcessFleet, name: &str) -> f64 {
    fleet.edge(name).map_or(0.0, |e| {
        cdn_http::metrics::sum(&e.metrics.render(), "cdn_edge_requests_total")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_ramp_starts_an_edge_that_serves_then_drains_it_with_zero_failed_requests() {
    let origin = common::start_origin(&common::media_root(), &Default::default()).await;
    let router_cfg = cdn_geo_router::RouterConfig::parse(
        &format!(
            "origin_url = \"{}\"\n\
         [geo_miss]\nlatitude = 30.0\nlongitude = -30.0\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 300\n",
            origin.url()
        ),
        "router.toml",
    )
    .expect("router config");
    let db = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/geo/lab-geo.mmdb");
    let router = Arc::new(
        cdn_geo_router::spawn(router_cfg, &db, common::listener().await)
            .await
            .expect("router starts"),
    );
    let router_url = router.url();
    let peer_dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("autoscale-e2e-{}", std::process::id()));
    let template = cdn_edge::EdgeConfig {
        origin: origin.url(),
        capacity: 64 << 20,
        chunk_size: CHUNK,
        ..Default::default()
    };
    let fleet = Arc::new(
        InProcessFleet::new(
            router.clone(),
            template,
            vec![Site {
                region: "europe".into(),
                latitude: 50.11,
                longitude: 8.68,
                max_edges: 2,
            }],
            FleetOptions {
                ready_timeout: 5 * S,
                drain_grace: Duration::from_millis(500),
                drain_timeout: 5 * S,
                peer_dir: Some(peer_dir.clone()),
            },
        )
        .expect("fleet"),
    );
    let first = fleet.start_edge("europe").await.expect("first edge");
    assert_eq!(first, "europe-1");
    // Warm the first edge with every object (its sibling will find them there).
    let warm = common::client_from_with("127.1.0.9", Duration::from_secs(10));
    for i in 0..OBJECTS {
        view(&warm, &router_url, i).await.expect("warm-up");
    }

    let cfg = AutoscaleConfig {
        capacity_rps: 20.0,
        target_utilisation_pct: 70.0, // 14 req/s per edge
        min_edges: 1,
        max_edges: 2,
        scale_out_cooldown: S,
        scale_in_cooldown: 3 * S,
        inflight_per_edge: None,
    };
    let handle = driver::spawn(
        fleet.clone(),
        HttpObserver::new(&router_url, S),
        vec![RegionSpec {
            region: "europe".into(),
            config: cfg,
            edges: vec![first.clone()],
        }],
        Duration::from_millis(200),
    )
    .expect("autoscaler");

    let rate = Arc::new(AtomicU64::new(5));
    let tally = Arc::new(Tally::default());
    let tasks = viewers(router_url.clone(), rate.clone(), tally.clone());

    // Low load: one edge is enough.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        handle.edges("europe"),
        [first.as_str()],
        "{:?}",
        handle.status()
    );

    // Ramp up to 30 req/s: more than one edge at 70 % of 20 req/s.
    rate.store(30, Ordering::Relaxed);
    assert!(
        wait_for(10 * S, || handle.edges("europe").len() == 2).await,
        "no scale-out: {:?}",
        handle.status()
    );
    let second = handle.edges("europe")[1].clone();
    assert_eq!(second, "europe-2");
    assert!(
        wait_for(10 * S, || requests_served(&fleet, &second) >= 10.0).await,
        "the new edge serves nothing"
    );
    let second_url = fleet.url(&second).expect("running");
    let second_metrics = fleet.edge(&second).expect("running").metrics.render();
    let from_peers = cdn_http::metrics::sample(
        &second_metrics,
        "cdn_edge_peer_fetches_total{result=\"found\"}",
    )
    .unwrap_or(0.0);
    assert!(
        from_peers > 0.0,
        "the new edge did not warm from its sibling:\n{second_metrics}"
    );

    // Demand falls: after the scale-in cooldown the new edge is drained and stopped.
    rate.store(4, Ordering::Relaxed);
    assert!(
        wait_for(15 * S, || {
            handle
                .status()
                .events
                .iter()
                .any(|e| e.kind == EventKind::EdgeStopped && e.edge.as_deref() == Some(&second))
        })
        .await,
        "no scale-in: {:?}",
        handle.status().events
    );
    assert_eq!(fleet.edges("europe"), [first.as_str()]);
    assert_eq!(handle.edges("europe"), [first.as_str()]);
    assert!(
        router.edges().iter().all(|e| e.name != second),
        "still in the router"
    );
    // Viewers go on to the remaining edge.
    tokio::time::sleep(S).await;
    rate.store(u64::MAX, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("viewer");
    }
    let status = handle.status();
    handle.stop().await;

    let failures = tally.failures.lock().expect("tally").clone();
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {failures:?}",
        failures.len(),
        ok
    );
    assert!(ok >= 60, "only {ok} requests");
    let kinds: Vec<EventKind> = status.events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventKind::ScaleOut,
            EventKind::EdgeStarted,
            EventKind::ScaleIn,
            EventKind::EdgeStopped
        ],
        "{:?}",
        status.events
    );
    assert!(
        status.events[0].reason.contains("req/s"),
        "{:?}",
        status.events[0]
    );
    // The stopped edge is gone for good.
    cdn_http::tls::install_crypto_provider();
    assert!(reqwest::get(format!("{second_url}/healthz")).await.is_err());

    fleet.stop_all().await;
    drop(fleet);
    Arc::try_unwrap(router)
        .expect("router not shared any more")
        .stop()
        .await;
    origin.stop().await;
    let _ = std::fs::remove_dir_all(&peer_dir);
}
