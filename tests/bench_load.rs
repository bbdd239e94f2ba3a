//! `cdn bench load`, `cdn bench compare` and `cdn bench capacity` run end to end, briefly, and
//! their reports add up. No speed is asserted: speed lives in BENCHMARKS.md.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    // One video and two sessions per viewer: every viewer plays it twice through the same
    // edge, so the second session starts on chunks that edge holds. Viewers stop after their
    // sessions; the duration only keeps a stuck run from lasting forever.
    cdn(&[
        "bench",
        "load",
        "--viewers",
        "1",
        "--sessions",
        "2",
        "--videos",
        "1",
        "--median-chunks",
        "2",
        "--duration",
        "300",
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
        let hits = n(&total["hits"]);
        let origin_requests = m["origin_requests"].as_f64().expect("origin requests");
        if m["mode"] == "origin" {
            // Straight to the origin: the origin answered every request the viewers sent,
            // and no response said it came from a cache.
            assert!(origin_requests >= n(&total["ok"]) as f64, "{m}");
            assert_eq!(n(&total["resolves"]), 0);
            assert_eq!(hits, 0, "a hit without a cache: {m}");
        } else {
            // The viewers' count of hits (Cache-Status) against the edges' own counters:
            // every hit a viewer saw, an edge counted as a hit, or as stale served without
            // the origin; every hit an edge counted reached a viewer as one, unless that
            // request failed.
            let edges = m["edges"].as_array().expect("edges");
            let edge =
                |key: &str| -> f64 { edges.iter().map(|e| e[key].as_f64().expect(key)).sum() };
            let (edge_hits, edge_stale) = (edge("hits"), edge("stale"));
            assert!(
                hits as f64 <= edge_hits + edge_stale,
                "{hits} hits seen: {m}"
            );
            let failed = n(&total["errors"]) + n(&total["bad_status"]) + n(&total["corrupt"]);
            assert!(
                edge_hits <= (hits + failed) as f64,
                "{edge_hits} hits served: {m}"
            );
            // The second session of each viewer replays the first.
            assert!(hits > 0, "no hit on a replayed video: {m}");
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
    // Every scenario with access logs off, then on (the default `--access-log off,on`).
    let scenarios: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[col("scenario")].as_str(), r[col("logs")].as_str()))
        .collect();
    assert_eq!(
        scenarios,
        [
            ("hot-1m", "off"),
            ("hot-1m", "on"),
            ("hot-16k", "off"),
            ("hot-16k", "on"),
            ("cold", "off"),
            ("cold", "on")
        ]
    );
    // The edge wrote its access log in the `on` runs only (the log's tail is kept).
    let log = |mode: &str| {
        std::fs::read_to_string(dir.join(format!("edge-logs-{mode}/edge.log"))).expect("edge.log")
    };
    assert!(log("on").contains("cdn_edge::access"), "no access line");
    // The binary writes access lines with its own formatter (cdn_http::access): a hit's
    // line reads as documented.
    let on = log("on");
    let hit = on
        .lines()
        .find(|l| l.contains(" cache=hit "))
        .expect("a hit's access line");
    assert!(
        hit.contains(" INFO cdn_edge::access: client=127.0.0.1 method=GET path=/synthetic/")
            && hit.contains(" range=")
            && hit.contains(" duration_ms=")
            && (hit.contains(" status=200 ") || hit.contains(" status=206 ")),
        "{hit}"
    );
    assert!(!log("off").contains("cdn_edge::access"));
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

/// Runs `cdn ARGS` (from the crate root) and kills it after `limit`; stdout and stderr.
fn cdn_within(args: &[&str], limit: Duration, dir: &Path) -> (String, String) {
    let (out_path, err_path) = (dir.join("stdout.txt"), dir.join("stderr.txt"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_cdn"))
        .args(["--log", "warn"])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("cdn runs");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for cdn") {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) => assert!(s.success(), "cdn {args:?} failed ({s}):\n{out}\n{err}"),
        None => panic!("cdn {args:?} still running after {limit:?}:\n{out}\n{err}"),
    }
    (out, err)
}

/// A stand-in for the lab's router on 127.0.0.1: no edges, no routes. Enough for
/// `cdn plan --from-lab` to sample it and print the capacity it planned with.
fn empty_router() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", l.local_addr().expect("address"));
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let body = if head.starts_with(b"GET /healthz") {
                r#"{"edges": []}"#
            } else {
                "# no routes yet\n"
            };
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

#[test]
fn capacity_steps_up_writes_the_file_and_plan_reads_it() {
    let dir = scratch("capacity");
    let file = dir.join("results/edge-capacity.json");
    let file_arg = file.to_str().expect("utf-8 path");
    let (out, _) = cdn_within(
        &[
            "bench",
            "capacity",
            "--step-secs",
            "1",
            "--max-concurrency",
            "4",
            "--p99-ms",
            "5000",
            "--objects-1m",
            "4",
            "--chunks-per-object",
            "2",
            "--objects-16k",
            "20",
            "--out",
            file_arg,
        ],
        Duration::from_secs(120),
        &dir,
    );
    assert!(out.contains(&format!("wrote {file_arg}")), "{out}");
    let text = std::fs::read_to_string(&file).expect("the capacity file");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    let rps = v["requests_per_sec"].as_f64().expect("requests_per_sec");
    assert!(rps > 0.0, "{v}");
    assert_eq!(v["p99_ms_target"].as_f64(), Some(5000.0));
    let measured = v["measured"].as_str().expect("measured");
    assert!(
        measured.ends_with('Z') && measured.contains('T'),
        "{measured}"
    );
    assert_eq!(v["mix"]["name"], "video");
    assert!(v["machine"]["cores"].as_u64().expect("cores") >= 1);
    assert!(v["command"].as_str().expect("command").contains("capacity"));
    // Warm-up: one origin fetch per 1 MiB chunk (4 × 2) and per small object (20).
    assert_eq!(v["warm_up"]["origin_requests"].as_f64(), Some(28.0), "{v}");
    let steps = v["steps"].as_array().expect("steps");
    assert!(steps.len() >= 2, "{v}");
    let conc: Vec<u64> = steps.iter().map(|s| n(&s["concurrency"])).collect();
    assert_eq!(conc[0], 1);
    assert!(conc.windows(2).all(|w| w[0] < w[1]), "{conc:?}");
    assert!(conc.iter().all(|&c| c <= 4), "{conc:?}");
    for s in steps {
        assert!(n(&s["requests"]) > 0, "{s}");
        assert_eq!(
            n(&s["errors"]) + n(&s["bad_status"]) + n(&s["corrupt"]),
            0,
            "{s}"
        );
        assert!(n(&s["verified"]) > 0, "{s}");
        assert_eq!(
            s["origin_requests"].as_f64(),
            Some(0.0),
            "warm: all hits: {s}"
        );
    }
    // The capacity is the best step within the target.
    let best = steps
        .iter()
        .filter(|s| s["within_target"] == true)
        .map(|s| s["requests_per_sec"].as_f64().expect("req/s"))
        .fold(0.0, f64::max);
    assert!((rps - best).abs() <= 0.05 + best * 1e-9, "{rps} vs {best}");

    // `cdn plan --from-lab` plans with it.
    let router = empty_router();
    let plan_dir = dir.join("plan");
    std::fs::create_dir_all(&plan_dir).expect("plan dir");
    let (plan, _) = cdn_within(
        &[
            "plan",
            "--from-lab",
            "--router",
            &router,
            "--sample-secs",
            "0.2",
            "--target-utilisation",
            "70",
            "--capacity-file",
            file_arg,
        ],
        Duration::from_secs(30),
        &plan_dir,
    );
    assert!(plan.contains(file_arg), "{plan}");
    assert!(plan.contains("p99 under 5000 ms"), "{plan}");
    assert!(plan.contains(&format!("measured {measured}")), "{plan}");

    // So does a plain `cdn plan --rate R` without --capacity: 2.5 edges' worth at 70 %.
    let rate = format!("{}", rps * 0.7 * 2.5);
    let (plan, _) = cdn_within(
        &[
            "plan",
            "--rate",
            &rate,
            "--target-utilisation",
            "70",
            "--capacity-file",
            file_arg,
        ],
        Duration::from_secs(30),
        &plan_dir,
    );
    assert!(plan.contains(file_arg), "{plan}");
    let needed = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("edges needed:"))
        .map(str::trim);
    assert_eq!(needed, Some("3"), "{plan}");
}
