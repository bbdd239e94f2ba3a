//! The [`CachePolicy`] trait every simulated cache implements, the list of policies the
//! benchmark knows ([`PolicyKind`], one line per policy to add one), and the reference
//! policies written in the harness: FIFO, LRU, SIEVE, S3-FIFO (and S3-FIFO+rate, with the
//! expected-rate order of `rate` among the chunks past a group's first), Belady and
//! size-aware Belady.
//!
//! Semantics follow libCacheSim (so that its published miss ratios can be reproduced):
//! capacity is counted in the request's `size` (the runner passes 1 for unit sizing); a miss
//! inserts the object after evicting until it fits; an object larger than the whole cache is
//! not admitted; a hit does not change the recorded size.

use std::collections::BinaryHeap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::edge_policy::{EdgeGroupedRaw, EdgeS3FifoRaw, EdgeStorePolicy};
use super::moka_policy::MokaPolicy;
use super::queue::{DList, Handle, IdMap};

mod belady;
mod grouped;
mod rate;
pub use rate::RateSampled;
#[cfg(test)]
mod diag;
use belady::*;
pub use grouped::GroupedS3Fifo;

/// A simulated cache. `access` handles one request and returns whether it was a hit; on a
/// miss the policy decides whether (and how) to admit the object.
pub trait CachePolicy: Send {
    fn name(&self) -> String;
    /// `size` is what counts against capacity; `next_access` is the virtual time (index of
    /// the request in the trace) of the object's next request, `None` if never; only the
    /// Belady policies look at it. Requests must be fed in trace order, one call each.
    fn access(&mut self, id: u64, size: u64, next_access: Option<u64>) -> bool;

    /// [`CachePolicy::access`] with the group of the requested item (the object a chunk
    /// belongs to, and the chunk's index in it). Only grouped policies look at it; the
    /// others ignore it, so they behave exactly as without groups.
    fn access_in_group(
        &mut self,
        id: u64,
        size: u64,
        next_access: Option<u64>,
        _group: Group,
    ) -> bool {
        self.access(id, size, next_access)
    }
}

/// Where a requested item sits: its group (for a chunk, its object) and its index in it.
/// An item without a group is its own group, at index 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    pub id: u64,
    pub index: u32,
}

