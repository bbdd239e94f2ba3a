//! Output of `cdn bench hit-ratio`: the text table, the CSV file and the SVG charts (miss
//! ratio against cache size, one line per policy), plus the derived "share of the
//! LRU-to-Belady gap closed".

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;

use super::policies::PolicyKind;
use super::sim::{RunResult, SizeUnit};
use super::trace::TraceStats;

/// Which miss ratio a chart or the gap uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    Object,
    Byte,
}

impl Metric {
    /// The metric that matters for a sizing unit: bytes for byte-sized caches.
    pub fn for_unit(unit: SizeUnit) -> Self {
        match unit {
            SizeUnit::Objects => Metric::Object,
            SizeUnit::Bytes => Metric::Byte,
        }
    }

    pub fn of(self, r: &RunResult) -> f64 {
        match self {
            Metric::Object => r.object_miss_ratio(),
            Metric::Byte => r.byte_miss_ratio(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Metric::Object => "object miss ratio",
            Metric::Byte => "byte miss ratio",
        }
    }
}

/// Share of the gap between LRU and Belady (same cache size) that `r` closes:
/// (LRU − r) / (LRU − Belady) on `metric`; `None` without both references or a gap.
pub fn gap_closed(results: &[RunResult], r: &RunResult, metric: Metric) -> Option<f64> {
    let find = |kind| {
        results
            .iter()
            .find(|x| x.kind == kind && x.ratio == r.ratio)
            .map(|x| metric.of(x))
    };
    let (lru, belady) = (find(PolicyKind::Lru)?, find(PolicyKind::Belady)?);
    (lru - belady > 1e-9).then(|| (lru - metric.of(r)) / (lru - belady))
}

pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < UNITS.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

fn human_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else {
        format!("{:.0}k", r / 1e3)
    }
}

fn fmt_ratio(ratio: f64) -> String {
    let pct = ratio * 100.0;
    let s = format!("{pct:.4}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}%")
}

/// The result table, grouped by cache size.
pub fn table(results: &[RunResult], unit: SizeUnit, stats: &TraceStats) -> String {
    let metric = Metric::for_unit(unit);
    let mut out = String::new();
    let mut ratios: Vec<f64> = results.iter().map(|r| r.ratio).collect();
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    for ratio in ratios {
        let rows: Vec<&RunResult> = results.iter().filter(|r| r.ratio == ratio).collect();
        let Some(first) = rows.first() else {
            continue;
        };
        let (what, of) = match unit {
            SizeUnit::Objects => (format!("{} objects", first.capacity), stats.objects),
            SizeUnit::Bytes => (human_bytes(first.capacity), stats.working_set_bytes),
        };
        let _ = writeln!(
            out,
            "cache = {} of {} {} = {what}",
            fmt_ratio(ratio),
            match unit {
                SizeUnit::Objects => "the objects",
                SizeUnit::Bytes => "the working set",
            },
            match unit {
                SizeUnit::Objects => format!("({of})"),
                SizeUnit::Bytes => format!("({})", human_bytes(of)),
            }
        );
        let _ = writeln!(
            out,
            "  {:<24} {:>9} {:>9} {:>11} {:>11} {:>8}",
            "policy",
            "obj miss",
            "byte miss",
            "origin",
            format!("gap({})", if metric == Metric::Byte { "B" } else { "obj" }),
            "ops/s"
        );
        for r in rows {
            let gap = gap_closed(results, r, metric)
                .map(|g| format!("{:.1}%", g * 100.0))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  {:<24} {:>9.4} {:>9.4} {:>11} {:>11} {:>8}",
                r.policy,
                r.object_miss_ratio(),
                r.byte_miss_ratio(),
                human_bytes(r.miss_bytes),
                gap,
                human_rate(r.ops_per_sec())
            );
        }
        if let Some(line) = decision(results, ratio, metric) {
            let _ = writeln!(out, "  {line}");
        }
        out.push('\n');
    }
    out
}

