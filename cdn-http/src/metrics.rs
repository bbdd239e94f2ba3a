//! A Prometheus registry per node instance.
//!
//! Nodes do not install a global recorder: tests run several origins and edges in one process
//! and each must count only its own traffic. A node records through [`NodeMetrics::with`],
//! which makes its registry the recorder for the `metrics` macros inside the closure.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use std::collections::BTreeMap;

/// Latency buckets in seconds for response-time histograms.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One node's metric registry.
pub struct NodeMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl NodeMetrics {
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        NodeMetrics { recorder, handle }
    }

    /// Runs `f` with this node's registry as the `metrics` recorder.
    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// The Prometheus text exposition of every metric of this node, with
    /// `cdn_runtime_alive_tasks` (tasks alive in the process's tokio runtime: the node's own
    /// when it runs alone, as in production; soak tests watch it return to its baseline).
    pub fn render(&self) -> String {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let tasks = rt.metrics().num_alive_tasks();
            self.with(|| metrics::gauge!("cdn_runtime_alive_tasks").set(tasks as f64));
        }
        self.handle.render()
    }
}

/// Reads one sample from a Prometheus text exposition: `series` is written as rendered
/// (`name` or `name{a="x",b="y"}`), and matches the sample of that name with exactly those
/// labels. Used by tests, benches and the lab (through `cdn_lab::scrape`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    let (name, labels) = match series.split_once('{') {
        Some((b, rest)) => (b, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    samples(text, name)
        .into_iter()
        .find_map(|(l, v)| (l == labels).then_some(v))
}

/// Sums every sample of a metric name, whatever its labels.
pub fn sum(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, v)| v).sum()
}

/// Every sample of metric `name` in a Prometheus text exposition, with its labels: the one
/// parser of the text format in the workspace.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.trim().rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (base, labels) = match series.split_once('{') {
                Some((b, rest)) => (b, parse_labels(rest.strip_suffix('}')?)?),
                None => (series, BTreeMap::new()),
            };
            (base == name).then_some((labels, value))
        })
        .collect()
}

/// `a="x",b="y\"z"` → {a: x, b: y"z}.
fn parse_labels(s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim_start_matches(',');
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let mut chars = after.strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.trim().to_owned(), value);
        rest = after[end + 2..].trim_start_matches(',');
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_samples_with_labels() {
        let text = "# HELP x\n# TYPE cdn_router_routes_total counter\n\
            cdn_router_routes_total{edge=\"eu-1\",reason=\"nearest\"} 12\n\
            cdn_router_routes_total{edge=\"eu-2\",reason=\"hashed\"} 3\n\
            cdn_router_routes_total_x{edge=\"eu-2\"} 99\n\
            odd{a=\"q\\\"uote,d\",b=\"\"} 1.5\n\
            plain 7\n";
        let s = samples(text, "cdn_router_routes_total");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0.get("edge").map(String::as_str), Some("eu-1"));
        assert_eq!(s[0].0.get("reason").map(String::as_str), Some("nearest"));
        assert_eq!(s[1].1, 3.0);
        let odd = samples(text, "odd");
        assert_eq!(
            sample(
                text,
                "cdn_router_routes_total{edge=\"eu-2\",reason=\"hashed\"}"
            ),
            Some(3.0)
        );
        assert_eq!(sample(text, "cdn_router_routes_total{edge=\"eu-2\"}"), None);
        assert_eq!(sum(text, "cdn_router_routes_total"), 15.0);
        assert_eq!(sample(text, "plain"), Some(7.0));
        assert_eq!(odd[0].0.get("a").map(String::as_str), Some("q\"uote,d"));
        assert_eq!(odd[0].0.get("b").map(String::as_str), Some(""));
        assert_eq!(samples(text, "plain")[0].1, 7.0);
    }
}
