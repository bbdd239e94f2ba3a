//! The edge's store candidates as [`CachePolicy`]s: `moka::sync::Cache` weighted by object
//! size, with moka's TinyLFU (admission by a frequency sketch + LRU) or plain LRU eviction.
//!
//! moka applies inserts and evictions lazily (in batches, on later operations), so its
//! weighted size can exceed the capacity for a while and a just-inserted entry may only be
//! rejected later. The benchmark calls `run_pending_tasks()` after every insert so that each
//! miss sees a cache within its capacity, as a simulator would; reads between inserts are
//! applied (to LRU order and the frequency sketch) at the next insert. This costs speed: the
//! ops/s measured here are a lower bound for moka in production.
//!
//! The cache is built with a fixed hasher (SipHash with zero keys) instead of moka's default
//! random one, so that the frequency sketch, and thus the miss ratio, is the same on every
//! run.

use std::collections::hash_map::DefaultHasher;
use std::hash::BuildHasherDefault;

use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::policies::CachePolicy;

type FixedHasher = BuildHasherDefault<DefaultHasher>;

/// A moka cache whose entries weigh their size (value = size in bytes, or 1 with unit sizing).
pub struct MokaPolicy {
    name: &'static str,
    cache: Cache<u64, u32, FixedHasher>,
}

impl MokaPolicy {
    pub fn tiny_lfu(capacity: u64) -> Self {
        Self::new("moka-TinyLFU", EvictionPolicy::tiny_lfu(), capacity)
    }

    pub fn lru(capacity: u64) -> Self {
        Self::new("moka-LRU", EvictionPolicy::lru(), capacity)
    }

    fn new(name: &'static str, policy: EvictionPolicy, capacity: u64) -> Self {
        let cache = Cache::builder()
            .max_capacity(capacity)
            .eviction_policy(policy)
            .weigher(|_id: &u64, size: &u32| *size)
            .build_with_hasher(FixedHasher::default());
        Self { name, cache }
    }

    #[cfg(test)]
    fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }
}

impl CachePolicy for MokaPolicy {
    fn name(&self) -> String {
        self.name.into()
    }

    fn access(&mut self, id: u64, size: u64, _next: Option<u64>) -> bool {
        if self.cache.get(&id).is_some() {
            return true;
        }
        // moka weights are u32: clamp (objects over 4 GiB do not fit any realistic test).
        self.cache
            .insert(id, u32::try_from(size).unwrap_or(u32::MAX));
        self.cache.run_pending_tasks();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policies::{Lru, PolicyKind};

    #[test]
    fn moka_honours_capacity_after_each_access() {
        for mut p in [MokaPolicy::tiny_lfu(10_000), MokaPolicy::lru(10_000)] {
            for i in 0..5_000u64 {
                let id = (i * 7919) % 1_000;
                p.access(id, 50 + id % 200, None);
                assert!(p.weighted_size() <= 10_000, "{} at {i}", p.name());
            }
        }
    }

    #[test]
    fn moka_lru_behaves_like_lru_on_a_small_trace() {
        // The Belady's-anomaly string with 3 and 4 slots: same hits as the reference LRU
        // (see policies::tests::lru_on_anomaly_string).
        let seq = [1u64, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5];
        for slots in [3, 4] {
            let mut moka = MokaPolicy::lru(slots);
            let mut lru = Lru::new(slots);
            let a: Vec<bool> = seq.iter().map(|&id| moka.access(id, 1, None)).collect();
            let b: Vec<bool> = seq.iter().map(|&id| lru.access(id, 1, None)).collect();
            assert_eq!(a, b, "{slots} slots");
        }
    }

    #[test]
    fn moka_tinylfu_keeps_frequent_objects_through_a_scan() {
        // 100 hot objects requested 20 times each, then a scan of 1,000 one-hit objects,
        // then the hot set again: TinyLFU rejects the scan, LRU loses the hot set.
        let mut reqs: Vec<u64> = (0..20).flat_map(|_| 0..100u64).collect();
        reqs.extend(1_000..2_000u64);
        reqs.extend(0..100u64);
        let hits_at_end = |kind: PolicyKind| {
            let mut p = kind.build(200, 0);
            let hits: Vec<bool> = reqs.iter().map(|&id| p.access(id, 1, None)).collect();
            hits[hits.len() - 100..].iter().filter(|&&h| h).count()
        };
        let t = hits_at_end(PolicyKind::MokaTinylfu);
        assert!(t >= 75, "{t}"); // 89 with moka 0.12.16
        assert_eq!(hits_at_end(PolicyKind::MokaLru), 0);
    }
}
