//! Filling chunks: the [`FillSource`] trait ("give me chunk i of this object version") and the
//! [`Filler`], which serves chunks from the store or fills them from the sources in order,
//! one fill per chunk key at a time, with bounded waits. A wait that runs out (the fill is
//! stuck, e.g. on a peer that died mid-answer) joins the chunk's one *second* fill rather than
//! fetching alone, so a stuck fill costs the origin at most one more copy, never one per
//! waiting viewer.
//!
//! The sources are the peers (`peer::PeerSource`) and then the origin, in the order
//! the node wires them; the filler writes what it gets through the store's API.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::coalesce::{Abandoned, Coalescer};
use crate::store::{ChunkKey, ObjectMeta, Store};

/// Why a fill failed. Shared with every waiter, never cached.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    #[error("origin request failed: {0}")]
    Request(String),
    #[error("origin answered {0}")]
    Status(u16),
    #[error("the object changed at the origin")]
    Changed,
    #[error("origin response does not match the request: {0}")]
    Mismatch(String),
    #[error("body ended after {got} of {want} bytes")]
    Truncated { got: u64, want: u64 },
    #[error("the fill was abandoned")]
    Abandoned,
}

impl Abandoned for FillError {
    fn abandoned() -> Self {
        FillError::Abandoned
    }
}

/// A place chunks can come from.
pub trait FillSource: Send + Sync + 'static {
    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Fetches chunk `index` of the version `meta` describes; must return exactly its bytes.
    fn fetch_chunk(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Result<Bytes, FillError>>;
}

/// How a chunk was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Obtained {
    Hit,
    Filled,
    Coalesced,
    /// Waited too long for another fill; obtained by the chunk's second fill (shared by
    /// every waiter whose wait ran out, and stored).
    Alone,
}

pub struct Filler {
    store: Store,
    sources: Vec<Arc<dyn FillSource>>,
    fills: Arc<Coalescer<ChunkKey, Bytes, FillError>>,
    /// Second fills: one per chunk key for the waiters whose wait on `fills` ran out.
    retries: Arc<Coalescer<ChunkKey, Bytes, FillError>>,
    coalesce_wait: Duration,
    /// Called once per wait on another request's fill.
    on_coalesced: Box<dyn Fn() + Send + Sync>,
}

impl Filler {
    pub fn new(
        store: Store,
        sources: Vec<Arc<dyn FillSource>>,
        coalesce_wait: Duration,
        on_coalesced: Box<dyn Fn() + Send + Sync>,
    ) -> Self {
        Filler {
            store,
            sources,
            fills: Arc::default(),
            retries: Arc::default(),
            coalesce_wait,
            on_coalesced,
        }
    }

    /// Chunk `index` of `meta`, from the store or filled.
    pub async fn chunk(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        index: u64,
    ) -> Result<(Bytes, Obtained), Arc<FillError>> {
        let key = meta.chunk_key(index);
        if let Some(b) = self.store.chunk(&key).await {
            return Ok((b, Obtained::Hit));
        }
        let (fill, leader) = self.start(meta, index, key.clone());
        if leader {
            return fill.await.map(|b| (b, Obtained::Filled));
        }
        (self.on_coalesced)();
        match tokio::time::timeout(self.coalesce_wait, fill).await {
            Ok(r) => r.map(|b| (b, Obtained::Coalesced)),
            Err(_) => {
                tracing::warn!(key = %meta.version.key, index, "coalesced wait timed out; joining the chunk's second fill");
                let this = self.clone();
                let meta = meta.clone();
                let (retry, _) = self.retries.join_or_start(key.clone(), move || async move {
                    // Waits run out at different moments: an earlier second fill may have
                    // stored the chunk already.
                    if let Some(b) = this.store.chunk(&key).await {
                        return Ok(b);
                    }
                    let bytes = this.fetch(meta, index).await.map_err(Arc::new)?;
                    this.store.put_chunk(key, bytes.clone()).await;
                    Ok(bytes)
                });
                retry.await.map(|b| (b, Obtained::Alone))
            }
        }
    }

    /// Whether a fill of `key` is under way (a fill, or a probe's body that will deliver it).
    pub fn in_flight(&self, key: &ChunkKey) -> bool {
        self.fills.contains(key)
    }

