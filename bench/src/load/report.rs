//! `cdn bench load`'s reports: per-region latency and throughput, the edges' counters
//! (through `cdn_lab::scrape`), `report.md` and `load.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use cdn_lab::scrape::Scraper;

use crate::loadgen;

use super::*;

pub(super) fn region_report(
    name: &str,
    viewers: usize,
    parts: &[&ViewerStats],
    seconds: f64,
) -> RegionReport {
    let mut st = loadgen::Stats::default();
    let mut resolves = loadgen::histogram();
    let mut routed_to = BTreeMap::new();
    let (mut hits, mut sessions) = (0, 0);
    for v in parts {
        st.merge(&v.st);
        let _ = resolves.add(&v.resolves);
        hits += v.hits;
        sessions += v.sessions;
        for (k, n) in &v.routed_to {
            *routed_to.entry(k.clone()).or_default() += n;
        }
    }
    let ok = st.requests - st.errors - st.bad_status - st.corrupt;
    let first = crate::flash::first_ttfb_ms(parts.iter().map(|v| &v.first));
    RegionReport {
        region: name.to_owned(),
        viewers,
        sessions,
        requests: st.requests,
        ok,
        bytes: st.bytes,
        throughput_mb_s: st.bytes as f64 / 1e6 / seconds.max(1e-9),
        ttfb_p50_ms: loadgen::ms(&st.ttfb, 0.5),
        ttfb_p95_ms: loadgen::ms(&st.ttfb, 0.95),
        ttfb_p99_ms: loadgen::ms(&st.ttfb, 0.99),
        first_ttfb_p50_ms: first.0,
        first_ttfb_p99_ms: first.1,
        chunk_p50_ms: loadgen::ms(&st.latency, 0.5),
        chunk_p99_ms: loadgen::ms(&st.latency, 0.99),
        resolves: resolves.len(),
        resolve_p50_ms: loadgen::ms(&resolves, 0.5),
        hits,
        hit_ratio: if ok > 0 { hits as f64 / ok as f64 } else { 0.0 },
        status_5xx: st.status_5xx,
        bad_status: st.bad_status,
        corrupt: st.corrupt,
        errors: st.errors,
        verified: st.verified,
        routed_to,
        samples: st.samples.clone(),
    }
}

/// One edge's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EdgeCounters {
    pub(super) served: f64,
    pub(super) from_origin: f64,
    pub(super) peer_in: f64,
    pub(super) hits: f64,
    pub(super) stale: f64,
}

pub(super) async fn edge_counters(edges: &[(String, String, String)]) -> Vec<EdgeCounters> {
    let mut out = Vec::new();
    for (_, _, url) in edges {
        out.push(counters_of(url).await);
    }
    out
}

/// The counters of the edge at `url` (zeros when it does not answer).
pub(super) async fn counters_of(url: &str) -> EdgeCounters {
    use cdn_edge::metric_names as names;
    let Ok(m) = Scraper::new(Duration::from_secs(5)).metrics(url).await else {
        return EdgeCounters::default();
    };
    EdgeCounters {
        served: m.sum(names::BYTES_SERVED_TOTAL),
        from_origin: m.sum(names::ORIGIN_BYTES_TOTAL),
        // Bytes the edge received from peers.
        peer_in: m.sum_where(names::PEER_BYTES_TOTAL, "direction", "in"),
        hits: m.sum_where(names::REQUESTS_TOTAL, "cache", "hit"),
        stale: m.sum_where(names::REQUESTS_TOTAL, "cache", "stale"),
    }
}

