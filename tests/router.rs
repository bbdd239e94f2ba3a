//! Integration tests of the geo-router (issue 4): a router in front of two or three real
//! (fake, see `common/router_fake_edge.rs`) edges on loopback. Simulated clients bind a source
//! address in 127.R.x.y (the lab's geo database maps those networks to regions); real public
//! addresses and IPv6 are checked with `/_route?ip=` against MaxMind's test database. Health
//! intervals are short (100-200 ms); tests wait for events (a route changes, `/healthz` reports
//! a state) and assert on the router's health records, never on how long something took: the
//! only time limit is a hang guard (`GUARD`) far beyond any loaded machine's delays.

#[path = "common/router_fake_edge.rs"]
mod router_fake_edge;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cdn_geo_router::{
    EdgeConfig, ForwardingHeader, GeoMissConfig, HealthConfig, LabConfig, RouterConfig,
    RouterHandle, TrustedProxy,
};
use futures::StreamExt;
use router_fake_edge::{FakeEdge, start_fake_edge};
use serde_json::Value;

const FRANKFURT: (f64, f64) = (50.11, 8.68);
const ASHBURN: (f64, f64) = (39.04, -77.49);
const SINGAPORE: (f64, f64) = (1.29, 103.85);
const MID_ATLANTIC: (f64, f64) = (30.0, -30.0);
const ORIGIN: &str = "http://127.0.0.1:8081";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/geo")
        .join(name)
}

fn lab_db() -> PathBuf {
    testdata("lab-geo.mmdb")
}

fn maxmind_db() -> PathBuf {
    testdata("GeoIP2-City-Test.mmdb")
}

/// A fresh directory under the target dir for files a test writes.
fn scratch_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("router-tests")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn edge(e: &FakeEdge, at: (f64, f64)) -> EdgeConfig {
    EdgeConfig {
        name: e.name.clone(),
        region: e.region.clone(),
        latitude: at.0,
        longitude: at.1,
        url: e.url(),
        weight: 1.0,
        health_url: None,
        https_url: None,
    }
}

fn config(edges: Vec<EdgeConfig>, interval_ms: u64) -> RouterConfig {
    RouterConfig {
        origin_url: ORIGIN.to_owned(),
        origin_https_url: None,
        tls: Default::default(),
        edges_dns: Vec::new(),
        dns: Default::default(),
        trusted_proxies: Vec::new(),
        geo_miss: GeoMissConfig {
            latitude: MID_ATLANTIC.0,
            longitude: MID_ATLANTIC.1,
            label: "mid-atlantic".to_owned(),
        },
        health: HealthConfig {
            interval_ms,
            timeout_ms: 200,
            ..HealthConfig::default()
        },
        lab: LabConfig::default(),
        lookup_cache_entries: 1000,
        watch_interval_ms: 100,
        edges,
        limits: Default::default(),
    }
}

async fn start_router(config: RouterConfig, db: &Path) -> RouterHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind router");
    cdn_geo_router::spawn(config, db, listener)
        .await
        .expect("router starts")
}

fn plain_client() -> reqwest::Client {
    cdn_http::tls::install_crypto_provider();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .expect("client")
}

