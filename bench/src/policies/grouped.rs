//! Grouped S3-FIFO: the reference S3-FIFO (`super::S3Fifo`) that also knows the object
//! (group) each chunk belongs to and the chunk's index in it; the reference for the edge's
//! `grouped-s3-fifo` chunk store (`cdn_edge::s3fifo`, grouped), which hits exactly as this.
//!
//! What the groups add: each group remembers up to [`READERS`] readers, the index each last
//! read and when (a clock of accesses). A request for chunk k moves up the reader that last
//! read k − 1 or k − 2, else takes the stalest reader's place. A reader is active while its
//! last read is at most [`ACTIVE`] × the mean gap between a reader's reads old (the mean is
//! learned). A chunk at most [`AHEAD`] places ahead of an active reader of its group is
//! *awaited*: evicting from small moves it to main instead (as if it had been hit twice),
//! and main's CLOCK passes over it (within the same bound of turns as for hit chunks). So a
//! chunk another viewer of the video is about to reach stays; chunks behind every viewer
//! (the late chunks of abandoned sessions) leave as S3-FIFO would have them leave.
//!
//! A group's state lives only while one of its chunks is cached or in the ghost, and a
//! chunk at index 0 is never ahead of a reader, so on a trace without groups (every item is
//! chunk 0 of its own group) the hits are exactly those of S3-FIFO.
//!
//! Other ideas measured with the experiment knobs of [`Knobs`] (`CDN_GROUPED=name=value,...`
//! in the environment; BENCHMARKS.md has the numbers): group heat for admission (`admit`:
//! a chunk of a group whose chunks were re-requested skips small), a read-ahead hint
//! (`hint`: a request for chunk k adds to chunk k + 1's frequency), and sparing in main by
//! group heat (`spare`). None moved the gap; they stay off.

use super::{CachePolicy, Group};
use crate::queue::{DList, Handle, IdMap};

/// Readers remembered per group.
pub const READERS: usize = 4;
/// How many places ahead of an active reader a chunk is awaited.
pub const AHEAD: u32 = 64;
/// A reader is active for this many mean gaps after its last read.
pub const ACTIVE: u64 = 4;

/// The mean gap between a reader's reads, in sixteenths of an access, as an exponentially
/// weighted mean (weight 1/64 per sample), starting at 64 accesses. Integer arithmetic, the
/// same as the edge's, so both evict alike.
#[derive(Debug, Clone, Copy)]
pub struct MeanGap(u64);

/// A read of chunk `index` at `now`: moves up the reader that last read `index - 1` or
/// `index - 2` (its gap goes into `gap`), else answers the slot of the stalest reader, whose
/// place the read may take.
pub fn continue_reader(
    readers: &mut [(u32, u64); READERS],
    index: u32,
    now: u64,
    gap: &mut MeanGap,
) -> Result<(), usize> {
    let mut stalest = 0;
    for n in 0..READERS {
        let (i, t) = readers[n];
        if t > 0 && (i.wrapping_add(1) == index || i.wrapping_add(2) == index) {
            readers[n] = (index, now);
            gap.add(now - t);
            return Ok(());
        }
        if t < readers[stalest].1 {
            stalest = n;
        }
    }
    Err(stalest)
}

impl Default for MeanGap {
    fn default() -> Self {
        MeanGap(64 << 4)
    }
}

impl MeanGap {
    pub fn add(&mut self, gap: u64) {
        self.0 = self.0 - (self.0 >> 6) + (gap.min(1 << 40) >> 2);
    }

    /// The mean gap, in accesses.
    pub fn mean(&self) -> f64 {
        self.0 as f64 / 16.0
    }

    /// Accesses after which a reader is no longer active.
    pub fn window(&self, active: u64) -> u64 {
        (self.0 * active) >> 4
    }
}

