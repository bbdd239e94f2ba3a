//! Expected-rate eviction (issue #18, second round; an experiment of the harness, not in the
//! edge): chunk k of object O is expected to be requested at rate λ(O) × reach(k) by
//! sessions yet to start, plus reach(k) / reach(i) per (k − i) mean gaps by each active
//! reader of O at index i < k (the grouped S3-FIFO's readers, `super::grouped`). λ(O) is a
//! decayed count of O's session starts (its chunk-0 requests, and reads that continue no
//! reader: seeks), with a half-life of 8 mean eviction ages (learned, so it scales with the
//! cache), taken per request (× ln 2 / half-life); reach(k) is the share of sessions that
//! get to index k, learned online (requests at index k over requests at index 0). A miss is
//! always admitted; eviction takes the lowest rate among 32 sampled cached chunks (byte hits
//! per byte held: sizes cancel). Without groups (every item chunk 0 of its own group) it is
//! a sampled, decayed LFU.
//!
//! Knobs, measured in BENCHMARKS.md ("Beyond S3-FIFO, second round"):
//! `CDN_RATE=name=value,...` (`age` half-life in mean eviction ages, 0 = use `half`, a
//! half-life in requests; `samples`; `admit` = admit a miss only if it outscores the
//! victim; `unify=0` = instead of the readers' rates, spare (score + 10⁶) chunks at most
//! `ahead` places ahead of an active reader; `seeks`; `small` =
//! a probationary FIFO in front, in per cent of the capacity, whose leavers enter if they
//! outscore the victim; `ghost` = a ghost of ids, in per cent, whose hits skip the FIFO;
//! `long` = a second session-rate estimate with `long` times the half-life, combined by
//! `blend`: per cent of it in a weighted mean, or above 100 the larger of the two: third
//! round).
//! With [`RateSampled::with_oracle`] (the diagnostic only) λ(O) is O's session starts
//! within ± `window` requests of now in the whole trace: an upper bound of what better
//! estimates of the rates could give (it also knows the sessions about to start).

use super::grouped::{ACTIVE, AHEAD, MeanGap, READERS, continue_reader};
use super::{CachePolicy, Group};
use crate::queue::{DList, Handle, IdMap};

/// Experiment knobs (the module's doc says what each does); the defaults are the policy.
#[derive(Debug, Clone, Copy)]
pub struct RateKnobs {
    pub half: u64,
    pub samples: usize,
    pub admit: bool,
    pub ahead: u32,
    pub window: u64,
    pub small: u64,
    pub ghost: u64,
    /// When > 0, the half-life is this many mean eviction ages (learned) instead of `half`.
    pub age: u64,
    /// Count a request that continues no reader (a seek) as a session start too.
    pub seeks: bool,
    /// One expected rate for both kinds of reuse: new sessions (λ per request × reach(k))
    /// plus each active reader i < k (reach(k) / reach(i) per (k − i) mean gaps), instead
    /// of sparing chunks within `ahead` of a reader.
    pub unify: bool,
    /// When > 0, a second estimate of the session rate with a half-life `long` times the
    /// first's, combined with it by `blend`.
    pub long: u64,
    /// How the two estimates combine: per cent of the long one's rate in a weighted mean
    /// (0–100), or above 100 the larger of the two.
    pub blend: u64,
}

impl Default for RateKnobs {
    fn default() -> Self {
        RateKnobs {
            half: 200_000,
            samples: 32,
            admit: false,
            ahead: AHEAD,
            window: 100_000,
            small: 0,
            ghost: 0,
            age: 8,
            seeks: true,
            unify: true,
            long: 0,
            blend: 50,
        }
    }
}

