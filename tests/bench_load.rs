//! `cdn bench load` and `cdn bench compare` run end to end, briefly, and their reports add up.
//! No speed is asserted: speed lives in BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bench-tests")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn cdn(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_cdn"))
        .args(["--log", "warn"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cdn runs");
    assert!(
        out.status.success(),
        "cdn {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn n(v: &Value) -> u64 {
    v.as_u64().expect("a count")
}

#[test]
fn load_runs_three_modes_and_counts_add_up() {
    let dir = scratch("load");
    cdn(&[
        "bench",
        "load",
        "--viewers",
        "1",
        "--sessions",
        "2",
        "--videos",
        "3",
        "--median-chunks",
        "2",
        "--duration",
        "2",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).expect("report"))
            .expect("JSON");
    assert!(dir.join("load.svg").exists() && dir.join("report.md").exists());
    let modes = report["modes"].as_array().expect("modes");
    let names: Vec<&str> = modes.iter().map(|m| m["mode"].as_str().unwrap()).collect();
    assert_eq!(names, ["origin", "cdn", "cdn-peers"]);
    for m in modes {
        let regions = m["regions"].as_array().expect("regions");
        assert!(regions.len() >= 3, "every region of the lab has viewers");
        let total = &m["total"];
        for key in [
            "requests", "ok", "bytes", "sessions", "hits", "errors", "corrupt",
        ] {
            let sum: u64 = regions.iter().map(|r| n(&r[key])).sum();
            assert_eq!(sum, n(&total[key]), "{key}: regions add up to the total");
        }
        // Every request is accounted for once.
        assert_eq!(
            n(&total["requests"]),
            n(&total["ok"]) + n(&total["errors"]) + n(&total["bad_status"]) + n(&total["corrupt"])
        );
        assert!(n(&total["ok"]) > 0, "some chunks were played: {m}");
        assert_eq!(n(&total["corrupt"]), 0, "no corrupt body: {m}");
        assert_eq!(n(&total["status_5xx"]), 0, "no 5xx: {m}");
        assert!(
            n(&total["verified"]) >= n(&total["ok"]),
            "every body was compared"
        );
        assert!(n(&total["hits"]) <= n(&total["ok"]));
        let origin_requests = m["origin_requests"].as_f64().expect("origin requests");
        if m["mode"] == "origin" {
            // Straight to the origin: the origin answered every request the viewers sent.
            assert!(origin_requests >= n(&total["ok"]) as f64, "{m}");
            assert_eq!(n(&total["resolves"]), 0);
        } else {
            assert!(
                n(&total["resolves"]) > 0,
                "viewers resolve through the router"
            );
            assert!(!m["edges"].as_array().expect("edges").is_empty());
        }
    }
}

#[test]
fn compare_runs_against_the_edge_alone() {
    // nginx and Varnish are not installed in CI: the edge alone exercises the harness.
    let dir = scratch("compare");
    cdn(&[
        "bench",
        "compare",
        "--servers",
        "edge",
        "--duration",
        "1",
        "--connections",
        "4",
        "--objects-1m",
        "2",
        "--chunks-per-object",
        "2",
        "--objects-16k",
        "10",
        "--cold-clients",
        "20",
        "--cold-rounds",
        "1",
        "--out",
        dir.to_str().expect("utf-8 path"),
    ]);
    let csv = std::fs::read_to_string(dir.join("compare.csv")).expect("csv");
    let mut lines = csv.lines();
    let head: Vec<&str> = lines.next().expect("header").split(',').collect();
    let col = |name: &str| head.iter().position(|h| *h == name).expect(name);
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    let scenarios: Vec<&str> = rows.iter().map(|r| r[col("scenario")].as_str()).collect();
    assert_eq!(scenarios, ["hot-1m", "hot-16k", "cold"]);
    for r in &rows {
        let v = |c: &str| r[col(c)].parse::<f64>().expect(c);
        assert!(v("requests") > 0.0, "{r:?}");
        assert_eq!(v("errors") + v("bad_status") + v("corrupt"), 0.0, "{r:?}");
        if r[col("scenario")] == "cold" {
            // 20 clients, one cold object: the edge fetches it once.
            assert_eq!(v("origin_requests"), 1.0, "{r:?}");
            assert_eq!(v("verified"), 20.0);
        } else {
            assert_eq!(v("origin_requests"), 0.0, "warm objects are hits: {r:?}");
        }
    }
}
