//! Measuring a running lab, for `cdn plan --from-lab` and the autoscaler.
//!
//! One [`LabSample`] reads, over HTTP:
//! - the router's `/healthz` (every edge with its region, URL and health state) and
//!   `/metrics` (`cdn_router_routes_total{edge,reason}`: requests sent to each edge);
//! - each edge's `/metrics`: `cdn_edge_requests_total{cache}` (hit and stale count as served
//!   from cache), `cdn_edge_origin_bytes_total` and `cdn_edge_inflight_requests`.
//!
//! Two samples give, per region, the request rate (routes to the region's edges per second),
//! the hit ratio and the origin egress over the interval; in-flight requests are the later
//! sample's. Routes to the origin (every edge down) belong to no region and are reported
//! apart. Counters that went down (a restarted node) count from zero.
//!
//! The router is `--router`, else the `router` URL in the running lab's `lab-run/state.json`
//! (`--state`), else `http://127.0.0.1:8080`.
//!
//! # The capacity file
//! The requests/s one edge serves with its p99 under a target, as `cdn bench` measures it, is
//! read from `bench/results/edge-capacity.json` (`--capacity-file`):
//! ```json
//! {"requests_per_sec": 850.0, "p99_ms_target": 50.0, "measured": "2025-06-01T12:00:00Z"}
//! ```
//! Only `requests_per_sec` is required (> 0); other fields are shown and otherwise ignored.
//! Without the file, `--capacity` is required.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{Plan, PlanArgs, PlanInput, describe, origin_check};
use crate::scrape::Scraper;
use crate::state::{LabState, StateError};

/// Where `cdn bench` writes the measured capacity of one edge.
pub const DEFAULT_CAPACITY_FILE: &str = "bench/results/edge-capacity.json";

/// Where a running `cdn lab` describes itself ([`LabState`]: the router's URL among other things).
pub const DEFAULT_STATE_FILE: &str = "lab-run/state.json";
/// The lab's router when nothing else says.
pub const DEFAULT_ROUTER: &str = "http://127.0.0.1:8080";

/// The router to sample: `--router`, else the `router` of the lab's state file, else
/// [`DEFAULT_ROUTER`].
pub fn router_url(flag: Option<&str>, state: &Path) -> anyhow::Result<String> {
    if let Some(r) = flag {
        return Ok(r.to_owned());
    }
    match LabState::read(state) {
        Ok(s) => Ok(s.router),
        Err(StateError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(DEFAULT_ROUTER.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// The capacity of one edge as `cdn bench` measured it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeCapacity {
    /// Requests/s one edge serves with p99 under `p99_ms_target`.
    pub requests_per_sec: f64,
    /// The p99 latency target of the measurement, milliseconds.
    #[serde(default)]
    pub p99_ms_target: Option<f64>,
    /// When it was measured (free text, e.g. RFC 3339).
    #[serde(default)]
    pub measured: Option<String>,
}

/// Reads the capacity file; `Ok(None)` when it does not exist.
pub fn read_capacity(path: &Path) -> anyhow::Result<Option<EdgeCapacity>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let cap: EdgeCapacity = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an edge capacity file", path.display()))?;
    if !(cap.requests_per_sec.is_finite() && cap.requests_per_sec > 0.0) {
        anyhow::bail!(
            "{}: requests_per_sec must be a positive number, got {}",
            path.display(),
            cap.requests_per_sec
        );
    }
    Ok(Some(cap))
}

/// One edge as the router lists it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EdgeInfo {
    pub name: String,
    pub region: String,
    pub url: String,
    /// `up`, `overloaded`, `down` or `unknown`.
    pub state: String,
}

impl EdgeInfo {
    /// Passing its health checks (overloaded edges are up).
    pub fn is_up(&self) -> bool {
        self.state == "up" || self.state == "overloaded"
    }
}

/// One edge's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EdgeCounters {
    /// `cdn_edge_requests_total`, every cache label.
    pub requests: f64,
    /// Requests answered from cache (`hit` and `stale`).
    pub cached: f64,
    /// `cdn_edge_origin_bytes_total`.
    pub origin_bytes: f64,
    /// `cdn_edge_inflight_requests` when read.
    pub inflight: f64,
}

/// What the lab looked like at one instant.
#[derive(Debug, Clone)]
pub struct LabSample {
    pub at: Instant,
    /// The router's edges (its config now).
    pub edges: Vec<EdgeInfo>,
    /// `cdn_router_routes_total` summed over reasons, per edge (`origin` for the fallback).
    pub routes: BTreeMap<String, f64>,
    /// Counters of the edges that answered `/metrics`.
    pub counters: BTreeMap<String, EdgeCounters>,
}