impl RateKnobs {
    pub fn from_env() -> Self {
        let mut k = RateKnobs::default();
        if let Ok(spec) = std::env::var("CDN_RATE") {
            for (name, v) in spec.split(',').filter_map(|kv| kv.split_once('=')) {
                let v: u64 = v.trim().parse().unwrap_or(0);
                match name.trim() {
                    "half" => k.half = v.max(1),
                    "samples" => k.samples = (v as usize).clamp(1, 1024),
                    "admit" => k.admit = v > 0,
                    "ahead" => k.ahead = v.min(u64::from(u32::MAX)) as u32,
                    "window" => k.window = v.max(1),
                    "small" => k.small = v.min(90),
                    "ghost" => k.ghost = v.min(1000),
                    "age" => k.age = v.min(1000),
                    "seeks" => k.seeks = v > 0,
                    "unify" => k.unify = v > 0,
                    "long" => k.long = v.min(1000),
                    "blend" => k.blend = v.min(101),
                    _ => {}
                }
            }
        }
        k
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    size: u64,
    group: u64,
    index: u32,
    born: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct GroupState {
    /// Decayed session starts, as of `at`.
    starts: f64,
    /// The same with the long half-life (`RateKnobs::long`).
    long_starts: f64,
    at: u64,
    readers: [(u32, u64); READERS],
}

const MAX_INDEX: usize = 4096;

pub struct RateSampled {
    capacity: u64,
    used: u64,
    small_cap: u64,
    small_used: u64,
    small: DList<Entry>,
    small_map: IdMap<Handle>,
    ghost_cap: u64,
    ghost_used: u64,
    ghost: DList<(u64, u64)>,
    ghost_map: IdMap<Handle>,
    entries: Vec<Entry>,
    map: IdMap<usize>,
    /// Every object seen (a replay's few thousand; an edge would have to bound it).
    groups: IdMap<GroupState>,
    at_index: Vec<u64>,
    knobs: RateKnobs,
    now: u64,
    gap: MeanGap,
    rng: u64,
    /// Mean age of evicted entries (requests), exponentially weighted.
    evict_age: f64,
    /// Oracle: per group, the times of its chunk-0 requests in the whole trace.
    oracle: Option<IdMap<Vec<u64>>>,
    /// Oracle: the generator's own popularity, rank by rank as it churns.
    #[cfg(test)]
    truth: Option<TrueRates>,
}

/// The rates a video workload was generated with (diagnostic only): object O's sessions
/// start at `per_request` × pmf(rank of O now) per request, Zipf over `n` ranks, the ranks
/// churning as the generator's log says.
#[cfg(test)]
pub struct TrueRates {
    pmf: Vec<f64>,
    per_request: f64,
    ranks: Vec<u64>,
    rank_of: IdMap<usize>,
    events: Vec<(u64, usize)>,
    applied: usize,
    next_item: u64,
}

#[cfg(test)]
impl TrueRates {
    /// `n` videos of Zipf `alpha`; `per_request`: chunk-0 requests per request;
    /// `events`: the generator's churn (`synth::ChurnLog`).
    pub fn new(n: u64, alpha: f64, per_request: f64, events: Vec<(u64, usize)>) -> Self {
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-alpha)).collect();
        let total: f64 = weights.iter().sum();
        let mut t = TrueRates {
            pmf: weights.iter().map(|w| w / total).collect(),
            per_request,
            ranks: (0..n).collect(),
            rank_of: IdMap::default(),
            events,
            applied: 0,
            next_item: n,
        };
        t.reindex();
        t
    }

    fn reindex(&mut self) {
        self.rank_of = self
            .ranks
            .iter()
            .enumerate()
            .map(|(r, &o)| (o, r))
            .collect();
    }

    /// Applies the churn events that came before request `now` (1-based).
    fn advance(&mut self, now: u64) {
        let mut changed = false;
        while let Some(&(at, pos)) = self.events.get(self.applied)
            && at < now
        {
            self.ranks.pop();
            self.ranks.insert(pos.min(self.ranks.len()), self.next_item);
            self.next_item += 1;
            self.applied += 1;
            changed = true;
        }
        if changed {
            self.reindex();
        }
    }

    /// Chunk-0 requests of `group` per request, now.
    fn rate(&self, group: u64) -> f64 {
        self.rank_of
            .get(&group)
            .map_or(0.0, |&r| self.pmf[r] * self.per_request)
    }
}

impl RateSampled {
    pub fn new(capacity: u64) -> Self {
        Self::with_knobs(capacity, RateKnobs::from_env())
    }

    pub fn with_knobs(capacity: u64, knobs: RateKnobs) -> Self {
        let small_cap = capacity / 100 * knobs.small;
        RateSampled {
            capacity,
            used: 0,
            small_cap,
            small_used: 0,
            small: DList::new(),
            small_map: IdMap::default(),
            ghost_cap: capacity / 100 * knobs.ghost,
            ghost_used: 0,
            ghost: DList::new(),
            ghost_map: IdMap::default(),
            entries: Vec::new(),
            map: IdMap::default(),
            groups: IdMap::default(),
            at_index: vec![0; MAX_INDEX],
            knobs,
            now: 0,
            gap: MeanGap::default(),
            rng: 0x2545_f491_4f6c_dd1d,
            evict_age: 0.0,
            oracle: None,
            #[cfg(test)]
            truth: None,
        }
    }

