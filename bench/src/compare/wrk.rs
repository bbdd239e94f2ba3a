//! `cdn bench compare --wrk`: the hot scenarios run again by wrk (a standard reference
//! generator) with the same request mix, and wrk's text output read back into a row.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use super::{CompareArgs, Row, Running, Scenario, hot_objects};
use crate::hot::MIB;
use crate::servers::Origin;

/// What wrk asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WrkLoad {
    /// The same mix as [`super::hot_gen`]: every request drawn from the scenario's objects
    /// (and chunks) by a Lua `request` function returning one of the requests built once at
    /// start, so wrk formats nothing per request.
    Mix,
    /// One hot object and no script (wrk's own fixed request, its cheapest loop): the
    /// method of issue 17's table. `hot-16k`: the first 16 KiB object; `hot-1m`: the first
    /// 1 MiB chunk of the first object.
    One,
}

impl WrkLoad {
    /// The report's "tool" column.
    pub(super) fn tool(self) -> &'static str {
        match self {
            WrkLoad::Mix => "wrk",
            WrkLoad::One => "wrk-one",
        }
    }
}

/// A wrk Lua script asking for the same mix as [`super::hot_gen`]: every possible request
/// formatted once in each wrk thread's `init`, one drawn at random per request.
fn wrk_script(args: &CompareArgs, scenario: Scenario) -> String {
    // Built in `init`: wrk sets `wrk.host` (and so the Host field) only after the script
    // is loaded.
    let mut s = format!(
        "math.randomseed({})\nlocal reqs = {{}}\ninit = function(args)\n",
        args.seed
    );
    for (id, size) in &hot_objects(args, scenario) {
        let path = format!("/synthetic/{id}?size={size}");
        match scenario {
            Scenario::Hot1m => {
                for c in 0..(size / MIB).max(1) {
                    let _ = writeln!(
                        s,
                        "  reqs[#reqs + 1] = wrk.format(\"GET\", \"{path}\", {{[\"Range\"] = \
                         \"bytes={}-{}\"}})",
                        c * MIB,
                        (c + 1) * MIB - 1
                    );
                }
            }
            _ => {
                let _ = writeln!(s, "  reqs[#reqs + 1] = wrk.format(\"GET\", \"{path}\")");
            }
        }
    }
    s.push_str("end\nrequest = function()\n  return reqs[math.random(#reqs)]\nend\n");
    s
}

/// wrk's arguments after the common ones for `load`: the script, or the one object's URL
/// (and its Range field).
fn wrk_target(
    args: &CompareArgs,
    scenario: Scenario,
    load: WrkLoad,
    addr: SocketAddr,
    script: &Path,
) -> Vec<String> {
    match load {
        WrkLoad::Mix => vec![
            "-s".into(),
            script.display().to_string(),
            format!("http://{addr}"),
        ],
        WrkLoad::One => {
            let objs = hot_objects(args, scenario);
            let (id, size) = objs.first().cloned().unwrap_or_default();
            let url = format!("http://{addr}/synthetic/{id}?size={size}");
            match scenario {
                Scenario::Hot1m => vec!["-H".into(), format!("Range: bytes=0-{}", MIB - 1), url],
                _ => vec![url],
            }
        }
    }
}

/// wrk's "1.23MB", "456.78KB" (binary units in wrk) → bytes.
fn wrk_bytes(s: &str) -> f64 {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().unwrap_or(0.0);
    n * match unit {
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024f64.powi(4),
        _ => 1.0,
    }
}