/// The markdown tables of a report.
pub fn markdown(r: &LoadReport) -> String {
    let mut s = String::new();
    s.push_str(
        "| mode | region | viewers | sessions | requests | TTFB p50 / p95 / p99 ms | chunk p50 / p99 ms | MB/s | hit ratio | 5xx / bad / corrupt / errors | routed to |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.modes {
        for g in m.regions.iter().chain(std::iter::once(&m.total)) {
            let routed: Vec<String> = g
                .routed_to
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {} | {} / {} / {} / {} | {} |",
                m.mode.name(),
                if g.region == "all" {
                    "**all**"
                } else {
                    &g.region
                },
                g.viewers,
                g.sessions,
                g.requests,
                g.ttfb_p50_ms,
                g.ttfb_p95_ms,
                g.ttfb_p99_ms,
                g.chunk_p50_ms,
                g.chunk_p99_ms,
                g.throughput_mb_s,
                if m.mode == Mode::Origin {
                    "–".to_owned()
                } else {
                    format!("{:.3}", g.hit_ratio)
                },
                g.status_5xx,
                g.bad_status,
                g.corrupt,
                g.errors,
                if g.region == "all" {
                    String::new()
                } else {
                    routed.join(", ")
                },
            );
        }
    }
    s.push('\n');
    s.push_str("| mode | seconds | viewer MB | origin requests | origin MB | offload (1 − origin/viewer bytes) | per edge: served MB / from origin MB / from peers MB |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for m in &r.modes {
        let edges: Vec<String> = m
            .edges
            .iter()
            .map(|e| {
                format!(
                    "{} {:.0} / {:.0} / {:.0}",
                    e.name,
                    e.bytes_served / 1e6,
                    e.origin_bytes / 1e6,
                    e.peer_bytes_in / 1e6
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.3} | {} |",
            m.mode.name(),
            m.seconds,
            m.total.bytes as f64 / 1e6,
            m.origin_requests,
            m.origin_bytes / 1e6,
            m.offload,
            edges.join("; ")
        );
    }
    s
}

/// Bar charts: TTFB p50/p99 per region and mode, throughput per region and mode, origin
/// egress per mode.
pub fn write_svg(r: &LoadReport, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let regions: Vec<String> = r
        .modes
        .first()
        .map(|m| m.regions.iter().map(|g| g.region.clone()).collect())
        .unwrap_or_default();
    let colors = [
        RGBColor(200, 80, 60),
        RGBColor(60, 120, 200),
        RGBColor(60, 160, 90),
    ];
    let nm = r.modes.len().max(1) as f64;
    let per_region = |panel: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                      title: &str,
                      ylabel: &str,
                      value: &dyn Fn(&RegionReport) -> (f64, Option<f64>)|
     -> anyhow::Result<()> {
        let ymax = r
            .modes
            .iter()
            .flat_map(|m| m.regions.iter())
            .map(|g| {
                let (a, b) = value(g);
                a.max(b.unwrap_or(0.0))
            })
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..regions.len() as f64, 0f64..ymax)?;
        let names = regions.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(regions.len() * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(ylabel)
            .draw()?;
        for (mi, m) in r.modes.iter().enumerate() {
            let color = colors[mi % colors.len()];
            let w = 0.8 / nm;
            let bars: Vec<_> = m
                .regions
                .iter()
                .enumerate()
                .flat_map(|(i, g)| {
                    let x0 = i as f64 + 0.1 + w * mi as f64;
                    let (a, b) = value(g);
                    let mut v = vec![Rectangle::new(
                        [(x0, 0.0), (x0 + w * 0.9, a)],
                        color.filled(),
                    )];
                    if let Some(b) = b {
                        v.push(Rectangle::new(
                            [(x0 + w * 0.3, a), (x0 + w * 0.6, b.max(a))],
                            color.mix(0.4).filled(),
                        ));
                    }
                    v
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(m.mode.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    };
    per_region(&panels[0], "TTFB p50 (bar) and p99 (whisker)", "ms", &|g| {
        (g.ttfb_p50_ms, Some(g.ttfb_p99_ms))
    })?;
    per_region(&panels[1], "Throughput per region", "MB/s", &|g| {
        (g.throughput_mb_s, None)
    })?;
    // Origin egress per mode.
    let ymax = r
        .modes
        .iter()
        .map(|m| m.origin_bytes / 1e6)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let mut chart = ChartBuilder::on(&panels[2])
        .caption("Origin egress", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..nm, 0f64..ymax)?;
    let names: Vec<String> = r.modes.iter().map(|m| m.mode.name().to_owned()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(r.modes.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("MB")
        .draw()?;
    chart.draw_series(r.modes.iter().enumerate().map(|(i, m)| {
        Rectangle::new(
            [
                (i as f64 + 0.2, 0.0),
                (i as f64 + 0.8, m.origin_bytes / 1e6),
            ],
            colors[i % colors.len()].filled(),
        )
    }))?;
    chart.draw_series(r.modes.iter().enumerate().map(|(i, m)| {
        Text::new(
            format!(
                "{:.0} req, offload {:.0}%",
                m.origin_requests,
                m.offload * 100.0
            ),
            (i as f64 + 0.12, m.origin_bytes / 1e6 + ymax * 0.02),
            ("sans-serif", 12),
        )
    }))?;
    root.present()?;
    Ok(())
}
