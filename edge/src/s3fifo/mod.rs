//! A concurrent, byte-weighted S3-FIFO cache (Yang et al., "FIFO queues are all you need for
//! cache eviction", SOSP 2023), with libCacheSim's defaults: a small FIFO of 10% of the
//! capacity, a main FIFO of the rest run as a 2-bit CLOCK (frequency capped at 3), and a ghost
//! FIFO of key hashes sized like main (90% of the capacity, in weight).
//!
//! - A miss whose key is in the ghost goes to main; any other miss goes to small (and, before
//!   the first eviction, to main once small is full, as libCacheSim does).
//! - Evicting from small: an object hit at least twice there moves to main (frequency reset),
//!   else it leaves and its key hash enters the ghost. Evicting from main: an object with a
//!   non-zero frequency is reinserted with its frequency decremented, else it leaves. Main is
//!   evicted from when it holds more than its share or small is empty.
//! - Objects heavier than small go straight to main (libCacheSim and the harness's reference
//!   policy do not admit them; an edge whose small queue is smaller than a chunk must still
//!   cache); objects heavier than main are not admitted. On every workload where no object
//!   outweighs small, the hits are exactly those of the reference (`bench/src/policies/mod.rs`).
//!
//! Concurrency: entries live in a sharded map (`RwLock<HashMap>` per shard). A hit takes one
//! shard's read lock, clones the value and bumps an atomic frequency; it never waits for the
//! queues. Inserts, invalidations and evictions take the queue mutex (then shard write locks,
//! always in that order) and evict synchronously, so the weighted size never exceeds the
//! capacity after an insert returns. No lock is held across an `.await` (there is none).
//!
//! Grouped (`S3FifoCache::grouped`, the edge's `grouped-s3-fifo` policy): keys are chunks
//! of objects ([`KeyGroup`]: a group and an index in it), and each group remembers up to
//! [`READERS`] readers: the index each last read and when, on a clock of `get`s. A read of
//! chunk k moves up the reader that last read k − 1 or k − 2, else takes the stalest
//! reader's place; a reader is active while its last read is at most [`ACTIVE`] × the mean
//! gap between a reader's reads old (learned). A chunk at most [`AHEAD`] places ahead of an
//! active reader is *awaited*: small moves it to main instead of evicting it, and main's
//! CLOCK passes over it (within the same bound of turns). A chunk another viewer is about
//! to reach stays; chunks behind every viewer leave as S3-FIFO would have them leave. A
//! group's state lives only while one of its chunks is cached or in the ghost, and chunk 0
//! is never ahead of a reader, so keys that are chunk 0 of a group of their own hit exactly
//! as plain S3-FIFO. The harness's `grouped-S3-FIFO` (`bench/src/policies/grouped.rs`) is
//! the reference: same hits, request by request. Costs: 8 bytes more per entry (the group's
//! handle and the index) and 8 more per ghost entry; about 100 bytes per group with a chunk
//! cached or in the ghost.
//!
//! With rates (`S3FifoCache::with_rates`, the edge's `s3-fifo-rate` policy; [`rate`]):
//! grouped keys at index 0 are cached as by S3-FIFO; the chunks past the first skip small,
//! enter main and join a pool, and when main's CLOCK reaches a pooled chunk with no hits
//! left, the pooled chunk of the lowest expected request rate among 32 sampled leaves
//! instead. The harness's `S3-FIFO+rate` is the reference (the edge also forgets a group's
//! session rate with the group). Costs: 8 bytes per pooled chunk (its place in the pool), a
//! decayed count per group (24 bytes with its lock), 32 KiB of reach counters per cache.
//!
//! Invalidated entries are dropped from the map (their values freed) at once and marked dead
//! in their queue, which skips them later and is compacted when they outnumber the living.
//! The ghost holds only (hash, weight) pairs, outside the weighted size: at most
//! 0.9 × capacity ÷ the smallest weight entries of about 40 bytes each. Every node carries
//! 8 bytes for the rate order (its birth on the clock, its place in the pool) whatever the
//! mode.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use parking_lot::{Mutex, RwLock};

mod rate;

/// The weight of an entry, like moka's `weigher`.
pub type Weigher<K, V> = Box<dyn Fn(&K, &V) -> u32 + Send + Sync>;

const SHARDS: usize = 64;
/// The frequency counter saturates here (2 bits).
const MAX_FREQ: u8 = 3;
/// Hits in small needed to move to main on eviction (libCacheSim's `move-to-main-threshold`).
const MOVE_TO_MAIN: u8 = 2;

const SMALL: u8 = 0;
const MAIN: u8 = 1;
const DEAD: u8 = 2;

/// An entry's place in the queues. Its fields are atomics so that readers holding only a
/// shard lock can bump `freq`; `weight` and `queue` change only under the queue mutex.
struct Node<K> {
    key: K,
    hash: u64,
    weight: AtomicU64,
    freq: AtomicU8,
    queue: AtomicU8,
    /// The key's place in its group, in a grouped cache (saturated).
    index: u32,
    /// The key's group, in a grouped cache.
    group: Option<Arc<GroupCell>>,
    /// The clock's low 32 bits when the entry came (`s3-fifo-rate`: the age of evicted
    /// chunks, wrapping as the readers' clocks do).
    born: u32,
    /// Its place in the chunk pool (`s3-fifo-rate`), [`rate::NO_SLOT`] when in none.
    slot: AtomicU32,
}

