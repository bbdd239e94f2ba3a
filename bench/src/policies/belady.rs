//! The offline optimum as reference policies: Belady (evict the object needed furthest in
//! the future) and its size-aware variant, both from the trace's next-access times.

use super::*;

/// Belady's MIN: evicts the cached object whose next access is farthest in the future
/// (sizes ignored when choosing, so it is optimal only for unit sizes). Like libCacheSim's
/// `Belady`, it always admits the missed object (evicting among the cached ones first), and
/// ties (objects never requested again) go to the larger id.
pub struct Belady {
    pub(super) capacity: u64,
    pub(super) used: u64,
    /// id -> (size, next access)
    pub(super) map: IdMap<(u64, u64)>,
    /// (next access, id), max first; stale entries are skipped lazily.
    pub(super) heap: BinaryHeap<(u64, u64)>,
}

impl Belady {
    pub fn new(capacity: u64) -> Self {
        Self {
            capacity,
            used: 0,
            map: IdMap::default(),
            heap: BinaryHeap::new(),
        }
    }

    pub(super) fn evict(&mut self) {
        while let Some((next, id)) = self.heap.pop() {
            if let Some(&(size, n)) = self.map.get(&id)
                && n == next
            {
                self.map.remove(&id);
                self.used -= size;
                return;
            }
        }
    }

    pub(super) fn compact(&mut self) {
        if self.heap.len() > 2 * self.map.len() + 4096 {
            self.heap = self.map.iter().map(|(&id, &(_, n))| (n, id)).collect();
        }
    }
}

impl CachePolicy for Belady {
    fn name(&self) -> String {
        "Belady".into()
    }

    fn access(&mut self, id: u64, size: u64, next_access: Option<u64>) -> bool {
        let next = next_access.unwrap_or(u64::MAX);
        if let Some(e) = self.map.get_mut(&id) {
            e.1 = next;
            self.heap.push((next, id));
            self.compact();
            return true;
        }
        if size > self.capacity {
            return false;
        }
        while self.used + size > self.capacity && !self.map.is_empty() {
            self.evict();
        }
        self.map.insert(id, (size, next));
        self.heap.push((next, id));
        self.used += size;
        self.compact();
        false
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct SizedObj {
    pub(super) id: u64,
    pub(super) size: u64,
    pub(super) next: u64,
}

/// Size-aware Belady, as libCacheSim's `BeladySize`: evicts the object with the largest
/// size × (next access − now) among 128 random samples (exact scan while at most 128 objects
/// are cached); objects never requested again are not admitted, and leave on their last hit.
/// A heuristic upper bound for byte-sized caches, not an optimum.
pub struct BeladySize {
    pub(super) capacity: u64,
    pub(super) used: u64,
    /// Index of the request being handled.
    pub(super) now: u64,
    pub(super) seen: u64,
    pub(super) map: IdMap<usize>,
    pub(super) objs: Vec<SizedObj>,
    pub(super) rng: StdRng,
}

impl BeladySize {
    const SAMPLES: usize = 128;

    pub fn new(capacity: u64, seed: u64) -> Self {
        Self {
            capacity,
            used: 0,
            now: 0,
            seen: 0,
            map: IdMap::default(),
            objs: Vec::new(),
            rng: StdRng::seed_from_u64(seed),
        }
    }

    pub(super) fn score(&self, i: usize) -> u128 {
        let o = &self.objs[i];
        u128::from(o.size) * u128::from(o.next.saturating_sub(self.now))
    }

    pub(super) fn remove_at(&mut self, i: usize) {
        let o = self.objs.swap_remove(i);
        self.map.remove(&o.id);
        self.used -= o.size;
        if let Some(moved) = self.objs.get(i) {
            self.map.insert(moved.id, i);
        }
    }

    pub(super) fn evict(&mut self) {
        let n = self.objs.len();
        let victim = if n <= Self::SAMPLES {
            (0..n).max_by_key(|&i| (self.score(i), i))
        } else {
            let mut best: Option<(u128, usize)> = None;
            for _ in 0..Self::SAMPLES {
                let i = self.rng.random_range(0..n);
                best = best.max(Some((self.score(i), i)));
            }
            best.map(|(_, i)| i)
        };
        if let Some(i) = victim {
            self.remove_at(i);
        }
    }
}

impl CachePolicy for BeladySize {
    fn name(&self) -> String {
        "BeladySize".into()
    }

    fn access(&mut self, id: u64, size: u64, next_access: Option<u64>) -> bool {
        self.now = self.seen;
        self.seen += 1;
        if let Some(&i) = self.map.get(&id) {
            match next_access {
                Some(n) => self.objs[i].next = n,
                None => self.remove_at(i),
            }
            return true;
        }
        let Some(next) = next_access else {
            return false;
        };
        if size > self.capacity {
            return false;
        }
        while self.used + size > self.capacity && !self.objs.is_empty() {
            self.evict();
        }
        self.map.insert(id, self.objs.len());
        self.objs.push(SizedObj { id, size, next });
        self.used += size;
        false
    }
}
