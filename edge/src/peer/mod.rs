//! Peer replication over QUIC (quinn, mutual TLS with the cluster CA).
//!
//! - **Sibling fill.** On a miss, an edge asks the peer of its own region that owns the chunk
//!   by rendezvous hashing (as Traffic Server's peering ring does); the owner answers from its
//!   cache or fills from the origin. Then peers of other regions that advertised the object
//!   (cache only), then the origin. Requests a peer makes on another's behalf never go to
//!   peers again, so there are no fetch loops.
//! - **Hot push.** Requests per object are counted over a sliding window; an object that
//!   becomes hot is pushed, rate-limited, to the push peers and advertised to every peer.
//! - **Integrity.** Every chunk travels with its length and SHA-256; frames are bounded.
//!
//! Modules: [`pki`] certificates and TLS configs, [`wire`] frames, [`client`] one peer,
//! [`server`] the endpoint's answers.

pub mod client;
pub mod pki;
pub mod server;
pub mod wire;

/// The QUIC implementation, for callers that build endpoints of their own (tests).
pub use quinn;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use cdn_http::metrics::NodeMetrics;

use crate::config::EdgeConfig;
use crate::fill::{FillError, FillSource};
use crate::store::{ObjectMeta, Store};
use client::{Advertise, PeerClient, PushHeader};
use wire::{GetRequest, WireMeta};

/// This node's view of its peers.
pub struct Peers {
    pub name: String,
    pub region: String,
    pub endpoint: quinn::Endpoint,
    pub clients: Vec<Arc<PeerClient>>,
    push_targets: Vec<usize>,
    buckets: Vec<Arc<TokenBucket>>,
    advertised: moka::sync::Cache<String, Vec<usize>>,
    hot: moka::sync::Cache<String, Arc<Mutex<Window>>>,
    pushed: moka::sync::Cache<String, ()>,
    hot_threshold: f64,
    hot_window: Duration,
    chunk_size: u64,
    corrupt: bool,
    metrics: Arc<NodeMetrics>,
}