/// Every policy the benchmark can run. To benchmark another cache, implement
/// [`CachePolicy`] for it and add a variant here and in [`PolicyKind::build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum PolicyKind {
    Fifo,
    Lru,
    Sieve,
    S3fifo,
    /// Evicts the object whose next access is farthest (sizes ignored).
    Belady,
    /// Evicts the object with the largest size × time to next access (sampled).
    BeladySize,
    /// moka::sync::Cache with TinyLFU (a stand-in for the edge's `tiny-lfu` store).
    MokaTinylfu,
    /// moka::sync::Cache with LRU.
    MokaLru,
    /// The edge's `Store` with moka TinyLFU (chunk keys, the edge's weigher).
    EdgeTinylfu,
    /// The edge's `Store` with moka LRU.
    EdgeLru,
    /// The edge's `Store` with its S3-FIFO.
    EdgeS3fifo,
    /// The edge's S3-FIFO cache weighted by object size alone (calibration).
    EdgeS3fifoRaw,
    /// S3-FIFO that knows each chunk's object (reference for the edge's grouped store).
    Grouped,
    /// The edge's `Store` with its grouped S3-FIFO.
    EdgeGrouped,
    /// The edge's grouped S3-FIFO cache weighted by object size alone (calibration).
    EdgeGroupedRaw,
    /// Experiment (issue #18): sampled eviction by expected request rate (object session
    /// starts × the learned reach of the chunk's index); not in the edge.
    Rate,
    /// Experiment (issue #18): S3-FIFO, with the rate order among chunks past the first.
    S3fifoRate,
    /// The edge's `Store` with its `s3-fifo-rate`.
    EdgeS3fifoRate,
    /// The edge's `s3-fifo-rate` cache weighted by object size alone (calibration).
    EdgeS3fifoRateRaw,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 19] = [
        PolicyKind::Fifo,
        PolicyKind::Lru,
        PolicyKind::Sieve,
        PolicyKind::S3fifo,
        PolicyKind::Belady,
        PolicyKind::BeladySize,
        PolicyKind::MokaTinylfu,
        PolicyKind::MokaLru,
        PolicyKind::EdgeTinylfu,
        PolicyKind::EdgeLru,
        PolicyKind::EdgeS3fifo,
        PolicyKind::EdgeS3fifoRaw,
        PolicyKind::Grouped,
        PolicyKind::EdgeGrouped,
        PolicyKind::EdgeGroupedRaw,
        PolicyKind::Rate,
        PolicyKind::S3fifoRate,
        PolicyKind::EdgeS3fifoRate,
        PolicyKind::EdgeS3fifoRateRaw,
    ];

    /// A cache of this policy holding `capacity` (units or bytes). `seed` feeds the sampling
    /// of size-aware Belady.
    pub fn build(self, capacity: u64, seed: u64) -> Box<dyn CachePolicy> {
        match self {
            PolicyKind::Fifo => Box::new(Fifo::new(capacity)),
            PolicyKind::Lru => Box::new(Lru::new(capacity)),
            PolicyKind::Sieve => Box::new(Sieve::new(capacity)),
            PolicyKind::S3fifo => Box::new(S3Fifo::new(capacity)),
            PolicyKind::Belady => Box::new(Belady::new(capacity)),
            PolicyKind::BeladySize => Box::new(BeladySize::new(capacity, seed)),
            PolicyKind::MokaTinylfu => Box::new(MokaPolicy::tiny_lfu(capacity)),
            PolicyKind::MokaLru => Box::new(MokaPolicy::lru(capacity)),
            PolicyKind::EdgeTinylfu => {
                Box::new(EdgeStorePolicy::new(cdn_edge::Policy::TinyLfu, capacity))
            }
            PolicyKind::EdgeLru => Box::new(EdgeStorePolicy::new(cdn_edge::Policy::Lru, capacity)),
            PolicyKind::EdgeS3fifo => {
                Box::new(EdgeStorePolicy::new(cdn_edge::Policy::S3Fifo, capacity))
            }
            PolicyKind::EdgeS3fifoRaw => Box::new(EdgeS3FifoRaw::new(capacity)),
            PolicyKind::Grouped => Box::new(GroupedS3Fifo::new(capacity)),
            PolicyKind::EdgeGrouped => Box::new(EdgeStorePolicy::new(
                cdn_edge::Policy::GroupedS3Fifo,
                capacity,
            )),
            PolicyKind::EdgeGroupedRaw => Box::new(EdgeGroupedRaw::new(capacity)),
            PolicyKind::Rate => Box::new(RateSampled::new(capacity)),
            PolicyKind::S3fifoRate => Box::new(S3Fifo::with_rate_chunks(capacity)),
            PolicyKind::EdgeS3fifoRate => {
                Box::new(EdgeStorePolicy::new(cdn_edge::Policy::S3FifoRate, capacity))
            }
            PolicyKind::EdgeS3fifoRateRaw => Box::new(EdgeGroupedRaw::rated(capacity)),
        }
    }

    /// Whether the edge can run this policy (it is not an offline oracle or a reference):
    /// the edge's own store with each of its policies, its S3-FIFO weighted by size alone,
    /// and the moka caches weighted by size alone.
    pub fn edge_usable(self) -> bool {
        matches!(
            self,
            PolicyKind::MokaTinylfu
                | PolicyKind::MokaLru
                | PolicyKind::EdgeTinylfu
                | PolicyKind::EdgeLru
                | PolicyKind::EdgeS3fifo
                | PolicyKind::EdgeS3fifoRaw
                | PolicyKind::Grouped
                | PolicyKind::EdgeGrouped
                | PolicyKind::EdgeGroupedRaw
                | PolicyKind::EdgeS3fifoRate
                | PolicyKind::EdgeS3fifoRateRaw
        )
    }

    /// Whether the policy weighs objects in bytes whatever the sizing unit (the edge's
    /// store adds its per-chunk overhead to every size), so it is meaningless with unit
    /// sizing and left out of the default list there.
    pub fn bytes_only(self) -> bool {
        matches!(
            self,
            PolicyKind::EdgeTinylfu
                | PolicyKind::EdgeLru
                | PolicyKind::EdgeS3fifo
                | PolicyKind::EdgeGrouped
                | PolicyKind::EdgeS3fifoRate
        )
    }

    pub fn label(self) -> &'static str {
        match self {
            PolicyKind::Fifo => "FIFO",
            PolicyKind::Lru => "LRU",
            PolicyKind::Sieve => "SIEVE",
            PolicyKind::S3fifo => "S3-FIFO",
            PolicyKind::Belady => "Belady",
            PolicyKind::BeladySize => "BeladySize",
            PolicyKind::MokaTinylfu => "moka-TinyLFU",
            PolicyKind::MokaLru => "moka-LRU",
            PolicyKind::EdgeTinylfu => "edge-TinyLFU",
            PolicyKind::EdgeLru => "edge-LRU",
            PolicyKind::EdgeS3fifo => "edge-S3-FIFO",
            PolicyKind::EdgeS3fifoRaw => "edge-S3-FIFO-raw",
            PolicyKind::Grouped => "grouped-S3-FIFO",
            PolicyKind::EdgeGrouped => "edge-grouped-S3-FIFO",
            PolicyKind::EdgeGroupedRaw => "edge-grouped-S3-FIFO-raw",
            PolicyKind::Rate => "rate-sampled",
            PolicyKind::S3fifoRate => "S3-FIFO+rate",
            PolicyKind::EdgeS3fifoRate => "edge-S3-FIFO+rate",
            PolicyKind::EdgeS3fifoRateRaw => "edge-S3-FIFO+rate-raw",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Obj {
    id: u64,
    size: u64,
}

/// First in, first out: hits change nothing.
pub struct Fifo {
    capacity: u64,
    used: u64,
    map: IdMap<Handle>,
    queue: DList<Obj>,
}

impl Fifo {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            map: IdMap::default(),
            queue: DList::new(),
        }
    }
}