/// Experiment knobs; the defaults are the policy.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    /// Group heat (re-requests of its chunks, 0..=3, one less per chunk main evicts) at
    /// which a group's missed chunks go straight to main (0 = off).
    pub admit: u8,
    /// Frequency added to chunk k + 1 (if cached) by a request for chunk k (0 = off).
    pub hint: u32,
    /// Main passes over an unhit chunk whose group heat is at least this, taking one heat
    /// (0 = off).
    pub spare: u8,
    /// Places ahead of an active reader a chunk is awaited (0 = off).
    pub ahead: u32,
    /// Whether small moves awaited chunks to main (else only main spares them).
    pub ahead_small: bool,
    /// Mean gaps a reader stays active.
    pub active: u64,
    /// The small queue's share of the capacity, in per cent (S3-FIFO: 10).
    pub small: u64,
    /// The ghost's size, in per cent of the capacity (S3-FIFO: 90).
    pub ghost: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            admit: 0,
            hint: 0,
            spare: 0,
            ahead: AHEAD,
            ahead_small: true,
            active: ACTIVE,
            small: 10,
            ghost: 90,
        }
    }
}

impl Knobs {
    /// The defaults, overridden by `CDN_GROUPED` (`name=value` pairs separated by commas).
    pub fn from_env() -> Self {
        let mut k = Knobs::default();
        if let Ok(spec) = std::env::var("CDN_GROUPED") {
            for (name, v) in spec.split(',').filter_map(|kv| kv.split_once('=')) {
                let v: u64 = v.trim().parse().unwrap_or(0);
                match name.trim() {
                    "admit" => k.admit = v.min(3) as u8,
                    "hint" => k.hint = v.min(3) as u32,
                    "spare" => k.spare = v.min(3) as u8,
                    "ahead" => k.ahead = v.min(u64::from(u32::MAX)) as u32,
                    "ahead_small" => k.ahead_small = v > 0,
                    "active" => k.active = v,
                    "small" => k.small = v.clamp(1, 90),
                    "ghost" => k.ghost = v.min(1000),
                    _ => {}
                }
            }
        }
        k
    }
}

#[derive(Debug, Clone, Copy)]
struct Chunk {
    id: u64,
    size: u64,
    freq: u32,
    group: u64,
    index: u32,
}

#[derive(Debug, Clone, Copy)]
struct GhostEntry {
    id: u64,
    size: u64,
    group: u64,
}

#[derive(Debug, Clone, Copy)]
enum Loc {
    Small(Handle),
    Main(Handle),
}

#[derive(Debug, Clone, Copy, Default)]
struct GroupState {
    /// Chunks of the group cached or in the ghost.
    held: u32,
    /// Re-requests of its chunks (0..=3), for the `admit` and `spare` knobs.
    heat: u8,
    /// (index last read, when); when = 0: no reader.
    readers: [(u32, u64); READERS],
}

pub struct GroupedS3Fifo {
    capacity: u64,
    small_cap: u64,
    main_cap: u64,
    ghost_cap: u64,
    small: DList<Chunk>,
    main: DList<Chunk>,
    ghost: DList<GhostEntry>,
    small_used: u64,
    main_used: u64,
    ghost_used: u64,
    map: IdMap<Loc>,
    ghost_map: IdMap<Handle>,
    groups: IdMap<GroupState>,
    /// (group, index) -> id of cached chunks, for the `hint` knob.
    by_pos: IdMap<u64>,
    has_evicted: bool,
    knobs: Knobs,
    /// Accesses so far.
    now: u64,
    gap: MeanGap,
}

fn pos(group: u64, index: u32) -> u64 {
    group.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(index)
}

impl GroupedS3Fifo {
    const MOVE_TO_MAIN_THRESHOLD: u32 = 2;

    pub fn new(capacity: u64) -> Self {
        Self::with_knobs(capacity, Knobs::from_env())
    }

    pub fn with_knobs(capacity: u64, knobs: Knobs) -> Self {
        let share = |per_cent: u64| capacity as f64 * (per_cent as f64 / 100.0);
        let small_cap = (share(knobs.small) as u64).max(1).min(capacity);
        Self {
            capacity,
            small_cap,
            main_cap: capacity - small_cap,
            ghost_cap: share(knobs.ghost) as u64,
            small: DList::new(),
            main: DList::new(),
            ghost: DList::new(),
            small_used: 0,
            main_used: 0,
            ghost_used: 0,
            map: IdMap::default(),
            ghost_map: IdMap::default(),
            groups: IdMap::default(),
            by_pos: IdMap::default(),
            has_evicted: false,
            knobs,
            now: 0,
            gap: MeanGap::default(),
        }
    }

