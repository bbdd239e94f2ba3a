//! Tests of capacity planning (issue 9): the formula and its edge cases, the plan's
//! recommendations, and the `cdn plan` command line (output and invalid input).

mod common;

use std::process::Command;

use cdn_lab::plan::{CachingReason, Plan, PlanError, PlanInput, Recommendation, edges_needed};

#[test]
fn formula_is_exact_on_the_numbers_as_written() {
    // 700 / (100 × 0.7) = 10 exactly; floats give 10.000000000000002 for some of these.
    assert_eq!(edges_needed(700.0, 100.0, 70.0), Ok(10));
    assert_eq!(edges_needed(700.1, 100.0, 70.0), Ok(11));
    assert_eq!(edges_needed(699.9, 100.0, 70.0), Ok(10));
    assert_eq!(edges_needed(0.3, 0.1, 100.0), Ok(3)); // 0.3 / 0.1 is 2.9999999999999996 in f64
    assert_eq!(edges_needed(0.1 + 0.2, 0.1, 100.0), Ok(3)); // 0.30000000000000004 reads 0.3
    assert_eq!(edges_needed(1.0, 1.0, 100.0), Ok(1));
    assert_eq!(edges_needed(630.0, 90.0, 70.0), Ok(10)); // 630 / 63
    assert_eq!(edges_needed(5600.0, 800.0, 70.0), Ok(10)); // 5600 / 560
    assert_eq!(edges_needed(4_294_967_295.0, 1.0, 100.0), Ok(u32::MAX));
    assert_eq!(
        edges_needed(4_294_967_296.0, 1.0, 100.0),
        Err(PlanError::TooManyEdges(4_294_967_296))
    );
}

#[test]
fn never_exceeds_the_target_and_never_one_too_many() {
    // Every integer combination in a range, checked with integer arithmetic: n edges keep
    // utilisation ≤ target, n - 1 would not.
    for rate in (0..=2000u64).step_by(7) {
        for capacity in [1u64, 3, 7, 10, 33, 100, 250] {
            for target in [1u64, 10, 33, 50, 66, 70, 75, 80, 99, 100] {
                let n = u64::from(
                    edges_needed(rate as f64, capacity as f64, target as f64).expect("valid"),
                );
                // rate / (n × capacity) ≤ target / 100  ⇔  100 × rate ≤ n × capacity × target
                assert!(
                    100 * rate <= n * capacity * target,
                    "{rate} {capacity} {target} → {n}"
                );
                if n > 0 {
                    assert!(
                        100 * rate > (n - 1) * capacity * target,
                        "{rate} {capacity} {target} → {n} is one too many"
                    );
                }
            }
        }
    }
    // And with tenths of a percent: 700 req/s, 100 per edge, 70.0 %..70.9 %.
    for tenth in 0..10 {
        let target = 70.0 + f64::from(tenth) / 10.0;
        let n = edges_needed(700.0, 100.0, target).expect("valid");
        assert_eq!(n, 10, "target {target}");
    }
}

#[test]
fn invalid_input_is_a_clear_error() {
    assert_eq!(edges_needed(10.0, 0.0, 70.0), Err(PlanError::Capacity(0.0)));
    assert_eq!(
        edges_needed(10.0, -5.0, 70.0),
        Err(PlanError::Capacity(-5.0))
    );
    assert!(matches!(
        edges_needed(10.0, f64::NAN, 70.0),
        Err(PlanError::Capacity(_))
    ));
    assert_eq!(
        edges_needed(10.0, 0.0000001, 70.0),
        Err(PlanError::Capacity(0.0000001)),
        "below a millionth"
    );
    assert_eq!(
        edges_needed(10.0, 100.0, 0.0),
        Err(PlanError::Utilisation(0.0))
    );
    assert_eq!(
        edges_needed(10.0, 100.0, 100.5),
        Err(PlanError::Utilisation(100.5))
    );
    assert_eq!(
        edges_needed(10.0, 100.0, -1.0),
        Err(PlanError::Utilisation(-1.0))
    );
    assert_eq!(edges_needed(10.0, 100.0, 100.0), Ok(1), "100 % is allowed");
    assert_eq!(edges_needed(-1.0, 100.0, 70.0), Err(PlanError::Rate(-1.0)));
    assert!(matches!(
        edges_needed(f64::INFINITY, 100.0, 70.0),
        Err(PlanError::Rate(_))
    ));
    assert!(matches!(
        edges_needed(2e15, 100.0, 70.0),
        Err(PlanError::TooLarge { .. })
    ));
    assert!(matches!(
        edges_needed(1e15, 0.001, 1.0),
        Err(PlanError::TooManyEdges(_))
    ));
    let msg = PlanError::Capacity(0.0).to_string();
    assert!(msg.contains("capacity must be a positive"), "{msg}");
}

