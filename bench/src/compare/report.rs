//! `cdn bench compare`'s outputs: the table with ratios edge/nginx and edge/varnish, and
//! `compare.csv`.

use std::fmt::Write as _;

use super::Row;

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

pub(super) fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | logs | server | tool | req/s | MB/s | p50 ms | p99 ms | origin req (run) | origin MB (run) | origin req (warm) | server CPU µs/req | generator CPU µs/req | errors / bad / corrupt (verified) | notes |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {:.1} | {} | {:.0} | {} | {} / {} / {} ({}) | {} |",
            r.scenario,
            r.logs,
            r.server,
            r.tool,
            r.rps,
            r.mbps,
            r.p50_ms,
            r.p99_ms,
            fmt_count(r.origin_requests),
            r.origin_bytes / 1e6,
            fmt_count(r.warm_origin_requests),
            r.server_cpu_us,
            r.gen_cpu_us.map_or("–".into(), |g| format!("{g:.0}")),
            r.errors,
            r.bad_status,
            r.corrupt,
            r.verified,
            r.note
        );
    }
    s
}

fn fmt_count(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

pub(super) fn ratios(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | logs | tool | req/s edge/nginx | req/s edge/varnish | MB/s edge/nginx | MB/s edge/varnish | p99 edge/nginx | p99 edge/varnish | CPU/req edge/nginx | CPU/req edge/varnish | origin req edge / nginx / varnish |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    let mut keys: Vec<(&str, &str, &str)> =
        rows.iter().map(|r| (r.scenario, r.logs, r.tool)).collect();
    keys.dedup();
    let mut seen = std::collections::HashSet::new();
    for (sc, logs, tool) in keys {
        if !seen.insert((sc, logs, tool)) {
            continue;
        }
        let get = |srv: &str| {
            rows.iter()
                .find(|r| r.scenario == sc && r.logs == logs && r.tool == tool && r.server == srv)
        };
        let Some(e) = get("edge") else { continue };
        let (n, v) = (get("nginx"), get("varnish"));
        let r = |o: Option<&Row>, f: fn(&Row) -> f64| o.map_or("–".into(), |o| ratio(f(e), f(o)));
        let origin = |o: Option<&Row>| o.map_or("–".into(), |o| fmt_count(o.origin_requests));
        let orig = if sc == "cold" {
            format!(
                "{} / {} / {}",
                fmt_count(e.origin_requests),
                origin(n),
                origin(v)
            )
        } else {
            format!(
                "{} / {} / {} (warm: {} / {} / {})",
                fmt_count(e.origin_requests),
                origin(n),
                origin(v),
                fmt_count(e.warm_origin_requests),
                n.map_or("–".into(), |o| fmt_count(o.warm_origin_requests)),
                v.map_or("–".into(), |o| fmt_count(o.warm_origin_requests)),
            )
        };
        let _ = writeln!(
            s,
            "| {sc} | {logs} | {tool} | {} | {} | {} | {} | {} | {} | {} | {} | {orig} |",
            r(n, |x| x.rps),
            r(v, |x| x.rps),
            r(n, |x| x.mbps),
            r(v, |x| x.mbps),
            r(n, |x| x.p99_ms),
            r(v, |x| x.p99_ms),
            r(n, |x| x.server_cpu_us),
            r(v, |x| x.server_cpu_us),
        );
    }
    s
}

pub(super) fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "scenario,logs,server,tool,requests,seconds,req_per_s,mb_per_s,p50_ms,p99_ms,origin_requests,origin_bytes,warm_origin_requests,errors,bad_status,corrupt,verified,server_cpu_us_per_req,gen_cpu_us_per_req\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{:.3},{:.1},{:.2},{:.3},{:.3},{},{:.0},{},{},{},{},{},{:.1},{}",
            r.scenario,
            r.logs,
            r.server,
            r.tool,
            r.requests,
            r.seconds,
            r.rps,
            r.mbps,
            r.p50_ms,
            r.p99_ms,
            r.origin_requests,
            r.origin_bytes,
            r.warm_origin_requests,
            r.errors,
            r.bad_status,
            r.corrupt,
            r.verified,
            r.server_cpu_us,
            r.gen_cpu_us.map_or(String::new(), |g| format!("{g:.1}"))
        );
    }
    s
}