    fn release(&mut self, group: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.held -= 1;
            if g.held == 0 {
                self.groups.remove(&group);
            }
        }
    }

    fn heat_up(&mut self, group: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.heat = (g.heat + 1).min(3);
        }
    }

    /// Records a read of chunk `index` of `group` (if the group is held).
    fn track(&mut self, group: u64, index: u32) {
        let now = self.now;
        let Some(g) = self.groups.get_mut(&group) else {
            return;
        };
        if let Err(stalest) = continue_reader(&mut g.readers, index, now, &mut self.gap) {
            g.readers[stalest] = (index, now);
        }
    }

    /// Whether an active reader of the chunk's group is at most `ahead` places behind it.
    fn awaited(&self, c: &Chunk) -> bool {
        let ahead = self.knobs.ahead;
        if ahead == 0 || c.index == 0 {
            return false;
        }
        let window = self.gap.window(self.knobs.active);
        self.groups.get(&c.group).is_some_and(|g| {
            g.readers.iter().any(|&(i, t)| {
                t > 0 && self.now - t <= window && i < c.index && c.index - i <= ahead
            })
        })
    }

    fn forget_pos(&mut self, c: &Chunk) {
        if self.knobs.hint > 0 {
            self.by_pos.remove(&pos(c.group, c.index));
        }
    }

    fn insert_main(&mut self, c: Chunk) {
        self.main_used += c.size;
        let h = self.main.push_front(c);
        self.map.insert(c.id, Loc::Main(h));
    }

    /// Moves a chunk leaving small into the ghost (its group stays held by the ghost entry).
    fn insert_ghost(&mut self, c: Chunk) {
        if self.ghost_map.contains_key(&c.id) || c.size > self.ghost_cap {
            self.release(c.group);
            return;
        }
        while self.ghost_used + c.size > self.ghost_cap {
            let Some(old) = self.ghost.pop_back() else {
                break;
            };
            self.ghost_map.remove(&old.id);
            self.ghost_used -= old.size;
            self.release(old.group);
        }
        let e = GhostEntry {
            id: c.id,
            size: c.size,
            group: c.group,
        };
        self.ghost_map.insert(c.id, self.ghost.push_front(e));
        self.ghost_used += c.size;
    }

    fn evict_small(&mut self) {
        while let Some(c) = self.small.pop_back() {
            self.small_used -= c.size;
            if c.freq >= Self::MOVE_TO_MAIN_THRESHOLD
                || (self.knobs.ahead_small && self.awaited(&c))
            {
                self.insert_main(Chunk { freq: 0, ..c });
            } else {
                self.map.remove(&c.id);
                self.forget_pos(&c);
                self.insert_ghost(c);
                return;
            }
        }
    }

    /// Evicts one chunk from main: hit chunks go round again one count less, awaited ones go
    /// round again; at most 4 turns per chunk in main, then the oldest goes regardless.
    fn evict_main(&mut self) {
        let mut turns = 4 * self.main.len() + 1;
        while let Some(h) = self.main.back() {
            let c = *self.main.get(h);
            let spare = self.knobs.spare > 0
                && self
                    .groups
                    .get(&c.group)
                    .is_some_and(|g| g.heat >= self.knobs.spare);
            if turns > 0 && c.freq >= 1 {
                turns -= 1;
                self.main.get_mut(h).freq = c.freq.min(3) - 1;
                self.main.move_to_front(h);
            } else if turns > 0 && self.awaited(&c) {
                turns -= 1;
                self.main.move_to_front(h);
            } else if turns > 0 && spare {
                turns -= 1;
                if let Some(g) = self.groups.get_mut(&c.group) {
                    g.heat -= 1;
                }
                self.main.move_to_front(h);
            } else {
                self.main.remove(h);
                self.map.remove(&c.id);
                self.forget_pos(&c);
                self.main_used -= c.size;
                if let Some(g) = self.groups.get_mut(&c.group) {
                    g.heat = g.heat.saturating_sub(1);
                }
                self.release(c.group);
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

    fn lookup(&mut self, id: u64, size: u64, g: Group) -> bool {
        if self.knobs.hint > 0
            && let Some(&next) = self.by_pos.get(&pos(g.id, g.index.wrapping_add(1)))
        {
            let add = self.knobs.hint;
            match self.map.get(&next) {
                Some(&Loc::Small(h)) => self.small.get_mut(h).freq += add,
                Some(&Loc::Main(h)) => self.main.get_mut(h).freq += add,
                None => {}
            }
        }
        match self.map.get(&id) {
            Some(&Loc::Small(h)) => {
                let o = self.small.get_mut(h);
                o.freq = o.freq.saturating_add(1);
                self.heat_up(g.id);
                return true;
            }
            Some(&Loc::Main(h)) => {
                let o = self.main.get_mut(h);
                o.freq = o.freq.saturating_add(1);
                self.heat_up(g.id);
                return true;
            }
            None => {}
        }
        // Held before anything is evicted or released, so the group keeps its state.
        self.groups.entry(g.id).or_default().held += 1;
        let hit_on_ghost = match self.ghost_map.remove(&id) {
            Some(h) => {
                let e = self.ghost.remove(h);
                self.ghost_used -= e.size;
                self.heat_up(e.group);
                self.release(e.group);
                true
            }
            None => false,
        };
        if size > self.small_cap || size > self.capacity {
            self.release(g.id);
            return false;
        }
        let hot = self.knobs.admit > 0
            && self
                .groups
                .get(&g.id)
                .is_some_and(|s| s.heat >= self.knobs.admit);
        while self.small_used + self.main_used + size > self.capacity {
            self.evict();
        }
        let c = Chunk {
            id,
            size,
            freq: 0,
            group: g.id,
            index: g.index,
        };
        if self.knobs.hint > 0 {
            self.by_pos.insert(pos(g.id, g.index), id);
        }
        if hit_on_ghost || hot || (!self.has_evicted && self.small_used >= self.small_cap) {
            self.insert_main(c);
        } else {
            self.small_used += size;
            let h = self.small.push_front(c);
            self.map.insert(id, Loc::Small(h));
        }
        false
    }
}

impl CachePolicy for GroupedS3Fifo {
    fn name(&self) -> String {
        "grouped-S3-FIFO".into()
    }

    fn access(&mut self, id: u64, size: u64, next: Option<u64>) -> bool {
        self.access_in_group(id, size, next, Group { id, index: 0 })
    }

    fn access_in_group(&mut self, id: u64, size: u64, _next: Option<u64>, g: Group) -> bool {
        self.now += 1;
        let hit = self.lookup(id, size, g);
        if self.knobs.ahead > 0 {
            self.track(g.id, g.index);
        }
        hit
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PolicyKind, S3Fifo};
    use super::*;

    /// Seeded requests: skewed ids, sizes fixed per id in 1..=max_size.
    fn requests(n: usize, ids: u64, max_size: u64, seed: u64) -> Vec<(u64, u64)> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                let id = (u * u * ids as f64) as u64;
                (id, 1 + id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % max_size)
            })
            .collect()
    }

    #[test]
    fn without_groups_it_hits_exactly_as_s3fifo() {
        for (capacity, max_size) in [(50, 1), (500, 1), (200_000, 1_000), (2_000_000, 1_000)] {
            let reqs = requests(100_000, 5_000, max_size, capacity);
            let mut reference = S3Fifo::new(capacity);
            let mut grouped = GroupedS3Fifo::with_knobs(capacity, Knobs::default());
            for (i, &(id, size)) in reqs.iter().enumerate() {
                assert_eq!(
                    reference.access(id, size, None),
                    grouped.access(id, size, None),
                    "capacity {capacity}, request {i}"
                );
            }
            // Group state only for what is cached or in the ghost.
            assert!(grouped.groups.len() <= grouped.map.len() + grouped.ghost_map.len());
        }
    }

    #[test]
    fn a_chunk_ahead_of_an_active_reader_stays() {
        // 10 slots (small 1, main 9); a scan of 20 one-chunk objects gets evictions going.
        // Then viewer A reads chunks 0..=3 of video 1000 (ids 100..) and viewer B follows
        // one chunk behind: A0 A1 B0 A2 B1 A3 B2.
        let mut reqs: Vec<(u64, Group)> = (1..=20).map(|id| (id, Group { id, index: 0 })).collect();
        for i in [0u32, 1, 0, 2, 1, 3, 2] {
            reqs.push((100 + u64::from(i), Group { id: 1000, index: i }));
        }
        let run = |p: &mut dyn CachePolicy| -> String {
            reqs.iter()
                .map(|&(id, g)| {
                    if p.access_in_group(id, 1, None, g) {
                        'H'
                    } else {
                        'M'
                    }
                })
                .collect()
        };
        // S3-FIFO: each of A's chunks leaves the one-slot small queue for the ghost before B
        // reaches it, so B's reads are ghost hits (misses).
        assert_eq!(run(&mut S3Fifo::new(10)), "M".repeat(27));
        // Grouped: when small gives up A2, B (at chunk 0, active) is 2 places behind it, so
        // A2 moves to main and B2 hits. (A1 left small before B had read anything.)
        let mut g = GroupedS3Fifo::with_knobs(10, Knobs::default());
        assert_eq!(run(&mut g), format!("{}H", "M".repeat(26)));
        // Without readers (ahead = 0) it is S3-FIFO again.
        let off = Knobs {
            ahead: 0,
            ..Knobs::default()
        };
        assert_eq!(run(&mut GroupedS3Fifo::with_knobs(10, off)), "M".repeat(27));
    }

    /// The committed trace `bench/testdata/video-small.csv.zst` (written by `cdn bench
    /// hit-ratio --workload video --videos 100 --requests 20000 --median-chunks 30 --abandon
    /// 0.05 --sessions 16 --churn-every 50 --churn-top 5 --chunk-bytes 65536 --seed 7
    /// --write-trace ...`): the misses and miss bytes of S3-FIFO and of the grouped policy
    /// (reference, the edge's cache alone, the edge's whole store) at 1% and 10% of the
    /// working set, pinned.
    #[test]
    fn replay_of_the_committed_video_trace_is_pinned() {
        use crate::sim::{Job, SizeUnit, capacity_for, run_jobs};
        use crate::trace::{TraceFormat, read_trace};
        use std::path::Path;
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/video-small.csv.zst");
        let trace = read_trace(&path, TraceFormat::Auto).expect("committed trace");
        let stats = trace.stats();
        assert_eq!(
            (stats.requests, stats.objects, trace.groups()),
            (20_000, 3_678, 122)
        );
        let kinds = [
            PolicyKind::S3fifo,
            PolicyKind::Grouped,
            PolicyKind::EdgeGroupedRaw,
            PolicyKind::EdgeGrouped,
        ];
        let jobs: Vec<Job> = [0.01, 0.1]
            .iter()
            .flat_map(|&ratio| {
                let capacity = capacity_for(ratio, SizeUnit::Bytes, &stats);
                kinds.map(|kind| Job {
                    ratio,
                    capacity,
                    kind,
                })
            })
            .collect();
        let got: Vec<(String, u64, u64)> = run_jobs(&trace, SizeUnit::Bytes, &jobs, 2, 1)
            .into_iter()
            .map(|r| (format!("{} {}", r.ratio, r.policy), r.misses, r.miss_bytes))
            .collect();
        let want: Vec<(String, u64, u64)> = PINNED
            .iter()
            .map(|&(n, m, b)| (n.to_string(), m, b))
            .collect();
        assert_eq!(got, want);
    }

    /// (cache share and policy, misses, miss bytes). The edge's store charges its per-chunk
    /// overhead inside the same bytes, hence its small difference.
    const PINNED: [(&str, u64, u64); 8] = [
        ("0.01 S3-FIFO", 18043, 1171059606),
        ("0.01 grouped-S3-FIFO", 17818, 1156105669),
        ("0.01 edge-grouped-S3-FIFO-raw", 17818, 1156105669),
        ("0.01 edge-grouped-S3-FIFO", 17801, 1154990819),
        ("0.1 S3-FIFO", 12060, 781637332),
        ("0.1 grouped-S3-FIFO", 11527, 747611199),
        ("0.1 edge-grouped-S3-FIFO-raw", 11527, 747611199),
        ("0.1 edge-grouped-S3-FIFO", 11537, 748286699),
    ];
}