impl CachePolicy for Fifo {
    fn name(&self) -> String {
        "FIFO".into()
    }

    fn access(&mut self, id: u64, size: u64, _next: Option<u64>) -> bool {
        if self.map.contains_key(&id) {
            return true;
        }
        if size > self.capacity {
            return false;
        }
        while self.used + size > self.capacity {
            let Some(old) = self.queue.pop_back() else {
                break;
            };
            self.map.remove(&old.id);
            self.used -= old.size;
        }
        self.map.insert(id, self.queue.push_front(Obj { id, size }));
        self.used += size;
        false
    }
}

/// Least recently used.
pub struct Lru {
    capacity: u64,
    used: u64,
    map: IdMap<Handle>,
    queue: DList<Obj>,
}

impl Lru {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            map: IdMap::default(),
            queue: DList::new(),
        }
    }
}

impl CachePolicy for Lru {
    fn name(&self) -> String {
        "LRU".into()
    }

    fn access(&mut self, id: u64, size: u64, _next: Option<u64>) -> bool {
        if let Some(&h) = self.map.get(&id) {
            self.queue.move_to_front(h);
            return true;
        }
        if size > self.capacity {
            return false;
        }
        while self.used + size > self.capacity {
            let Some(old) = self.queue.pop_back() else {
                break;
            };
            self.map.remove(&old.id);
            self.used -= old.size;
        }
        self.map.insert(id, self.queue.push_front(Obj { id, size }));
        self.used += size;
        false
    }
}

#[derive(Debug, Clone, Copy)]
struct SieveObj {
    id: u64,
    size: u64,
    visited: bool,
}

/// SIEVE (Zhang et al., NSDI 2024): a FIFO queue with a visited bit and a hand that moves
/// from the oldest end towards the newest, clearing visited bits and evicting the first
/// unvisited object; new objects go to the newest end.
pub struct Sieve {
    capacity: u64,
    used: u64,
    map: IdMap<Handle>,
    queue: DList<SieveObj>,
    hand: Option<Handle>,
}

impl Sieve {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            map: IdMap::default(),
            queue: DList::new(),
            hand: None,
        }
    }

    fn evict(&mut self) {
        let Some(mut h) = self.hand.or(self.queue.back()) else {
            return;
        };
        while self.queue.get(h).visited {
            self.queue.get_mut(h).visited = false;
            h = match self.queue.newer(h) {
                Some(n) => n,
                None => self.queue.back().expect("non-empty"),
            };
        }
        self.hand = self.queue.newer(h);
        let old = self.queue.remove(h);
        self.map.remove(&old.id);
        self.used -= old.size;
    }
}

