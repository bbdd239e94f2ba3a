//! The expected-rate order among chunks for the `s3-fifo-rate` policy
//! ([`super::S3FifoCache::with_rates`]; issue #18, BENCHMARKS.md "Beyond S3-FIFO, fourth
//! round"). Chunk k of object O is expected to be requested at λ(O) × reach(k) by sessions
//! yet to start, plus reach(k) / reach(i) per (k − i) mean gaps by each active reader of O
//! at index i < k. λ(O) is a decayed count of O's session starts (reads of chunk 0, and
//! reads that continue no reader: seeks) with a half-life of 8 mean eviction ages of
//! chunks (learned: it scales with the cache), per request; reach(k) is the share of
//! requests at index k against index 0, learned. The chunks past their group's first that
//! main holds form a [`Pool`]: when main's CLOCK reaches one with no hits left, the chunk of
//! the lowest rate among [`SAMPLES`] sampled leaves instead. The harness's
//! `S3Fifo::with_rate_chunks` over `RateSampled` (`bench/src/policies/`) is the reference.
//!
//! What is shared and how: the reach counters and the half-life are atomics (read and
//! bumped on the hit path); a group's decayed starts sit behind a small mutex in its
//! [`super::GroupCell`]; the pool lives with the queues, under the cache's mutex.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use parking_lot::Mutex;

use super::Node;

/// Chunks scored per eviction.
pub const SAMPLES: usize = 32;
/// Indices counted apart for reach (later ones share the last counter).
const MAX_INDEX: usize = 4096;
/// The half-life of λ, in mean eviction ages.
const AGES: f64 = 8.0;
/// The half-life before the first eviction, in requests.
const FIRST_HALF: f64 = 200_000.0;
/// A node in no pool.
pub(super) const NO_SLOT: u32 = u32::MAX;

/// A group's decayed session starts, as of a clock value.
#[derive(Debug, Default)]
pub(super) struct Starts {
    n: f64,
    at: u64,
}

/// The rate estimates every read updates: the reach counters and the half-life.
pub(super) struct Rates {
    at_index: Box<[AtomicU64]>,
    /// The half-life of λ in requests (f64 bits).
    half: AtomicU64,
}

impl Rates {
    pub(super) fn new() -> Self {
        Rates {
            at_index: (0..MAX_INDEX).map(|_| AtomicU64::new(0)).collect(),
            half: AtomicU64::new(FIRST_HALF.to_bits()),
        }
    }

    /// The half-life of λ, in requests: 8 mean eviction ages of chunks once one left.
    pub(super) fn half(&self) -> f64 {
        f64::from_bits(self.half.load(Relaxed))
    }

    pub(super) fn set_half(&self, half: f64) {
        self.half.store(half.to_bits(), Relaxed);
    }

    /// A read of chunk `index` of the group whose starts are `starts` at `now`;
    /// `continued`: it moved up one of the group's readers (else it starts a session).
    pub(super) fn read(&self, starts: &Mutex<Starts>, index: u32, continued: bool, now: u64) {
        self.at_index[(index as usize).min(MAX_INDEX - 1)].fetch_add(1, Relaxed);
        if index == 0 || !continued {
            let half = self.half();
            let mut s = starts.lock();
            let age = now.saturating_sub(s.at) as f64;
            s.n = s.n * (-age / half).exp2() + 1.0;
            s.at = now;
        }
    }

    fn reach(&self, index: u32) -> f64 {
        let i = (index as usize).min(MAX_INDEX - 1);
        (self.at_index[i].load(Relaxed) as f64 + 0.5)
            / (self.at_index[0].load(Relaxed) as f64 + 1.0)
    }

    /// The expected requests per request for chunk `index` of a group with `starts` and
    /// `readers` ((index, clock) of each active reader), at `now`, with a mean gap of
    /// `gap` requests between a reader's reads.
    pub(super) fn score(
        &self,
        starts: &Mutex<Starts>,
        readers: impl Iterator<Item = u32>,
        index: u32,
        now: u64,
        gap: f64,
    ) -> f64 {
        let half = self.half();
        let lambda = {
            let s = starts.lock();
            s.n * (-(now.saturating_sub(s.at) as f64) / half).exp2()
        };
        let reach = self.reach(index);
        let mut rate = lambda * std::f64::consts::LN_2 / half * reach;
        for i in readers.filter(|&i| i < index) {
            rate += reach / self.reach(i) / (f64::from(index - i) * gap.max(1.0));
        }
        rate
    }
}

/// The chunks main holds past their group's first, to sample from; and how old evicted
/// chunks were. Under the cache's mutex.
pub(super) struct Pool<K> {
    nodes: Vec<Arc<Node<K>>>,
    rng: u64,
    /// Mean age (requests) of evicted chunks, exponentially weighted; 0 before the first.
    evict_age: f64,
}

impl<K> Pool<K> {
    pub(super) fn new() -> Self {
        Pool {
            nodes: Vec::new(),
            rng: 0x2545_f491_4f6c_dd1d,
            evict_age: 0.0,
        }
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Takes `node` in, unless the pool already holds `NO_SLOT` nodes (the node is then
    /// evicted as any other in main).
    pub(super) fn add(&mut self, node: Arc<Node<K>>) {
        let slot = match u32::try_from(self.nodes.len()) {
            Ok(slot) if slot != NO_SLOT => slot,
            _ => return,
        };
        node.slot.store(slot, Relaxed);
        self.nodes.push(node);
    }

    /// Takes `node` out (if it is in).
    pub(super) fn remove(&mut self, node: &Node<K>) {
        let slot = node.slot.swap(NO_SLOT, Relaxed);
        if slot == NO_SLOT || slot as usize >= self.nodes.len() {
            return;
        }
        self.nodes.swap_remove(slot as usize);
        if let Some(moved) = self.nodes.get(slot as usize) {
            moved.slot.store(slot, Relaxed);
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// The sampled node of the lowest `score` (every node when there are no more than
    /// [`SAMPLES`]).
    pub(super) fn lowest(&mut self, score: impl Fn(&Node<K>) -> f64) -> Option<Arc<Node<K>>> {
        let n = self.nodes.len();
        let all = n <= SAMPLES;
        let mut best: Option<(usize, f64)> = None;
        for k in 0..SAMPLES.min(n) {
            let slot = if all {
                k
            } else {
                (self.next_rand() % n as u64) as usize
            };
            let s = score(&self.nodes[slot]);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((slot, s));
            }
        }
        best.map(|(slot, _)| self.nodes[slot].clone())
    }

    /// A chunk `age` requests old left: the half-life to use from now on.
    pub(super) fn evicted(&mut self, age: u64) -> f64 {
        let age = age as f64;
        self.evict_age = if self.evict_age == 0.0 {
            age
        } else {
            self.evict_age + (age - self.evict_age) / 1024.0
        };
        (AGES * self.evict_age).max(1.0)
    }

    /// Checks every pooled node's slot (tests).
    #[cfg(test)]
    pub(super) fn nodes(&self) -> impl Iterator<Item = (usize, &Arc<Node<K>>)> {
        self.nodes.iter().enumerate()
    }
}
