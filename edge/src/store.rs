//! The chunk store: object metadata and fixed-size chunks in caches weighted by bytes. Chunks
//! go to a [`ChunkCache`] (S3-FIFO, or moka with TinyLFU or LRU, per [`Policy`]); metadata
//! (per URL and per variant) to two S3-FIFO caches of their own, whatever the chunks' policy:
//! every request reads both, and a read there is one shard read lock and an atomic increment
//! (moka's read bookkeeping cost a hit ~10% of its CPU, BENCHMARKS.md "Hot path"). Keys are
//! hashed with SipHash under a per-process random key (std's `RandomState`): URLs come from
//! strangers, so no hasher whose collisions can be precomputed. It knows nothing of requests or of HTTP beyond the stored headers it keeps,
//! and it never fetches: callers hand it what to keep ([`Store::install`],
//! [`Store::put_chunk`]) and the values a request selects a variant by ([`variant_key`]).
//!
//! Final responses other than 200/206 that may be stored (404, 410, 301, ...: *negative*
//! responses) are kept whole, body included, in the metadata cache under the same keys as
//! objects, so that a later 200 for the URL replaces them and a purge drops them alike.
//!
//! Keys (see ARCHITECTURE.md): an object key is the origin's scheme and authority, the path,
//! the query (per config) and, for responses with Vary, the selecting request headers. A
//! chunk key is (object key, validator, index): chunks of two versions never mix, and an old
//! version simply ages out. Keys are kept as full strings, not hashes, so that no crafted URL
//! can collide with another object's chunks.

use std::hash::RandomState;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use crate::config::Policy;
use crate::freshness::{CacheControl, Timing};
use crate::s3fifo::{KeyGroup, S3FifoCache};

/// Identifies one version of one object: the variant key plus its validator.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VersionId {
    pub key: String,
    pub validator: String,
}

/// A chunk of one version of an object.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ChunkKey {
    pub version: Arc<VersionId>,
    pub index: u64,
}

/// What is stored about an object besides its bytes; the only thing a 304 updates.
#[derive(Debug, Clone)]
pub struct ObjectMeta {
    pub version: Arc<VersionId>,
    /// The primary key (without Vary), for invalidation.
    pub primary: String,
    /// Path and query to request from the origin.
    pub path_and_query: String,
    pub len: u64,
    pub chunk_size: u64,
    pub content_type: HeaderValue,
    pub etag: Option<String>,
    pub last_modified: Option<SystemTime>,
    /// End-to-end response headers to replay (no hop-by-hop, length, range or validators;
    /// for a negative response, every end-to-end field but Content-Length and Age).
    pub headers: HeaderMap,
    /// Content-Digest of the whole object, when the origin sent one.
    pub digest: Option<HeaderValue>,
    pub cc: CacheControl,
    pub lifetime: Duration,
    pub timing: Timing,
    /// Whether the origin answers Range requests with 206.
    pub ranges: bool,
    /// The request headers named by Vary, as sent when this version was fetched; resent on
    /// chunk fills so the origin selects the same variant.
    pub selecting: Vec<(HeaderName, Option<HeaderValue>)>,
    /// Set for a stored final response other than 200/206 (a 404, 410, 301...), which is
    /// replayed whole from here: such an entry has `len` 0 and no chunks, and never travels
    /// to peers.
    pub negative: Option<Negative>,
    /// The response fields every hit of this version starts from, rendered at its first hit.
    pub rendered: RenderedFields,
}

/// The fields of a stored response that are the same on every hit (ETag, Last-Modified and
/// the stored end-to-end fields, in the order they are sent), rendered once per stored
/// version and cloned per hit rather than formatted and inserted one by one; and the heads
/// the express lane sends, rendered from them once.
///
/// A clone of it is empty: a copy of an [`ObjectMeta`] is how a 304 refresh makes the
/// updated metadata (`..old.clone()`), whose fields differ, so nothing rendered from the old
/// fields may travel with it.
#[derive(Debug, Default)]
pub struct RenderedFields(
    std::sync::OnceLock<HeaderMap>,
    std::sync::OnceLock<RenderedHeads>,
);

