//! Expected-rate eviction (issue #18, second round; an experiment, not used by the edge):
//! chunk k of object O is expected to be requested at rate λ(O) × reach(k), where λ(O) is
//! a decayed count of O's session starts (chunk-0 requests) and reach(k) the share of
//! sessions that get to index k, learned online from the trace (requests at index k over
//! requests at index 0). Eviction takes the lowest rate per byte among sampled cached
//! chunks; a chunk just ahead of an active reader of its object (the grouped S3-FIFO's
//! readers, `super::grouped`) is spared. Optionally (`admit`) a missed chunk is admitted only
//! if its rate beats the victim's.
//!
//! Knobs: `CDN_RATE=name=value,...` (`half` half-life of λ in requests, `samples`, `admit`,
//! `ahead`, `small` = a probationary FIFO share in per cent in front of the sampled store,
//! `ghost` = a ghost of ids in per cent of the capacity). With [`RateSampled::with_oracle`]
//! (the diagnostic only) λ(O) is O's session starts within ± `window` requests of now in
//! the whole trace: what perfect knowledge of the rates (not of the requests) would give.

use super::grouped::{ACTIVE, AHEAD, MeanGap, READERS};
use super::{CachePolicy, Group};
use crate::queue::{DList, Handle, IdMap};

#[derive(Debug, Clone, Copy)]
pub struct RateKnobs {
    pub half: u64,
    pub samples: usize,
    pub admit: bool,
    pub ahead: u32,
    pub window: u64,
    pub small: u64,
    pub ghost: u64,
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
}

#[derive(Debug, Clone, Copy, Default)]
struct GroupState {
    /// Decayed session starts, as of `at`.
    starts: f64,
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
    groups: IdMap<GroupState>,
    at_index: Vec<u64>,
    knobs: RateKnobs,
    now: u64,
    gap: MeanGap,
    rng: u64,
    /// Oracle: per group, the times of its chunk-0 requests in the whole trace.
    oracle: Option<IdMap<Vec<u64>>>,
}

impl RateSampled {
    pub fn new(capacity: u64) -> Self {
        Self::with_knobs(capacity, RateKnobs::from_env())
    }

    pub fn with_knobs(capacity: u64, knobs: RateKnobs) -> Self {
        let small_cap = capacity * knobs.small / 100;
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
            oracle: None,
        }
    }

    /// λ(O) from the whole trace: `starts` holds each group's chunk-0 request times, sorted.
    pub fn with_oracle(capacity: u64, knobs: RateKnobs, starts: IdMap<Vec<u64>>) -> Self {
        RateSampled {
            oracle: Some(starts),
            ..Self::with_knobs(capacity, knobs)
        }
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn lambda(&self, group: u64) -> f64 {
        if let Some(o) = &self.oracle {
            let Some(times) = o.get(&group) else {
                return 0.0;
            };
            let lo = self.now.saturating_sub(self.knobs.window);
            let hi = self.now + self.knobs.window;
            let a = times.partition_point(|&t| t < lo);
            let b = times.partition_point(|&t| t <= hi);
            return (b - a) as f64 + 0.01;
        }
        self.groups.get(&group).map_or(0.0, |g| {
            g.starts * (-((self.now - g.at) as f64) / self.knobs.half as f64).exp2()
        })
    }

    fn reach(&self, index: u32) -> f64 {
        let i = (index as usize).min(MAX_INDEX - 1);
        (self.at_index[i] as f64 + 0.5) / (self.at_index[0] as f64 + 1.0)
    }

    fn awaited(&self, e: &Entry) -> bool {
        let ahead = self.knobs.ahead;
        if ahead == 0 || e.index == 0 {
            return false;
        }
        let window = self.gap.window(ACTIVE);
        self.groups.get(&e.group).is_some_and(|g| {
            g.readers.iter().any(|&(i, t)| {
                t > 0 && self.now - t <= window && i < e.index && e.index - i <= ahead
            })
        })
    }

    fn score(&self, e: &Entry) -> f64 {
        let s = self.lambda(e.group) * self.reach(e.index) / e.size as f64;
        if self.awaited(e) { s + 1e6 } else { s }
    }

    fn track(&mut self, group: u64, index: u32) {
        let now = self.now;
        self.at_index[(index as usize).min(MAX_INDEX - 1)] += 1;
        let half = self.knobs.half as f64;
        let g = self.groups.entry(group).or_default();
        if index == 0 {
            g.starts = g.starts * (-((now - g.at) as f64) / half).exp2() + 1.0;
            g.at = now;
        }
        let mut stalest = 0;
        for n in 0..READERS {
            let (i, t) = g.readers[n];
            if t > 0 && (i.wrapping_add(1) == index || i.wrapping_add(2) == index) {
                g.readers[n] = (index, now);
                self.gap.add(now - t);
                return;
            }
            if t < g.readers[stalest].1 {
                stalest = n;
            }
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
        for _ in 0..self.knobs.samples.min(n) {
            let slot = (self.next_rand() % n as u64) as usize;
            let s = self.score(&self.entries[slot]);
            if best.is_none_or(|(_, b)| s < b) {
                best = Some((slot, s));
            }
        }
        best
    }

    fn remove_slot(&mut self, slot: usize) {
        let e = self.entries.swap_remove(slot);
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

    fn insert_main(&mut self, e: Entry) {
        while self.used + self.small_used + e.size > self.capacity {
            match self.victim() {
                Some((slot, _)) => self.remove_slot(slot),
                None => break,
            }
        }
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
        };
        let ghost_hit = match self.ghost_map.remove(&id) {
            Some(h) => {
                self.ghost_used -= self.ghost.remove(h).1;
                true
            }
            None => false,
        };
        if self.small_cap > 0 && !ghost_hit && size <= self.small_cap {
            // Probation: a FIFO; what leaves it enters the sampled store if its score beats
            // the would-be victim's, or if awaited.
            while self.small_used + size > self.small_cap {
                let Some(old) = self.small.pop_back() else {
                    break;
                };
                self.small_map.remove(&old.id);
                self.small_used -= old.size;
                self.promote(old);
            }
            while self.used + self.small_used + size > self.capacity {
                match self.victim() {
                    Some((slot, _)) => self.remove_slot(slot),
                    None => break,
                }
            }
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

impl CachePolicy for RateSampled {
    fn name(&self) -> String {
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
        self.track(g.id, g.index);
        self.lookup(id, size, g)
    }
}