/// How keys group (a chunk's group is its object), for [`S3FifoCache::grouped`].
pub trait KeyGroup {
    /// What identifies the group; hashed with the cache's hasher (groups whose hashes
    /// collide share their readers: a policy hint, never a correctness matter).
    type Group: Hash + ?Sized;
    fn group(&self) -> &Self::Group;
    /// The key's place in its group (a chunk's index).
    fn index(&self) -> u64;
}

/// Readers remembered per group.
pub const READERS: usize = 4;
/// How many places ahead of an active reader a chunk is awaited.
pub const AHEAD: u32 = 64;
/// A reader is active for this many mean gaps after its last read.
pub const ACTIVE: u64 = 4;

/// A group's readers, shared by its entries' nodes so that a hit moves them without the
/// mutex: each `index << 32 | clock` (the clock's low 32 bits), 0 for none. Races lose or
/// blur a read: readers are a policy hint.
struct GroupCell {
    hash: u64,
    readers: [AtomicU64; READERS],
    /// Decayed session starts (`s3-fifo-rate` only).
    starts: Mutex<rate::Starts>,
}

fn unpack(reader: u64) -> (u32, u32) {
    ((reader >> 32) as u32, reader as u32)
}

impl GroupCell {
    /// Records a read of `index` at `now`; the gap since the reader's last read if a reader
    /// moved up.
    fn read(&self, index: u32, now: u32) -> Option<u32> {
        let packed = (u64::from(index) << 32) | u64::from(now);
        let mut stalest = (0, 0u64);
        for (n, r) in self.readers.iter().enumerate() {
            let v = r.load(Relaxed);
            let (i, t) = unpack(v);
            if v != 0 && (i.wrapping_add(1) == index || i.wrapping_add(2) == index) {
                r.store(packed, Relaxed);
                return Some(now.wrapping_sub(t));
            }
            let age = if v == 0 {
                u64::MAX
            } else {
                u64::from(now.wrapping_sub(t))
            };
            if n == 0 || age > stalest.1 {
                stalest = (n, age);
            }
        }
        self.readers[stalest.0].store(packed, Relaxed);
        None
    }

    /// The indices the readers active within `window` of `now` last read.
    fn active_readers(&self, now: u32, window: u64) -> impl Iterator<Item = u32> + '_ {
        self.readers.iter().filter_map(move |r| {
            let v = r.load(Relaxed);
            let (i, t) = unpack(v);
            (v != 0 && u64::from(now.wrapping_sub(t)) <= window).then_some(i)
        })
    }

    /// Whether a reader active within `window` is at most [`AHEAD`] places behind `index`.
    fn awaits(&self, index: u32, now: u32, window: u64) -> bool {
        self.active_readers(now, window)
            .any(|i| i < index && index - i <= AHEAD)
    }
}

/// A group in the table: its cell and how many of its keys are cached or in the ghost.
struct GroupEntry {
    cell: Arc<GroupCell>,
    held: u32,
}

/// The grouped cache's table of groups (under the queue mutex).
#[derive(Default)]
struct Groups {
    map: HashMap<u64, GroupEntry, BuildHasherDefault<PassHasher>>,
}

impl Groups {
    /// Counts one more key of the group held; its cell.
    fn hold(&mut self, hash: u64) -> Arc<GroupCell> {
        let e = self.map.entry(hash).or_insert_with(|| GroupEntry {
            cell: Arc::new(GroupCell {
                hash,
                readers: Default::default(),
                starts: Mutex::default(),
            }),
            held: 0,
        });
        e.held += 1;
        e.cell.clone()
    }

    /// One key of the group is no longer held; the group goes with its last key.
    fn release(&mut self, hash: u64) {
        if let Some(e) = self.map.get_mut(&hash) {
            e.held -= 1;
            if e.held == 0 {
                self.map.remove(&hash);
            }
        }
    }
}

struct Slot<K, V> {
    value: V,
    node: Arc<Node<K>>,
}

/// A hasher for values that are already hashes.
#[derive(Default, Clone, Copy)]
struct PassHasher(u64);

impl Hasher for PassHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Key hashes of objects recently evicted from small, oldest at the back. Removal from the
/// middle (a ghost hit) drops the map entry; the queue entry goes stale (sequence mismatch).
struct Ghost {
    fifo: VecDeque<(u64, u64)>,
    /// hash -> (sequence number, weight, group hash)
    map: HashMap<u64, (u64, u64, u64), BuildHasherDefault<PassHasher>>,
    used: u64,
    capacity: u64,
    seq: u64,
}

impl Ghost {
    fn new(capacity: u64) -> Self {
        Ghost {
            fifo: VecDeque::new(),
            map: HashMap::default(),
            used: 0,
            capacity,
            seq: 0,
        }
    }

    /// Removes `hash`; the group hash it was remembered with, if it was there.
    fn remove(&mut self, hash: u64) -> Option<u64> {
        let (_, w, group) = self.map.remove(&hash)?;
        self.used -= w;
        Some(group)
    }

    /// Remembers `hash` (of a key of group `group`); false if refused (already there, or
    /// heavier than the ghost). Entries pushed out go through `dropped` (their group hash).
    fn insert(&mut self, hash: u64, weight: u64, group: u64, dropped: &mut Groups) -> bool {
        if self.map.contains_key(&hash) || weight > self.capacity {
            return false;
        }
        while self.used + weight > self.capacity {
            let Some((h, seq)) = self.fifo.pop_back() else {
                break;
            };
            if self.map.get(&h).is_some_and(|&(s, _, _)| s == seq)
                && let Some(g) = self.remove(h)
            {
                dropped.release(g);
            }
        }
        self.seq += 1;
        self.fifo.push_front((hash, self.seq));
        self.map.insert(hash, (self.seq, weight, group));
        self.used += weight;
        if self.fifo.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.fifo
                .retain(|(h, seq)| map.get(h).is_some_and(|&(s, _, _)| s == *seq));
        }
        true
    }
}