/// The fields of a hit's head that do not change from one hit to the next, as bytes
/// (`name: value\r\n` each), for the whole object and for a range of it (see
/// `proxy::express`).
#[derive(Debug)]
pub struct RenderedHeads {
    pub full: Bytes,
    pub part: Bytes,
    /// Whether the stored fields carry a Date (else the response gets the current one).
    pub dated: bool,
}

impl Clone for RenderedFields {
    fn clone(&self) -> Self {
        RenderedFields::default()
    }
}

impl RenderedFields {
    /// The rendered fields, rendered by `render` the first time.
    pub fn get_or_init(&self, render: impl FnOnce() -> HeaderMap) -> &HeaderMap {
        self.0.get_or_init(render)
    }

    /// The rendered heads, rendered by `render` the first time.
    pub fn heads_or_init(&self, render: impl FnOnce() -> RenderedHeads) -> &RenderedHeads {
        self.1.get_or_init(render)
    }
}

/// A stored negative response: its status and its whole body (at most
/// [`NEGATIVE_MAX_BODY`] bytes). Its headers are the entry's `headers`.
#[derive(Debug, Clone)]
pub struct Negative {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Largest body of a negative response that is stored; bigger ones pass through.
pub const NEGATIVE_MAX_BODY: u64 = 64 * 1024;

impl ObjectMeta {
    pub fn chunk_count(&self) -> u64 {
        self.len.div_ceil(self.chunk_size)
    }

    /// Byte range `[start, end]` of chunk `index`.
    pub fn chunk_span(&self, index: u64) -> (u64, u64) {
        // Saturating: an index from a client's Range may be far past the end.
        let start = index.saturating_mul(self.chunk_size);
        let end = start.saturating_add(self.chunk_size).min(self.len);
        (start, end.saturating_sub(1))
    }

    pub fn chunk_key(&self, index: u64) -> ChunkKey {
        ChunkKey {
            version: self.version.clone(),
            index,
        }
    }

    pub fn age(&self, now: SystemTime) -> Duration {
        self.timing.current_age(now)
    }

    fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        let body = self.negative.as_ref().map_or(0, |n| n.body.len());
        // The rendered fields share the stored values' bytes: their own cost is the map's
        // entries, plus ETag and Last-Modified; the two rendered heads copy the fields.
        let rendered = 128 + self.headers.len() * 80 + 2 * (headers + 256);
        (512 + self.version.key.len() * 2
            + self.version.validator.len()
            + headers
            + body
            + rendered)
            .try_into()
            .unwrap_or(u32::MAX)
    }
}

/// A copy of `v` in an allocation of its own.
///
/// A field value parsed by hyper is a slice of the connection's read buffer (up to hundreds
/// of KiB once a large body went through it), and a slice keeps its whole allocation alive.
/// Stored metadata outlives the response by hours, so every value that goes into the store
/// is copied out first: otherwise each stored object pins a read buffer the store does not
/// count, and memory grows with the number of objects filled whatever the store's capacity.
pub fn detached(v: &HeaderValue) -> HeaderValue {
    let mut out =
        HeaderValue::from_bytes(v.as_bytes()).unwrap_or_else(|_| HeaderValue::from_static(""));
    out.set_sensitive(v.is_sensitive());
    out
}

/// `h` with every value [`detached`] (names are interned or copied already).
pub fn detached_map(h: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        out.append(k.clone(), detached(v));
    }
    out
}

/// Per-URL facts that hold across variants.
#[derive(Debug, Clone, Default)]
pub struct PrimaryEntry {
    /// Header names of the stored responses' Vary (lowercase), empty without Vary.
    pub vary: Vec<HeaderName>,
    /// The last response was not storable: pass requests straight through until then.
    pub pass_until: Option<Instant>,
}

/// The chunk cache behind one interface, whatever the eviction policy. moka's caches apply
/// writes and evictions lazily (`run_pending_tasks` settles them); S3-FIFO evicts within
/// `insert`, so its weighted size never exceeds its capacity and `run_pending_tasks` is a
/// no-op.
#[derive(Clone)]
pub struct ChunkCache {
    inner: ChunkInner,
}

