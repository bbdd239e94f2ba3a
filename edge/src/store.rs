//! The chunk store: object metadata and fixed-size chunks in moka caches weighted by bytes.
//! It knows nothing of HTTP beyond the stored headers it keeps; it never fetches.
//!
//! Keys (see ARCHITECTURE.md): an object key is the origin's scheme and authority, the path,
//! the query (per config) and, for responses with Vary, the selecting request headers. A
//! chunk key is (object key, validator, index): chunks of two versions never mix, and an old
//! version simply ages out. Keys are kept as full strings, not hashes, so that no crafted URL
//! can collide with another object's chunks.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use crate::config::Policy;
use crate::freshness::{CacheControl, Timing};

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
    /// End-to-end response headers to replay (no hop-by-hop, length, range or validators).
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
}

impl ObjectMeta {
    pub fn chunk_count(&self) -> u64 {
        self.len.div_ceil(self.chunk_size)
    }

    /// Byte range `[start, end]` of chunk `index`.
    pub fn chunk_span(&self, index: u64) -> (u64, u64) {
        let start = index * self.chunk_size;
        (start, (start + self.chunk_size).min(self.len) - 1)
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
        (512 + self.version.key.len() * 2 + self.version.validator.len() + headers)
            .try_into()
            .unwrap_or(u32::MAX)
    }
}

/// Per-URL facts that hold across variants.
#[derive(Debug, Clone, Default)]
pub struct PrimaryEntry {
    /// Header names of the stored responses' Vary (lowercase), empty without Vary.
    pub vary: Vec<HeaderName>,
    /// The last response was not storable: pass requests straight through until then.
    pub pass_until: Option<Instant>,
}

/// The cache proper.
#[derive(Clone)]
pub struct Store {
    pub chunks: Cache<ChunkKey, Bytes>,
    pub metas: Cache<String, Arc<ObjectMeta>>,
    pub primaries: Cache<String, Arc<PrimaryEntry>>,
    capacity: u64,
}

/// Share of the budget for metadata.
const META_SHARE: u64 = 32;

impl Store {
    /// A store holding at most `capacity` bytes of chunks and metadata together.
    pub fn new(capacity: u64, policy: Policy) -> Self {
        let meta_budget = (capacity / META_SHARE).clamp(64 * 1024, 64 * 1024 * 1024);
        let policy = match policy {
            Policy::TinyLfu => EvictionPolicy::tiny_lfu(),
            Policy::Lru => EvictionPolicy::lru(),
        };
        let chunks = Cache::builder()
            .max_capacity(capacity.saturating_sub(meta_budget))
            .weigher(|k: &ChunkKey, v: &Bytes| {
                (v.len() + k.version.key.len() + 96)
                    .try_into()
                    .unwrap_or(u32::MAX)
            })
            .eviction_policy(policy)
            .support_invalidation_closures()
            .build();
        let metas = Cache::builder()
            .max_capacity(meta_budget * 3 / 4)
            .weigher(|_: &String, m: &Arc<ObjectMeta>| m.weight())
            .support_invalidation_closures()
            .build();
        let primaries = Cache::builder()
            .max_capacity(meta_budget / 4)
            .weigher(|k: &String, p: &Arc<PrimaryEntry>| (k.len() + 64 + p.vary.len() * 32) as u32)
            .support_invalidation_closures()
            .build();
        Store {
            chunks,
            metas,
            primaries,
            capacity,
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Bytes held (chunks and metadata), after pending evictions ran.
    pub async fn weighted_size(&self) -> u64 {
        self.chunks.run_pending_tasks().await;
        self.metas.run_pending_tasks().await;
        self.primaries.run_pending_tasks().await;
        self.chunks.weighted_size() + self.metas.weighted_size() + self.primaries.weighted_size()
    }

    /// Drops the stored responses of exact primary keys, or of every key under a prefix.
    /// Returns whether anything matched right now (chunks go lazily).
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
        self.primaries
            .invalidate_entries_if(move |k, _| m(k))
            .map_err(|e| e.to_string())?;
        let m = matches.clone();
        self.metas
            .invalidate_entries_if(move |k, _| m(k))
            .map_err(|e| e.to_string())?;
        self.chunks
            .invalidate_entries_if(move |k, _| matches(&k.version.key))
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The variant key: the primary key plus the values of the Vary-named request headers.
pub fn variant_key(primary: &str, vary: &[HeaderName], req: &HeaderMap) -> String {
    if vary.is_empty() {
        return primary.to_string();
    }
    let mut key = primary.to_string();
    for name in vary {
        key.push('\0');
        key.push_str(name.as_str());
        key.push('=');
        let values: Vec<&str> = req
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .collect();
        key.push_str(&values.join(","));
    }
    key
}

/// The header names listed by Vary (lowercase, in order, without duplicates).
pub fn vary_names(resp: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = Vec::new();
    for v in resp.get_all(http::header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        for f in v.split(',') {
            if let Ok(n) = HeaderName::from_bytes(f.trim().to_ascii_lowercase().as_bytes())
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_keys() {
        let mut req = HeaderMap::new();
        req.insert("accept-language", HeaderValue::from_static("de"));
        let vary = vec![HeaderName::from_static("accept-language")];
        assert_eq!(variant_key("k", &[], &req), "k");
        assert_eq!(variant_key("k", &vary, &req), "k\0accept-language=de");
        assert_ne!(
            variant_key("k", &vary, &req),
            variant_key("k", &vary, &HeaderMap::new())
        );
        let mut resp = HeaderMap::new();
        resp.append(
            "vary",
            HeaderValue::from_static("Accept-Language, accept-language"),
        );
        resp.append("vary", HeaderValue::from_static("Origin"));
        assert_eq!(vary_names(&resp).len(), 2);
    }

    #[tokio::test]
    async fn stays_within_capacity() {
        let store = Store::new(8 << 20, Policy::TinyLfu);
        let version = Arc::new(VersionId {
            key: "k".into(),
            validator: "v".into(),
        });
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for index in 0..32 {
            let key = ChunkKey {
                version: version.clone(),
                index,
            };
            store.chunks.insert(key, chunk.clone()).await;
        }
        assert!(store.weighted_size().await <= store.capacity());
    }
}