#[derive(Debug)]
struct Redirect {
    status: u16,
    location: String,
    edge: String,
    reason: String,
    cache_control: String,
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn get_redirect(client: &reqwest::Client, url: &str) -> Redirect {
    get_redirect_with(client.get(url)).await
}

async fn get_redirect_with(req: reqwest::RequestBuilder) -> Redirect {
    let resp = req.send().await.expect("router answers");
    Redirect {
        status: resp.status().as_u16(),
        location: header(&resp, "location"),
        edge: header(&resp, "x-cdn-edge"),
        reason: header(&resp, "x-cdn-route-reason"),
        cache_control: header(&resp, "cache-control"),
    }
}

async fn route_json(router: &RouterHandle, query: &str) -> Value {
    let resp = plain_client()
        .get(format!("{}/_route?{query}", router.url()))
        .send()
        .await
        .expect("/_route answers");
    assert_eq!(resp.status(), 200, "/_route?{query}");
    json_of(resp).await
}

async fn json_of(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

async fn metrics(router: &RouterHandle) -> String {
    plain_client()
        .get(format!("{}/metrics", router.url()))
        .send()
        .await
        .expect("/metrics")
        .text()
        .await
        .expect("metrics text")
}

/// How long a wait may take before the test is declared hung (not a performance bound).
const GUARD: Duration = Duration::from_secs(120);

/// Polls `check` every 10 ms until it is true; the time it took, or `None` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// eu-1 (Frankfurt), na-1 (Ashburn), asia-1 (Singapore).
async fn three_regions() -> (FakeEdge, FakeEdge, FakeEdge) {
    (
        start_fake_edge("eu-1", "europe").await,
        start_fake_edge("na-1", "north-america").await,
        start_fake_edge("asia-1", "asia").await,
    )
}

fn three_region_edges(eu: &FakeEdge, na: &FakeEdge, asia: &FakeEdge) -> Vec<EdgeConfig> {
    vec![
        edge(eu, FRANKFURT),
        edge(na, ASHBURN),
        edge(asia, SINGAPORE),
    ]
}

#[tokio::test]
async fn simulated_clients_are_sent_to_their_nearest_edge() {
    let (eu, na, asia) = three_regions().await;
    let router = start_router(config(three_region_edges(&eu, &na, &asia), 200), &lab_db()).await;
    let path = "/videos/demo/master.m3u8?token=abc&x=1";
    let cases = [
        ("127.1.0.10", &eu),    // Frankfurt
        ("127.2.3.4", &na),     // Ashburn
        ("127.3.200.1", &asia), // Singapore
        ("127.4.0.7", &asia),   // Sydney: Singapore is nearest
        ("127.5.0.7", &na),     // São Paulo: Ashburn (7,600 km) beats Frankfurt (9,800 km)
    ];
    for (source, want) in cases {
        let client = common::client_from(source);
        let r = get_redirect(&client, &format!("{}{path}", router.url())).await;
        assert_eq!(r.status, 302, "{source}");
        assert_eq!(r.edge, want.name, "{source}");
        assert_eq!(
            r.location,
            format!("{}{path}", want.url()),
            "{source}: path and query kept"
        );
        assert_eq!(r.cache_control, "no-store");
        assert_eq!(r.reason, "nearest", "{source}");
        // The redirect leads to that edge.
        let body = client
            .get(&r.location)
            .send()
            .await
            .expect("edge answers")
            .text()
            .await
            .expect("body");
        assert_eq!(body, format!("edge {}: {path}", want.name));
    }
    // HEAD is routed too; other methods are not.
    let client = common::client_from("127.1.0.10");
    let r = get_redirect_with(client.head(format!("{}/v.ts", router.url()))).await;
    assert_eq!((r.status, r.edge.as_str()), (302, "eu-1"));
    let post = client
        .post(format!("{}/v.ts", router.url()))
        .send()
        .await
        .expect("answer");
    assert_eq!(post.status(), 405);
    // /_route explains the simulated client's choice.
    let j = route_json(&router, "ip=127.3.0.1&path=/videos/a.ts").await;
    assert_eq!(j["edge"], "asia-1");
    assert_eq!(j["region"], "asia");
    assert_eq!(j["reason"], "nearest");
    assert_eq!(j["lookup"]["city"], "Singapore");
    assert_eq!(j["distance_km"], 0.0);
    assert_eq!(j["url"], format!("{}/videos/a.ts", asia.url()));
    router.stop().await;
}

#[tokio::test]
async fn real_addresses_from_maxmind_test_database_route_to_nearest_region() {
    let (eu, na, asia) = three_regions().await;
    let router = start_router(
        config(three_region_edges(&eu, &na, &asia), 200),
        &maxmind_db(),
    )
    .await;
    let cases = [
        ("81.2.69.142", "eu-1", Some("London"), "GB"),
        ("175.16.199.1", "asia-1", Some("Changchun"), "CN"),
        ("216.160.83.56", "na-1", Some("Milton"), "US"),
        // IPv6 records of the same database.
        ("2001:218::1", "asia-1", None, "JP"),
        ("2001:480:10::1", "na-1", Some("San Diego"), "US"),
        ("2a02:f0a0::1", "eu-1", None, "GB"),
    ];
    for (ip, want, city, country) in cases {
        let j = route_json(&router, &format!("ip={ip}&path=/v/1.ts")).await;
        assert_eq!(j["edge"], want, "{ip}: {j}");
        assert_eq!(j["reason"], "nearest", "{ip}");
        assert_eq!(j["geo_miss"], false, "{ip}");
        assert_eq!(j["lookup"]["country"], country, "{ip}");
        if let Some(city) = city {
            assert_eq!(j["lookup"]["city"], city, "{ip}");
        }
        assert_eq!(j["client"]["source"], "query");
    }
    // London to Frankfurt is about 640 km.
    let j = route_json(&router, "ip=81.2.69.142").await;
    let km = j["distance_km"].as_f64().expect("distance");
    assert!((600.0..700.0).contains(&km), "{km}");
    // A record without coordinates (2.3.3.0/24 has only a continent) is a geo miss, and so is an
    // address the database does not know.
    let j = route_json(&router, "ip=2.3.3.3").await;
    assert_eq!(j["reason"], "geo-miss");
    assert_eq!(j["lookup"]["continent"], "EU");
    let j = route_json(&router, "ip=10.20.30.40").await;
    assert_eq!(j["reason"], "geo-miss");
    assert!(j["lookup"].is_null());
    assert_eq!(j["location"]["source"], "geo-miss");
    router.stop().await;
}

#[tokio::test]
async fn consistent_hashing_spreads_paths_evenly_and_keeps_each_on_one_edge() {
    let eu1 = start_fake_edge("eu-1", "europe").await;
    let eu2 = start_fake_edge("eu-2", "europe").await;
    let eu3 = start_fake_edge("eu-3", "europe").await;
    let na = start_fake_edge("na-1", "north-america").await;
    let edges = vec![
        edge(&eu1, FRANKFURT),
        edge(&eu2, FRANKFURT),
        edge(&eu3, FRANKFURT),
        edge(&na, ASHBURN),
    ];
    let router = start_router(config(edges, 200), &lab_db()).await;
    let base = router.url();
    let paths: Vec<String> = (0..1000)
        .map(|i| format!("/videos/{:03}/seg-{}.ts", i % 250, i / 250))
        .collect();
    let first = common::client_from("127.1.0.10");
    let second = common::client_from("127.1.77.3"); // another client of the same region
    let results: Vec<(String, String, String)> = futures::stream::iter(paths.iter().enumerate())
        .map(|(i, p)| {
            let (first, second, base) = (first.clone(), second.clone(), base.clone());
            async move {
                let a = get_redirect(&first, &format!("{base}{p}")).await;
                // The query is not part of the hash.
                let b = get_redirect(&second, &format!("{base}{p}?session={i}")).await;
                assert_eq!(a.status, 302);
                assert_eq!(a.reason, "hashed");
                (p.clone(), a.edge, b.edge)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for (p, a, b) in &results {
        assert_eq!(a, b, "{p} moved between edges");
        *counts.entry(a.clone()).or_default() += 1;
    }
    eprintln!("1000 paths over Europe's edges: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    let even = 1000.0 / 3.0;
    for (name, n) in &counts {
        assert!(name.starts_with("eu-"), "{counts:?}");
        let off = (*n as f64 - even).abs() / even;
        assert!(off <= 0.15, "{name} got {n} of 1000 paths ({counts:?})");
    }
    router.stop().await;
}

/// A path whose rendezvous owner in Europe is `owner`.
async fn path_owned_by(router: &RouterHandle, owner: &str) -> String {
    for i in 0..100 {
        let p = format!("/owned/{i}.ts");
        let j = route_json(router, &format!("ip=127.1.0.1&path={p}")).await;
        if j["edge"] == owner {
            return p;
        }
    }
    panic!("no path owned by {owner}");
}

/// An edge's health as the router reports it in `/healthz`, one consistent moment.
async fn edge_health(router: &RouterHandle, name: &str) -> Value {
    let health = plain_client()
        .get(format!("{}/healthz", router.url()))
        .send()
        .await
        .expect("/healthz");
    let health = json_of(health).await;
    health["edges"]
        .as_array()
        .expect("edges")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {health}"))
        .clone()
}

fn count(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Waits until the router reports `name` in `state`, checking on every report on the way that
/// the edge is down exactly when `down_after` failures in a row have been seen since it was
/// last up (and up again after `up_after` successes). Returns the report that showed `state`,
/// after checking that the streak that brought the edge there was exactly `threshold` checks
/// long: `state_since_check` is the `threshold`-th check of the current streak.
async fn wait_for_state(router: &RouterHandle, name: &str, state: &str, threshold: u32) -> Value {
    let streak = if state == "down" {
        "consecutive_failures"
    } else {
        "consecutive_successes"
    };
    let start = Instant::now();
    let report = loop {
        let report = edge_health(router, name).await;
        if report["state"] == state {
            break report;
        }
        assert!(
            start.elapsed() < GUARD,
            "{name} never reported {state}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let [checks, since, run] = [
        count(&report, "checks"),
        count(&report, "state_since_check"),
        count(&report, streak),
    ]
    .map(|n| i64::try_from(n).expect("count"));
    // The streak started at check `checks - run + 1`; the state changed at its threshold-th.
    let nth = since - (checks - run);
    assert_eq!(
        nth,
        i64::from(threshold),
        "{name} went {state} at check {nth} of its streak, not {threshold}: {report}"
    );
    report
}

#[tokio::test]
async fn killed_edge_is_taken_out_after_down_after_failed_checks_and_returns() {
    let interval = Duration::from_millis(200);
    let mut eu1 = start_fake_edge("eu-1", "europe").await;
    let eu2 = start_fake_edge("eu-2", "europe").await;
    let na = start_fake_edge("na-1", "north-america").await;
    let edges = vec![
        edge(&eu1, FRANKFURT),
        edge(&eu2, FRANKFURT),
        edge(&na, ASHBURN),
    ];
    let cfg = config(edges, interval.as_millis() as u64);
    let (down_after, up_after) = (cfg.health.down_after, cfg.health.up_after);
    assert_eq!((down_after, up_after), (3, 2));
    let router = start_router(cfg, &lab_db()).await;
    let path = path_owned_by(&router, "eu-1").await;
    let url = format!("{}{path}", router.url());
    let client = common::client_from("127.1.0.20");
    let r = get_redirect(&client, &url).await;
    assert_eq!((r.edge.as_str(), r.reason.as_str()), ("eu-1", "hashed"));
    let before = edge_health(&router, "eu-1").await;
    assert_eq!(before["state"], "up", "{before}");

    eu1.kill().await;
    // Down on exactly the third failed check in a row, not on the first or second.
    let down = wait_for_state(&router, "eu-1", "down", down_after).await;
    assert!(
        count(&down, "state_since_check") > count(&before, "checks"),
        "{before} {down}"
    );
    assert!(
        down["last_error"]
            .as_str()
            .is_some_and(|e| e.starts_with("no answer")),
        "{down}"
    );
    // Once down it gets no routes: its paths fail over inside the region.
    for _ in 0..20 {
        let r = get_redirect(&client, &url).await;
        assert_eq!((r.edge.as_str(), r.reason.as_str()), ("eu-2", "failover"));
    }
    let j = route_json(&router, &format!("ip=127.1.0.1&path={path}")).await;
    assert_eq!(j["skipped"][0]["edge"], "eu-1");
    assert_eq!(j["skipped"][0]["state"], "down");
    let m = metrics(&router).await;
    assert_eq!(
        cdn_http::metrics::sample(&m, "cdn_router_edges_up"),
        Some(2.0),
        "{m}"
    );
    let fails = cdn_http::metrics::sample(
        &m,
        "cdn_router_health_checks_total{edge=\"eu-1\",result=\"fail\"}",
    );
    assert!(fails.is_some_and(|n| n >= f64::from(down_after)), "{m}");

    // Back after exactly `up_after` good checks, and its paths with it.
    eu1.restart().await;
    wait_for_state(&router, "eu-1", "up", up_after).await;
    let r = get_redirect(&client, &url).await;
    assert_eq!((r.edge.as_str(), r.reason.as_str()), ("eu-1", "hashed"));
    router.stop().await;
}

#[tokio::test]
async fn draining_and_overloaded_edges_are_skipped() {
    let interval = Duration::from_millis(100);
    let eu1 = start_fake_edge("eu-1", "europe").await;
    let eu2 = start_fake_edge("eu-2", "europe").await;
    let na = start_fake_edge("na-1", "north-america").await;
    let edges = vec![
        edge(&eu1, FRANKFURT),
        edge(&eu2, FRANKFURT),
        edge(&na, ASHBURN),
    ];
    let router = start_router(config(edges, interval.as_millis() as u64), &lab_db()).await;
    let p1 = path_owned_by(&router, "eu-1").await;
    let p2 = path_owned_by(&router, "eu-2").await;
    let route = |p: String| {
        let router = &router;
        async move { route_json(router, &format!("ip=127.1.0.1&path={p}")).await }
    };

    // eu-1 answers 503 (draining): down after 3 failures, its paths go to eu-2.
    eu1.set_status(503);
    wait_until(GUARD, || async {
        route(p1.clone()).await["edge"] == "eu-2"
    })
    .await
    .expect("a draining edge is taken out");
    assert_eq!(route(p1.clone()).await["reason"], "failover");
    eu1.set_status(200);
    wait_until(GUARD, || async {
        route(p1.clone()).await["edge"] == "eu-1"
    })
    .await
    .expect("back after it recovers");

    // eu-2 reports load 0.95 (threshold 0.9): overloaded, its paths go to eu-1.
    eu2.set_load(Some(0.95));
    wait_until(GUARD, || async {
        route(p2.clone()).await["edge"] == "eu-1"
    })
    .await
    .expect("an overloaded edge is skipped");
    let j = route(p2.clone()).await;
    assert_eq!(j["reason"], "failover");
    assert_eq!(j["skipped"][0]["state"], "overloaded");
    // With the whole region overloaded, Europe loses to the next region...
    eu1.set_load(Some(0.99));
    wait_until(GUARD, || async {
        route(p2.clone()).await["edge"] == "na-1"
    })
    .await
    .expect("the next region takes an overloaded region's traffic");
    // ...and with nothing else up, an overloaded edge beats the origin.
    na.set_status(503);
    wait_until(GUARD, || async {
        let j = route(p2.clone()).await;
        j["reason"] == "failover" && j["edge"].as_str().is_some_and(|e| e.starts_with("eu-"))
    })
    .await
    .expect("overloaded edges are used before the origin");
    let m = metrics(&router).await;
    assert!(m.contains("cdn_router_edge_load{edge=\"eu-2\"}"), "{m}");
    router.stop().await;
}

#[tokio::test]
async fn every_edge_down_routes_to_the_origin() {
    let (mut eu, mut na, asia) = three_regions().await;
    let edges = three_region_edges(&eu, &na, &asia);
    let asia_url = asia.url();
    asia.stop().await;
    eu.kill().await;
    na.kill().await;
    let router = start_router(config(edges, 100), &lab_db()).await;
    // The first check of each edge failed at start-up: all down at once.
    let client = common::client_from("127.3.0.1");
    let r = get_redirect(&client, &format!("{}/videos/x.m3u8?q=1", router.url())).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.edge, "origin");
    assert_eq!(r.reason, "origin-fallback");
    assert_eq!(r.location, format!("{ORIGIN}/videos/x.m3u8?q=1"));
    assert_ne!(r.location, format!("{asia_url}/videos/x.m3u8?q=1"));
    let health = plain_client()
        .get(format!("{}/healthz", router.url()))
        .send()
        .await
        .expect("healthz");
    let health = json_of(health).await;
    assert_eq!(health["status"], "ok", "the router itself is fine");
    assert_eq!(health["edges_up"], 0);
    // An edge coming back is used again.
    eu.restart().await;
    wait_until(GUARD, || async {
        get_redirect(&client, &format!("{}/videos/x.m3u8", router.url()))
            .await
            .edge
            == "eu-1"
    })
    .await
    .expect("eu-1 is used once up");
    let m = metrics(&router).await;
    let to_origin = cdn_http::metrics::sample(
        &m,
        "cdn_router_routes_total{edge=\"origin\",reason=\"origin-fallback\"}",
    );
    assert!(to_origin.is_some_and(|n| n >= 1.0), "{m}");
    assert!(
        cdn_http::metrics::sample(
            &m,
            "cdn_router_routes_total{edge=\"eu-1\",reason=\"failover\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    router.stop().await;
}

#[tokio::test]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let (eu, na, asia) = three_regions().await;
    let mut cfg = config(three_region_edges(&eu, &na, &asia), 200);
    cfg.trusted_proxies = vec![
        trusted("127.9.0.0/16", ForwardingHeader::XForwardedFor),
        trusted("127.8.0.0/16", ForwardingHeader::Forwarded),
    ];
    let router = start_router(cfg, &lab_db()).await;
    let url = format!("{}/v/a.ts", router.url());

    // A trusted proxy (127.9.0.1) speaks for a client in Singapore.
    let proxy = common::client_from("127.9.0.1");
    let r = get_redirect_with(proxy.get(&url).header("x-forwarded-for", "127.3.0.7")).await;
    assert_eq!(r.edge, "asia-1");
    // The rightmost untrusted hop counts, not what the client claimed before it.
    let r = get_redirect_with(
        proxy
            .get(&url)
            .header("x-forwarded-for", "127.3.0.7, 127.2.0.5, 127.9.0.8"),
    )
    .await;
    assert_eq!(r.edge, "na-1");
    // RFC 7239 Forwarded from a proxy that sets it (127.8.0.1), IPv6 client.
    let r = get_redirect_with(
        common::client_from("127.8.0.1")
            .get(&url)
            .header("forwarded", "for=\"[fd00:3::42]:5000\";proto=http"),
    )
    .await;
    assert_eq!(r.edge, "asia-1");
    let j = proxy
        .get(format!("{}/_route?path=/v/a.ts", router.url()))
        .header("x-forwarded-for", "127.2.0.9")
        .send()
        .await
        .expect("route");
    let j = json_of(j).await;
    assert_eq!(j["client"]["ip"], "127.2.0.9");
    assert_eq!(j["client"]["source"], "x-forwarded-for");
    assert_eq!(j["edge"], "na-1");

    // An untrusted peer in Frankfurt cannot pretend to be in Singapore.
    let direct = common::client_from("127.1.0.7");
    let r = get_redirect_with(direct.get(&url).header("x-forwarded-for", "127.3.0.7")).await;
    assert_eq!(r.edge, "eu-1");
    let r = get_redirect_with(direct.get(&url).header("forwarded", "for=127.3.0.7")).await;
    assert_eq!(r.edge, "eu-1");
    router.stop().await;
}

fn trusted(net: &str, header: ForwardingHeader) -> TrustedProxy {
    TrustedProxy::new(net.parse().expect("net"), header)
}

/// A viewer behind a trusted proxy writes the header that proxy does not set, naming an
/// address in another region: the router reads only the proxy's own header, in both
/// directions, and with that header absent falls back to the proxy's address, not to the
/// viewer's header.
#[tokio::test]
async fn a_viewer_cannot_choose_its_edge_with_the_header_its_proxy_does_not_set() {
    let (eu, na, asia) = three_regions().await;
    let mut cfg = config(three_region_edges(&eu, &na, &asia), 200);
    cfg.trusted_proxies = vec![
        trusted("127.9.0.0/16", ForwardingHeader::XForwardedFor),
        trusted("127.8.0.0/16", ForwardingHeader::Forwarded),
    ];
    let router = start_router(cfg, &lab_db()).await;
    let url = format!("{}/v/spoof.ts", router.url());

    // The XFF proxy forwards a viewer in North America who claims Singapore in `Forwarded`.
    let xff_proxy = common::client_from("127.9.0.1");
    let r = get_redirect_with(
        xff_proxy
            .get(&url)
            .header("forwarded", "for=127.3.0.7")
            .header("x-forwarded-for", "127.2.0.7"),
    )
    .await;
    assert_eq!(
        (r.status, r.edge.as_str(), r.reason.as_str()),
        (302, "na-1", "nearest")
    );
    assert_eq!(r.location, format!("{}/v/spoof.ts", na.url()));
    let j = json_of(
        xff_proxy
            .get(format!("{}/_route?path=/v/spoof.ts", router.url()))
            .header("forwarded", "for=127.3.0.7")
            .header("x-forwarded-for", "127.2.0.7")
            .send()
            .await
            .expect("/_route"),
    )
    .await;
    assert_eq!(j["client"]["ip"], "127.2.0.7", "{j}");
    assert_eq!(j["edge"], "na-1", "{j}");
    assert_eq!(j["client"]["source"], "x-forwarded-for", "{j}");
    // The mirror case: a `Forwarded` proxy, the viewer in Europe claims Singapore in
    // `X-Forwarded-For`.
    let fwd_proxy = common::client_from("127.8.0.1");
    let r = get_redirect_with(
        fwd_proxy
            .get(&url)
            .header("x-forwarded-for", "127.3.0.7")
            .header("forwarded", "for=127.1.0.7"),
    )
    .await;
    assert_eq!(
        (r.status, r.edge.as_str(), r.reason.as_str()),
        (302, "eu-1", "nearest")
    );
    // Only the other header: the proxy's own address (no geo record: the geo-miss location,
    // mid-Atlantic, nearest to Frankfurt), never the viewer's claim.
    for (proxy, header) in [(&xff_proxy, "forwarded"), (&fwd_proxy, "x-forwarded-for")] {
        let value = if header == "forwarded" {
            "for=127.3.0.7"
        } else {
            "127.3.0.7"
        };
        let r = get_redirect_with(proxy.get(&url).header(header, value)).await;
        assert_eq!(
            (r.status, r.edge.as_str(), r.reason.as_str()),
            (302, "eu-1", "geo-miss"),
            "{header}"
        );
    }
    router.stop().await;
}

#[tokio::test]
async fn geo_miss_uses_the_configured_location() {
    let (eu, na, asia) = three_regions().await;
    let mut cfg = config(three_region_edges(&eu, &na, &asia), 200);
    // Put the geo-miss location next to Singapore so the effect is unmistakable.
    cfg.geo_miss = GeoMissConfig {
        latitude: 5.0,
        longitude: 100.0,
        label: "test-miss".to_owned(),
    };
    let router = start_router(cfg, &lab_db()).await;
    // 127.0.0.1 and 127.99.x.y have no record in the lab database.
    for source in ["127.0.0.1", "127.99.0.3"] {
        let r = get_redirect(
            &common::client_from(source),
            &format!("{}/v/m.ts", router.url()),
        )
        .await;
        assert_eq!(
            (r.edge.as_str(), r.reason.as_str()),
            ("asia-1", "geo-miss"),
            "{source}"
        );
    }
    let j = route_json(&router, "ip=127.99.0.3&path=/v/m.ts").await;
    assert_eq!(j["geo_miss"], true);
    assert_eq!(j["location"]["label"], "test-miss");
    assert_eq!(j["location"]["latitude"], 5.0);
    assert!(j["lookup"].is_null());
    let m = metrics(&router).await;
    assert_eq!(
        cdn_http::metrics::sample(&m, "cdn_router_geo_misses_total"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        cdn_http::metrics::sample(&m, "cdn_router_geo_lookups_total{result=\"miss\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(
        cdn_http::metrics::sample(
            &m,
            "cdn_router_routes_total{edge=\"asia-1\",reason=\"geo-miss\"}"
        ),
        Some(2.0),
        "{m}"
    );
    router.stop().await;
}

#[tokio::test]
async fn ipv6_clients_and_lookups() {
    let (eu, na, asia) = three_regions().await;
    let mut cfg = config(three_region_edges(&eu, &na, &asia), 200);
    cfg.trusted_proxies = vec![trusted("::1/128", ForwardingHeader::XForwardedFor)];
    cfg.geo_miss = GeoMissConfig {
        latitude: ASHBURN.0,
        longitude: ASHBURN.1,
        label: "test-miss".to_owned(),
    };
    // The lab database's IPv6 networks, looked up only.
    let router = start_router(cfg.clone(), &lab_db()).await;
    for (ip, want) in [
        ("fd00:1::5", "eu-1"),
        ("fd00:2::5", "na-1"),
        ("fd00:3:ffff::1", "asia-1"),
    ] {
        let j = route_json(&router, &format!("ip={ip}")).await;
        assert_eq!(j["edge"], want, "{ip}");
        assert_eq!(j["reason"], "nearest", "{ip}");
    }
    router.stop().await;

    // A router listening on [::1]; the client connects over IPv6 from ::1.
    let listener = match tokio::net::TcpListener::bind("[::1]:0").await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("skipping the IPv6 socket part: no ::1 ({e})");
            return;
        }
    };
    let router = cdn_geo_router::spawn(cfg, lab_db(), listener)
        .await
        .expect("router on ::1");
    assert!(router.addr().is_ipv6());
    let client = common::client_from("::1");
    let url = format!("{}/live/ch1.m3u8", router.url());
    // ::1 has no record: geo miss (configured location: Ashburn).
    let r = get_redirect(&client, &url).await;
    assert_eq!((r.edge.as_str(), r.reason.as_str()), ("na-1", "geo-miss"));
    // ::1 is a trusted proxy here; it forwards an IPv6 client in Singapore.
    let r = get_redirect_with(client.get(&url).header("x-forwarded-for", "fd00:3::77")).await;
    assert_eq!((r.edge.as_str(), r.reason.as_str()), ("asia-1", "nearest"));
    assert_eq!(r.location, format!("{}/live/ch1.m3u8", asia.url()));
    router.stop().await;
}

#[tokio::test]
async fn lab_override_only_when_switched_on() {
    let (eu, na, asia) = three_regions().await;
    let cfg = config(three_region_edges(&eu, &na, &asia), 200);
    let router = start_router(cfg.clone(), &lab_db()).await;
    let client = common::client_from("127.1.0.5");
    let url = format!("{}/v/o.ts?client_ip=127.3.0.1&a=1", router.url());
    // Off (the default): the parameter is ignored and passed through.
    let r = get_redirect(&client, &url).await;
    assert_eq!(r.edge, "eu-1");
    assert_eq!(
        r.location,
        format!("{}/v/o.ts?client_ip=127.3.0.1&a=1", eu.url())
    );

    let mut on = cfg;
    on.lab.allow_client_override = true;
    router.set_config(on).await.expect("new config");
    let r = get_redirect(&client, &url).await;
    assert_eq!(r.edge, "asia-1");
    assert_eq!(
        r.location,
        format!("{}/v/o.ts?a=1", asia.url()),
        "override stripped"
    );
    let r = get_redirect(
        &client,
        &format!("{}/v/o.ts?region=north-america", router.url()),
    )
    .await;
    assert_eq!(r.edge, "na-1");
    assert_eq!(r.location, format!("{}/v/o.ts", na.url()));
    let r = get_redirect(&client, &format!("{}/v/o.ts?region=atlantis", router.url())).await;
    assert_eq!(r.status, 400);
    let r = get_redirect(&client, &format!("{}/v/o.ts?client_ip=nope", router.url())).await;
    assert_eq!(r.status, 400);
    router.stop().await;
}

#[tokio::test]
async fn edges_can_be_added_and_removed_at_run_time() {
    let (eu, na, asia) = three_regions().await;
    let router = start_router(config(vec![edge(&eu, FRANKFURT)], 200), &lab_db()).await;
    let client = common::client_from("127.3.0.1");
    let url = format!("{}/v/r.ts", router.url());
    assert_eq!(get_redirect(&client, &url).await.edge, "eu-1");
    let mut cfg = (*router.config()).clone();
    cfg.edges = three_region_edges(&eu, &na, &asia);
    router.set_config(cfg.clone()).await.expect("add edges");
    assert_eq!(get_redirect(&client, &url).await.edge, "asia-1");
    assert_eq!(router.edges().len(), 3);
    cfg.edges.retain(|e| e.name != "asia-1");
    router.set_config(cfg.clone()).await.expect("remove edge");
    assert_eq!(get_redirect(&client, &url).await.edge, "eu-1");
    // A bad config is refused and changes nothing.
    cfg.edges[0].weight = -1.0;
    let err = router.set_config(cfg).await.expect_err("negative weight");
    assert!(err.to_string().contains("edge[0].weight"), "{err}");
    assert_eq!(router.edges().len(), 2);
    router.stop().await;
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn config_toml(edges: &[(&FakeEdge, (f64, f64))], extra: &str) -> String {
    let mut s = format!(
        "origin_url = \"{ORIGIN}\"\nwatch_interval_ms = 100\n{extra}\n\
         [geo_miss]\nlatitude = 30.0\nlongitude = -30.0\n\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 200\n"
    );
    for (e, (lat, lon)) in edges {
        s.push_str(&format!(
            "\n[[edge]]\nname = \"{}\"\nregion = \"{}\"\nlatitude = {lat}\nlongitude = {lon}\n\
             url = \"{}\"\n",
            e.name,
            e.region,
            e.url()
        ));
    }
    s
}

#[tokio::test]
async fn config_and_geo_database_reload_on_file_change_without_dropping_requests() {
    let (eu, na, asia) = three_regions().await;
    let dir = scratch_dir("reload");
    let cfg_path = dir.join("router.toml");
    let db_path = dir.join("geo.mmdb");
    write_atomically(&cfg_path, config_toml(&[(&eu, FRANKFURT)], "").as_bytes());
    std::fs::copy(lab_db(), &db_path).expect("copy db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let router = cdn_geo_router::spawn_from_files(&cfg_path, &db_path, listener)
        .await
        .expect("router from files");

    // Traffic keeps flowing while the files change under it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, url) = (stop.clone(), format!("{}/v/load.ts", router.url()));
        tokio::spawn(async move {
            let client = common::client_from("127.3.0.50");
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = get_redirect(&client, &url).await;
                assert_eq!(r.status, 302, "request {n} during reload");
                n += 1;
            }
            n
        })
    };

    let client = common::client_from("127.3.0.1");
    let url = format!("{}/v/r.ts", router.url());
    assert_eq!(get_redirect(&client, &url).await.edge, "eu-1");
    write_atomically(
        &cfg_path,
        config_toml(&[(&eu, FRANKFURT), (&na, ASHBURN), (&asia, SINGAPORE)], "").as_bytes(),
    );
    wait_until(GUARD, || async {
        get_redirect(&client, &url).await.edge == "asia-1"
    })
    .await
    .expect("the new edge list is picked up");

    // A broken edit is refused; the running config stays.
    write_atomically(&cfg_path, b"origin_url = \"http://x\"\nbogus = 1\n");
    wait_until(GUARD, || async {
        let m = metrics(&router).await;
        cdn_http::metrics::sample(
            &m,
            "cdn_router_reloads_total{file=\"config\",result=\"error\"}",
        )
        .is_some()
    })
    .await
    .expect("the bad edit is seen");
    assert_eq!(get_redirect(&client, &url).await.edge, "asia-1");

    // Swap the geo database: 81.2.69.142 is unknown to the lab database, London in MaxMind's.
    assert_eq!(
        route_json(&router, "ip=81.2.69.142").await["reason"],
        "geo-miss"
    );
    write_atomically(&db_path, &std::fs::read(maxmind_db()).expect("read"));
    wait_until(GUARD, || async {
        route_json(&router, "ip=81.2.69.142").await["lookup"]["city"] == "London"
    })
    .await
    .expect("the new geo database is picked up");
    // A corrupt database is refused too.
    write_atomically(&db_path, b"garbage");
    wait_until(GUARD, || async {
        let m = metrics(&router).await;
        cdn_http::metrics::sample(
            &m,
            "cdn_router_reloads_total{file=\"geo\",result=\"error\"}",
        )
        .is_some()
    })
    .await
    .expect("the corrupt database is seen");
    assert_eq!(
        route_json(&router, "ip=81.2.69.142").await["lookup"]["city"],
        "London"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = load.await.expect("load task");
    assert!(served > 10, "only {served} requests during the reloads");
    router.stop().await;
}

#[tokio::test]
async fn bad_database_and_config_files_are_rejected_with_clear_errors() {
    let (eu, _na, _asia) = three_regions().await;
    let dir = scratch_dir("bad-files");
    let cfg = config(vec![edge(&eu, FRANKFURT)], 200);
    let listener = || async {
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
    };

    let garbage = dir.join("garbage.mmdb");
    std::fs::write(&garbage, b"this is not a MaxMind database").expect("write");
    let err = cdn_geo_router::spawn(cfg.clone(), &garbage, listener().await)
        .await
        .expect_err("garbage database");
    let msg = err.to_string();
    assert!(msg.contains(&garbage.display().to_string()), "{msg}");
    assert!(msg.contains("not a MaxMind DB"), "{msg}");

    let truncated = dir.join("truncated.mmdb");
    let bytes = std::fs::read(maxmind_db()).expect("read");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).expect("write");
    let err = cdn_geo_router::spawn(cfg.clone(), &truncated, listener().await)
        .await
        .expect_err("truncated database");
    assert!(err.to_string().contains("truncated.mmdb"), "{err}");

    let missing = dir.join("missing.mmdb");
    let err = cdn_geo_router::spawn(cfg.clone(), &missing, listener().await)
        .await
        .expect_err("missing database");
    assert!(err.to_string().contains("missing.mmdb"), "{err}");

    let bad_cfg = dir.join("bad.toml");
    std::fs::write(
        &bad_cfg,
        config_toml(&[(&eu, FRANKFURT)], "").replace("region = ", "regoin = "),
    )
    .expect("write");
    let err = cdn_geo_router::spawn_from_files(&bad_cfg, lab_db(), listener().await)
        .await
        .expect_err("bad config");
    let msg = err.to_string();
    assert!(msg.contains("bad.toml"), "{msg}");
    assert!(msg.contains("bad.toml:14:"), "{msg}");
    assert!(msg.contains("regoin"), "{msg}");
}

/// The `cdn` binary: start-up errors name the file; SIGHUP reloads.
#[tokio::test]
async fn cli_router_reports_bad_files_and_reloads_on_sighup() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let bin = env!("CARGO_BIN_EXE_cdn");
    let dir = scratch_dir("cli");
    let example = testdata("router.example.toml");
    let garbage = dir.join("garbage.mmdb");
    std::fs::write(&garbage, b"nope").expect("write");
    let run = |args: Vec<String>| async move {
        tokio::process::Command::new(bin)
            .args(&args)
            .output()
            .await
            .expect("run cdn")
    };
    let s = |p: &Path| p.display().to_string();
    let args = |db: &Path, cfg: &Path| {
        vec![
            "router".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--geo-db".to_owned(),
            s(db),
            "--config".to_owned(),
            s(cfg),
        ]
    };
    let out = run(args(&garbage, &example)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&s(&garbage)) && stderr.contains("not a MaxMind DB"),
        "{stderr}"
    );
    let out = run(args(&lab_db(), &dir.join("nope.toml"))).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("nope.toml"), "{stderr}");

    // A running router; SIGHUP (file polling off) brings in a new edge.
    let eu = start_fake_edge("eu-1", "europe").await;
    let asia = start_fake_edge("asia-1", "asia").await;
    let cfg_path = dir.join("router.toml");
    let polling_off = "watch_interval_ms = 0";
    write_atomically(
        &cfg_path,
        config_toml(&[(&eu, FRANKFURT)], "")
            .replace("watch_interval_ms = 100", polling_off)
            .as_bytes(),
    );
    let mut child = tokio::process::Command::new(bin)
        .args(["--log-json", "--log", "info"])
        .args(args(&lab_db(), &cfg_path))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start cdn router");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut tx = Some(tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == "router listening"
                && let (Some(addr), Some(tx)) = (v["fields"]["addr"].as_str(), tx.take())
            {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = tokio::time::timeout(GUARD, rx)
        .await
        .expect("router starts in time")
        .expect("listening line");
    let base = format!("http://{addr}");
    let client = common::client_from("127.3.0.1");
    let url = format!("{base}/v/h.ts");
    assert_eq!(get_redirect(&client, &url).await.edge, "eu-1");
    write_atomically(
        &cfg_path,
        config_toml(&[(&eu, FRANKFURT), (&asia, SINGAPORE)], "")
            .replace("watch_interval_ms = 100", polling_off)
            .as_bytes(),
    );
    let pid = child.id().expect("pid").to_string();
    let hup = tokio::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .await
        .expect("kill -HUP");
    assert!(hup.success());
    wait_until(GUARD, || async {
        get_redirect(&client, &url).await.edge == "asia-1"
    })
    .await
    .expect("SIGHUP reloads the edge list");
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await;
    let status = tokio::time::timeout(GUARD, child.wait())
        .await
        .expect("router stops on SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

mod common;

/// The whole path with real nodes: a real origin, two real edges (Frankfurt, Singapore) and
/// the router. A viewer in Asia is sent to the Asian edge, which serves the bytes; when that
/// edge stops, viewers are sent to the European one once `down_after` checks failed, and back
/// once it returns on the same address and passed `up_after` checks.
#[tokio::test]
async fn real_edges_serve_routed_viewers_and_fail_over() {
    let interval = Duration::from_millis(200);
    let origin = common::start_origin(&common::media_root(), &Default::default()).await;
    let (eu, _) = common::start_edge(&origin.url(), |c| c.name = "eu-real".into()).await;
    let (asia, _) = common::start_edge(&origin.url(), |c| c.name = "asia-real".into()).await;
    let asia_addr = asia.addr;
    let real_edge = |name: &str, region: &str, url: String, at: (f64, f64)| EdgeConfig {
        name: name.into(),
        region: region.into(),
        latitude: at.0,
        longitude: at.1,
        url,
        weight: 1.0,
        health_url: None,
        https_url: None,
    };
    let edges = vec![
        real_edge("eu-real", "europe", eu.url(), FRANKFURT),
        real_edge("asia-real", "asia", asia.url(), SINGAPORE),
    ];
    let router = start_router(config(edges, interval.as_millis() as u64), &lab_db()).await;
    let viewer = common::client_from("127.3.0.7");
    let url = format!("{}/demo/seg_001.m4s", router.url());
    let want = std::fs::read(common::media_root().join("demo/seg_001.m4s")).unwrap();

    let r = get_redirect(&viewer, &url).await;
    assert_eq!((r.status, r.edge.as_str()), (302, "asia-real"));
    let resp = viewer.get(&r.location).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "cache-status").starts_with("asia-real;"));
    assert_eq!(&resp.bytes().await.unwrap()[..], &want[..]);

    asia.stop().await;
    // Down after exactly `down_after` failed checks; from then on its viewers fail over.
    wait_for_state(
        &router,
        "asia-real",
        "down",
        HealthConfig::default().down_after,
    )
    .await;
    let r = get_redirect(&viewer, &url).await;
    assert_eq!(
        (r.edge.as_str(), r.reason.as_str()),
        ("eu-real", "failover")
    );
    let resp = viewer.get(&r.location).send().await.unwrap();
    assert!(header(&resp, "cache-status").starts_with("eu-real;"));
    assert_eq!(&resp.bytes().await.unwrap()[..], &want[..]);

    let listener = tokio::net::TcpListener::bind(asia_addr).await.unwrap();
    let cfg = cdn_edge::EdgeConfig {
        name: "asia-real".into(),
        origin: origin.url(),
        capacity: 64 << 20,
        ..Default::default()
    };
    let (asia, _) = cdn_edge::spawn(listener, cfg).unwrap();
    wait_for_state(&router, "asia-real", "up", HealthConfig::default().up_after).await;
    assert_eq!(get_redirect(&viewer, &url).await.edge, "asia-real");
    router.stop().await;
    asia.stop().await;
    eu.stop().await;
    origin.stop().await;
}