#[derive(Clone)]
enum ChunkInner {
    Moka(Cache<ChunkKey, Bytes>, Policy),
    S3Fifo(Arc<S3FifoCache<ChunkKey, Bytes>>),
}

impl ChunkCache {
    /// A chunk cache of `capacity` bytes; every chunk weighs `chunk_weight`.
    pub fn new(capacity: u64, policy: Policy) -> Self {
        let moka = |eviction: EvictionPolicy| {
            ChunkInner::Moka(
                Cache::builder()
                    .max_capacity(capacity)
                    .weigher(chunk_weight)
                    .eviction_policy(eviction)
                    .support_invalidation_closures()
                    .build(),
                policy,
            )
        };
        let inner = match policy {
            Policy::TinyLfu => moka(EvictionPolicy::tiny_lfu()),
            Policy::Lru => moka(EvictionPolicy::lru()),
            Policy::S3Fifo => {
                ChunkInner::S3Fifo(Arc::new(S3FifoCache::new(capacity, Box::new(chunk_weight))))
            }
            Policy::GroupedS3Fifo => ChunkInner::S3Fifo(Arc::new(S3FifoCache::grouped(
                capacity,
                Box::new(chunk_weight),
                RandomState::new(),
            ))),
            Policy::S3FifoRate => ChunkInner::S3Fifo(Arc::new(S3FifoCache::with_rates(
                capacity,
                Box::new(chunk_weight),
                RandomState::new(),
            ))),
        };
        ChunkCache { inner }
    }

    pub fn policy(&self) -> Policy {
        match &self.inner {
            ChunkInner::Moka(_, p) => *p,
            ChunkInner::S3Fifo(c) if c.has_rates() => Policy::S3FifoRate,
            ChunkInner::S3Fifo(c) if c.is_grouped() => Policy::GroupedS3Fifo,
            ChunkInner::S3Fifo(_) => Policy::S3Fifo,
        }
    }

    /// The chunk, counted as a hit.
    pub async fn get(&self, key: &ChunkKey) -> Option<Bytes> {
        match &self.inner {
            ChunkInner::Moka(c, _) => c.get(key).await,
            ChunkInner::S3Fifo(c) => c.get(key),
        }
    }

    /// The chunk, counted as a hit, when the policy reads without waiting; `None` under
    /// moka's policies.
    pub fn get_now(&self, key: &ChunkKey) -> Option<Bytes> {
        match &self.inner {
            ChunkInner::Moka(..) => None,
            ChunkInner::S3Fifo(c) => c.get(key),
        }
    }

    fn get_now_works(&self) -> bool {
        matches!(self.inner, ChunkInner::S3Fifo(_))
    }

    /// Whether the chunk is held (not counted as a hit).
    pub fn contains_key(&self, key: &ChunkKey) -> bool {
        match &self.inner {
            ChunkInner::Moka(c, _) => c.contains_key(key),
            ChunkInner::S3Fifo(c) => c.contains_key(key),
        }
    }

    pub async fn insert(&self, key: ChunkKey, chunk: Bytes) {
        match &self.inner {
            ChunkInner::Moka(c, _) => c.insert(key, chunk).await,
            ChunkInner::S3Fifo(c) => c.insert(key, chunk),
        }
    }

    pub async fn invalidate(&self, key: &ChunkKey) {
        match &self.inner {
            ChunkInner::Moka(c, _) => c.invalidate(key).await,
            ChunkInner::S3Fifo(c) => c.invalidate(key),
        }
    }

    /// Drops every chunk `pred` selects: lazily with moka, at once with S3-FIFO (where `pred`
    /// runs under the cache's locks).
    pub fn invalidate_entries_if(
        &self,
        pred: impl Fn(&ChunkKey, &Bytes) -> bool + Send + Sync + 'static,
    ) -> Result<(), String> {
        match &self.inner {
            ChunkInner::Moka(c, _) => c
                .invalidate_entries_if(pred)
                .map(|_| ())
                .map_err(|e| e.to_string()),
            ChunkInner::S3Fifo(c) => {
                c.invalidate_entries_if(pred);
                Ok(())
            }
        }
    }