    /// Starts filling chunk `index` in the background unless it is stored or under way.
    pub fn prefetch(self: &Arc<Self>, meta: &Arc<ObjectMeta>, index: u64) {
        if index >= meta.chunk_count() {
            return;
        }
        let key = meta.chunk_key(index);
        if self.store.has_chunk(&key) || self.fills.contains(&key) {
            return;
        }
        let _ = self.start(meta, index, key);
    }

    fn start(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        index: u64,
        key: ChunkKey,
    ) -> (crate::coalesce::SharedResult<Bytes, FillError>, bool) {
        let this = self.clone();
        let meta = meta.clone();
        self.fills.join_or_start(key.clone(), move || async move {
            // A fill that ended between the caller's lookup and its join has stored the chunk.
            if let Some(b) = this.store.chunk(&key).await {
                return Ok(b);
            }
            let bytes = match this.fetch(meta.clone(), index).await {
                Ok(b) => b,
                Err(FillError::Changed) => {
                    // The origin no longer has this version: forget its metadata (if it is
                    // still the stored one), so the next request probes the new version
                    // instead of failing on this one until it expires.
                    this.store.forget(&meta.version).await;
                    return Err(Arc::new(FillError::Changed));
                }
                Err(e) => return Err(Arc::new(e)),
            };
            this.store.put_chunk(key, bytes.clone()).await;
            Ok(bytes)
        })
    }

    /// Tries each source in order; the first exact answer wins.
    async fn fetch(&self, meta: Arc<ObjectMeta>, index: u64) -> Result<Bytes, FillError> {
        let (start, end) = meta.chunk_span(index);
        let want = end - start + 1;
        let mut last = FillError::Request("no fill source configured".into());
        for source in &self.sources {
            match source.fetch_chunk(meta.clone(), index).await {
                Ok(b) if b.len() as u64 == want => return Ok(b),
                Ok(b) => {
                    last = FillError::Truncated {
                        got: b.len() as u64,
                        want,
                    };
                }
                Err(e) => last = e,
            }
            tracing::debug!(source = source.name(), index, error = %last, "fill source failed");
        }
        Err(last)
    }

    /// Registers chunks that a response being read will deliver; see [`PendingChunks`].
    pub fn pending(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        indices: std::ops::Range<u64>,
    ) -> PendingChunks {
        let senders = indices
            .filter_map(|i| {
                let key = meta.chunk_key(i);
                self.fills.start_pending(key.clone()).map(|tx| (i, key, tx))
            })
            .collect();
        PendingChunks {
            filler: self.clone(),
            senders,
        }
    }
}

type ChunkSender = oneshot::Sender<Result<Bytes, Arc<FillError>>>;

/// Chunks promised to waiters by a response being read (a probe's body). Each chunk is
/// stored and handed to its waiters as it completes; whatever is not delivered when this is
/// dropped fails for its waiters, who then fill it themselves on their next request.
pub struct PendingChunks {
    filler: Arc<Filler>,
    senders: Vec<(u64, ChunkKey, ChunkSender)>,
}

impl PendingChunks {
    /// Delivers chunk `index` (exact bytes, already checked by the caller).
    pub async fn deliver(&mut self, index: u64, bytes: Bytes) {
        let key = match self.senders.iter().position(|(i, _, _)| *i == index) {
            Some(pos) => {
                let (_, key, tx) = self.senders.swap_remove(pos);
                self.filler
                    .store
                    .put_chunk(key.clone(), bytes.clone())
                    .await;
                let _ = tx.send(Ok(bytes));
                key
            }
            None => return,
        };
        self.filler.fills.finish(&key);
    }

    /// Fails every undelivered chunk with `error`.
    pub fn fail(&mut self, error: FillError) {
        let error = Arc::new(error);
        for (_, key, tx) in self.senders.drain(..) {
            let _ = tx.send(Err(error.clone()));
            self.filler.fills.finish(&key);
        }
    }
}

impl Drop for PendingChunks {
    fn drop(&mut self) {
        if !self.senders.is_empty() {
            self.fail(FillError::Abandoned);
        }
    }
}