#[test]
fn rate_zero_still_needs_the_minimum() {
    assert_eq!(edges_needed(0.0, 100.0, 70.0), Ok(0));
    let plan = Plan::compute(PlanInput::new(0.0, 100.0, 70.0)).expect("valid");
    assert_eq!(plan.needed, 1);
    assert_eq!(plan.needed_by_rate, 0);
    let plan = Plan::compute(PlanInput {
        min_edges: 3,
        ..PlanInput::new(0.0, 100.0, 70.0)
    })
    .expect("valid");
    assert_eq!(plan.needed, 3);
    assert_eq!(plan.utilisation_planned_pct, Some(0.0));
    let plan = Plan::compute(PlanInput {
        min_edges: 0,
        ..PlanInput::new(0.0, 100.0, 70.0)
    })
    .expect("valid");
    assert_eq!(plan.needed, 0);
    assert_eq!(plan.utilisation_planned_pct, None);
}

#[test]
fn recommends_scaling_out_in_or_holding() {
    let with = |current| {
        Plan::compute(PlanInput {
            current: Some(current),
            ..PlanInput::new(700.0, 100.0, 70.0)
        })
        .expect("valid")
    };
    let out = with(8);
    assert_eq!(out.needed, 10);
    assert_eq!(out.utilisation_now_pct, Some(87.5));
    assert_eq!(out.utilisation_planned_pct, Some(70.0));
    assert_eq!(
        out.recommendations,
        vec![Recommendation::ScaleOut { from: 8, to: 10 }]
    );
    assert_eq!(
        with(14).recommendations,
        vec![Recommendation::ScaleIn { from: 14, to: 10 }]
    );
    assert_eq!(
        with(10).recommendations,
        vec![Recommendation::Hold { edges: 10 }]
    );
    let none = with(0);
    assert_eq!(none.utilisation_now_pct, None);
    assert_eq!(
        none.recommendations,
        vec![Recommendation::ScaleOut { from: 0, to: 10 }]
    );
}

#[test]
fn recommends_caching_near_saturation_or_at_a_low_hit_ratio() {
    let saturated = Plan::compute(PlanInput {
        current: Some(7),
        ..PlanInput::new(650.0, 100.0, 70.0)
    })
    .expect("valid");
    assert!(
        saturated
            .recommendations
            .contains(&Recommendation::StrengthenCaching(
                CachingReason::NearSaturation {
                    utilisation_pct: 650.0 / 7.0,
                    saturation_pct: 90.0
                }
            )),
        "{:?}",
        saturated.recommendations
    );
    // A 95 % target is itself near saturation.
    let hot_target = Plan::compute(PlanInput::new(950.0, 100.0, 95.0)).expect("valid");
    assert!(matches!(
        hot_target.recommendations[..],
        [Recommendation::StrengthenCaching(
            CachingReason::NearSaturation { .. }
        )]
    ));
    let low_hits = Plan::compute(PlanInput {
        hit_ratio_pct: Some(72.0),
        ..PlanInput::new(100.0, 100.0, 70.0)
    })
    .expect("valid");
    assert_eq!(
        low_hits.recommendations,
        vec![Recommendation::StrengthenCaching(
            CachingReason::LowHitRatio {
                hit_ratio_pct: 72.0,
                min_pct: 90.0
            }
        )]
    );
    let fine = Plan::compute(PlanInput {
        hit_ratio_pct: Some(97.0),
        current: Some(2),
        ..PlanInput::new(100.0, 100.0, 70.0)
    })
    .expect("valid");
    assert_eq!(
        fine.recommendations,
        vec![Recommendation::Hold { edges: 2 }]
    );
    assert_eq!(
        Plan::compute(PlanInput {
            hit_ratio_pct: Some(101.0),
            ..PlanInput::new(100.0, 100.0, 70.0)
        }),
        Err(PlanError::HitRatio(101.0))
    );
}