/// wrk's "1.50ms", "250.00us", "1.20s" → milliseconds.
fn wrk_ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap_or(0.0)
    } else if let Some(v) = s.strip_suffix('m') {
        v.parse::<f64>().unwrap_or(0.0) * 60_000.0
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

struct WrkOut {
    requests: u64,
    seconds: f64,
    rps: f64,
    mbps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    non_2xx: u64,
}

fn parse_wrk(out: &str) -> Option<WrkOut> {
    let mut w = WrkOut {
        requests: 0,
        seconds: 0.0,
        rps: 0.0,
        mbps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
        non_2xx: 0,
    };
    let mut found = false;
    for line in out.lines() {
        let l = line.trim();
        let f: Vec<&str> = l.split_whitespace().collect();
        if l.starts_with("Requests/sec:") {
            w.rps = f.get(1)?.parse().ok()?;
            found = true;
        } else if l.starts_with("Transfer/sec:") {
            w.mbps = wrk_bytes(f.get(1)?) / 1e6;
        } else if f.first() == Some(&"50%") {
            w.p50_ms = wrk_ms(f.get(1)?);
        } else if f.first() == Some(&"99%") {
            w.p99_ms = wrk_ms(f.get(1)?);
        } else if l.contains("requests in") {
            // "123456 requests in 10.00s, 1.21GB read"
            w.requests = f.first()?.parse().ok()?;
            w.seconds = wrk_ms(f.get(3)?.trim_end_matches(',')) / 1000.0;
        } else if l.starts_with("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            w.errors = l
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if l.starts_with("Non-2xx or 3xx responses:") {
            w.non_2xx = f.last()?.parse().ok()?;
        }
    }
    found.then_some(w)
}

pub(super) async fn run_wrk(
    args: &CompareArgs,
    scenario: Scenario,
    load: WrkLoad,
    round: usize,
    server: &Running,
    origin: &Origin,
) -> anyhow::Result<Row> {
    let (dir, addr) = (server.dir.as_path(), server.proc.addr);
    // The script depends only on the scenario: one copy in the run directory serves every
    // server (`dir` is the server's own subdirectory).
    let script = dir
        .parent()
        .unwrap_or(dir)
        .join(format!("wrk-{}.lua", scenario.name()));
    if load == WrkLoad::Mix {
        std::fs::write(&script, wrk_script(args, scenario))?;
    }
    let before = origin.counters().await;
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t2".to_string(),
            format!("-c{}", args.connections),
            format!("-d{}s", args.duration.ceil() as u64),
            "--latency".into(),
        ])
        .args(wrk_target(args, scenario, load, addr, &script))
        .kill_on_drop(true)
        .output()
        .await
        .context("running wrk")?;
    let after = origin.counters().await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::write(
        dir.join(format!("{}-{}-{round}.txt", load.tool(), scenario.name())),
        format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let w = parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))?;
    Ok(Row {
        scenario: scenario.name(),
        logs: "off",
        server: server.server.name(),
        tool: load.tool(),
        requests: w.requests,
        seconds: w.seconds,
        rps: w.rps,
        mbps: w.mbps,
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        origin_requests: after.0 - before.0,
        origin_bytes: after.1 - before.1,
        warm_origin_requests: 0.0,
        errors: w.errors,
        bad_status: w.non_2xx,
        corrupt: 0,
        verified: 0,
        server_cpu_us: 0.0,
        gen_cpu_us: None,
        note: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cdn bench compare`'s arguments from `flags`, defaults for the rest.
    fn compare_args(flags: &[&str]) -> CompareArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: CompareArgs,
        }
        Cli::parse_from(std::iter::once("compare").chain(flags.iter().copied())).args
    }

    #[test]
    fn the_mix_is_formatted_once_after_wrk_knows_its_host() {
        let args = compare_args(&["--objects-16k", "3", "--objects-1m", "2"]);
        let s = wrk_script(&args, Scenario::Hot16k);
        // Every wrk.format call sits inside init (wrk.host is set by then, so each request
        // carries Host); request() only draws one.
        let (init, request) = s.split_once("request = function()").expect("request()");
        assert!(!request.contains("wrk.format"), "{s}");
        let body = init.split_once("init = function(args)").expect("init").1;
        assert_eq!(body.matches("wrk.format(\"GET\"").count(), 3, "{s}");
        assert!(body.contains("\"/synthetic/hot16k-2?size=16384\""), "{s}");
        let s = wrk_script(&args, Scenario::Hot1m);
        // 2 objects x 4 chunks, each chunk's exact Range.
        assert_eq!(s.matches("wrk.format(").count(), 8, "{s}");
        assert!(s.contains("\"bytes=3145728-4194303\""), "{s}");
    }

    #[test]
    fn wrk_one_asks_for_the_first_object_or_its_first_chunk_without_a_script() {
        let args = compare_args(&[]);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let script = Path::new("/unused.lua");
        assert_eq!(
            wrk_target(&args, Scenario::Hot16k, WrkLoad::One, addr, script),
            ["http://127.0.0.1:9/synthetic/hot16k-0?size=16384"]
        );
        assert_eq!(
            wrk_target(&args, Scenario::Hot1m, WrkLoad::One, addr, script),
            [
                "-H",
                "Range: bytes=0-1048575",
                "http://127.0.0.1:9/synthetic/hot1m-0?size=4194304"
            ]
        );
        assert_eq!(
            wrk_target(&args, Scenario::Hot16k, WrkLoad::Mix, addr, script),
            ["-s", "/unused.lua", "http://127.0.0.1:9"]
        );
    }

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:1234
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms  300.00us   10.00ms   90.00%
    Req/Sec    30.00k     1.00k   32.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.50ms
     99%    2.10ms
  600000 requests in 10.00s, 9.50GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  60000.00
Transfer/sec:    0.95GB
";
        let w = parse_wrk(out).expect("parsed");
        assert_eq!(w.requests, 600_000);
        assert!((w.seconds - 10.0).abs() < 1e-9);
        assert!((w.rps - 60_000.0).abs() < 1e-9);
        assert!((w.p50_ms - 0.812).abs() < 1e-9);
        assert!((w.p99_ms - 2.1).abs() < 1e-9);
        assert_eq!((w.errors, w.non_2xx), (3, 4));
        assert!((w.mbps - 0.95 * 1024f64.powi(3) / 1e6).abs() < 1e-6);
    }
}
