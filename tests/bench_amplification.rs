//! `cdn bench amplification` against the edge alone, with small objects: the run completes and
//! the edge's measured origin bytes and requests stay within the bounds edge/src/proxy.rs
//! (`within_bounds`), edge/src/budget.rs and edge/src/passthrough.rs document. Fails if a
//! bound is broken: without the per-request bound `obr` costs the origin the whole 16 MiB;
//! without the per-client budget `sbr-repeat` costs a chunk per request.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const MIB: f64 = 1048576.0;
const CHUNK: f64 = MIB;
const SIZE: u64 = 16 << 20;
const RANGES: u64 = 16;
const REPEATS: u64 = 10;
const BURST: f64 = 2.0 * MIB;
const NO_STORE: u64 = 512 * 1024;

#[test]
fn the_edges_amplification_is_within_its_documented_bounds() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bench-tests")
        .join(format!("amplification-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let out = Command::new(env!("CARGO_BIN_EXE_cdn"))
        .args([
            "--log",
            "warn",
            "bench",
            "amplification",
            "--servers",
            "edge",
        ])
        .args(["--size", &SIZE.to_string(), "--ranges", &RANGES.to_string()])
        .args(["--repeats", &REPEATS.to_string(), "--edge-burst", "2MiB"])
        // 1 byte/s: the bucket does not refill during the run, so the burst is the budget.
        .args(["--edge-rate", "1", "--no-store-size", &NO_STORE.to_string()])
        .args(["--out", dir.to_str().expect("utf-8 path")])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cdn runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cdn bench amplification failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(dir.join("report.md")).expect("report.md");
    assert!(report.contains("| sbr | edge |"), "{report}");
    let csv = std::fs::read_to_string(dir.join("amplification.csv")).expect("CSV");
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    let rows: HashMap<String, HashMap<&str, String>> = lines
        .map(|l| {
            let row: HashMap<&str, String> = header
                .iter()
                .copied()
                .zip(l.split(',').map(str::to_owned))
                .collect();
            (row["case"].clone(), row)
        })
        .collect();
    let num = |case: &str, col: &str| -> f64 {
        let v = &rows
            .get(case)
            .unwrap_or_else(|| panic!("no {case} row:\n{csv}"))[col];
        v.parse()
            .unwrap_or_else(|_| panic!("{case}.{col} = {v:?}\n{csv}"))
    };
    for case in ["sbr", "sbr-repeat", "obr", "no-store", "whole", "mid-range"] {
        let r = &rows[case];
        assert_eq!(r["server"], "edge");
        assert_eq!(r["errors"], "0", "{case}: {csv}");
        assert_eq!(r["wrong"], "0", "{case}: wrong bytes\n{csv}");
        assert_eq!(r["within_bound"], "true", "{case}: over its bound\n{csv}");
    }

    // SBR: one byte costs at most two chunks plus two bytes (one chunk, in fact), in one
    // origin request.
    assert_eq!(num("sbr", "client_bytes"), 1.0);
    assert!(num("sbr", "factor") <= 2.0 * CHUNK + 2.0, "{csv}");
    assert_eq!(num("sbr", "origin_requests"), 1.0, "{csv}");

    // Repeated SBR from one client: the budget (2 MiB, no refill) pays for two chunks, the
    // request that overdraws it for its probe's chunk (charged into debt); the rest are
    // forwarded as asked (one byte each).
    let repeat = num("sbr-repeat", "origin_bytes");
    assert!(
        repeat <= BURST + CHUNK + REPEATS as f64 + 1.0,
        "{REPEATS} one-byte ranges cost the origin {repeat} bytes\n{csv}"
    );
    assert!(
        num("sbr-repeat", "forwarded") >= (REPEATS - 3) as f64,
        "{csv}"
    );
    assert!(
        num("sbr-repeat", "origin_requests_per_request") <= 1.0,
        "{csv}"
    );

    // Sparse multi-range: forwarded as asked, not filled (at most the probe's chunk, the
    // ranges and the origin's multipart framing).
    let obr = num("obr", "origin_bytes");
    let bound = 2.0 * CHUNK + 2.0 * RANGES as f64 + 128.0 * RANGES as f64;
    assert!(
        obr <= bound,
        "obr: origin sent {obr} (bound {bound})\n{csv}"
    );
    assert!(
        num("obr", "forwarded") >= 1.0,
        "obr was not forwarded\n{csv}"
    );
    assert_eq!(rows["obr"]["statuses"], "206", "{csv}");

    // Uncacheable miss of an object within a chunk: one origin request, each byte once.
    assert_eq!(num("no-store", "origin_requests"), 1.0, "{csv}");
    assert_eq!(num("no-store", "origin_bytes"), NO_STORE as f64, "{csv}");

    // Whole object: each byte once.
    assert_eq!(num("whole", "origin_bytes"), SIZE as f64, "{csv}");
    assert_eq!(num("whole", "factor"), 1.0, "{csv}");

    // A 1 MiB range across two chunks: at most two chunks plus twice the range.
    let asked = num("mid-range", "asked_bytes");
    assert!(
        num("mid-range", "origin_bytes") <= 2.0 * CHUNK + 2.0 * asked,
        "{csv}"
    );
}
