//! `cdn bench amplification`'s outputs: the table (bytes, factors, statuses), the ratios
//! edge/nginx and edge/varnish, and `amplification.csv`.

use super::*;

pub(super) fn fmt_bytes(v: f64) -> String {
    let v = v.round() as u64;
    // Thousands separators: 67108864 → 67,108,864.
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(super) fn fmt_factor(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v >= 100.0 => fmt_bytes(v),
        Some(v) if v >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

/// `a / b` with two decimals, or two significant digits below 0.01; `–` when `b` is 0.
pub fn fmt_ratio(a: f64, b: f64) -> String {
    match factor(a, b) {
        None => "–".into(),
        Some(r) if r > 0.0 && r < 0.01 => format!("{r:.1e}"),
        Some(r) => format!("{r:.2}"),
    }
}

pub(super) fn fmt_statuses(s: &BTreeMap<u16, u64>) -> String {
    s.iter()
        .map(|(k, n)| {
            if *n == 1 {
                format!("{k}")
            } else {
                format!("{k}×{n}")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The results table, one line per (case, server).
pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| case | server | requests | asked B | client B | origin B | factor (origin / client) | origin / asked | origin req per req | statuses | edge: forwarded as asked | edge: bound B (within) | notes |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.case,
            r.server,
            r.requests,
            fmt_bytes(r.asked as f64),
            fmt_bytes(r.client_bytes as f64),
            fmt_bytes(r.origin_bytes),
            fmt_factor(r.factor()),
            fmt_factor(r.factor_asked()),
            r.origin_requests_per_request()
                .map_or("–".into(), |v| format!("{v:.2}")),
            fmt_statuses(&r.statuses),
            r.forwarded.map_or("–".into(), |f| format!("{f:.0}")),
            match (r.bound, r.within_bound()) {
                (Some(b), Some(w)) => format!(
                    "{} ({})",
                    fmt_bytes(b as f64),
                    if w { "yes" } else { "**no**" }
                ),
                _ => "–".into(),
            },
            r.note
        );
    }
    s
}

/// Edge/nginx and edge/varnish ratios: of origin bytes (the requests are the same, so this is
/// also the ratio of origin bytes per byte asked), of the factor (origin bytes per byte
/// delivered: a peer that answers a range with the whole object delivers more) and of origin
/// requests per request.
pub fn ratios(rows: &[Row]) -> String {
    let mut s = String::from(
        "| case | origin B edge / nginx | origin B edge / varnish | factor edge / nginx | factor edge / varnish | origin req edge / nginx | origin req edge / varnish |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let mut cases: Vec<&str> = Vec::new();
    for r in rows {
        if !cases.contains(&r.case) {
            cases.push(r.case);
        }
    }
    for case in cases {
        let get = |srv: &str| rows.iter().find(|r| r.case == case && r.server == srv);
        let Some(e) = get("edge") else { continue };
        let r = |o: Option<&Row>, f: fn(&Row) -> Option<f64>| match (o.and_then(f), f(e)) {
            (Some(b), Some(a)) => fmt_ratio(a, b),
            _ => "–".into(),
        };
        let bytes = |r: &Row| Some(r.origin_bytes);
        let (n, v) = (get("nginx"), get("varnish"));
        let _ = writeln!(
            s,
            "| {case} | {} | {} | {} | {} | {} | {} |",
            r(n, bytes),
            r(v, bytes),
            r(n, Row::factor),
            r(v, Row::factor),
            r(n, Row::origin_requests_per_request),
            r(v, Row::origin_requests_per_request),
        );
    }
    s
}

pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "case,server,requests,parts,asked_bytes,client_bytes,origin_bytes,origin_requests,factor,factor_asked,origin_requests_per_request,statuses,errors,wrong,forwarded,edge_bound,within_bound,seconds\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{},{},{:.0},{:.0},{},{},{},{},{},{},{},{},{},{:.3}",
            r.case,
            r.server,
            r.requests,
            r.parts,
            r.asked,
            r.client_bytes,
            r.origin_bytes,
            r.origin_requests,
            opt(r.factor()),
            opt(r.factor_asked()),
            opt(r.origin_requests_per_request()),
            fmt_statuses(&r.statuses),
            r.errors,
            r.wrong,
            r.forwarded.map_or(String::new(), |f| format!("{f:.0}")),
            r.bound.map_or(String::new(), |b| b.to_string()),
            r.within_bound().map_or(String::new(), |w| w.to_string()),
            r.seconds,
        );
    }
    s
}
