//! The one HTTP client that reads the nodes' `/metrics` and `/healthz`: the lab's metrics
//! poller (`web`), the fleet (`fleet`), the capacity planner's sampler (`plan::lab`), the
//! benchmarks (`cdn_bench`) and the end-to-end tests all scrape through [`Scraper`], and read
//! the Prometheus text through [`Metrics`] (whose parsing is `cdn_http::metrics`, the one
//! parser). Metric names come from the node crates' `metric_names` modules.
//!
//! The client goes straight to loopback (no proxy from the environment), follows no redirects
//! and gives up after the timeout it was made with.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;

/// Why a scrape failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    #[error("GET {url}: {source}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: status {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("GET {url}: not the expected JSON: {source}")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A client for nodes' status endpoints; cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Scraper {
    client: reqwest::Client,
}

impl Scraper {
    /// A scraper whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        cdn_http::tls::install_crypto_provider();
        Scraper {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
        }
    }

    /// `GET url`: its status and body, whatever the status (a draining edge's `/healthz`
    /// says 503 with a body worth reading).
    pub async fn get(&self, url: &str) -> Result<(reqwest::StatusCode, String), ScrapeError> {
        let req = |source| ScrapeError::Request {
            url: url.to_owned(),
            source,
        };
        let resp = self.client.get(url).send().await.map_err(req)?;
        let status = resp.status();
        let body = resp.text().await.map_err(req)?;
        Ok((status, body))
    }

    /// `GET url`'s body; a status other than 2xx is an error.
    pub async fn text(&self, url: &str) -> Result<String, ScrapeError> {
        let (status, body) = self.get(url).await?;
        if !status.is_success() {
            return Err(ScrapeError::Status {
                url: url.to_owned(),
                status,
            });
        }
        Ok(body)
    }

    /// `GET url` as JSON (a 2xx status required).
    pub async fn json<T: DeserializeOwned>(&self, url: &str) -> Result<T, ScrapeError> {
        let body = self.text(url).await?;
        serde_json::from_str(&body).map_err(|source| ScrapeError::Json {
            url: url.to_owned(),
            source,
        })
    }

    /// `GET {base}/metrics` of a node (`base` its URL, with or without a trailing `/`).
    pub async fn metrics(&self, base: &str) -> Result<Metrics, ScrapeError> {
        let url = format!("{}/metrics", base.trim_end_matches('/'));
        self.text(&url).await.map(Metrics)
    }
}

/// One Prometheus text exposition, as a node rendered it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics(pub String);

impl Metrics {
    /// The sum of every series of `name`, whatever its labels (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        cdn_http::metrics::sum(&self.0, name)
    }

    /// The sum of the series of `name` whose label `label` is `value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.samples(name)
            .iter()
            .filter(|(l, _)| l.get(label).is_some_and(|v| v == value))
            .map(|(_, v)| v)
            .sum()
    }

    /// One series, written as rendered (`name` or `name{a="x"}`).
    pub fn sample(&self, series: &str) -> Option<f64> {
        cdn_http::metrics::sample(&self.0, series)
    }

    /// Every series of `name`, with its labels.
    pub fn samples(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        cdn_http::metrics::samples(&self.0, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_by_label() {
        let m = Metrics(
            "# TYPE cdn_edge_peer_bytes_total counter\n\
             cdn_edge_peer_bytes_total{direction=\"in\",peer=\"a\"} 10\n\
             cdn_edge_peer_bytes_total{direction=\"out\",peer=\"a\"} 5\n\
             cdn_edge_peer_bytes_total{direction=\"in\",peer=\"b\"} 7\n"
                .into(),
        );
        assert_eq!(
            m.sum_where("cdn_edge_peer_bytes_total", "direction", "in"),
            17.0
        );
        assert_eq!(m.sum("cdn_edge_peer_bytes_total"), 22.0);
        assert_eq!(m.sum("absent"), 0.0);
    }

    #[tokio::test]
    async fn reads_a_nodes_metrics_and_reports_what_failed() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let root =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/media");
        let origin =
            cdn_origin::spawn(l, root, &cdn_origin::OriginConfig::default()).expect("origin");
        let base = format!("http://{}", origin.addr);
        let s = Scraper::new(Duration::from_secs(10));
        let body = s.text(&format!("{base}/healthz")).await.expect("healthz");
        assert!(!body.is_empty());
        // One object of 5000 bytes (binary: its text is not what is checked).
        s.get(&format!("{base}/synthetic/scrape?size=5000"))
            .await
            .expect("object");
        let m = s.metrics(&format!("{base}/")).await.expect("metrics");
        use cdn_origin::metric_names as names;
        assert_eq!(m.sum(names::REQUESTS_TOTAL), 1.0, "{}", m.0);
        assert_eq!(m.sum_where(names::REQUESTS_TOTAL, "status", "200"), 1.0);
        assert_eq!(m.sum(names::BYTES_SENT_TOTAL), 5000.0);
        let err = s
            .text(&format!("{base}/no-such-file"))
            .await
            .expect_err("404");
        assert!(
            matches!(err, ScrapeError::Status { status, .. } if status == 404),
            "{err}"
        );
        origin.stop().await;
    }
}