/// For one cache size: the edge-usable policies' miss ratios on `metric`, which is lowest
/// (and by how many points), and how far S3-FIFO is from it (negative = S3-FIFO is better).
pub fn decision(results: &[RunResult], ratio: f64, metric: Metric) -> Option<String> {
    let at = |kind: PolicyKind| results.iter().find(|r| r.kind == kind && r.ratio == ratio);
    let mut edge: Vec<&RunResult> = PolicyKind::ALL
        .iter()
        .filter(|k| k.edge_usable())
        .filter_map(|&k| at(k))
        .collect();
    edge.sort_by(|a, b| metric.of(a).total_cmp(&metric.of(b)));
    let best = *edge.first()?;
    let values: Vec<String> = edge
        .iter()
        .map(|r| format!("{} {:.4}", r.policy, metric.of(r)))
        .collect();
    let mut line = format!(
        "edge-usable ({}): {}; lowest: {}",
        metric.label(),
        values.join(", "),
        best.policy
    );
    if let Some(second) = edge.get(1) {
        let _ = write!(
            line,
            " by {:.2} points",
            100.0 * (metric.of(second) - metric.of(best))
        );
    }
    if let Some(s3) = at(PolicyKind::S3fifo) {
        let _ = write!(
            line,
            "; S3-FIFO {:.4} ({:+.2} points vs {})",
            metric.of(s3),
            100.0 * (metric.of(s3) - metric.of(best)),
            best.policy
        );
    }
    Some(line)
}