/// The queues and their accounting, behind the cache's mutex.
struct Queues<K> {
    small: VecDeque<Arc<Node<K>>>,
    main: VecDeque<Arc<Node<K>>>,
    small_used: u64,
    main_used: u64,
    small_live: usize,
    main_live: usize,
    /// Dead (invalidated) nodes still in `small` or `main`.
    dead: usize,
    ghost: Ghost,
    /// Groups with a key cached or in the ghost (empty unless the cache is grouped).
    groups: Groups,
    has_evicted: bool,
    /// Main's chunks past their group's first (`s3-fifo-rate` only).
    pool: Option<rate::Pool<K>>,
}

impl<K> Queues<K> {
    fn used(&self) -> u64 {
        self.small_used + self.main_used
    }

    fn push(&mut self, node: Arc<Node<K>>, queue: u8) {
        let w = node.weight.load(Relaxed);
        node.queue.store(queue, Relaxed);
        if queue == MAIN {
            self.main_used += w;
            self.main_live += 1;
            if let Some(pool) = &mut self.pool
                && node.index > 0
            {
                pool.add(node.clone());
            }
            self.main.push_front(node);
        } else {
            self.small_used += w;
            self.small_live += 1;
            self.small.push_front(node);
        }
    }

    /// Accounts for a node leaving its queue (popped, or marked dead in place).
    fn forget(&mut self, node: &Node<K>) {
        if let Some(pool) = &mut self.pool {
            pool.remove(node);
        }
        let w = node.weight.load(Relaxed);
        match node.queue.swap(DEAD, Relaxed) {
            SMALL => {
                self.small_used -= w;
                self.small_live -= 1;
            }
            MAIN => {
                self.main_used -= w;
                self.main_live -= 1;
            }
            _ => {}
        }
    }

    /// A node left the cache without entering the ghost: its group holds one key less.
    fn release(&mut self, node: &Node<K>) {
        if let Some(g) = &node.group {
            self.groups.release(g.hash);
        }
    }

    fn compact(&mut self) {
        if self.dead > 1024 && self.dead > self.small_live + self.main_live {
            let live = |n: &Arc<Node<K>>| n.queue.load(Relaxed) != DEAD;
            self.small.retain(live);
            self.main.retain(live);
            self.dead = 0;
        }
    }
}

type Shard<K, V, S> = RwLock<HashMap<K, Slot<K, V>, S>>;

/// The cache. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct S3FifoCache<K, V, S = RandomState> {
    shards: Box<[Shard<K, V, S>]>,
    hasher: S,
    queues: Mutex<Queues<K>>,
    weigher: Weigher<K, V>,
    capacity: u64,
    small_cap: u64,
    main_cap: u64,
    /// Mirrors of the queue accounting, readable without the mutex.
    weighted: AtomicU64,
    entries: AtomicU64,
    /// The hash of a key's group and the key's index, in a grouped cache.
    group_of: Option<GroupOf<K, S>>,
    /// `get`s so far (grouped cache).
    clock: AtomicU64,
    /// Mean gap between a reader's reads, in sixteenths of a `get`, weight 1/64 per sample.
    gap: AtomicU64,
    /// The rate estimates (`s3-fifo-rate` only).
    rates: Option<Box<rate::Rates>>,
}

/// A key's group hash and index.
type GroupOf<K, S> = fn(&K, &S) -> (u64, u32);

fn group_hash<K: KeyGroup, S: BuildHasher>(key: &K, hasher: &S) -> (u64, u32) {
    let index = u32::try_from(key.index()).unwrap_or(u32::MAX);
    (hasher.hash_one(key.group()), index)
}

impl<K, V> S3FifoCache<K, V>
where
    K: Hash + Eq + Clone,
    V: Clone,
{
    /// A cache of `capacity` weight units with a random hasher.
    pub fn new(capacity: u64, weigher: Weigher<K, V>) -> Self {
        Self::with_hasher(capacity, weigher, RandomState::new())
    }
}