    /// Applies moka's pending writes, evictions and invalidations.
    pub async fn run_pending_tasks(&self) {
        if let ChunkInner::Moka(c, _) = &self.inner {
            c.run_pending_tasks().await;
        }
    }

    /// Bytes held (by `chunk_weight`); moka's figure is exact after `run_pending_tasks`.
    pub fn weighted_size(&self) -> u64 {
        match &self.inner {
            ChunkInner::Moka(c, _) => c.weighted_size(),
            ChunkInner::S3Fifo(c) => c.weighted_size(),
        }
    }

    /// With `s3-fifo-rate`: the half-life of the session rates, in requests.
    pub fn rate_half_life(&self) -> Option<f64> {
        match &self.inner {
            ChunkInner::S3Fifo(c) => c.rate_half_life(),
            ChunkInner::Moka(..) => None,
        }
    }

    /// Chunks held (moka: approximate until `run_pending_tasks`).
    pub fn entry_count(&self) -> u64 {
        match &self.inner {
            ChunkInner::Moka(c, _) => c.entry_count(),
            ChunkInner::S3Fifo(c) => c.entry_count(),
        }
    }

    /// A snapshot of the chunks held (tests and diagnostics; clones every key).
    pub fn iter(&self) -> std::vec::IntoIter<(ChunkKey, Bytes)> {
        let entries: Vec<(ChunkKey, Bytes)> = match &self.inner {
            ChunkInner::Moka(c, _) => c.iter().map(|(k, v)| ((*k).clone(), v)).collect(),
            ChunkInner::S3Fifo(c) => c.snapshot(),
        };
        entries.into_iter()
    }