impl CachePolicy for Sieve {
    fn name(&self) -> String {
        "SIEVE".into()
    }

    fn access(&mut self, id: u64, size: u64, _next: Option<u64>) -> bool {
        if let Some(&h) = self.map.get(&id) {
            self.queue.get_mut(h).visited = true;
            return true;
        }
        if size > self.capacity {
            return false;
        }
        while self.used + size > self.capacity && !self.queue.is_empty() {
            self.evict();
        }
        let h = self.queue.push_front(SieveObj {
            id,
            size,
            visited: false,
        });
        self.map.insert(id, h);
        self.used += size;
        false
    }
}

#[derive(Debug, Clone, Copy)]
struct S3Obj {
    id: u64,
    size: u64,
    freq: u32,
}

#[derive(Debug, Clone, Copy)]
enum S3Loc {
    Small(Handle),
    Main(Handle),
}

/// S3-FIFO (Yang et al., SOSP 2023) as in libCacheSim's `S3FIFO` with its defaults: a small
/// FIFO of 10% of the capacity, a main FIFO of the rest run as a 2-bit CLOCK, and a ghost
/// FIFO of ids (sized 90% of the capacity, i.e. like main). Misses go to the small queue
/// (to main when the id is in the ghost; and, before the first eviction, to main once small
/// is full). An object leaving small moves to main if it was hit at least twice there
/// (libCacheSim's `move-to-main-threshold=2`), else its id goes to the ghost. Objects larger
/// than the small queue are not admitted. Deviation: the small queue holds at least 1 unit,
/// so tiny test caches (< 10 units) still admit.
pub struct S3Fifo {
    capacity: u64,
    small_cap: u64,
    main_cap: u64,
    ghost_cap: u64,
    small: DList<S3Obj>,
    main: DList<S3Obj>,
    ghost: DList<Obj>,
    small_used: u64,
    main_used: u64,
    ghost_used: u64,
    map: IdMap<S3Loc>,
    ghost_map: IdMap<Handle>,
    has_evicted: bool,
    /// `S3Fifo::with_rate_chunks`: the chunks past a group's first, held in main by rate.
    chunks: Option<Box<RateSampled>>,
}

impl S3Fifo {
    const MOVE_TO_MAIN_THRESHOLD: u32 = 2;

    pub fn new(capacity: u64) -> Self {
        let small_cap = ((capacity as f64 * 0.10) as u64).max(1).min(capacity);
        Self {
            capacity,
            small_cap,
            main_cap: capacity - small_cap,
            ghost_cap: (capacity as f64 * 0.90) as u64,
            small: DList::new(),
            main: DList::new(),
            ghost: DList::new(),
            small_used: 0,
            main_used: 0,
            ghost_used: 0,
            map: IdMap::default(),
            ghost_map: IdMap::default(),
            has_evicted: false,
            chunks: None,
        }
    }

    /// Experiment (issue #18, fourth round): S3-FIFO for every item at index 0 (items
    /// without a group, first chunks) and the expected-rate order for the other chunks. Those
    /// skip small and enter main; when main's CLOCK reaches one with no hits left, the chunk
    /// of the lowest rate among 32 sampled leaves instead and the hand moves on, so S3-FIFO
    /// still decides how main splits between chunks and everything else. Without groups it
    /// is S3-FIFO, request by request.
    pub fn with_rate_chunks(capacity: u64) -> Self {
        Self {
            chunks: Some(Box::new(RateSampled::pool())),
            ..Self::new(capacity)
        }
    }

    fn insert_main(&mut self, obj: S3Obj) {
        self.main_used += obj.size;
        let h = self.main.push_front(obj);
        self.map.insert(obj.id, S3Loc::Main(h));
    }

    fn insert_ghost(&mut self, id: u64, size: u64) {
        if self.ghost_map.contains_key(&id) || size > self.ghost_cap {
            return;
        }
        while self.ghost_used + size > self.ghost_cap {
            let Some(old) = self.ghost.pop_back() else {
                break;
            };
            self.ghost_map.remove(&old.id);
            self.ghost_used -= old.size;
        }
        self.ghost_map
            .insert(id, self.ghost.push_front(Obj { id, size }));
        self.ghost_used += size;
    }