/// The load of one region between two samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionLoad {
    pub region: String,
    /// Requests/s the router sent to the region's edges.
    pub rate: f64,
    /// Requests/s the region's edges served (a player redirected once fetches its segments
    /// straight from the edge, so this is the edges' own load).
    pub served_rate: f64,
    /// Edges the router has in the region now, and how many of them are up.
    pub edges: u32,
    pub edges_up: u32,
    /// In-flight requests on the region's edges at the later sample.
    pub inflight: f64,
    /// Share of the edges' requests answered from cache, percent (none without requests).
    pub hit_ratio_pct: Option<f64>,
    /// What the region's edges fetched from the origin, Mbit/s.
    pub origin_mbps: f64,
}

/// Loads of every region between two samples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Loads {
    pub secs: f64,
    pub regions: BTreeMap<String, RegionLoad>,
    /// Requests/s the router sent to the origin (no edge up).
    pub origin_fallback_rate: f64,
}

/// Takes samples of one lab over HTTP, remembering which region every edge it has seen
/// belongs to (so routes to an edge removed since still count for its region).
pub struct HttpSampler {
    scrape: Scraper,
    router: String,
    regions: BTreeMap<String, String>,
}

fn region_mut<'a>(
    regions: &'a mut BTreeMap<String, RegionLoad>,
    region: &str,
) -> &'a mut RegionLoad {
    regions
        .entry(region.to_owned())
        .or_insert_with(|| RegionLoad {
            region: region.to_owned(),
            rate: 0.0,
            served_rate: 0.0,
            edges: 0,
            edges_up: 0,
            inflight: 0.0,
            hit_ratio_pct: None,
            origin_mbps: 0.0,
        })
}