impl<K, V, S> S3FifoCache<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Clone,
    S: BuildHasher + Clone,
{
    /// A cache of `capacity` weight units; `hasher` picks shards and keys the ghost (a fixed
    /// one makes runs reproducible, a random one resists crafted keys).
    pub fn with_hasher(capacity: u64, weigher: Weigher<K, V>, hasher: S) -> Self {
        // As libCacheSim and the reference policy: small = 10% (at least 1), ghost = 90%.
        let small_cap = ((capacity as f64 * 0.10) as u64).max(1).min(capacity);
        let ghost_cap = (capacity as f64 * 0.90) as u64;
        let shards = (0..SHARDS)
            .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
            .collect();
        S3FifoCache {
            shards,
            hasher,
            queues: Mutex::new(Queues {
                small: VecDeque::new(),
                main: VecDeque::new(),
                small_used: 0,
                main_used: 0,
                small_live: 0,
                main_live: 0,
                dead: 0,
                ghost: Ghost::new(ghost_cap),
                groups: Groups::default(),
                has_evicted: false,
                pool: None,
            }),
            weigher,
            capacity,
            small_cap,
            main_cap: capacity - small_cap,
            weighted: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            group_of: None,
            clock: AtomicU64::new(0),
            gap: AtomicU64::new(64 << 4),
            rates: None,
        }
    }

    /// A grouped cache (see the module doc): S3-FIFO that keeps chunks an active reader of
    /// their object is about to reach.
    pub fn grouped(capacity: u64, weigher: Weigher<K, V>, hasher: S) -> Self
    where
        K: KeyGroup,
    {
        S3FifoCache {
            group_of: Some(group_hash::<K, S>),
            ..Self::with_hasher(capacity, weigher, hasher)
        }
    }

    /// The `s3-fifo-rate` cache (see [`rate`]): S3-FIFO for every key at index 0 of its
    /// group, the expected-rate order among the chunks past the first, which skip small.
    /// Keys that are chunk 0 of a group of their own are cached exactly as by plain S3-FIFO.
    pub fn with_rates(capacity: u64, weigher: Weigher<K, V>, hasher: S) -> Self
    where
        K: KeyGroup,
    {
        let c = S3FifoCache {
            group_of: Some(group_hash::<K, S>),
            rates: Some(Box::new(rate::Rates::new())),
            ..Self::with_hasher(capacity, weigher, hasher)
        };
        c.queues.lock().pool = Some(rate::Pool::new());
        c
    }

    fn shard(&self, hash: u64) -> &Shard<K, V, S> {
        // Bits the shard maps' own bucket and tag bits do not use.
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// The value of `key` (or of a borrowed form of it: a `&str` for `String` keys), counting
    /// a hit.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = match self.group_of {
            Some(_) => self.clock.fetch_add(1, Relaxed).wrapping_add(1),
            None => 0,
        };
        let hash = self.hasher.hash_one(key);
        let shard = self.shard(hash).read();
        let slot = shard.get(key)?;
        let f = slot.node.freq.load(Relaxed);
        if f < MAX_FREQ {
            // A lost race loses one count: frequencies are approximate by design.
            let _ = slot.node.freq.compare_exchange(f, f + 1, Relaxed, Relaxed);
        }
        if let Some(g) = &slot.node.group {
            self.track(g, slot.node.index, now);
        }
        Some(slot.value.clone())
    }

    /// Whether `key` is held (not counted as a hit).
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        self.shard(hash).read().contains_key(key)
    }

    /// Inserts or replaces `key`, evicting first until it fits. A replacement keeps the
    /// entry's place and frequency.
    pub fn insert(&self, key: K, value: V) {
        let weight = u64::from((self.weigher)(&key, &value));
        let hash = self.hasher.hash_one(&key);
        let mut q = self.queues.lock();
        let replaced = {
            let mut shard = self.shard(hash).write();
            match shard.get_mut(&key) {
                Some(slot) => {
                    let node = slot.node.clone();
                    slot.value = value;
                    Ok(node)
                }
                None => Err(value),
            }
        };
        let value = match replaced {
            Ok(node) => {
                let old = node.weight.swap(weight, Relaxed);
                match node.queue.load(Relaxed) {
                    SMALL => q.small_used = q.small_used - old + weight,
                    _ => q.main_used = q.main_used - old + weight,
                }
                while q.used() > self.capacity && q.small_live + q.main_live > 0 {
                    self.evict(&mut q);
                }
                self.publish(&q);
                return;
            }
            Err(value) => value,
        };
        // The group is held before anything is evicted or released, so it keeps its readers.
        let (group, index) = match self.group_of.map(|f| f(&key, &self.hasher)) {
            Some((g, index)) => (Some(q.groups.hold(g)), index),
            None => (None, 0),
        };
        let ghost_hit = match q.ghost.remove(hash) {
            Some(g) => {
                if group.is_some() {
                    q.groups.release(g);
                }
                true
            }
            None => false,
        };
        // `s3-fifo-rate`: chunks past the first go straight to main.
        let chunk = self.rates.is_some() && index > 0;
        let too_big = weight > self.capacity
            || (weight > self.small_cap && weight > self.main_cap)
            || (chunk && weight > self.main_cap);
        if too_big {
            if let Some(g) = &group {
                q.groups.release(g.hash);
            }
            return;
        }
        while q.used() + weight > self.capacity && q.small_live + q.main_live > 0 {
            self.evict(&mut q);
        }
        let to_main = ghost_hit
            || chunk
            || weight > self.small_cap
            || (!q.has_evicted && q.small_used >= self.small_cap);
        let node = Arc::new(Node {
            key: key.clone(),
            hash,
            weight: AtomicU64::new(weight),
            freq: AtomicU8::new(0),
            queue: AtomicU8::new(DEAD),
            index,
            group,
            born: self.clock.load(Relaxed) as u32,
            slot: AtomicU32::new(rate::NO_SLOT),
        });
        self.shard(hash).write().insert(
            key,
            Slot {
                value,
                node: node.clone(),
            },
        );
        if let Some(g) = &node.group {
            self.track(g, index, self.clock.load(Relaxed));
        }
        q.push(node, if to_main { MAIN } else { SMALL });
        self.entries.fetch_add(1, Relaxed);
        self.publish(&q);
    }

    /// Removes `key` (not remembered in the ghost).
    pub fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let hash = self.hasher.hash_one(key);
        let mut q = self.queues.lock();
        let removed = self.shard(hash).write().remove(key);
        if let Some(slot) = removed {
            q.forget(&slot.node);
            q.release(&slot.node);
            q.dead += 1;
            self.entries.fetch_sub(1, Relaxed);
            q.compact();
            self.publish(&q);
        }
    }

    /// Removes every entry for which `pred` holds, now. `pred` runs under the cache's locks
    /// and must not call back into this cache.
    pub fn invalidate_entries_if(&self, pred: impl Fn(&K, &V) -> bool) -> usize {
        let mut q = self.queues.lock();
        let mut removed = 0;
        for shard in self.shards.iter() {
            shard.write().retain(|k, slot| {
                if pred(k, &slot.value) {
                    q.forget(&slot.node);
                    q.release(&slot.node);
                    q.dead += 1;
                    removed += 1;
                    false
                } else {
                    true
                }
            });
        }
        self.entries.fetch_sub(removed as u64, Relaxed);
        q.compact();
        self.publish(&q);
        removed
    }

    /// Whether the cache is grouped ([`S3FifoCache::grouped`] or
    /// [`S3FifoCache::with_rates`]).
    pub fn is_grouped(&self) -> bool {
        self.group_of.is_some()
    }

    /// Whether the cache orders chunks by rate ([`S3FifoCache::with_rates`]).
    pub fn has_rates(&self) -> bool {
        self.rates.is_some()
    }

    /// How long the rate order remembers a session start: the half-life of λ, in requests
    /// (with rates only).
    pub fn rate_half_life(&self) -> Option<f64> {
        self.rates.as_ref().map(|r| r.half())
    }

    /// Sum of the weights held; never more than the capacity once an insert has returned.
    pub fn weighted_size(&self) -> u64 {
        self.weighted.load(Relaxed)
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.load(Relaxed)
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// A snapshot of the entries (for tests and diagnostics: it clones every key and value).
    pub fn snapshot(&self) -> Vec<(K, V)> {
        self.shards
            .iter()
            .flat_map(|s| {
                s.read()
                    .iter()
                    .map(|(k, slot)| (k.clone(), slot.value.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A read of chunk `index` of group `g`: moves its readers, learns the mean gap (and,
    /// with rates, counts the read for reach and a session start for λ).
    fn track(&self, g: &GroupCell, index: u32, now: u64) {
        let moved = g.read(index, now as u32);
        if let Some(gap) = moved {
            let m = self.gap.load(Relaxed);
            self.gap
                .store(m - (m >> 6) + (u64::from(gap) >> 2), Relaxed);
        }
        if let Some(rates) = &self.rates {
            rates.read(&g.starts, index, moved.is_some(), now);
        }
    }

    /// The expected requests per request for a pooled chunk (`s3-fifo-rate`).
    fn rate_of(&self, rates: &rate::Rates, node: &Node<K>, now: u64) -> f64 {
        let Some(g) = &node.group else {
            return 0.0;
        };
        let readers = g.active_readers(now as u32, self.reader_window());
        let gap = self.gap.load(Relaxed) as f64 / 16.0;
        rates.score(&g.starts, readers, node.index, now, gap)
    }

    /// Whether an active reader of the node's group is about to reach it (the grouped
    /// policy; with rates, readers count in the rate instead).
    fn awaited(&self, node: &Node<K>) -> bool {
        self.rates.is_none()
            && node.group.as_ref().is_some_and(|g| {
                g.awaits(
                    node.index,
                    self.clock.load(Relaxed) as u32,
                    self.reader_window(),
                )
            })
    }

    /// How long a reader stays active: [`ACTIVE`] mean gaps, in `get`s.
    fn reader_window(&self) -> u64 {
        (self.gap.load(Relaxed) * ACTIVE) >> 4
    }

    fn publish(&self, q: &Queues<K>) {
        self.weighted.store(q.used(), Relaxed);
    }

    /// Drops an evicted node's entry from the map.
    fn unmap(&self, node: &Node<K>) {
        let mut shard = self.shard(node.hash).write();
        if shard
            .get(&node.key)
            .is_some_and(|slot| std::ptr::eq(Arc::as_ptr(&slot.node), node))
        {
            shard.remove(&node.key);
            self.entries.fetch_sub(1, Relaxed);
        }
    }

    fn evict(&self, q: &mut Queues<K>) {
        q.has_evicted = true;
        if q.main_used > self.main_cap || q.small_live == 0 {
            self.evict_main(q);
        } else {
            self.evict_small(q);
        }
    }

    /// Evicts one object from small, moving hit ones to main on the way; may evict nothing if
    /// every object in small moved to main.
    fn evict_small(&self, q: &mut Queues<K>) {
        while let Some(node) = q.small.pop_back() {
            if node.queue.load(Relaxed) == DEAD {
                q.dead -= 1;
                continue;
            }
            q.forget(&node);
            if node.freq.load(Relaxed) >= MOVE_TO_MAIN || self.awaited(&node) {
                node.freq.store(0, Relaxed);
                q.push(node, MAIN);
            } else {
                self.unmap(&node);
                let group = node.group.as_ref().map_or(0, |g| g.hash);
                let Queues { ghost, groups, .. } = &mut *q;
                if !ghost.insert(node.hash, node.weight.load(Relaxed), group, groups) {
                    q.release(&node);
                }
                return;
            }
        }
    }

    /// Evicts one object from main (a CLOCK: hit objects go round again, one count less).
    fn evict_main(&self, q: &mut Queues<K>) {
        // Every live node needs at most MAX_FREQ passes; concurrent hits could otherwise keep
        // a fully hot queue turning forever.
        let mut turns = (usize::from(MAX_FREQ) + 1) * q.main_live + 1;
        while let Some(node) = q.main.pop_back() {
            if node.queue.load(Relaxed) == DEAD {
                q.dead -= 1;
                continue;
            }
            let f = node.freq.load(Relaxed);
            if f >= 1 && turns > 0 {
                turns -= 1;
                node.freq.store(f.min(MAX_FREQ) - 1, Relaxed);
                q.main.push_front(node);
            } else if turns > 0 && self.awaited(&node) {
                turns -= 1;
                q.main.push_front(node);
            } else if let Some(rates) = &self.rates
                && node.slot.load(Relaxed) != rate::NO_SLOT
                && let Some(pool) = &mut q.pool
            {
                // A chunk past the first: the lowest-rate one leaves (perhaps this one; the
                // pool holds at least this one), and the hand moves on.
                let now = self.clock.load(Relaxed);
                let victim = pool
                    .lowest(|n| self.rate_of(rates, n, now))
                    .unwrap_or_else(|| node.clone());
                rates.set_half(pool.evicted(u64::from((now as u32).wrapping_sub(victim.born))));
                if !Arc::ptr_eq(&victim, &node) {
                    q.main.push_front(node);
                    q.dead += 1;
                }
                q.forget(&victim);
                self.unmap(&victim);
                q.release(&victim);
                q.compact();
                return;
            } else {
                q.forget(&node);
                self.unmap(&node);
                q.release(&node);
                return;
            }
        }
    }

    /// Checks the accounting against the queues and the map (tests).
    #[cfg(test)]
    fn check(&self) {
        let q = self.queues.lock();
        let live = |d: &VecDeque<Arc<Node<K>>>, queue: u8| {
            let nodes: Vec<_> = d.iter().filter(|n| n.queue.load(Relaxed) != DEAD).collect();
            assert!(nodes.iter().all(|n| n.queue.load(Relaxed) == queue));
            (
                nodes.len(),
                nodes.iter().map(|n| n.weight.load(Relaxed)).sum::<u64>(),
            )
        };
        assert_eq!(live(&q.small, SMALL), (q.small_live, q.small_used));
        assert_eq!(live(&q.main, MAIN), (q.main_live, q.main_used));
        let dead = q.small.len() + q.main.len() - q.small_live - q.main_live;
        assert_eq!(dead, q.dead);
        let mapped: usize = self.shards.iter().map(|s| s.read().len()).sum();
        assert_eq!(mapped, q.small_live + q.main_live);
        assert_eq!(mapped as u64, self.entry_count());
        assert_eq!(q.used(), self.weighted_size());
        assert!(q.used() <= self.capacity);
        assert!(q.ghost.used <= q.ghost.capacity);
        // Every group is held by exactly its live nodes and ghost entries.
        let mut held: HashMap<u64, u32> = HashMap::new();
        if self.group_of.is_some() {
            for n in q.small.iter().chain(&q.main) {
                if n.queue.load(Relaxed) != DEAD {
                    *held
                        .entry(n.group.as_ref().expect("grouped").hash)
                        .or_default() += 1;
                }
            }
            for &(_, _, g) in q.ghost.map.values() {
                *held.entry(g).or_default() += 1;
            }
        }
        let table: HashMap<u64, u32> = q.groups.map.iter().map(|(h, e)| (*h, e.held)).collect();
        assert_eq!(held, table);
        // With rates: the pool is exactly main's live chunks past the first, slots right.
        if let Some(pool) = &q.pool {
            let chunks = q
                .main
                .iter()
                .filter(|n| n.queue.load(Relaxed) == MAIN && n.index > 0)
                .count();
            assert_eq!(pool.len(), chunks);
            for (i, n) in pool.nodes() {
                assert_eq!(n.slot.load(Relaxed) as usize, i);
                assert_eq!(n.queue.load(Relaxed), MAIN);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::DefaultHasher;

    type Fixed = BuildHasherDefault<DefaultHasher>;

    /// A cache of `u64` ids whose value is their weight.
    fn cache(capacity: u64) -> S3FifoCache<u64, u32, Fixed> {
        S3FifoCache::with_hasher(capacity, Box::new(|_, w: &u32| *w), Fixed::default())
    }

    /// Replays unit-weight ids: get, and insert on a miss; returns e.g. "MMH".
    fn run(c: &S3FifoCache<u64, u32, Fixed>, ids: &[u64]) -> String {
        ids.iter()
            .map(|&id| {
                if c.get(&id).is_some() {
                    'H'
                } else {
                    c.insert(id, 1);
                    'M'
                }
            })
            .collect()
    }

    #[test]
    fn capacity_is_never_exceeded() {
        let c = cache(10_000);
        let mut x = 1u64;
        for i in 0..50_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let id = (x >> 33) % 2_000;
            let w = 1 + (x >> 20) % 1_500;
            if c.get(&id).is_none() {
                c.insert(id, w as u32);
            }
            if i % 97 == 0 {
                c.invalidate(&((x >> 40) % 2_000));
            }
            assert!(c.weighted_size() <= 10_000, "at {i}");
            if i % 1_000 == 0 {
                c.check();
            }
        }
        c.check();
        // Too heavy for main: not admitted; heavier than small but fits main: admitted.
        c.insert(1_000_000, 9_001);
        assert!(!c.contains_key(&1_000_000));
        c.insert(1_000_001, 5_000);
        assert!(c.contains_key(&1_000_001));
        c.check();
    }

    #[test]
    fn resists_a_scan() {
        // As the reference's test: 10 slots (small 1, main 9). 1 goes to small, 2..=10 to
        // main (small full before any eviction); the scan 11..=20 only churns small.
        let mut ids: Vec<u64> = (1..=20).collect();
        ids.extend(2..=10);
        let c = cache(10);
        assert_eq!(
            run(&c, &ids),
            format!("{}{}", "M".repeat(20), "H".repeat(9))
        );
        c.check();
    }

    #[test]
    fn a_ghost_hit_goes_to_main() {
        // 11 evicts 1 from small into the ghost; 1 again is a ghost hit: it goes to main
        // (evicting 11 from small to the ghost); 12 then evicts main's oldest unhit object,
        // 2; 1 hits, 2 misses.
        let mut ids: Vec<u64> = (1..=11).collect();
        ids.extend([1, 12, 1, 2]);
        let c = cache(10);
        assert_eq!(run(&c, &ids), format!("{}MMHM", "M".repeat(11)));
        assert_eq!(c.queues.lock().node_queue(&1), Some(MAIN));
        c.check();
    }

    #[test]
    fn twice_hit_objects_move_from_small_to_main() {
        let mut ids: Vec<u64> = (1..=11).collect();
        ids.extend([11, 11, 12, 11, 2]);
        let c = cache(10);
        assert_eq!(run(&c, &ids), format!("{}HHMHM", "M".repeat(11)));
        assert_eq!(c.queues.lock().node_queue(&11), Some(MAIN));
        c.check();
    }

    #[test]
    fn invalidation_by_key_and_by_predicate() {
        let c = cache(1_000);
        for id in 0..100u64 {
            c.insert(id, 10);
        }
        assert_eq!((c.entry_count(), c.weighted_size()), (100, 1_000));
        c.invalidate(&4);
        assert!(c.get(&4).is_none());
        assert_eq!(c.invalidate_entries_if(|k, _| k % 2 == 0), 49);
        assert!((0..100).all(|id| c.contains_key(&id) == (id % 2 == 1)));
        assert_eq!((c.entry_count(), c.weighted_size()), (50, 500));
        c.check();
        // Re-inserting an invalidated key works, and dead queue entries are skipped.
        c.insert(4, 10);
        for id in 100..300u64 {
            c.insert(id, 10);
        }
        c.check();
        // A replacement reweighs in place.
        c.insert(299, 20);
        assert_eq!(c.get(&299), Some(20));
        c.check();
    }

    #[test]
    fn many_dead_entries_are_compacted() {
        let c = cache(100_000);
        for id in 0..5_000u64 {
            c.insert(id, 1);
        }
        c.invalidate_entries_if(|_, _| true);
        {
            let q = c.queues.lock();
            assert_eq!(q.small.len() + q.main.len(), 0);
        }
        c.check();
    }

    /// 16 tasks on the test's threads, each calling `step(cache, task, x, i)` `rounds` times
    /// (x: the task's own xorshift stream) and yielding now and then; the weighted size stays
    /// within the capacity throughout, the accounting checks out after, and the cache is
    /// full.
    async fn from_16_tasks<K>(
        c: S3FifoCache<K, u32, Fixed>,
        rounds: u64,
        step: fn(&S3FifoCache<K, u32, Fixed>, u64, u64, u64),
    ) where
        K: Hash + Eq + Clone + Send + Sync + 'static,
    {
        let c = Arc::new(c);
        let tasks: Vec<_> = (0..16u64)
            .map(|t| {
                let c = c.clone();
                tokio::spawn(async move {
                    let mut x = t + 1;
                    for i in 0..rounds {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        step(&c, t, x, i);
                        assert!(c.weighted_size() <= c.capacity());
                        if i % 100 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        c.check();
        assert!(
            c.weighted_size() > c.capacity() / 5 * 4,
            "{}",
            c.weighted_size()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_gets_and_inserts_keep_the_bounds() {
        from_16_tasks(cache(50_000), 20_000, |c, t, x, i| {
            let id = x % 5_000;
            if c.get(&id).is_none() {
                c.insert(id, 1 + (x >> 32) as u32 % 200);
            }
            if i % 501 == 0 {
                c.invalidate_entries_if(move |k, _| k % 1_000 == t);
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_reads_of_rated_chunks_keep_the_bounds() {
        from_16_tasks(rated(50_000), 5_000, |c, t, x, i| {
            // A session: 8 chunks of one of 300 objects from a random start.
            let (object, start) = (x % 300, (x >> 20) % 50);
            for index in start..start + 8 {
                let key = Chunk(object, index);
                if c.get(&key).is_none() {
                    c.insert(key, 1 + (x >> 40) as u32 % 200);
                }
            }
            if i % 501 == 0 {
                c.invalidate_entries_if(move |k, _| k.0 % 100 == t);
            }
        })
        .await;
    }

    /// A chunk key for the grouped tests: (object, index), weight 1.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Chunk(u64, u64);

    impl KeyGroup for Chunk {
        type Group = u64;

        fn group(&self) -> &u64 {
            &self.0
        }

        fn index(&self) -> u64 {
            self.1
        }
    }

    fn grouped(capacity: u64) -> S3FifoCache<Chunk, u32, Fixed> {
        S3FifoCache::grouped(capacity, Box::new(|_, w: &u32| *w), Fixed::default())
    }

    fn rated(capacity: u64) -> S3FifoCache<Chunk, u32, Fixed> {
        S3FifoCache::with_rates(capacity, Box::new(|_, w: &u32| *w), Fixed::default())
    }

    fn plain(capacity: u64) -> S3FifoCache<Chunk, u32, Fixed> {
        S3FifoCache::with_hasher(capacity, Box::new(|_, w: &u32| *w), Fixed::default())
    }

    fn touch(c: &S3FifoCache<Chunk, u32, Fixed>, key: Chunk, weight: u32) -> bool {
        if c.get(&key).is_some() {
            return true;
        }
        c.insert(key, weight);
        false
    }

    #[test]
    fn grouped_keys_that_are_their_own_group_hit_as_plain_s3fifo() {
        for (capacity, max_weight, g) in [
            (50, 1, grouped(50)),
            (500, 1, grouped(500)),
            (200_000, 1_000, grouped(200_000)),
            (500, 1, rated(500)),
            (200_000, 1_000, rated(200_000)),
        ] {
            let p = plain(capacity);
            let mut x = capacity | 1;
            for i in 0..100_000u64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 11) as f64 / (1u64 << 53) as f64;
                let id = (u * u * 5_000.0) as u64;
                let w = 1 + (id.wrapping_mul(0x9e37_79b9_7f4a_7c15) % max_weight) as u32;
                // Every key is chunk 0 of an object of its own.
                let key = Chunk(id, 0);
                assert_eq!(touch(&g, key, w), touch(&p, key, w), "{capacity}: {i}");
                if i % 10_000 == 0 {
                    g.check();
                }
            }
            g.check();
        }
    }

    #[test]
    fn a_chunk_ahead_of_an_active_reader_stays() {
        // As the reference's test (bench/src/policies/grouped.rs): 10 slots (small 1, main
        // 9), a scan of 20 one-chunk objects, then viewer A reads chunks 0..=3 of video 1000
        // and viewer B follows one chunk behind: A0 A1 B0 A2 B1 A3 B2.
        let mut keys: Vec<Chunk> = (1..=20).map(|id| Chunk(id, 0)).collect();
        keys.extend([0, 1, 0, 2, 1, 3, 2].map(|i| Chunk(1000, i)));
        let run = |c: &S3FifoCache<Chunk, u32, Fixed>| -> String {
            keys.iter()
                .map(|&k| if touch(c, k, 1) { 'H' } else { 'M' })
                .collect()
        };
        // Plain: A's chunks leave small for the ghost before B reaches them.
        assert_eq!(run(&plain(10)), "M".repeat(27));
        // Grouped: when small gives up A2, B (at chunk 0, active) is 2 places behind it, so
        // A2 moves to main and B2 hits.
        let g = grouped(10);
        assert_eq!(run(&g), format!("{}H", "M".repeat(26)));
        assert_eq!(g.queues.lock().node_queue(&Chunk(1000, 2)), Some(MAIN));
        g.check();
        // A purge of video 1000 drops its cached chunks; the group stays while chunks of it
        // are in the ghost (check() counts the holders), and goes with the last of them.
        g.invalidate_entries_if(|k, _| k.0 == 1000);
        g.check();
        for id in 2_000..2_040 {
            touch(&g, Chunk(id, 0), 1);
        }
        g.check();
        let hash = Fixed::default().hash_one(1000u64);
        assert!(!g.queues.lock().groups.map.contains_key(&hash));
    }

    #[test]
    fn grouped_capacity_is_never_exceeded() {
        for c in [grouped(10_000), rated(10_000)] {
            capacity_holds_with_chunks_and_purges(&c);
        }
    }

    #[test]
    fn the_lowest_rate_chunk_leaves_and_the_others_stay() {
        // 8 slots: small 1, main 7. Video 1 gets three sessions (chunks 0-2 each), video 2
        // one (0-2); chunks past the first go to main's pool. A session of video 3 reads
        // chunks 0-3: chunk 2 makes S3-FIFO evict (video 2's chunk 0: no hits), chunk 3
        // reaches a pooled chunk with no hits, and the chunk of the lowest rate leaves
        // instead: video 2's chunk 1 (one session, the oldest start, the earliest in the
        // pool of the two), not video 1's (three sessions), which still hit.
        let c = rated(8);
        for _ in 0..3 {
            for i in 0..3 {
                touch(&c, Chunk(1, i), 1);
            }
        }
        for i in 0..3 {
            touch(&c, Chunk(2, i), 1);
        }
        for i in 0..4 {
            assert!(!touch(&c, Chunk(3, i), 1), "video 3 chunk {i} is new");
        }
        c.check();
        let q = c.queues.lock();
        assert_eq!(q.node_queue(&Chunk(2, 0)), None);
        assert_eq!(q.node_queue(&Chunk(2, 1)), None, "the lowest rate");
        assert_eq!(q.node_queue(&Chunk(2, 2)), Some(MAIN));
        assert_eq!(q.node_queue(&Chunk(1, 1)), Some(MAIN));
        assert_eq!(q.node_queue(&Chunk(1, 2)), Some(MAIN));
        drop(q);
        assert!(touch(&c, Chunk(1, 1), 1) && touch(&c, Chunk(1, 2), 1));
        c.check();
    }

    fn capacity_holds_with_chunks_and_purges(c: &S3FifoCache<Chunk, u32, Fixed>) {
        let mut x = 1u64;
        let mut most = 0;
        for i in 0..50_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // 100 objects of 40 chunks, read from a random start in order.
            let object = (x >> 33) % 100;
            let index = (x >> 45) % 40;
            let w = 1 + ((object * 40 + index).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 50) as u32;
            touch(c, Chunk(object, index), w);
            touch(c, Chunk(object, index + 1), w);
            if i % 97 == 0 {
                c.invalidate(&Chunk((x >> 40) % 100, (x >> 20) % 40));
            }
            if i % 1_001 == 0 {
                let gone = (x >> 24) % 100;
                c.invalidate_entries_if(move |k, _| k.0 == gone);
            }
            assert!(c.weighted_size() <= 10_000, "at {i}");
            most = most.max(c.weighted_size());
            if i % 1_000 == 0 {
                c.check();
            }
        }
        c.check();
        // Weights of up to 16k in 10k: a few entries at a time, but the cache does fill.
        assert!(most > 9_000, "{most}");
    }

    impl<K> Queues<K> {
        fn node_queue(&self, key: &K) -> Option<u8>
        where
            K: PartialEq,
        {
            self.small
                .iter()
                .chain(&self.main)
                .find(|n| n.key == *key && n.queue.load(Relaxed) != DEAD)
                .map(|n| n.queue.load(Relaxed))
        }
    }
}