    /// Evicts one object from small (moving hit ones to main on the way); may end with
    /// nothing evicted if every object in small moved to main.
    fn evict_small(&mut self) {
        while let Some(obj) = self.small.pop_back() {
            self.small_used -= obj.size;
            if obj.freq >= Self::MOVE_TO_MAIN_THRESHOLD {
                self.insert_main(S3Obj { freq: 0, ..obj });
            } else {
                self.map.remove(&obj.id);
                self.insert_ghost(obj.id, obj.size);
                return;
            }
        }
    }

    /// Evicts one object from main, reinserting hit ones with their counter decremented.
    fn evict_main(&mut self) {
        while let Some(h) = self.main.back() {
            let obj = *self.main.get(h);
            if obj.freq >= 1 {
                self.main.get_mut(h).freq = obj.freq.min(3) - 1;
                self.main.move_to_front(h);
            } else if let Some(pool) = self.chunks.as_mut().filter(|p| p.holds(obj.id)) {
                // A chunk: the lowest-rate one leaves (perhaps this one); the hand moves on.
                self.main.move_to_front(h);
                if let Some((id, size)) = pool.drop_lowest()
                    && let Some(S3Loc::Main(v)) = self.map.remove(&id)
                {
                    self.main.remove(v);
                    self.main_used -= size;
                    return;
                }
            } else {
                self.main.remove(h);
                self.map.remove(&obj.id);
                self.main_used -= obj.size;
                return;
            }
        }
    }

    fn evict(&mut self) {
        self.has_evicted = true;
        if self.main_used > self.main_cap || self.small.is_empty() {
            self.evict_main();
        } else {
            self.evict_small();
        }
    }
}

impl CachePolicy for S3Fifo {
    fn name(&self) -> String {
        if self.chunks.is_some() {
            "S3-FIFO+rate".into()
        } else {
            "S3-FIFO".into()
        }
    }

    fn access_in_group(&mut self, id: u64, size: u64, next: Option<u64>, g: Group) -> bool {
        let Some(pool) = self.chunks.as_mut() else {
            return self.access(id, size, next);
        };
        pool.observe(g);
        if g.index == 0 {
            return self.access(id, size, next);
        }
        if let Some(&S3Loc::Main(h)) = self.map.get(&id) {
            let o = self.main.get_mut(h);
            o.freq = o.freq.saturating_add(1);
            return true;
        }
        if size > self.main_cap {
            return false;
        }
        while self.small_used + self.main_used + size > self.capacity {
            self.evict();
        }
        self.insert_main(S3Obj { id, size, freq: 0 });
        if let Some(pool) = self.chunks.as_mut() {
            pool.hold(id, size, g);
        }
        false
    }

