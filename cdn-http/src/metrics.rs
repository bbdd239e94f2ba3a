//! A Prometheus registry per node instance.
//!
//! Nodes do not install a global recorder: tests run several origins and edges in one process
//! and each must count only its own traffic. A node records through [`NodeMetrics::with`],
//! which makes its registry the recorder for the `metrics` macros inside the closure.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

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

/// Reads one sample from a Prometheus text exposition: `name{labels}` must match the series
/// exactly as rendered (labels in the order given). Used by tests, benches and the lab.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// Sums every sample of a metric name, whatever its labels.
pub fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let base = series.split('{').next()?;
            (base == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