    /// λ(O) from the whole trace: `starts` holds each group's chunk-0 request times, sorted.
    #[cfg(test)]
    pub fn with_oracle(capacity: u64, knobs: RateKnobs, starts: IdMap<Vec<u64>>) -> Self {
        RateSampled {
            oracle: Some(starts),
            ..Self::with_knobs(capacity, knobs)
        }
    }

    /// λ(O) as the generator drew it: the best any estimate of the rates could give.
    #[cfg(test)]
    pub fn with_true_rates(capacity: u64, knobs: RateKnobs, truth: TrueRates) -> Self {
        RateSampled {
            truth: Some(truth),
            ..Self::with_knobs(capacity, knobs)
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// λ(O) of the oracle: O's session starts within ± `window` of now.
    fn oracle_lambda(&self, oracle: &IdMap<Vec<u64>>, group: u64) -> f64 {
        let Some(times) = oracle.get(&group) else {
            return 0.0;
        };
        let lo = self.now.saturating_sub(self.knobs.window);
        let hi = self.now + self.knobs.window;
        let a = times.partition_point(|&t| t < lo);
        let b = times.partition_point(|&t| t <= hi);
        (b - a) as f64 + 0.01
    }

    fn half(&self) -> f64 {
        if self.knobs.age > 0 && self.evict_age > 0.0 {
            (self.knobs.age as f64 * self.evict_age).max(1.0)
        } else {
            self.knobs.half as f64
        }
    }

    fn reach(&self, index: u32) -> f64 {
        let i = (index as usize).min(MAX_INDEX - 1);
        (self.at_index[i] as f64 + 0.5) / (self.at_index[0] as f64 + 1.0)
    }

    /// Whether an active reader of the group is at most `ahead` places behind `index`.
    fn awaited(&self, g: &GroupState, index: u32) -> bool {
        let ahead = self.knobs.ahead;
        if ahead == 0 || index == 0 {
            return false;
        }
        let window = self.gap.window(ACTIVE);
        g.readers
            .iter()
            .any(|&(i, t)| t > 0 && self.now - t <= window && i < index && index - i <= ahead)
    }

    /// Byte hits per byte held: the rate itself (sizes cancel); awaited chunks above all.
    /// One lookup of the group.
    fn score(&self, e: &Entry) -> f64 {
        let Some(g) = self.groups.get(&e.group) else {
            return 0.0;
        };
        let lambda = if let Some(o) = &self.oracle {
            self.oracle_lambda(o, e.group)
        } else {
            g.starts * (-((self.now - g.at) as f64) / self.half()).exp2()
        };
        if self.knobs.unify {
            let half = self.half();
            let reach = self.reach(e.index);
            let mut rate = lambda * std::f64::consts::LN_2 / half;
            if self.knobs.long > 0 && self.oracle.is_none() {
                let long = half * self.knobs.long as f64;
                let slow = g.long_starts
                    * (-((self.now - g.at) as f64) / long).exp2()
                    * std::f64::consts::LN_2
                    / long;
                rate = if self.knobs.blend > 100 {
                    rate.max(slow)
                } else {
                    let w = self.knobs.blend as f64 / 100.0;
                    (1.0 - w) * rate + w * slow
                };
            }
            // The true rates replace any estimate (and its blend).
            #[cfg(test)]
            if let Some(t) = &self.truth {
                rate = t.rate(e.group);
            }
            let mut s = rate * reach;
            let window = self.gap.window(ACTIVE);
            let gap = self.gap.mean().max(1.0);
            for &(i, t) in &g.readers {
                if t > 0 && self.now - t <= window && i < e.index {
                    let d = f64::from(e.index - i);
                    s += reach / self.reach(i) / (d * gap);
                }
            }
            return s;
        }
        let s = lambda * self.reach(e.index);
        if self.awaited(g, e.index) { s + 1e6 } else { s }
    }

    fn track(&mut self, group: u64, index: u32) {
        let now = self.now;
        self.at_index[(index as usize).min(MAX_INDEX - 1)] += 1;
        let half = self.half();
        let seeks = self.knobs.seeks;
        let g = self.groups.entry(group).or_default();
        let long = half * self.knobs.long as f64;
        let bump = |g: &mut GroupState| {
            let age = (now - g.at) as f64;
            g.starts = g.starts * (-age / half).exp2() + 1.0;
            if long > 0.0 {
                g.long_starts = g.long_starts * (-age / long).exp2() + 1.0;
            }
            g.at = now;
        };
        if index == 0 {
            bump(g);
        }
        let Err(stalest) = continue_reader(&mut g.readers, index, now, &mut self.gap) else {
            return;
        };
        if seeks && index > 0 {
            // A read that continues no reader: a session that started by seeking.
            bump(g);
        }
        g.readers[stalest] = (index, now);
    }

    /// The sampled entry with the lowest score: (slot, score).
    fn victim(&mut self) -> Option<(usize, f64)> {
        let n = self.entries.len();
        if n == 0 {
            return None;
        }
        let mut best: Option<(usize, f64)> = None;
        // Every entry when there are no more than the samples, else random ones.
        let all = n <= self.knobs.samples;
        for k in 0..self.knobs.samples.min(n) {
            let slot = if all {
                k
            } else {
                (self.next_rand() % n as u64) as usize
            };
            let s = self.score(&self.entries[slot]);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((slot, s));
            }
        }
        best
    }

    fn remove_slot(&mut self, slot: usize) {
        let e = self.entries.swap_remove(slot);
        let age = (self.now - e.born) as f64;
        self.evict_age = if self.evict_age == 0.0 {
            age
        } else {
            self.evict_age + (age - self.evict_age) / 1024.0
        };
        self.map.remove(&e.id);
        self.used -= e.size;
        if let Some(moved) = self.entries.get(slot) {
            self.map.insert(moved.id, slot);
        }
        self.add_ghost(e.id, e.size);
    }

    fn add_ghost(&mut self, id: u64, size: u64) {
        if self.ghost_cap == 0 || self.ghost_map.contains_key(&id) {
            return;
        }
        while self.ghost_used + size > self.ghost_cap {
            let Some((old, s)) = self.ghost.pop_back() else {
                return;
            };
            self.ghost_map.remove(&old);
            self.ghost_used -= s;
        }
        self.ghost_map.insert(id, self.ghost.push_front((id, size)));
        self.ghost_used += size;
    }

    /// Evicts until `size` more fits: the lowest sampled rate, or (with nothing sampled)
    /// the probationary FIFO's oldest.
    fn make_room(&mut self, size: u64) {
        while self.used + self.small_used + size > self.capacity {
            if let Some((slot, _)) = self.victim() {
                self.remove_slot(slot);
            } else if let Some(old) = self.small.pop_back() {
                self.small_map.remove(&old.id);
                self.small_used -= old.size;
                self.add_ghost(old.id, old.size);
            } else {
                break;
            }
        }
    }

    fn insert_main(&mut self, e: Entry) {
        self.make_room(e.size);
        self.map.insert(e.id, self.entries.len());
        self.entries.push(e);
        self.used += e.size;
    }

    fn lookup(&mut self, id: u64, size: u64, g: Group) -> bool {
        if self.map.contains_key(&id) || self.small_map.contains_key(&id) {
            return true;
        }
        if size > self.capacity {
            return false;
        }
        let e = Entry {
            id,
            size,
            group: g.id,
            index: g.index,
            born: self.now,
        };
        let ghost_hit = match self.ghost_map.remove(&id) {
            Some(h) => {
                self.ghost_used -= self.ghost.remove(h).1;
                true
            }
            None => false,
        };
        if self.small_cap > 0 && !ghost_hit && size <= self.small_cap {
            // Probation: a FIFO; what leaves it enters the sampled store if its rate beats
            // the would-be victim's, else its id goes to the ghost.
            while self.small_used + size > self.small_cap {
                let Some(old) = self.small.pop_back() else {
                    break;
                };
                self.small_map.remove(&old.id);
                self.small_used -= old.size;
                self.promote(old);
            }
            self.make_room(size);
            self.small_map.insert(id, self.small.push_front(e));
            self.small_used += size;
            return false;
        }
        if self.knobs.admit && self.used + self.small_used + size > self.capacity {
            let mine = self.score(&e);
            if let Some((_, theirs)) = self.victim()
                && mine < theirs
            {
                return false;
            }
        }
        self.insert_main(e);
        false
    }

    fn promote(&mut self, e: Entry) {
        if self.used + self.small_used + e.size > self.capacity {
            let mine = self.score(&e);
            if let Some((_, theirs)) = self.victim()
                && mine < theirs
            {
                self.add_ghost(e.id, e.size);
                return;
            }
        }
        self.insert_main(e);
    }
}

/// The rate order as a pool inside another policy (`S3Fifo::with_rate_chunks`): the pool
/// only tracks, holds and picks victims; the host decides when a chunk must leave.
impl RateSampled {
    /// A pool without a capacity of its own, small queue or ghost.
    pub(super) fn pool() -> Self {
        Self::with_knobs(
            u64::MAX,
            RateKnobs {
                small: 0,
                ghost: 0,
                ..RateKnobs::from_env()
            },
        )
    }