    fn access(&mut self, id: u64, size: u64, _next: Option<u64>) -> bool {
        match self.map.get(&id) {
            Some(&S3Loc::Small(h)) => {
                let o = self.small.get_mut(h);
                o.freq = o.freq.saturating_add(1);
                return true;
            }
            Some(&S3Loc::Main(h)) => {
                let o = self.main.get_mut(h);
                o.freq = o.freq.saturating_add(1);
                return true;
            }
            None => {}
        }
        let hit_on_ghost = match self.ghost_map.remove(&id) {
            Some(h) => {
                self.ghost_used -= self.ghost.remove(h).size;
                true
            }
            None => false,
        };
        if size > self.small_cap || size > self.capacity {
            return false;
        }
        while self.small_used + self.main_used + size > self.capacity {
            self.evict();
        }
        let obj = S3Obj { id, size, freq: 0 };
        if hit_on_ghost || (!self.has_evicted && self.small_used >= self.small_cap) {
            self.insert_main(obj);
        } else {
            self.small_used += size;
            let h = self.small.push_front(obj);
            self.map.insert(id, S3Loc::Small(h));
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Replays `(id, size)` requests (next access computed from the sequence) and returns the
    /// hit/miss string, e.g. "MMMH".
    fn run(policy: &mut dyn CachePolicy, reqs: &[(u64, u64)]) -> String {
        let mut next = vec![None; reqs.len()];
        let mut last: IdMap<u64> = IdMap::default();
        for i in (0..reqs.len()).rev() {
            next[i] = last.insert(reqs[i].0, i as u64);
        }
        reqs.iter()
            .zip(next)
            .map(|(&(id, size), n)| if policy.access(id, size, n) { 'H' } else { 'M' })
            .collect()
    }

    fn unit(ids: &[u64]) -> Vec<(u64, u64)> {
        ids.iter().map(|&id| (id, 1)).collect()
    }

    fn misses(s: &str) -> usize {
        s.chars().filter(|&c| c == 'M').count()
    }

    /// The textbook page-replacement string that shows Belady's anomaly.
    const ANOMALY: [u64; 12] = [1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5];

    #[test]
    fn fifo_shows_beladys_anomaly() {
        // 3 slots: 1 2 3 miss; 4 evicts 1; 1 evicts 2; 2 evicts 3; 5 evicts 4; 1 2 hit;
        // 3 evicts 1; 4 evicts 2; 5 hits -> 9 misses.
        assert_eq!(run(&mut Fifo::new(3), &unit(&ANOMALY)), "MMMMMMMHHMMH");
        // 4 slots: 1-4 miss; 1 2 hit; 5 evicts 1; 1 evicts 2; 2 evicts 3; 3 evicts 4;
        // 4 evicts 5; 5 evicts 1 -> 10 misses: more slots, more misses.
        let four = run(&mut Fifo::new(4), &unit(&ANOMALY));
        assert_eq!(four, "MMMMHHMMMMMM");
        assert_eq!(misses(&four), 10);
    }

    #[test]
    fn lru_on_anomaly_string() {
        // 3 slots: 1 2 3 miss; 4 evicts 1; 1 evicts 2; 2 evicts 3; 5 evicts 4; 1 2 hit;
        // 3 evicts 5 (least recent); 4 evicts 1; 5 evicts 2 -> 10 misses.
        assert_eq!(run(&mut Lru::new(3), &unit(&ANOMALY)), "MMMMMMMHHMMM");
        // 4 slots: 1-4 miss; 1 2 hit; 5 evicts 3; 1 2 hit; 3 evicts 4; 4 evicts 5;
        // 5 evicts 1 -> 8 misses.
        assert_eq!(run(&mut Lru::new(4), &unit(&ANOMALY)), "MMMMHHMHHMMM");
    }

    #[test]
    fn belady_on_anomaly_string() {
        // 3 slots: 1 2 3 miss; 4 evicts 3 (next use farthest: 1@4, 2@5, 3@9); 1 2 hit;
        // 5 evicts 4 (1@7, 2@8, 4@10); 1 2 hit; 3 evicts 1 or 2 (never used again);
        // 4 evicts the other dead one; 5 hits -> 7 misses (the optimum).
        assert_eq!(run(&mut Belady::new(3), &unit(&ANOMALY)), "MMMMHHMHHMMH");
        // 4 slots: 1-4 miss; 1 2 hit; 5 evicts 4 (4@10 farthest); 1 2 3 hit; 4 evicts a
        // dead one; 5 hits -> 6 misses.
        assert_eq!(run(&mut Belady::new(4), &unit(&ANOMALY)), "MMMMHHMHHHMH");
    }

    #[test]
    fn sieve_keeps_a_hit_object_that_lru_drops() {
        // Sequence 1 2 3 1 4 5 6 1, 3 slots.
        let seq = unit(&[1, 2, 3, 1, 4, 5, 6, 1]);
        // SIEVE (queue newest..oldest): [3 2 1], 1 gets visited. 4: hand at 1 (visited,
        // cleared) -> 2 evicted, hand at 3: [4 3 1]. 5: 3 evicted, hand at 4: [5 4 1].
        // 6: 4 evicted: [6 5 1]. 1 hits -> 6 misses.
        assert_eq!(run(&mut Sieve::new(3), &seq), "MMMHMMMH");
        // LRU: 4 evicts 2, 5 evicts 3, 6 evicts 1 (least recent), 1 misses -> 7 misses.
        assert_eq!(run(&mut Lru::new(3), &seq), "MMMHMMMM");
        // FIFO: 4 evicts 1, so the last 1 misses -> 7 misses.
        assert_eq!(run(&mut Fifo::new(3), &seq), "MMMHMMMM");
        // Belady: 4, 5 and 6 evict dead objects (2, 3, then 4 or 5); 1 hits -> 6 misses.
        assert_eq!(run(&mut Belady::new(3), &seq), "MMMHMMMH");
    }

    #[test]
    fn s3fifo_resists_a_scan() {
        // 10 slots: small 1, main 9, ghost 9.
        // 1..=10: 1 goes to small, then small is full and nothing was evicted yet, so 2..=10
        // go to main. 11..=20 (a scan): each evicts the small queue's only object (unhit) to
        // the ghost and takes its place, main is untouched. 2..=10 then all hit.
        let mut ids: Vec<u64> = (1..=20).collect();
        ids.extend(2..=10);
        let s3 = run(&mut S3Fifo::new(10), &unit(&ids));
        assert_eq!(s3, format!("{}{}", "M".repeat(20), "H".repeat(9)));
        // LRU loses everything to the scan: 29 misses.
        assert_eq!(misses(&run(&mut Lru::new(10), &unit(&ids))), 29);
    }

    #[test]
    fn s3fifo_ghost_hit_goes_to_main() {
        // 10 slots. 1..=10 fill (1 in small, 2..=10 in main). 11 evicts 1 from small into
        // the ghost (ghost: 1). 1 again: miss, but a ghost hit, so after evicting (main is
        // at its 9 and small holds 11 -> 11 goes to the ghost) it is inserted into main
        // (main now 10 > 9). 12: small is empty, so main evicts its oldest unhit object, 2,
        // and 12 enters small. 1 hits (it is in main); 2 misses (it was evicted).
        let mut ids: Vec<u64> = (1..=11).collect();
        ids.extend([1, 12, 1, 2]);
        assert_eq!(
            run(&mut S3Fifo::new(10), &unit(&ids)),
            format!("{}MMHM", "M".repeat(11))
        );
    }

    #[test]
    fn s3fifo_small_queue_promotes_twice_hit_objects() {
        // 10 slots. Fill with 1..=10 (1 in small). 11: evicts 1 -> ghost; 11 in small.
        // 11 hit twice (freq 2). 12: evicting small moves 11 to main (freq >= 2) and then
        // small is empty, so the loop evicts from main (10 > 9): 2 is the oldest, unhit ->
        // evicted; 12 enters small. 11 hits in main; 2 misses.
        let mut ids: Vec<u64> = (1..=11).collect();
        ids.extend([11, 11, 12, 11, 2]);
        assert_eq!(
            run(&mut S3Fifo::new(10), &unit(&ids)),
            format!("{}HHMHM", "M".repeat(11))
        );
    }

    #[test]
    fn belady_size_trades_one_big_object_for_small_ones() {
        // Capacity 10 bytes. A=8, B=1, C=1, D=2 bytes. Sequence A B C D D A B C.
        let reqs = [
            (1, 8),
            (2, 1),
            (3, 1),
            (4, 2),
            (4, 2),
            (1, 8),
            (2, 1),
            (3, 1),
        ];
        // Belady: at D (t3) the farthest next accesses are C@7 then B@6: evicting C frees 1
        // byte, not enough, then B: [A, D]. D, A hit; B and C miss -> 6 misses, 14 bytes.
        assert_eq!(run(&mut Belady::new(10), &reqs), "MMMMHHMM");
        // BeladySize at t3: scores A 8*(5-3)=16, B 1*(6-3)=3, C 1*(7-3)=4 -> evicts A:
        // [B, C, D]. D hits (and leaves: no next access); A misses and is not admitted (never
        // used again); B, C hit -> 5 misses, 20 bytes.
        assert_eq!(run(&mut BeladySize::new(10, 1), &reqs), "MMMMHMHH");
    }

    #[test]
    fn objects_larger_than_the_cache_are_not_admitted() {
        // Capacity 10: X (11 bytes) never fits; A (5) then hits; B (10) fits exactly by
        // evicting A.
        let reqs = [(9, 11), (9, 11), (1, 5), (1, 5), (2, 10), (2, 10), (1, 5)];
        for kind in [
            PolicyKind::Fifo,
            PolicyKind::Lru,
            PolicyKind::Sieve,
            PolicyKind::Belady,
        ] {
            assert_eq!(
                run(kind.build(10, 1).as_mut(), &reqs),
                "MMMHMHM",
                "{kind:?}"
            );
        }
        // BeladySize: X (11) never fits; A admitted and hit; B (10) evicts A -> same; the
        // last A is its final access and is not admitted.
        assert_eq!(run(&mut BeladySize::new(10, 1), &reqs), "MMMHMHM");
        // S3-FIFO admits only objects that fit its small queue (1 byte here): all miss.
        assert_eq!(run(&mut S3Fifo::new(10), &reqs), "MMMMMMM");
    }

    #[test]
    fn byte_capacity_is_respected() {
        // Capacity 10 bytes with sizes 4: at most 2 objects fit. LRU on 1 2 3 1: 3 evicts 1,
        // so 1 misses again.
        let reqs = [(1, 4), (2, 4), (3, 4), (1, 4)];
        assert_eq!(run(&mut Lru::new(10), &reqs), "MMMM");
        assert_eq!(run(&mut Lru::new(12), &reqs), "MMMH");
    }

    /// A small seeded video workload (the generator of `bench/hit-ratio.sh`, scaled down).
    fn small_video(seed: u64) -> crate::trace::Trace {
        crate::synth::video(&crate::synth::VideoSpec {
            videos: 200,
            requests: 60_000,
            alpha: 0.8,
            chunk_bytes: 1000,
            median_chunks: 30.0,
            abandon: 0.03,
            concurrent: 16,
            churn: crate::synth::Churn { every: 50, top: 5 },
            seed,
        })
        .expect("workload")
    }

    /// Replays `trace` with groups: (hits, hit bytes).
    fn replay_grouped(p: &mut dyn CachePolicy, trace: &crate::trace::Trace) -> (u64, u64) {
        let (mut hits, mut bytes) = (0, 0);
        for r in &trace.requests {
            let g = Group {
                id: r.group,
                index: r.index,
            };
            if p.access_in_group(r.id, r.size, None, g) {
                hits += 1;
                bytes += r.size;
            }
        }
        (hits, bytes)
    }

    #[test]
    fn s3fifo_with_rate_chunks_is_s3fifo_without_groups() {
        // Ungrouped requests (Zipf-like ids, varied sizes): the same hit, request by request.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let reqs: Vec<(u64, u64)> = (0..50_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                let id = (u * u * u * 5000.0) as u64;
                (id, 1 + id.wrapping_mul(0x2545_f491_4f6c_dd1d) % 3000)
            })
            .collect();
        for capacity in [20_000, 200_000] {
            let a = run(&mut S3Fifo::new(capacity), &reqs);
            let b = run(&mut S3Fifo::with_rate_chunks(capacity), &reqs);
            assert_eq!(a, b, "capacity {capacity}");
            assert!(a.contains('H') && a.contains('M'));
        }
    }

