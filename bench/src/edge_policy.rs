//! The edge's own chunk store as [`CachePolicy`]s, so that what the edge runs is measured
//! rather than a stand-in:
//!
//! - `edge-tinylfu`, `edge-lru`, `edge-s3fifo`: `cdn_edge::store::Store::new(budget, policy)`,
//!   driven through its async `chunks` interface (`get`, then `insert` on a miss, then
//!   `run_pending_tasks` as the moka policies do) with `futures::executor::block_on`. Each
//!   trace object is one chunk (`ChunkKey` of the URL `https://origin.example/o/{id:016x}`,
//!   index 0) whose value is `size` bytes (slices of one shared zeroed buffer) and whose
//!   weight is the edge's `chunk_weight` (bytes + key length + 96). The store's budget is
//!   chosen so that its chunk cache holds exactly the cache size (the metadata share comes on
//!   top): the reference policies get the same bytes for objects, the edge pays its per-chunk
//!   overhead inside them. Meant for byte-sized runs (with `--unit objects` every object
//!   would weigh 1 byte + overhead, so the default policy list leaves these out).
//! - `edge-s3fifo-raw`: the edge's `S3FifoCache` alone, weighing each object by its trace
//!   size (no key overhead), with a fixed hasher: a calibration of the edge's S3-FIFO against
//!   the reference S3-FIFO (same hits whenever no object outweighs the small queue).
//! - `edge-grouped-s3-fifo-raw`: the same for the grouped S3-FIFO (keys are (group, index)
//!   pairs), against the reference `grouped-S3-FIFO`.

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use bytes::Bytes;
use cdn_edge::Policy;
use cdn_edge::s3fifo::{KeyGroup, S3FifoCache};
use cdn_edge::store::{ChunkKey, Store, VersionId, meta_budget};
use futures::executor::block_on;

use super::policies::{CachePolicy, Group};
use super::queue::IdMap;