    /// Every request, in order (chunk 0 and items without a group included: they feed the
    /// session rates and the reach).
    pub(super) fn observe(&mut self, g: Group) {
        self.now += 1;
        self.track(g.id, g.index);
    }

    /// The bytes of the chunks held.
    #[cfg(test)]
    pub(super) fn held_bytes(&self) -> u64 {
        self.used
    }

    pub(super) fn holds(&self, id: u64) -> bool {
        self.map.contains_key(&id)
    }

    pub(super) fn hold(&mut self, id: u64, size: u64, g: Group) {
        self.map.insert(id, self.entries.len());
        self.entries.push(Entry {
            id,
            size,
            group: g.id,
            index: g.index,
            born: self.now,
        });
        self.used += size;
    }

    /// Drops the sampled chunk of the lowest rate: its id and size.
    pub(super) fn drop_lowest(&mut self) -> Option<(u64, u64)> {
        let (slot, _) = self.victim()?;
        let e = self.entries[slot];
        self.remove_slot(slot);
        Some((e.id, e.size))
    }
}

impl CachePolicy for RateSampled {
    fn name(&self) -> String {
        #[cfg(test)]
        if self.truth.is_some() {
            return "rate-true".into();
        }
        if self.oracle.is_some() {
            "rate-oracle".into()
        } else {
            "rate-sampled".into()
        }
    }