    /// Chunks held right now, counted one by one (what `iter().count()` gives).
    pub fn len(&self) -> usize {
        match &self.inner {
            ChunkInner::Moka(c, _) => c.iter().count(),
            ChunkInner::S3Fifo(c) => c.entry_count() as usize,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A chunk's group, for the grouped S3-FIFO: its object version, and its index in it.
impl KeyGroup for ChunkKey {
    type Group = VersionId;

    fn group(&self) -> &VersionId {
        &self.version
    }

    fn index(&self) -> u64 {
        self.index
    }
}

/// What a chunk costs the memory budget: its bytes plus the key and bookkeeping.
pub fn chunk_weight(k: &ChunkKey, v: &Bytes) -> u32 {
    (v.len() + k.version.key.len() + 96)
        .try_into()
        .unwrap_or(u32::MAX)
}

/// The cache proper: what is stored about each URL, each variant and each chunk, behind the
/// operations below (its caches are private, so every write goes through them).
#[derive(Clone)]
pub struct Store {
    chunks: ChunkCache,
    /// Memory files for large chunks, sent without copying (`arena`); none when off.
    arena: Option<Arc<crate::arena::Arena>>,
    metas: Arc<S3FifoCache<String, Arc<ObjectMeta>>>,
    primaries: Arc<S3FifoCache<String, Arc<PrimaryEntry>>>,
    capacity: u64,
}

/// Share of the budget for metadata.
const META_SHARE: u64 = 32;

/// The part of a store's budget set aside for metadata (the rest holds chunks).
pub fn meta_budget(capacity: u64) -> u64 {
    (capacity / META_SHARE).clamp(64 * 1024, 64 * 1024 * 1024)
}

impl Store {
    /// A store holding at most `capacity` bytes of chunks and metadata together.
    pub fn new(capacity: u64, policy: Policy) -> Self {
        let meta_budget = meta_budget(capacity);
        let chunks = ChunkCache::new(capacity.saturating_sub(meta_budget), policy);
        let metas = Arc::new(S3FifoCache::new(
            meta_budget * 3 / 4,
            Box::new(|_: &String, m: &Arc<ObjectMeta>| m.weight()),
        ));
        let primaries = Arc::new(S3FifoCache::new(
            meta_budget / 4,
            Box::new(|k: &String, p: &Arc<PrimaryEntry>| {
                u32::try_from(k.len() + 64 + p.vary.len() * 32).unwrap_or(u32::MAX)
            }),
        ));
        Store {
            chunks,
            metas,
            primaries,
            capacity,
            arena: None,
        }
    }

    /// [`Store::new`] keeping chunks of 64 KiB up to `chunk_size` in memory files that the
    /// express lane sends with `sendfile` ([`crate::arena`]), when this system has them.
    pub fn with_arena(capacity: u64, policy: Policy, chunk_size: u64) -> Self {
        let mut store = Store::new(capacity, policy);
        store.arena = usize::try_from(chunk_size)
            .ok()
            .and_then(crate::arena::Arena::new);
        store
    }

    /// Where `bytes` lie in the arena's files, when they are part of a chunk held there.
    pub fn file_span(&self, bytes: &[u8]) -> Option<crate::arena::FileSpan> {
        self.arena.as_ref()?.locate(bytes)
    }

    /// With `s3-fifo-rate`: the half-life of the session rates, in requests.
    pub fn rate_half_life(&self) -> Option<f64> {
        self.chunks.rate_half_life()
    }

    /// Bytes of memory the arena's files hold (shared memory: outside anonymous RSS).
    pub fn arena_bytes(&self) -> u64 {
        self.arena.as_ref().map_or(0, |a| a.resident_bytes())
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn policy(&self) -> Policy {
        self.chunks.policy()
    }

    /// What is known of a URL across its variants.
    pub async fn primary(&self, primary: &str) -> Option<Arc<PrimaryEntry>> {
        self.primaries.get(primary)
    }

    /// The header names the stored responses of `primary` vary on (empty when none is held).
    pub async fn vary_of(&self, primary: &str) -> Vec<HeaderName> {
        self.primary(primary)
            .await
            .map(|e| e.vary.clone())
            .unwrap_or_default()
    }

    /// The metadata stored under a variant key.
    pub async fn lookup(&self, variant: &str) -> Option<Arc<ObjectMeta>> {
        self.metas.get(variant)
    }

    /// [`Store::lookup`], for callers that cannot wait (the metadata never waits).
    pub fn lookup_now(&self, variant: &str) -> Option<Arc<ObjectMeta>> {
        self.metas.get(variant)
    }

    /// Stores a version's metadata under its variant key and records its URL's Vary (the
    /// names of `meta.selecting`), replacing whatever was held for either. A response with
    /// Vary also drops a response without it held under the bare URL: a lookup finds that
    /// one first and serves it without reading the URL's record (`Cache::decide`).
    pub async fn install(&self, meta: &Arc<ObjectMeta>) {
        if meta.version.key != meta.primary {
            self.metas.invalidate(&meta.primary);
        }
        let vary = meta.selecting.iter().map(|(n, _)| n.clone()).collect();
        self.primaries.insert(
            meta.primary.clone(),
            Arc::new(PrimaryEntry {
                vary,
                pass_until: None,
            }),
        );
        self.refresh(meta).await;
    }

    /// Replaces the metadata held under `meta`'s variant key (a 304's update; the URL's
    /// Vary is left as it is).
    pub async fn refresh(&self, meta: &Arc<ObjectMeta>) {
        self.metas.insert(meta.version.key.clone(), meta.clone());
    }

    /// Marks a URL as not storable until `until` (hit-for-pass); its Vary is forgotten, and
    /// a response held under the bare URL is dropped (a lookup that finds one there serves
    /// it without reading the URL's record: `Cache::decide`).
    pub async fn pass_until(&self, primary: &str, until: Instant) {
        self.metas.invalidate(primary);
        self.primaries.insert(
            primary.to_string(),
            Arc::new(PrimaryEntry {
                vary: Vec::new(),
                pass_until: Some(until),
            }),
        );
    }

    /// Drops the metadata of `version` if it is still the one held under its key.
    pub async fn forget(&self, version: &VersionId) {
        if let Some(held) = self.metas.get(&version.key)
            && *held.version == *version
        {
            self.metas.invalidate(&version.key);
        }
    }

    /// Drops whatever metadata is held under `meta`'s key and the chunks `indices` of its
    /// version (a body that failed: nothing of it may pass for complete).
    pub async fn discard(&self, meta: &ObjectMeta, indices: std::ops::Range<u64>) {
        self.metas.invalidate(&meta.version.key);
        for i in indices {
            self.chunks.invalidate(&meta.chunk_key(i)).await;
        }
    }

    /// The chunk, counted as a hit.
    pub async fn chunk(&self, key: &ChunkKey) -> Option<Bytes> {
        self.chunks.get(key).await
    }

    /// The chunk, counted as a hit, when the policy answers without waiting (S3-FIFO and
    /// grouped S3-FIFO; never with moka's policies, whose reads are asynchronous).
    pub fn chunk_now(&self, key: &ChunkKey) -> Option<Bytes> {
        self.chunks.get_now(key)
    }

    /// Whether [`Store::chunk_now`] can find chunks (the policy's reads do not wait).
    pub fn reads_now(&self) -> bool {
        self.chunks.get_now_works()
    }

    /// Whether the chunk is held (not counted as a hit).
    pub fn has_chunk(&self, key: &ChunkKey) -> bool {
        self.chunks.contains_key(key)
    }

    /// Stores a chunk (exact bytes: the caller checked them against the version's span).
    pub async fn put_chunk(&self, key: ChunkKey, chunk: Bytes) {
        let chunk = match &self.arena {
            Some(arena) => arena.adopt(chunk),
            None => chunk,
        };
        self.chunks.insert(key, chunk).await;
    }

    /// Drops one chunk.
    pub async fn drop_chunk(&self, key: &ChunkKey) {
        self.chunks.invalidate(key).await;
    }

    /// Applies moka's pending writes, evictions and invalidations, so that counts and
    /// snapshots are exact.
    pub async fn settle(&self) {
        self.chunks.run_pending_tasks().await;
    }

    /// Bytes held (chunks and metadata), after pending evictions ran.
    pub async fn weighted_size(&self) -> u64 {
        self.settle().await;
        self.chunks.weighted_size() + self.metas.weighted_size() + self.primaries.weighted_size()
    }

    /// Bytes of chunks held, as last settled.
    pub fn chunk_bytes(&self) -> u64 {
        self.chunks.weighted_size()
    }

    /// Variants held.
    pub fn object_count(&self) -> u64 {
        self.metas.entry_count()
    }

    /// A snapshot of the chunks held (tests and diagnostics; clones every key).
    pub fn chunks_held(&self) -> Vec<(ChunkKey, Bytes)> {
        self.chunks.iter().collect()
    }

    /// A snapshot of the metadata held, by variant key (tests and diagnostics).
    pub fn objects_held(&self) -> Vec<(String, Arc<ObjectMeta>)> {
        self.metas.snapshot()
    }

    /// Drops the stored responses of exact primary keys, or of every key under a prefix.
    /// Metadata goes at once; chunks go lazily under the moka policies, at once under S3-FIFO.
    /// Errs only if moka refuses the invalidation predicate.
    pub async fn invalidate(&self, primary: &str, prefix: bool) -> Result<(), String> {
        let p = primary.to_string();
        let matches = move |k: &str| {
            if prefix {
                k.starts_with(&p)
            } else {
                k == p
                    || k.strip_prefix(&p)
                        .is_some_and(|rest| rest.starts_with('\0'))
            }
        };
        let m = matches.clone();
        self.primaries.invalidate_entries_if(|k, _| m(k));
        let m = matches.clone();
        self.metas.invalidate_entries_if(|k, _| m(k));
        self.chunks
            .invalidate_entries_if(move |k, _| matches(&k.version.key))?;
        Ok(())
    }
}

/// The variant key: the primary key plus, for each header name the URL's Vary lists, the
/// values the request carries for it (the caller reads them from the request, in Vary's
/// order; no values means the field is absent).
pub fn variant_key(primary: &str, selected: &[(&HeaderName, Vec<&HeaderValue>)]) -> String {
    let mut key = primary.to_string();
    for (name, values) in selected {
        key.push('\0');
        key.push_str(name.as_str());
        // Absent and empty differ; every byte of a value counts (non-text bytes escaped, not
        // dropped), so no two requests the origin can tell apart share a variant.
        for (i, v) in values.iter().enumerate() {
            key.push(if i == 0 { '=' } else { ',' });
            for &b in v.as_bytes().trim_ascii() {
                if (0x20..0x7f).contains(&b) && b != b'%' {
                    key.push(b as char);
                } else {
                    key.push_str(&format!("%{b:02X}"));
                }
            }
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_keys() {
        let name = HeaderName::from_static("accept-language");
        let de = HeaderValue::from_static("de");
        let odd = HeaderValue::from_bytes(b" a%\xff ").expect("value");
        assert_eq!(variant_key("k", &[]), "k");
        assert_eq!(
            variant_key("k", &[(&name, vec![&de])]),
            "k\0accept-language=de"
        );
        // Absent differs from present; several values keep their order; odd bytes escaped.
        assert_eq!(variant_key("k", &[(&name, vec![])]), "k\0accept-language");
        assert_eq!(
            variant_key("k", &[(&name, vec![&de, &odd])]),
            "k\0accept-language=de,a%25%FF"
        );
    }

    const POLICIES: [Policy; 5] = [
        Policy::TinyLfu,
        Policy::Lru,
        Policy::S3Fifo,
        Policy::GroupedS3Fifo,
        Policy::S3FifoRate,
    ];

    fn key(name: &str, index: u64) -> ChunkKey {
        ChunkKey {
            version: Arc::new(VersionId {
                key: name.into(),
                validator: "v".into(),
            }),
            index,
        }
    }

    #[tokio::test]
    async fn stays_within_capacity() {
        for policy in POLICIES {
            let store = Store::new(8 << 20, policy);
            assert_eq!(store.chunks.policy(), policy);
            let chunk = Bytes::from(vec![7u8; 1 << 20]);
            for index in 0..32 {
                store.chunks.insert(key("k", index), chunk.clone()).await;
                if policy.is_s3fifo() {
                    // Evicted synchronously: within capacity after every insert.
                    assert!(
                        store.chunks.weighted_size() <= store.capacity() - meta_budget(8 << 20)
                    );
                }
            }
            let held = store.weighted_size().await;
            assert!(held <= store.capacity(), "{policy:?}: {held}");
            assert!(held >= 4 << 20, "{policy:?}: {held}");
        }
    }

    #[tokio::test]
    async fn every_policy_serves_the_same_interface() {
        for policy in POLICIES {
            let store = Store::new(64 << 20, policy);
            let chunk = Bytes::from_static(b"0123456789");
            for name in [
                "https://o/a",
                "https://o/a/b",
                "https://o/ab",
                "https://o/c",
            ] {
                for index in 0..3 {
                    store.chunks.insert(key(name, index), chunk.clone()).await;
                }
            }
            store.chunks.run_pending_tasks().await;
            assert_eq!(store.chunks.len(), 12, "{policy:?}");
            assert_eq!(store.chunks.entry_count(), 12, "{policy:?}");
            assert_eq!(store.chunks.iter().count(), 12, "{policy:?}");
            assert!(!store.chunks.is_empty());
            assert_eq!(
                store.chunks.get(&key("https://o/c", 1)).await,
                Some(chunk.clone())
            );
            assert!(store.chunks.contains_key(&key("https://o/c", 2)));
            store.chunks.invalidate(&key("https://o/c", 2)).await;
            assert!(!store.chunks.contains_key(&key("https://o/c", 2)));
            // Exact key: only https://o/a; prefix: https://o/a and everything under it.
            store.invalidate("https://o/a", false).await.unwrap();
            store.chunks.run_pending_tasks().await;
            assert_eq!(store.chunks.len(), 8, "{policy:?}");
            store.invalidate("https://o/a", true).await.unwrap();
            store.chunks.run_pending_tasks().await;
            let left: Vec<String> = store
                .chunks
                .iter()
                .map(|(k, _)| k.version.key.clone())
                .collect();
            assert_eq!(left.len(), 2, "{policy:?}: {left:?}");
            assert!(left.iter().all(|k| k == "https://o/c"), "{policy:?}");
            let weight = chunk_weight(&key("https://o/c", 0), &chunk) as u64;
            assert_eq!(store.chunks.weighted_size(), 2 * weight, "{policy:?}");
        }
    }
}