/// Writes one CSV row per result (with a header).
pub fn write_csv(
    path: &Path,
    workload: &str,
    unit: SizeUnit,
    results: &[RunResult],
) -> anyhow::Result<()> {
    let metric = Metric::for_unit(unit);
    let mut s = String::from(
        "workload,unit,size_ratio,capacity,policy,requests,misses,object_miss_ratio,\
         bytes_requested,origin_bytes,byte_miss_ratio,gap_closed,ops_per_sec,seconds\n",
    );
    let workload = workload.replace(['"', ','], " ");
    let unit = match unit {
        SizeUnit::Objects => "objects",
        SizeUnit::Bytes => "bytes",
    };
    for r in results {
        let gap = gap_closed(results, r, metric)
            .map(|g| format!("{g:.4}"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{workload},{unit},{},{},{},{},{},{:.6},{},{},{:.6},{gap},{:.0},{:.3}",
            r.ratio,
            r.capacity,
            r.policy,
            r.requests,
            r.misses,
            r.object_miss_ratio(),
            r.bytes,
            r.miss_bytes,
            r.byte_miss_ratio(),
            r.ops_per_sec(),
            r.elapsed.as_secs_f64()
        );
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn color(kind: PolicyKind) -> RGBColor {
    const COLORS: [RGBColor; 12] = [
        RGBColor(127, 127, 127), // FIFO
        RGBColor(31, 119, 180),  // LRU
        RGBColor(44, 160, 44),   // SIEVE
        RGBColor(214, 39, 40),   // S3-FIFO
        RGBColor(0, 0, 0),       // Belady
        RGBColor(140, 86, 75),   // BeladySize
        RGBColor(255, 127, 14),  // moka TinyLFU
        RGBColor(148, 103, 189), // moka LRU
        RGBColor(188, 189, 34),  // edge TinyLFU
        RGBColor(23, 190, 207),  // edge LRU
        RGBColor(227, 119, 194), // edge S3-FIFO
        RGBColor(120, 20, 20),   // edge S3-FIFO raw
    ];
    let i = PolicyKind::ALL.iter().position(|&k| k == kind).unwrap_or(0);
    COLORS[i % COLORS.len()]
}

/// Draws `metric` against cache size (log scale), one line per policy.
pub fn write_svg(
    path: &Path,
    title: &str,
    unit: SizeUnit,
    results: &[RunResult],
    metric: Metric,
) -> anyhow::Result<()> {
    draw_svg(path, title, unit, results, metric)
        .with_context(|| format!("drawing {}", path.display()))
}

fn draw_svg(
    path: &Path,
    title: &str,
    unit: SizeUnit,
    results: &[RunResult],
    metric: Metric,
) -> anyhow::Result<()> {
    let ratios = || results.iter().map(|r| r.ratio);
    let (lo, hi) = ratios().fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    anyhow::ensure!(lo > 0.0 && lo <= hi, "no results to draw");
    let (lo, hi) = (lo / 1.25, hi * 1.25);
    let ymax = results
        .iter()
        .map(|r| metric.of(r))
        .fold(0.0, f64::max)
        .max(0.01)
        * 1.08;

    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..ymax)?;
    chart
        .configure_mesh()
        .x_desc(match unit {
            SizeUnit::Objects => "cache size (share of distinct objects)",
            SizeUnit::Bytes => "cache size (share of working set bytes)",
        })
        .y_desc(metric.label())
        .x_label_formatter(&|x| fmt_ratio(*x))
        .y_label_formatter(&|y| format!("{y:.2}"))
        .draw()?;

    let mut kinds: Vec<PolicyKind> = Vec::new();
    for r in results {
        if !kinds.contains(&r.kind) {
            kinds.push(r.kind);
        }
    }
    for kind in kinds {
        let mut points: Vec<(f64, f64)> = results
            .iter()
            .filter(|r| r.kind == kind)
            .map(|r| (r.ratio, metric.of(r)))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        let c = color(kind);
        chart
            .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))?
            .label(kind.label())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2)));
        chart.draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn result(kind: PolicyKind, ratio: f64, misses: u64) -> RunResult {
        RunResult {
            kind,
            policy: kind.label().into(),
            ratio,
            capacity: 10,
            requests: 100,
            misses,
            bytes: 1000,
            miss_bytes: misses * 10,
            elapsed: Duration::from_millis(10),
        }
    }

    #[test]
    fn gap_closed_is_relative_to_lru_and_belady() {
        let rs = vec![
            result(PolicyKind::Lru, 0.1, 40),
            result(PolicyKind::Belady, 0.1, 20),
            result(PolicyKind::S3fifo, 0.1, 30),
            result(PolicyKind::Fifo, 0.1, 45),
            result(PolicyKind::S3fifo, 0.2, 30),
        ];
        let g = |i: usize| gap_closed(&rs, &rs[i], Metric::Object);
        assert_eq!(g(0), Some(0.0));
        assert_eq!(g(1), Some(1.0));
        assert!((g(2).unwrap_or(0.0) - 0.5).abs() < 1e-12);
        assert!((g(3).unwrap_or(0.0) + 0.25).abs() < 1e-12);
        assert_eq!(g(4), None); // no LRU/Belady at 0.2
    }

    #[test]
    fn csv_table_and_svg_are_written() {
        let rs = vec![
            result(PolicyKind::Lru, 0.01, 40),
            result(PolicyKind::Lru, 0.1, 30),
            result(PolicyKind::Belady, 0.01, 20),
            result(PolicyKind::Belady, 0.1, 10),
        ];
        let dir = std::env::temp_dir().join(format!("cdn-bench-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let csv = dir.join("r.csv");
        write_csv(&csv, "w, \"x\"", SizeUnit::Bytes, &rs).expect("csv");
        let text = std::fs::read_to_string(&csv).expect("read");
        assert_eq!(text.lines().count(), 5);
        assert!(
            text.lines()
                .nth(1)
                .is_some_and(|l| l.starts_with("w   x ,bytes,0.01,10,LRU,"))
        );
        let svg = dir.join("r.svg");
        write_svg(&svg, "t", SizeUnit::Bytes, &rs, Metric::Byte).expect("svg");
        let svg = std::fs::read_to_string(&svg).expect("read");
        assert!(svg.contains("<svg") && svg.contains("Belady"));
        let stats = TraceStats {
            requests: 100,
            objects: 10,
            working_set_bytes: 1000,
            requested_bytes: 1000,
            one_hit_objects: 0,
            min_size: 10,
            max_size: 10,
        };
        let t = table(&rs, SizeUnit::Bytes, &stats);
        assert!(
            t.contains("cache = 1% of the working set (1.00 KB) = 10 B"),
            "{t}"
        );
        assert_eq!(fmt_ratio(0.001), "0.1%");
    }
}