impl Peers {
    /// Binds the QUIC endpoint; `None` when the node has no `peer_listen`.
    pub fn new(cfg: &EdgeConfig, metrics: Arc<NodeMetrics>) -> anyhow::Result<Option<Arc<Self>>> {
        let (Some(listen), Some(tls)) = (cfg.peer_listen, cfg.peer_tls.as_ref()) else {
            return Ok(None);
        };
        let server = pki::server_config(tls, cfg.chunk_size)?;
        let mut endpoint = quinn::Endpoint::server(server, listen)
            .map_err(|e| anyhow::anyhow!("peer endpoint cannot listen on udp {listen}: {e}"))?;
        endpoint.set_default_client_config(pki::client_config(tls, cfg.chunk_size)?);
        let first_byte = Duration::from_millis(cfg.peer_first_byte_timeout_ms);
        let fill_timeout = Duration::from_millis(cfg.origin_read_timeout_ms.max(1000) * 2);
        let clients: Vec<Arc<PeerClient>> = cfg
            .peers
            .iter()
            .map(|p| {
                Arc::new(PeerClient::new(
                    p.clone(),
                    endpoint.clone(),
                    first_byte,
                    fill_timeout,
                    cfg.chunk_size,
                    metrics.clone(),
                ))
            })
            .collect();
        // Push to those marked, or by default to the first listed peer of each other region.
        let explicit = cfg.peers.iter().any(|p| p.push.is_some());
        let mut seen_regions = Vec::new();
        let push_targets = cfg
            .peers
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                if explicit {
                    return p.push == Some(true);
                }
                if p.region == cfg.region || seen_regions.contains(&p.region) {
                    return false;
                }
                seen_regions.push(p.region.clone());
                true
            })
            .map(|(i, _)| i)
            .collect();
        let buckets = clients
            .iter()
            .map(|_| Arc::new(TokenBucket::new(cfg.push_bytes_per_sec)))
            .collect();
        let window = Duration::from_secs(cfg.hot_window_secs.max(1));
        Ok(Some(Arc::new(Peers {
            name: cfg.name.clone(),
            region: cfg.region.clone(),
            endpoint,
            clients,
            push_targets,
            buckets,
            advertised: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(window * 30)
                .build(),
            hot: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(window * 2)
                .build(),
            pushed: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(window * 30)
                .build(),
            hot_threshold: cfg.hot_threshold.max(1) as f64,
            hot_window: window,
            chunk_size: cfg.chunk_size,
            corrupt: cfg.test_corrupt_peer_chunks,
            metrics,
        })))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The same-region peer that owns chunk `index` of `key`, or `None` when this node does.
    pub fn owner(&self, key: &str, index: u64) -> Option<Arc<PeerClient>> {
        let score = |name: &str| {
            let mut h = Sha256::new();
            h.update(name.as_bytes());
            h.update([0]);
            h.update(key.as_bytes());
            h.update(index.to_le_bytes());
            let d = h.finalize();
            u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
        };
        let mut best = (score(&self.name), None);
        for c in self.clients.iter().filter(|c| c.cfg.region == self.region) {
            let s = score(&c.cfg.name);
            if s > best.0 {
                best = (s, Some(c.clone()));
            }
        }
        best.1
    }

    /// Peers of other regions that advertised `key`, nearest (first listed) first.
    fn advertisers(&self, key: &str) -> Vec<Arc<PeerClient>> {
        let mut idx = self.advertised.get(key).unwrap_or_default();
        idx.sort_unstable();
        idx.into_iter()
            .filter_map(|i| self.clients.get(i))
            .filter(|c| c.cfg.region != self.region)
            .cloned()
            .collect()
    }

    fn count(&self, result: &'static str) {
        self.metrics.with(|| {
            metrics::counter!("cdn_edge_peer_fetches_total", "result" => result).increment(1)
        });
    }

    /// Asks the owner, then advertisers, for chunk `index` of an object. `validator` is the
    /// version the caller holds (a peer's other version is no use).
    async fn ask(&self, req: GetRequest) -> Option<(WireMeta, Bytes)> {
        let mut candidates: Vec<(Arc<PeerClient>, bool)> = Vec::new();
        if let Some(owner) = self.owner(&req.key, req.index) {
            candidates.push((owner, true));
        }
        candidates.extend(self.advertisers(&req.key).into_iter().map(|c| (c, false)));
        for (peer, owner) in candidates {
            let r = GetRequest {
                owner,
                ..req.clone()
            };
            match peer.get(&r).await {
                Ok(Some((meta, chunk))) => {
                    let same_version = req.validator.as_ref().is_none_or(|v| *v == meta.validator);
                    if meta.key == req.key && meta.chunk_size == self.chunk_size && same_version {
                        self.count("found");
                        return Some((meta, chunk));
                    }
                    self.count("miss");
                }
                Ok(None) => self.count("miss"),
                Err(wire::WireError::Digest) => {
                    tracing::warn!(peer = %peer.cfg.name, key = %req.key, "peer chunk failed its digest: dropped");
                    self.metrics.with(|| {
                        metrics::counter!("cdn_edge_peer_digest_mismatches_total").increment(1)
                    });
                    self.count("digest-mismatch");
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.cfg.name, error = %e, "peer fetch failed");
                    self.count("error");
                }
            }
        }
        None
    }

    /// For a probe: metadata and the chunk at `index` from a peer, if one has them.
    pub async fn fetch_object(
        &self,
        key: &str,
        path_and_query: &str,
        req: &HeaderMap,
        index: u64,
    ) -> Option<(ObjectMeta, Bytes)> {
        let selecting = req
            .iter()
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .filter(|(k, _)| k.starts_with("accept") || k == "origin")
            .collect();
        let (meta, chunk) = self
            .ask(GetRequest {
                key: key.to_string(),
                validator: None,
                index,
                owner: false,
                path_and_query: path_and_query.to_string(),
                selecting,
            })
            .await?;
        let meta = meta.into_meta()?;
        let (s, e) = meta.chunk_span(index);
        (index < meta.chunk_count() && chunk.len() as u64 == e - s + 1).then_some((meta, chunk))
    }

    /// Counts a request for `meta`; when it turns hot, pushes its stored chunks to the push
    /// peers (rate-limited, in the background) and advertises it to every peer.
    pub fn note_request(self: &Arc<Self>, store: &Store, meta: &Arc<ObjectMeta>) {
        let key = &meta.version.key;
        let window = self.hot.get_with(key.clone(), || {
            Arc::new(Mutex::new(Window::new(Instant::now())))
        });
        let rate = window
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .hit(Instant::now(), self.hot_window);
        if rate < self.hot_threshold || self.pushed.contains_key(key) {
            return;
        }
        self.pushed.insert(key.clone(), ());
        tracing::info!(key = %key, rate, "object is hot: pushing to peers");
        let this = self.clone();
        let (store, meta) = (store.clone(), meta.clone());
        tokio::spawn(async move { this.push_object(store, meta).await });
    }

    async fn push_object(self: Arc<Self>, store: Store, meta: Arc<ObjectMeta>) {
        let advert = Advertise {
            from: self.name.clone(),
            keys: vec![meta.version.key.clone()],
        };
        for c in &self.clients {
            if let Err(e) = c.advertise(&advert).await {
                tracing::debug!(peer = %c.cfg.name, error = %e, "advertise failed");
            }
        }
        let wire_meta = WireMeta::from_meta(&meta);
        let pushes = self.push_targets.iter().map(|&i| {
            let (client, bucket) = (self.clients[i].clone(), self.buckets[i].clone());
            let (store, meta, wire_meta, this) =
                (store.clone(), meta.clone(), wire_meta.clone(), self.clone());
            async move {
                for index in 0..meta.chunk_count() {
                    let Some(chunk) = store.chunks.get(&meta.chunk_key(index)).await else {
                        continue;
                    };
                    bucket.take(chunk.len() as u64).await;
                    let header = PushHeader {
                        meta: wire_meta.clone(),
                        index,
                    };
                    let result = match client.push(&header, &chunk, this.corrupt).await {
                        Ok(true) => "ok",
                        Ok(false) => "refused",
                        Err(e) => {
                            tracing::debug!(peer = %client.cfg.name, error = %e, "push failed");
                            "error"
                        }
                    };
                    this.metrics.with(|| {
                        metrics::counter!("cdn_edge_pushes_total", "result" => result).increment(1)
                    });
                    if result == "error" {
                        break;
                    }
                }
            }
        });
        futures::future::join_all(pushes).await;
    }

    /// Records that `from` holds `keys`.
    pub fn advertised_by(&self, from: &str, keys: Vec<String>) {
        let Some(i) = self.clients.iter().position(|c| c.cfg.name == from) else {
            return;
        };
        for key in keys {
            let mut v = self.advertised.get(&key).unwrap_or_default();
            if !v.contains(&i) {
                v.push(i);
            }
            self.advertised.insert(key, v);
        }
    }

    pub fn corrupt(&self) -> bool {
        self.corrupt
    }
}