/// The budget whose chunk share (`budget − meta_budget(budget)`) is exactly `chunks` bytes.
pub fn budget_for_chunks(chunks: u64) -> u64 {
    let (mut lo, mut hi) = (chunks, chunks.saturating_add(meta_budget(u64::MAX)));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if mid - meta_budget(mid).min(mid) >= chunks {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// A trace replayed through the edge's `Store`.
pub struct EdgeStorePolicy {
    name: &'static str,
    store: Store,
    keys: IdMap<ChunkKey>,
    /// The object of each group, shared by its chunks' keys.
    versions: IdMap<Arc<VersionId>>,
    zeros: Bytes,
}

impl EdgeStorePolicy {
    /// A store whose chunk cache holds `capacity` bytes.
    pub fn new(policy: Policy, capacity: u64) -> Self {
        let name = match policy {
            Policy::TinyLfu => "edge-TinyLFU",
            Policy::Lru => "edge-LRU",
            Policy::S3Fifo => "edge-S3-FIFO",
            Policy::GroupedS3Fifo => "edge-grouped-S3-FIFO",
            Policy::S3FifoRate => "edge-S3-FIFO+rate",
        };
        EdgeStorePolicy {
            name,
            store: Store::new(budget_for_chunks(capacity), policy),
            keys: IdMap::default(),
            versions: IdMap::default(),
            zeros: Bytes::new(),
        }
    }

    /// `size` bytes (a slice of a shared zeroed buffer, grown on demand).
    fn value(&mut self, size: u64) -> Bytes {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size > self.zeros.len() {
            self.zeros = Bytes::from(vec![0u8; size.next_power_of_two()]);
        }
        self.zeros.slice(..size)
    }

    #[cfg(test)]
    fn chunk_bytes(&self) -> u64 {
        self.store.chunk_bytes()
    }
}

impl CachePolicy for EdgeStorePolicy {
    fn name(&self) -> String {
        self.name.into()
    }

    fn access(&mut self, id: u64, size: u64, next: Option<u64>) -> bool {
        self.access_in_group(id, size, next, Group { id, index: 0 })
    }

    /// The chunk is chunk `group.index` of the object `https://origin.example/o/{group}`
    /// (an item without a group is chunk 0 of an object of its own).
    fn access_in_group(&mut self, id: u64, size: u64, _next: Option<u64>, g: Group) -> bool {
        let versions = &mut self.versions;
        let key = self
            .keys
            .entry(id)
            .or_insert_with(|| ChunkKey {
                version: versions
                    .entry(g.id)
                    .or_insert_with(|| {
                        Arc::new(VersionId {
                            key: format!("https://origin.example/o/{:016x}", g.id),
                            validator: "\"v1\"".into(),
                        })
                    })
                    .clone(),
                index: u64::from(g.index),
            })
            .clone();
        if block_on(self.store.chunk(&key)).is_some() {
            return true;
        }
        let value = self.value(size);
        let store = &self.store;
        block_on(async {
            store.put_chunk(key, value).await;
            store.settle().await;
        });
        false
    }
}

type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// A trace item as a key of the edge's grouped S3-FIFO: (id, group, index), grouped by
/// `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupedId(u64, u64, u32);

impl KeyGroup for GroupedId {
    type Group = u64;

    fn group(&self) -> &u64 {
        &self.1
    }

    fn index(&self) -> u64 {
        u64::from(self.2)
    }
}

/// The edge's grouped S3-FIFO cache (or its S3-FIFO+rate) weighted by the trace's sizes
/// alone.
pub struct EdgeGroupedRaw {
    cache: S3FifoCache<GroupedId, u32, FixedHasher>,
}

impl EdgeGroupedRaw {
    pub fn new(capacity: u64) -> Self {
        EdgeGroupedRaw {
            cache: S3FifoCache::grouped(
                capacity,
                Box::new(|_: &GroupedId, size: &u32| *size),
                FixedHasher::default(),
            ),
        }
    }

    /// The edge's `s3-fifo-rate` cache.
    pub fn rated(capacity: u64) -> Self {
        EdgeGroupedRaw {
            cache: S3FifoCache::with_rates(
                capacity,
                Box::new(|_: &GroupedId, size: &u32| *size),
                FixedHasher::default(),
            ),
        }
    }
}

impl CachePolicy for EdgeGroupedRaw {
    fn name(&self) -> String {
        if self.cache.has_rates() {
            "edge-S3-FIFO+rate-raw".into()
        } else {
            "edge-grouped-S3-FIFO-raw".into()
        }
    }

    fn access(&mut self, id: u64, size: u64, next: Option<u64>) -> bool {
        self.access_in_group(id, size, next, Group { id, index: 0 })
    }

    fn access_in_group(&mut self, id: u64, size: u64, _next: Option<u64>, g: Group) -> bool {
        let key = GroupedId(id, g.id, g.index);
        if self.cache.get(&key).is_some() {
            return true;
        }
        self.cache
            .insert(key, u32::try_from(size).unwrap_or(u32::MAX));
        false
    }
}

/// The edge's S3-FIFO cache weighted by the trace's sizes alone.
pub struct EdgeS3FifoRaw {
    cache: S3FifoCache<u64, u32, FixedHasher>,
}

impl EdgeS3FifoRaw {
    pub fn new(capacity: u64) -> Self {
        EdgeS3FifoRaw {
            cache: S3FifoCache::with_hasher(
                capacity,
                Box::new(|_: &u64, size: &u32| *size),
                FixedHasher::default(),
            ),
        }
    }
}

impl CachePolicy for EdgeS3FifoRaw {
    fn name(&self) -> String {
        "edge-S3-FIFO-raw".into()
    }

    fn access(&mut self, id: u64, size: u64, _next: Option<u64>) -> bool {
        if self.cache.get(&id).is_some() {
            return true;
        }
        self.cache
            .insert(id, u32::try_from(size).unwrap_or(u32::MAX));
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::S3Fifo;

    /// A seeded request stream: skewed ids, sizes fixed per id in 1..=max_size.
    fn requests(n: usize, ids: u64, max_size: u64, seed: u64) -> Vec<(u64, u64)> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Skew: the square of a uniform draw favours small ids.
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                let id = (u * u * ids as f64) as u64;
                let size = 1 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % max_size;
                (id, size)
            })
            .collect()
    }

    #[test]
    fn the_edges_s3fifo_hits_exactly_as_the_reference() {
        for (capacity, max_size, unit) in [
            (50, 1, true),
            (500, 1, true),
            (200_000, 1_000, false),
            (2_000_000, 1_000, false),
        ] {
            let reqs = requests(100_000, 5_000, max_size, capacity);
            let mut reference = S3Fifo::new(capacity);
            let mut edge = EdgeS3FifoRaw::new(capacity);
            for (i, &(id, size)) in reqs.iter().enumerate() {
                let size = if unit { 1 } else { size };
                assert_eq!(
                    reference.access(id, size, None),
                    edge.access(id, size, None),
                    "capacity {capacity}, request {i}"
                );
            }
        }
    }

    /// Video sessions: chunks of 200 videos, read in order by 16 interleaved viewers.
    fn sessions() -> crate::trace::Trace {
        use crate::synth::{Churn, VideoSpec, video};
        video(&VideoSpec {
            videos: 200,
            requests: 60_000,
            alpha: 0.8,
            chunk_bytes: 1_000,
            median_chunks: 30.0,
            abandon: 0.05,
            concurrent: 16,
            churn: Churn { every: 50, top: 5 },
            seed: 9,
        })
        .expect("trace")
    }

    #[test]
    fn the_edges_grouped_s3fifo_hits_exactly_as_the_reference() {
        use crate::policies::GroupedS3Fifo;
        // Video sessions (chunks of videos, read in order by interleaved viewers) at three
        // cache sizes; and the same ids without groups.
        let trace = sessions();
        let working_set = trace.stats().working_set_bytes;
        for share in [0.01, 0.05, 0.2] {
            let capacity = (working_set as f64 * share) as u64;
            let mut reference = GroupedS3Fifo::new(capacity);
            let mut edge = EdgeGroupedRaw::new(capacity);
            let mut hits = 0;
            for (i, r) in trace.requests.iter().enumerate() {
                let g = Group {
                    id: r.group,
                    index: r.index,
                };
                let hit = reference.access_in_group(r.id, r.size, None, g);
                assert_eq!(
                    hit,
                    edge.access_in_group(r.id, r.size, None, g),
                    "{share}: {i}"
                );
                hits += usize::from(hit);
            }
            assert!(hits > 1_000, "{share}: {hits}");
        }
        let reqs = requests(50_000, 5_000, 1_000, 3);
        let mut reference = GroupedS3Fifo::new(500_000);
        let mut edge = EdgeGroupedRaw::new(500_000);
        for (i, &(id, size)) in reqs.iter().enumerate() {
            assert_eq!(
                reference.access(id, size, None),
                edge.access(id, size, None),
                "{i}"
            );
        }
    }

    #[test]
    fn the_edges_s3fifo_rate_hits_near_the_reference_and_above_s3fifo() {
        use crate::policies::S3Fifo;
        // The edge forgets a group's session rate once none of its keys is cached or in
        // the ghost (the reference remembers every group), and counts a miss's read after
        // its evictions (the reference before), so the two differ: here the edge hits more.
        let trace = sessions();
        let working_set = trace.stats().working_set_bytes;
        let total: u64 = trace.requests.iter().map(|r| r.size).sum();
        let mut edge_hit_bytes = Vec::new();
        for share in [0.01, 0.05, 0.2] {
            let capacity = (working_set as f64 * share) as u64;
            let mut policies: [Box<dyn CachePolicy>; 3] = [
                Box::new(S3Fifo::with_rate_chunks(capacity)),
                Box::new(EdgeGroupedRaw::rated(capacity)),
                Box::new(EdgeS3FifoRaw::new(capacity)),
            ];
            let mut hit_bytes = [0u64; 3];
            for r in &trace.requests {
                let g = Group {
                    id: r.group,
                    index: r.index,
                };
                for (p, b) in policies.iter_mut().zip(&mut hit_bytes) {
                    if p.access_in_group(r.id, r.size, None, g) {
                        *b += r.size;
                    }
                }
            }
            edge_hit_bytes.push(hit_bytes[1]);
            let [reference, edge, s3fifo] = hit_bytes.map(|b| b as f64 / total as f64);
            // Byte hit ratios here: edge .1878 / .3615 / .6056, reference .1685 / .3506 /
            // .6039, S3-FIFO .1495 / .3372 / .5733.
            assert!(
                edge > reference - 0.005,
                "{share}: edge {edge:.4}, reference {reference:.4}"
            );
            assert!(
                edge > s3fifo + 0.01,
                "{share}: edge {edge:.4}, S3-FIFO {s3fifo:.4}"
            );
        }
        // Pinned: the edge's policy on this trace, byte hits at the three sizes.
        assert_eq!(edge_hit_bytes, [11_130_522, 21_425_351, 35_887_186]);
    }

    #[test]
    fn budget_gives_the_chunk_cache_exactly_the_cache_size() {
        for c in [1, 1_000, 292_272, 2_000_000, 2_500_000_000, 93_000_000_000] {
            let b = budget_for_chunks(c);
            assert_eq!(b - meta_budget(b), c, "{c}");
        }
    }

    #[test]
    fn edge_stores_stay_within_the_cache_size() {
        let reqs = requests(20_000, 2_000, 4_000, 7);
        for policy in [
            Policy::TinyLfu,
            Policy::Lru,
            Policy::S3Fifo,
            Policy::GroupedS3Fifo,
            Policy::S3FifoRate,
        ] {
            let mut p = EdgeStorePolicy::new(policy, 300_000);
            let mut hits = 0;
            for &(id, size) in &reqs {
                hits += usize::from(p.access(id, size, None));
                assert!(p.chunk_bytes() <= 300_000, "{}", p.name());
            }
            assert!(hits > 1_000, "{}: {hits}", p.name());
        }
    }
}