/// Growth of a counter; a counter that went down was reset and counts from zero.
fn delta(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

impl HttpSampler {
    /// A sampler of the router at `router` (base URL).
    pub fn new(router: &str) -> Self {
        cdn_http::tls::install_crypto_provider();
        HttpSampler {
            scrape: Scraper::new(Duration::from_secs(3)),
            router: router.trim_end_matches('/').to_owned(),
            regions: BTreeMap::new(),
        }
    }

    /// Reads the router, then every edge it lists. An edge that does not answer is left out
    /// of `counters` (and logged); a router that does not answer is an error.
    pub async fn sample(&mut self) -> anyhow::Result<LabSample> {
        #[derive(Deserialize)]
        struct Health {
            edges: Vec<EdgeInfo>,
        }
        let health: Health = self
            .scrape
            .json(&format!("{}/healthz", self.router))
            .await
            .with_context(|| format!("{}/healthz: not the router's health JSON", self.router))?;
        let metrics = self.scrape.metrics(&self.router).await?;
        let at = Instant::now();
        let mut routes = BTreeMap::new();
        for (labels, v) in metrics.samples(cdn_geo_router::metric_names::ROUTES_TOTAL) {
            if let Some(edge) = labels.get("edge") {
                *routes.entry(edge.clone()).or_insert(0.0) += v;
            }
        }
        let mut counters = BTreeMap::new();
        for e in &health.edges {
            self.regions.insert(e.name.clone(), e.region.clone());
            match self.scrape.metrics(&e.url).await {
                Ok(m) => {
                    use cdn_edge::metric_names as names;
                    let cached = m.sum_where(names::REQUESTS_TOTAL, "cache", "hit")
                        + m.sum_where(names::REQUESTS_TOTAL, "cache", "stale");
                    counters.insert(
                        e.name.clone(),
                        EdgeCounters {
                            requests: m.sum(names::REQUESTS_TOTAL),
                            cached,
                            origin_bytes: m.sum(names::ORIGIN_BYTES_TOTAL),
                            inflight: m.sum(names::INFLIGHT_REQUESTS),
                        },
                    );
                }
                Err(e) => tracing::debug!(error = %e, "edge metrics not read"),
            }
        }
        Ok(LabSample {
            at,
            edges: health.edges,
            routes,
            counters,
        })
    }

    /// The region of an edge the sampler has seen.
    pub fn region_of(&self, edge: &str) -> Option<&str> {
        self.regions.get(edge).map(String::as_str)
    }

    /// Per-region loads between `before` and `after`.
    pub fn loads(&self, before: &LabSample, after: &LabSample) -> Loads {
        let secs = after
            .at
            .saturating_duration_since(before.at)
            .as_secs_f64()
            .max(1e-3);
        let mut regions: BTreeMap<String, RegionLoad> = BTreeMap::new();
        for e in &after.edges {
            let r = region_mut(&mut regions, &e.region);
            r.edges += 1;
            r.edges_up += u32::from(e.is_up());
            r.inflight += after.counters.get(&e.name).map_or(0.0, |c| c.inflight);
        }
        let mut origin_fallback = 0.0;
        for (edge, &now) in &after.routes {
            let d = delta(before.routes.get(edge).copied().unwrap_or(0.0), now);
            match self.region_of(edge) {
                Some(region) => region_mut(&mut regions, region).rate += d / secs,
                None => origin_fallback += d / secs,
            }
        }
        let mut served: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
        for (edge, now) in &after.counters {
            let (Some(region), Some(was)) = (self.region_of(edge), before.counters.get(edge))
            else {
                continue;
            };
            let s = served.entry(region).or_default();
            s.0 += delta(was.requests, now.requests);
            s.1 += delta(was.cached, now.cached);
            region_mut(&mut regions, region).origin_mbps +=
                delta(was.origin_bytes, now.origin_bytes) * 8.0 / 1e6 / secs;
        }
        for (region, (requests, cached)) in served {
            let r = region_mut(&mut regions, region);
            r.served_rate = requests / secs;
            if requests > 0.0 {
                r.hit_ratio_pct = Some((cached / requests * 100.0).min(100.0));
            }
        }
        Loads {
            secs,
            regions,
            origin_fallback_rate: origin_fallback,
        }
    }
}

/// `cdn plan --from-lab`.
pub async fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let secs = args.sample_secs;
    if !(secs.is_finite() && secs > 0.0 && secs <= 3600.0) {
        anyhow::bail!("--sample-secs must be in (0, 3600], got {secs}");
    }
    let (capacity, source) = match args.capacity {
        Some(c) => (c, "--capacity".to_owned()),
        None => match read_capacity(&args.capacity_file)? {
            Some(c) => {
                let mut from = format!("{}", args.capacity_file.display());
                if let Some(p99) = c.p99_ms_target {
                    from.push_str(&format!(", p99 under {p99} ms"));
                }
                if let Some(m) = &c.measured {
                    from.push_str(&format!(", measured {m}"));
                }
                (c.requests_per_sec, from)
            }
            None => anyhow::bail!(
                "no per-edge capacity: {} does not exist; run the `cdn bench` load benchmark \
                 to measure it, or pass --capacity REQ_PER_SEC",
                args.capacity_file.display()
            ),
        },
    };
    // Check the numbers before spending the sampling time.
    super::validate(0.0, capacity, args.target_utilisation)?;
    let router = router_url(args.router.as_deref(), &args.state)?;
    let mut sampler = HttpSampler::new(&router);
    let before = sampler
        .sample()
        .await
        .with_context(|| format!("is the lab running? router {router}"))?;
    if !args.json {
        eprintln!("sampling {router} for {secs} s ...");
    }
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let after = sampler.sample().await?;
    let loads = sampler.loads(&before, &after);
    let mut plans = Vec::new();
    for load in loads.regions.values() {
        let mut input = args.input(load.rate, capacity)?;
        input.region = Some(load.region.clone());
        input.current = Some(load.edges);
        input.hit_ratio_pct = load.hit_ratio_pct;
        plans.push(Plan::compute(PlanInput {
            origin_egress_mbps: None,
            origin_capacity_mbps: None,
            ..input
        })?);
    }
    let origin_mbps: f64 = loads.regions.values().map(|r| r.origin_mbps).sum();
    let origin = args
        .origin_capacity_mbps
        .map(|c| {
            if c.is_finite() && c > 0.0 {
                Ok(origin_check(origin_mbps, c))
            } else {
                Err(super::PlanError::OriginCapacity(c))
            }
        })
        .transpose()?
        .flatten();
    if args.json {
        let out = serde_json::json!({
            "router": router,
            "sample_secs": loads.secs,
            "capacity": {"requests_per_sec": capacity, "source": source},
            "regions": plans,
            "loads": loads.regions,
            "origin_fallback_rate": loads.origin_fallback_rate,
            "origin_egress_mbps": origin_mbps,
            "origin": origin,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "measured over {:.1} s at {router}; capacity {} req/s per edge ({source})\n",
        loads.secs,
        super::num(capacity)
    );
    if plans.is_empty() {
        println!("the router has no edges");
    }
    for plan in &plans {
        println!("{}", plan.render());
    }
    if loads.origin_fallback_rate > 0.0 {
        println!(
            "origin fallback: {} req/s went straight to the origin (no edge up)",
            super::num(loads.origin_fallback_rate)
        );
    }
    match (args.origin_capacity_mbps, origin) {
        (_, Some(r)) => println!(
            "origin: {} Mbit/s egress\n  - {}",
            super::num(origin_mbps),
            describe(&r, args.target_utilisation)
        ),
        (Some(c), None) => println!(
            "origin: {} of {} Mbit/s egress",
            super::num(origin_mbps),
            super::num(c)
        ),
        (None, None) => println!("origin: {} Mbit/s egress", super::num(origin_mbps)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, routes: &[(&str, f64)], counters: &[(&str, f64, f64)]) -> LabSample {
        LabSample {
            at,
            edges: vec![
                EdgeInfo {
                    name: "eu-1".into(),
                    region: "europe".into(),
                    url: "http://127.0.0.1:1".into(),
                    state: "up".into(),
                },
                EdgeInfo {
                    name: "na-1".into(),
                    region: "north-america".into(),
                    url: "http://127.0.0.1:2".into(),
                    state: "down".into(),
                },
            ],
            routes: routes.iter().map(|(e, v)| (e.to_string(), *v)).collect(),
            counters: counters
                .iter()
                .map(|(e, r, c)| {
                    (
                        e.to_string(),
                        EdgeCounters {
                            requests: *r,
                            cached: *c,
                            origin_bytes: *r * 1000.0,
                            inflight: 2.0,
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn loads_are_rates_per_region() {
        let mut s = HttpSampler::new("http://127.0.0.1:9");
        s.regions.insert("eu-1".into(), "europe".into());
        s.regions.insert("eu-9".into(), "europe".into()); // removed since
        s.regions.insert("na-1".into(), "north-america".into());
        let t0 = Instant::now();
        let a = sample(
            t0,
            &[("eu-1", 100.0), ("eu-9", 10.0), ("origin", 0.0)],
            &[("eu-1", 100.0, 50.0)],
        );
        let b = sample(
            t0 + Duration::from_secs(2),
            &[
                ("eu-1", 120.0),
                ("eu-9", 30.0),
                ("na-1", 4.0),
                ("origin", 6.0),
            ],
            &[("eu-1", 140.0, 80.0), ("na-1", 5.0, 0.0)],
        );
        let l = s.loads(&a, &b);
        let eu = &l.regions["europe"];
        assert_eq!(eu.rate, 20.0); // (20 + 20) / 2 s
        assert_eq!(eu.edges, 1);
        assert_eq!(eu.edges_up, 1);
        assert_eq!(eu.inflight, 2.0);
        assert_eq!(eu.hit_ratio_pct, Some(75.0));
        assert_eq!(eu.origin_mbps, 40_000.0 * 8.0 / 1e6 / 2.0);
        let na = &l.regions["north-america"];
        assert_eq!(na.rate, 2.0);
        assert_eq!(na.edges_up, 0);
        assert_eq!(na.hit_ratio_pct, None, "no counters before");
        assert_eq!(l.origin_fallback_rate, 3.0);
        assert_eq!(delta(10.0, 3.0), 3.0, "a reset counter counts from zero");
    }

    #[test]
    fn router_from_flag_state_file_or_default() {
        let dir = std::env::temp_dir().join(format!("cdn-plan-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let state = dir.join("state.json");
        assert_eq!(router_url(None, &state).expect("default"), DEFAULT_ROUTER);
        let mut lab = LabState::example();
        lab.router = "http://127.0.0.1:18080".into();
        std::fs::write(&state, lab.to_json().expect("json")).expect("write");
        assert_eq!(
            router_url(None, &state).expect("state"),
            "http://127.0.0.1:18080"
        );
        assert_eq!(
            router_url(Some("http://r:1"), &state).expect("flag"),
            "http://r:1"
        );
        std::fs::write(&state, "{}").expect("write");
        assert!(router_url(None, &state).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn capacity_file() {
        let dir = std::env::temp_dir().join(format!("cdn-plan-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("edge-capacity.json");
        assert_eq!(read_capacity(&p).expect("missing is fine"), None);
        std::fs::write(
            &p,
            r#"{"requests_per_sec": 850, "p99_ms_target": 50, "measured": "2025-06-01", "extra": 1}"#,
        )
        .expect("write");
        let c = read_capacity(&p).expect("reads").expect("some");
        assert_eq!(c.requests_per_sec, 850.0);
        assert_eq!(c.p99_ms_target, Some(50.0));
        std::fs::write(&p, r#"{"requests_per_sec": 0}"#).expect("write");
        assert!(read_capacity(&p).is_err());
        std::fs::write(&p, "not json").expect("write");
        assert!(read_capacity(&p).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