/// The peers as a fill source: owner first, then advertisers.
pub struct PeerSource(pub Arc<Peers>);

impl FillSource for PeerSource {
    fn name(&self) -> &'static str {
        "peer"
    }

    fn fetch_chunk(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Result<Bytes, FillError>> {
        let peers = self.0.clone();
        async move {
            let req = GetRequest {
                key: meta.version.key.clone(),
                validator: Some(meta.version.validator.clone()),
                index,
                owner: false,
                path_and_query: meta.path_and_query.clone(),
                selecting: meta
                    .selecting
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((n.to_string(), v.as_ref()?.to_str().ok()?.to_string()))
                    })
                    .collect(),
            };
            match peers.ask(req).await {
                Some((_, chunk)) => Ok(chunk),
                None => Err(FillError::Request("no peer had the chunk".into())),
            }
        }
        .boxed()
    }
}

/// Two-bucket sliding-window rate: the previous window's count, weighted by how much of it
/// still overlaps, plus the current one's.
pub struct Window {
    start: Instant,
    prev: u32,
    cur: u32,
}

impl Window {
    pub fn new(now: Instant) -> Self {
        Window {
            start: now,
            prev: 0,
            cur: 0,
        }
    }

    /// Counts one request at `now` and returns the requests in the last `len`.
    pub fn hit(&mut self, now: Instant, len: Duration) -> f64 {
        let mut elapsed = now.duration_since(self.start);
        if elapsed >= len * 2 {
            (self.start, self.prev, self.cur) = (now, 0, 0);
            elapsed = Duration::ZERO;
        } else if elapsed >= len {
            (self.start, self.prev, self.cur) = (self.start + len, self.cur, 0);
            elapsed -= len;
        }
        self.cur += 1;
        let overlap = 1.0 - elapsed.as_secs_f64() / len.as_secs_f64();
        self.prev as f64 * overlap + self.cur as f64
    }
}

/// A token bucket of bytes per second (one second of burst).
pub struct TokenBucket {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        TokenBucket {
            rate,
            state: Mutex::new((rate, Instant::now())),
        }
    }

    /// Waits until `n` bytes may be sent.
    pub async fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_counts_recent_requests() {
        let t0 = Instant::now();
        let len = Duration::from_secs(10);
        let mut w = Window::new(t0);
        for _ in 0..9 {
            w.hit(t0, len);
        }
        assert_eq!(w.hit(t0, len), 10.0);
        // Half-way through the next window, half of the previous one still counts.
        let r = w.hit(t0 + Duration::from_secs(15), len);
        assert!((r - 6.0).abs() < 1e-9, "{r}");
        // Long after, only the new request counts.
        assert_eq!(w.hit(t0 + Duration::from_secs(100), len), 1.0);
    }

    #[tokio::test]
    async fn token_bucket_paces() {
        let b = TokenBucket::new(1_000_000);
        let t = Instant::now();
        b.take(1_000_000).await; // the burst
        b.take(200_000).await; // 0.2 s more
        assert!(t.elapsed() >= Duration::from_millis(150));
    }
}