#[test]
fn recommends_the_origin_when_its_egress_is_the_bottleneck() {
    let p = Plan::compute(PlanInput {
        origin_egress_mbps: Some(900.0),
        origin_capacity_mbps: Some(1000.0),
        ..PlanInput::new(100.0, 100.0, 70.0)
    })
    .expect("valid");
    assert_eq!(
        p.recommendations,
        vec![Recommendation::CheckOrigin {
            egress_mbps: 900.0,
            capacity_mbps: 1000.0,
            utilisation_pct: 90.0
        }]
    );
    let p = Plan::compute(PlanInput {
        origin_egress_mbps: Some(300.0),
        origin_capacity_mbps: Some(1000.0),
        ..PlanInput::new(100.0, 100.0, 70.0)
    })
    .expect("valid");
    assert!(p.recommendations.is_empty());
    assert_eq!(
        Plan::compute(PlanInput {
            origin_capacity_mbps: Some(0.0),
            ..PlanInput::new(100.0, 100.0, 70.0)
        }),
        Err(PlanError::OriginCapacity(0.0))
    );
}

fn cdn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdn"))
        .arg("plan")
        .args(args)
        .env("CDN_LOG", "warn")
        .output()
        .expect("cdn runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_prints_the_plan() {
    let (ok, out, err) = cdn(&[
        "--rate",
        "700",
        "--capacity",
        "100",
        "--target-utilisation",
        "70",
        "--current",
        "8",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("edges needed:    10\n"), "{out}");
    assert!(out.contains("utilisation now: 87.5% on 8 edges"), "{out}");
    assert!(out.contains("planned:         70.0% on 10 edges"), "{out}");
    assert!(out.contains("scale out from 8 to 10 edges"), "{out}");

    let (ok, out, err) = cdn(&[
        "--rate",
        "0",
        "--capacity",
        "100",
        "--min",
        "2",
        "--hit-ratio",
        "60",
        "--origin-egress-mbps",
        "950",
        "--origin-capacity-mbps",
        "1000",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("edges needed:    2\n"), "{out}");
    assert!(out.contains("raised to the minimum of 2"), "{out}");
    assert!(out.contains("strengthen caching: hit ratio 60.0%"), "{out}");
    assert!(out.contains("look at the origin"), "{out}");

    let (ok, out, err) = cdn(&["--rate", "700", "--capacity", "100", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["needed"], 10);
    assert_eq!(v["target_pct"], 70.0);
}

#[test]
fn cli_refuses_invalid_input_clearly() {
    for (args, want) in [
        (
            &["--rate", "10", "--capacity", "0"][..],
            "capacity must be a positive",
        ),
        (
            &["--rate", "10", "--capacity", "-3"][..],
            "capacity must be a positive",
        ),
        (
            &[
                "--rate",
                "10",
                "--capacity",
                "100",
                "--target-utilisation",
                "0",
            ][..],
            "target utilisation must be a percentage in (0, 100]",
        ),
        (
            &[
                "--rate",
                "10",
                "--capacity",
                "100",
                "--target-utilisation",
                "101",
            ][..],
            "target utilisation must be a percentage in (0, 100]",
        ),
        (
            &["--rate", "-1", "--capacity", "100"][..],
            "request rate must be zero or a positive",
        ),
        (
            &["--rate", "10", "--capacity", "100", "--current", "-2"][..],
            "current edge count must be zero or positive, got -2",
        ),
        (
            &[
                "--rate",
                "10",
                "--capacity-file",
                "/nonexistent/edge-capacity.json",
            ][..],
            "--capacity is needed",
        ),
        (&["--capacity", "10"][..], "--rate"),
    ] {
        let (ok, out, err) = cdn(args);
        assert!(!ok, "{args:?} should fail: {out}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn from_lab_without_capacity_says_what_to_do() {
    let (ok, _, err) = cdn(&[
        "--from-lab",
        "--capacity-file",
        "/nonexistent/edge-capacity.json",
        "--router",
        "http://127.0.0.1:9",
    ]);
    assert!(!ok);
    assert!(err.contains("no per-edge capacity"), "{err}");
    assert!(err.contains("--capacity"), "{err}");
}

/// `cdn plan --from-lab` against a live router and edge (in this test's process) while
/// viewers from Europe send about 20 requests/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_lab_measures_the_rate_per_region() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    let origin = common::start_origin(&common::media_root(), &Default::default()).await;
    let (edge, _) = common::start_edge(&origin.url(), |c| {
        c.name = "eu-1".into();
        c.region = "europe".into();
    })
    .await;
    let router_cfg = cdn_geo_router::RouterConfig::parse(
        &format!(
            "origin_url = \"{}\"\n\
         [geo_miss]\nlatitude = 30.0\nlongitude = -30.0\n\
         [health]\ninterval_ms = 100\n\
         [[edge]]\nname = \"eu-1\"\nregion = \"europe\"\nlatitude = 50.11\nlongitude = 8.68\n\
         url = \"{}\"\n",
            origin.url(),
            edge.url()
        ),
        "router.toml",
    )
    .expect("router config");
    let db = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/geo/lab-geo.mmdb");
    let router = cdn_geo_router::spawn(router_cfg, &db, common::listener().await)
        .await
        .expect("router starts");
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (url, stop) = (router.url(), stop.clone());
        tokio::spawn(async move {
            cdn_http::tls::install_crypto_provider();
            let client = reqwest::Client::builder()
                .local_address("127.1.0.7".parse::<std::net::IpAddr>().expect("ip"))
                .no_proxy()
                .build()
                .expect("client");
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n = (n + 1) % 10;
                let r = client
                    .get(format!("{url}/synthetic/plan-{n}?size=1000"))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(r.status(), 200);
                r.bytes().await.expect("body");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let router_url = router.url();
    let out = tokio::task::spawn_blocking(move || {
        cdn(&[
            "--from-lab",
            "--router",
            &router_url,
            "--capacity",
            "5",
            "--sample-secs",
            "1.5",
            "--origin-capacity-mbps",
            "1000",
        ])
    })
    .await
    .expect("cdn plan");
    stop.store(true, Ordering::Relaxed);
    load.await.expect("load");
    let (ok, out, err) = out;
    assert!(ok, "{err}");
    assert!(out.contains("region europe"), "{out}");
    assert!(
        out.contains("capacity 5 req/s per edge (--capacity)"),
        "{out}"
    );
    // About 18 req/s on edges of 5 req/s at 70 %: 4 to 7 edges, and 1 runs now.
    let needed: u32 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("edges needed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("edges needed");
    assert!((4..=7).contains(&needed), "{out}");
    assert!(
        out.contains(&format!("scale out from 1 to {needed} edges")),
        "{out}"
    );
    assert!(out.contains("hit ratio:"), "{out}");
    assert!(out.contains("origin: "), "{out}");
    router.stop().await;
    edge.stop().await;
    origin.stop().await;
}
