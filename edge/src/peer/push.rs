//! Hot objects: requests per object over a sliding window ([`Window`]); an object that turns
//! hot is pushed, rate-limited ([`TokenBucket`]), to the push peers and advertised to every
//! peer. The tables this keeps (hot windows, pushed objects, peers' adverts) are keyed by
//! object key and bounded in bytes ([`table`], [`TABLE_ENTRY_OVERHEAD`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;

use super::Peers;
use super::client::{Advertise, PushHeader};
use super::wire::{self, WireMeta};
use crate::config::PeerConfig;
use crate::store::{ObjectMeta, Store};

/// Bytes counted for each entry of a peer table on top of its key (and, for adverts, the
/// advertisers' names): the key's `String` header, the value, moka's entry and hash-map slot
/// and its eviction-queue node, rounded up.
pub const TABLE_ENTRY_OVERHEAD: u64 = 256;

/// What one entry of a peer table weighs: its key, `extra` bytes of value, and
/// [`TABLE_ENTRY_OVERHEAD`].
pub(super) fn entry_weight(key: &str, extra: usize) -> u32 {
    let bytes = (key.len() as u64)
        .saturating_add(extra as u64)
        .saturating_add(TABLE_ENTRY_OVERHEAD);
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// A peer table keyed by object key, holding at most `budget` bytes as [`entry_weight`]
/// counts them: keys come from viewers' URLs and peers' adverts (up to a frame, 64 KiB), so an
/// entry count alone would not bound memory. moka evicts in batches on later operations, so
/// between two of them a table may briefly hold a few hundred entries more; its weighted size
/// is within `budget` once pending work has run ([`Peers::table_sizes`] runs it).
pub(super) fn table<V: Clone + Send + Sync + 'static>(
    budget: u64,
    policy: EvictionPolicy,
    value_bytes: impl Fn(&V) -> usize + Send + Sync + 'static,
) -> moka::sync::CacheBuilder<String, V, moka::sync::Cache<String, V>> {
    moka::sync::Cache::builder()
        .max_capacity(budget)
        .eviction_policy(policy)
        .weigher(move |k: &String, v: &V| entry_weight(k, value_bytes(v)))
}

/// The size of one peer table (`cdn_edge_peer_table_bytes{table}`,
/// `cdn_edge_peer_table_entries{table}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSize {
    /// `hot`, `pushed` or `advertised`.
    pub table: &'static str,
    /// Weighted size: key bytes plus [`TABLE_ENTRY_OVERHEAD`] per entry.
    pub bytes: u64,
    pub entries: u64,
    /// The budget `bytes` stays within (`peer_table_bytes`).
    pub budget: u64,
}

/// Push to those marked, or by default to the first listed peer of each other region.
pub(super) fn push_flags(region: &str, peers: &[PeerConfig]) -> Vec<bool> {
    let explicit = peers.iter().any(|p| p.push.is_some());
    let mut seen_regions: Vec<&str> = Vec::new();
    peers
        .iter()
        .map(|p| {
            if explicit {
                return p.push == Some(true);
            }
            if p.region == region || seen_regions.contains(&p.region.as_str()) {
                return false;
            }
            seen_regions.push(&p.region);
            true
        })
        .collect()
}