    fn access(&mut self, id: u64, size: u64, next: Option<u64>) -> bool {
        self.access_in_group(id, size, next, Group { id, index: 0 })
    }

    fn access_in_group(&mut self, id: u64, size: u64, _next: Option<u64>, g: Group) -> bool {
        self.now += 1;
        #[cfg(test)]
        if let Some(t) = &mut self.truth {
            t.advance(self.now);
        }
        self.track(g.id, g.index);
        self.lookup(id, size, g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Seeded video-like requests: 8 readers, each picking an object by a skewed draw and
    /// reading up to 40 chunks of it from chunk 0; sizes 1..=1000 per chunk.
    fn sessions(n: usize, seed: u64) -> Vec<(u64, u64, Group)> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut readers = [(0u64, 0u32, 0u32); 8];
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let r = &mut readers[(next() % 8) as usize];
            if r.1 >= r.2 {
                let u = (next() >> 11) as f64 / (1u64 << 53) as f64;
                *r = ((u * u * 200.0) as u64, 0, 1 + (next() % 40) as u32);
            }
            let id = (r.0 << 8) | u64::from(r.1);
            let size = 1 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1000;
            out.push((
                id,
                size,
                Group {
                    id: r.0,
                    index: r.1,
                },
            ));
            r.1 += 1;
        }
        out
    }

    #[test]
    fn true_rates_follow_the_churn() {
        // Three videos, α 1: pmf 6/11, 3/11, 2/11. Before request 6 a new video (id 3)
        // enters at rank 0: video 0 moves to rank 1, 1 to rank 2, 2 retires.
        let mut t = TrueRates::new(3, 1.0, 0.5, vec![(5, 0)]);
        let r = |t: &TrueRates, g| (t.rate(g) * 22.0 * 1000.0).round() / 1000.0;
        t.advance(5);
        assert_eq!(
            [r(&t, 0), r(&t, 1), r(&t, 2), r(&t, 3)],
            [6.0, 3.0, 2.0, 0.0]
        );
        t.advance(6);
        assert_eq!(
            [r(&t, 0), r(&t, 1), r(&t, 2), r(&t, 3)],
            [3.0, 2.0, 0.0, 6.0]
        );
    }