    #[test]
    fn s3fifo_with_rate_chunks_stays_within_capacity() {
        for capacity in [3_000, 30_000, 300_000] {
            let trace = small_video(capacity);
            let mut p = S3Fifo::with_rate_chunks(capacity);
            for (i, r) in trace.requests.iter().enumerate() {
                let g = Group {
                    id: r.group,
                    index: r.index,
                };
                p.access_in_group(r.id, r.size, None, g);
                let used = p.small_used + p.main_used;
                assert!(used <= capacity, "{capacity}: {used} after request {i}");
                let pool = p.chunks.as_ref().map_or(0, |c| c.held_bytes());
                assert!(
                    pool <= p.main_used,
                    "{capacity}: chunks {pool} in main {}",
                    p.main_used
                );
            }
        }
    }

    #[test]
    fn s3fifo_with_rate_chunks_replays_a_small_video_trace_as_pinned() {
        // The pinned counts guard the policy against silent changes; that it beats S3-FIFO
        // on sessions is the point of it.
        let trace = small_video(7);
        let capacity = 60_000; // 60 chunks (`CDN_RATE` unset)
        let (hits, bytes) = replay_grouped(&mut S3Fifo::with_rate_chunks(capacity), &trace);
        let (s3_hits, s3_bytes) = replay_grouped(&mut S3Fifo::new(capacity), &trace);
        assert!(
            bytes > s3_bytes,
            "S3-FIFO+rate {bytes} B, S3-FIFO {s3_bytes} B"
        );
        assert_eq!(
            (hits, bytes, s3_hits, s3_bytes),
            (7351, 7_248_596, 6108, 6_016_131)
        );
    }
}