impl Peers {
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
        let set = self.peer_set();
        let advert = Advertise {
            from: self.name.clone(),
            keys: vec![meta.version.key.clone()],
        };
        for m in &set.members {
            if let Err(e) = m.client.advertise(&advert).await {
                tracing::debug!(peer = %m.cfg.name, error = %e, "advertise failed");
            }
        }
        let wire_meta = WireMeta::from_meta(&meta);
        let pushes = set.members.iter().filter(|m| m.push).map(|m| {
            let (client, bucket) = (m.client.clone(), m.bucket.clone());
            let (store, meta, wire_meta, this) =
                (store.clone(), meta.clone(), wire_meta.clone(), self.clone());
            async move {
                for index in 0..meta.chunk_count() {
                    let Some(chunk) = store.chunk(&meta.chunk_key(index)).await else {
                        continue;
                    };
                    bucket.take(chunk.len() as u64).await;
                    let header = PushHeader {
                        meta: wire_meta.clone(),
                        index,
                    };
                    let result = match client.push(&header, &chunk, this.corrupt()).await {
                        Ok(true) => "ok",
                        Ok(false) => "refused",
                        // This node is not (or no longer) the peer's peer: stop here.
                        Err(wire::WireError::Refused(_)) => "not-a-peer",
                        Err(e) => {
                            tracing::debug!(peer = %client.cfg.name, error = %e, "push failed");
                            "error"
                        }
                    };
                    this.metrics.with(|| {
                        metrics::counter!("cdn_edge_pushes_total", "result" => result).increment(1)
                    });
                    if matches!(result, "error" | "not-a-peer") {
                        break;
                    }
                }
            }
        });
        futures::future::join_all(pushes).await;
    }

    /// Records that `from` holds `keys` (ignored unless `from` is a current peer). The
    /// endpoint passes the name the advertiser's certificate proved, never the message's own
    /// `from` field.
    pub fn advertised_by(&self, from: &str, keys: Vec<String>) {
        if self.peer_set().get(from).is_none() {
            return;
        }
        for key in keys {
            let mut v = self.advertised.get(&key).unwrap_or_default();
            if !v.iter().any(|n| n == from) {
                v.push(from.to_string());
            }
            self.advertised.insert(key, v);
        }
    }

    /// Whether chunks sent to peers are corrupted on the wire (a test hook; always false
    /// without the `test-hooks` feature).
    pub fn corrupt(&self) -> bool {
        #[cfg(feature = "test-hooks")]
        return self.corrupt.load(std::sync::atomic::Ordering::Relaxed);
        #[cfg(not(feature = "test-hooks"))]
        false
    }

    /// Test hook: from now on, flip one byte of every chunk this node sends to a peer (after
    /// its digest is taken), to show that receivers reject it. Only with the `test-hooks`
    /// feature, which the root package's tests enable and the `cdn` binary never has: no
    /// config field or flag reaches it.
    #[cfg(feature = "test-hooks")]
    pub fn corrupt_chunks_sent(&self, on: bool) {
        self.corrupt.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The sizes of the tables keyed by object key, after running their pending evictions
    /// (cheap: a batch of queue operations). `/metrics` reports them.
    pub fn table_sizes(&self) -> [TableSize; 3] {
        fn size<V>(table: &'static str, c: &moka::sync::Cache<String, V>, budget: u64) -> TableSize
        where
            V: Clone + Send + Sync + 'static,
        {
            c.run_pending_tasks();
            TableSize {
                table,
                bytes: c.weighted_size(),
                entries: c.entry_count(),
                budget,
            }
        }
        let b = self.table_budget;
        [
            size("hot", &self.hot, b),
            size("pushed", &self.pushed, b),
            size("advertised", &self.advertised, b),
        ]
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

/// The pacing of pushes to a peer: the project's one token bucket (one second of burst).
pub use cdn_http::bucket::TokenBucket;

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::EdgeConfig;
    use crate::peer::pki;
    use cdn_http::metrics::NodeMetrics;

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

    #[test]
    fn push_targets_default_to_the_first_peer_of_each_other_region() {
        let p = |name: &str, region: &str, push: Option<bool>| PeerConfig {
            name: name.into(),
            region: region.into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            push,
        };
        let peers = [
            p("a2", "r1", None),
            p("b1", "r2", None),
            p("b2", "r2", None),
            p("c1", "r3", None),
        ];
        assert_eq!(push_flags("r1", &peers), [false, true, false, true]);
        let mut marked = peers.clone();
        marked[2].push = Some(true);
        assert_eq!(push_flags("r1", &marked), [false, false, true, false]);
    }

    /// A key of exactly `len` bytes, distinct per `i`.
    fn long_key(i: usize, len: usize) -> String {
        let mut k = format!("http://origin.test/v/{i}/");
        k.extend(std::iter::repeat_n('x', len - k.len()));
        k
    }

    /// Key bytes and entries a table really holds, counted apart from its weigher, and what
    /// the weigher says they weigh.
    fn held<V: Clone + Send + Sync + 'static>(
        c: &moka::sync::Cache<String, V>,
        extra: impl Fn(&V) -> usize,
    ) -> (u64, u64, u64) {
        c.iter().fold((0, 0, 0), |(keys, n, w), (k, v)| {
            let weight = entry_weight(&k, extra(&v)) as u64;
            (keys + k.len() as u64, n + 1, w + weight)
        })
    }

    /// Requests (`note_request`) and a peer's adverts (`advertised_by`) for 10,000 distinct
    /// 8 KiB keys: every table keyed by object key stays within its byte budget, its size as
    /// `/metrics` reports it is what it holds, and the entries that matter survive the flood.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tables_keyed_by_url_stay_within_their_byte_budget() {
        const KEYS: usize = 10_000;
        const KEY_LEN: usize = 8 * 1024;
        let dir = std::env::temp_dir().join(format!("cdn-peer-tables-{}", std::process::id()));
        pki::write_lab_pki(&dir, &["a".to_string(), "b".to_string()]).expect("pki");
        let cfg = EdgeConfig {
            name: "a".into(),
            peer_listen: Some("127.0.0.1:0".parse().expect("addr")),
            peer_tls: Some(crate::config::PeerTls {
                ca: dir.join("ca.pem"),
                cert: dir.join("a.pem"),
                key: dir.join("a.key"),
            }),
            // Every object turns hot at its first request, so each fills `hot` and `pushed`.
            hot_threshold: 1,
            ..EdgeConfig::default()
        };
        let budget = cfg.peer_table_bytes;
        let metrics = Arc::new(NodeMetrics::new());
        let peers = Peers::new(&cfg, metrics).expect("peers").expect("peering");
        let store = Store::new(cfg.capacity, cfg.policy);
        let json = r#"{"key":"k","validator":"\"v\"","primary":"k","path_and_query":"/k",
            "len":10,"chunk_size":1048576,"content_type":"video/mp4","etag":null,
            "last_modified":null,"headers":[],"digest":null,"lifetime_ms":60000,
            "request_time_ms":1,"response_time_ms":2,"date_ms":1,"age_value":0,
            "ranges":true,"selecting":[]}"#;
        let template: WireMeta = serde_json::from_str(json).expect("wire meta");
        let meta = |key: String| {
            Arc::new(
                WireMeta {
                    key,
                    ..template.clone()
                }
                .into_meta(&["CDN-Cache-Control"])
                .expect("meta"),
            )
        };

        // Requests, with no peers (nothing to push to): one-off keys, and an object that
        // keeps being requested among them.
        let popular = meta(long_key(usize::MAX, KEY_LEN));
        for i in 0..KEYS {
            if i % 20 == 0 {
                peers.note_request(&store, &popular);
            }
            peers.note_request(&store, &meta(long_key(i, KEY_LEN)));
        }
        // A peer's adverts, a few keys per message as a 64 KiB frame allows.
        peers
            .set_peers(vec![PeerConfig {
                name: "b".into(),
                region: "other".into(),
                addr: "127.0.0.1:9".parse().expect("addr"),
                push: None,
            }])
            .expect("peers");
        let keys: Vec<usize> = (0..KEYS).collect();
        for batch in keys.chunks(7) {
            peers.advertised_by("b", batch.iter().map(|&i| long_key(i, KEY_LEN)).collect());
        }

        let sizes = peers.table_sizes();
        let names = |v: &Vec<String>| v.iter().map(|n| n.len()).sum();
        let held = [
            held(&peers.hot, |_| 0),
            held(&peers.pushed, |_| 0),
            held(&peers.advertised, names),
        ];
        for (size, (key_bytes, entries, weight)) in sizes.iter().zip(held) {
            let t = size.table;
            assert_eq!(size.budget, budget);
            assert!(key_bytes <= budget, "{t}: {key_bytes} key bytes > {budget}");
            assert!(
                entries <= budget / KEY_LEN as u64,
                "{t}: {entries} entries of {KEY_LEN} bytes in {budget}"
            );
            assert!(entries > 0, "{t} holds something");
            assert!(size.bytes <= budget, "{t}: {size:?}");
            assert_eq!(
                (size.bytes, size.entries),
                (weight, entries),
                "{t}: {size:?}"
            );
        }
        // What matters survives: the newest advert and push, the often requested object.
        let last = long_key(KEYS - 1, KEY_LEN);
        let set = peers.peer_set();
        assert_eq!(
            peers.advertisers(&set, &last).len(),
            1,
            "newest advert kept"
        );
        assert!(peers.pushed.contains_key(&last), "newest push kept");
        assert!(
            peers.hot.contains_key(&popular.version.key),
            "the popular object's window survives the flood of one-off keys"
        );
        peers.endpoint.close(0u32.into(), b"done");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