    #[test]
    fn capacity_is_never_exceeded() {
        for knobs in [
            RateKnobs::default(),
            RateKnobs {
                small: 10,
                ghost: 90,
                admit: true,
                ..RateKnobs::default()
            },
        ] {
            for capacity in [1_000, 20_000, 200_000] {
                let mut p = RateSampled::with_knobs(capacity, knobs);
                let (mut hits, mut misses) = (0, 0);
                for (i, &(id, size, g)) in sessions(50_000, capacity).iter().enumerate() {
                    if p.access_in_group(id, size, None, g) {
                        hits += 1;
                    } else {
                        misses += 1;
                    }
                    assert!(
                        p.used + p.small_used <= capacity,
                        "{knobs:?} capacity {capacity}: {} after request {i}",
                        p.used + p.small_used
                    );
                    assert_eq!(
                        p.used + p.small_used,
                        p.entries.iter().map(|e| e.size).sum::<u64>()
                            + p.small_map
                                .values()
                                .map(|&h| p.small.get(h).size)
                                .sum::<u64>()
                    );
                }
                assert!(
                    hits > 0 && misses > 0,
                    "{knobs:?} {capacity}: {hits} {misses}"
                );
            }
        }
    }

    #[test]
    fn the_chunk_of_the_object_with_more_sessions_stays() {
        // Room for 3 chunks of size 1 (rates of new sessions alone: no readers, unify and
        // ahead off; a long fixed half-life). Object 1 gets 3 session starts, object 2 one; the cache holds 1/0,
        // 1/1 and 2/0. Then 3/0 must evict; reach(0) = (5 + ½)/(5 + 1) (five chunk-0
        // requests so far), reach(1) = (2 + ½)/6, so the rates are 1/0: 3 × 0.92,
        // 1/1: 3 × 0.42, 2/0: 1 × 0.92, the lowest: 2/0 leaves. 1/0 and 1/1 still hit,
        // 2/0 misses.
        let knobs = RateKnobs {
            ahead: 0,
            unify: false,
            age: 0,
            half: 1_000_000,
            samples: 1024,
            ..RateKnobs::default()
        };
        let mut p = RateSampled::with_knobs(3, knobs);
        let g = |id, index| Group { id, index };
        let reqs = [
            (10, g(1, 0)),
            (11, g(1, 1)),
            (10, g(1, 0)),
            (11, g(1, 1)),
            (10, g(1, 0)),
            (20, g(2, 0)),
            (30, g(3, 0)),
            (10, g(1, 0)),
            (11, g(1, 1)),
            (20, g(2, 0)),
        ];
        let got: String = reqs
            .iter()
            .map(|&(id, gr)| {
                if p.access_in_group(id, 1, None, gr) {
                    'H'
                } else {
                    'M'
                }
            })
            .collect();
        assert_eq!(got, "MMHHHMMHHM");
    }

    #[test]
    fn a_chunk_an_active_reader_is_about_to_read_stays() {
        // Room for 4 chunks of size 1. Viewer A reads chunks 0-2 of object 1 (ids 10-12),
        // viewer B starts it (10 hits), then objects 3 and 4 start (30, 40): 40 must evict.
        // With the readers' rates, 11 and 12 (B will read them in 1 and 2 gaps) outrank
        // 10 and 30, and 30 (one start against object 1's two) leaves: B's 11 and 12 hit.
        // With new sessions alone, 11 and 12 have the lowest rates (2 starts × reach 0.3,
        // against 30's 1 × 0.9), 11 leaves and B misses it.
        let g = |id, index| Group { id, index };
        let reqs = [
            (10, g(1, 0)),
            (11, g(1, 1)),
            (12, g(1, 2)),
            (10, g(1, 0)),
            (30, g(3, 0)),
            (40, g(4, 0)),
            (11, g(1, 1)),
            (12, g(1, 2)),
        ];
        let run = |knobs: RateKnobs| -> String {
            let mut p = RateSampled::with_knobs(4, knobs);
            reqs.iter()
                .map(|&(id, gr)| {
                    if p.access_in_group(id, 1, None, gr) {
                        'H'
                    } else {
                        'M'
                    }
                })
                .collect()
        };
        assert_eq!(run(RateKnobs::default()), "MMMHMMHH");
        let alone = RateKnobs {
            unify: false,
            ahead: 0,
            ..RateKnobs::default()
        };
        assert_eq!(&run(alone)[..7], "MMMHMMM");
    }
}
