//! Filling chunks: the [`FillSource`] trait ("give me chunk i of this object version") and the
//! [`Filler`], which serves chunks from the store or fills them from the sources in order,
//! one fill per chunk key at a time, with bounded waits. A wait that runs out (the fill is
//! stuck, e.g. on a peer that died mid-answer) joins the chunk's one *second* fill rather than
//! fetching alone, so a stuck fill costs the origin at most one more copy, never one per
//! waiting viewer.
//!
//! The sources are the peers (`peer::PeerSource`) and then the origin, in the order
//! the node wires them; the filler writes what it gets through the store's API.
//!
//! A chunk being filled is readable while it arrives: every fill (and every chunk a probe's
//! body will deliver) has a [`Growing`] that its source pushes bytes into, and
//! [`Filler::window`] reads a chunk from the store or, byte by byte, from its fill. A
//! source that can stream (a peer's streamed answer) implements
//! [`FillSource::fetch_chunk_into`]; the others answer whole.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::oneshot;

use crate::coalesce::{Abandoned, Coalescer};
use crate::growing::Growing;
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
    /// The same, pushing bytes into `sink` as they arrive (readers take them from there
    /// before the chunk is complete). The answer is still the whole chunk, checked; a source
    /// that cannot stream answers whole and pushes nothing.
    fn fetch_chunk_into(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
        sink: Arc<Growing>,
    ) -> BoxFuture<'static, Result<Bytes, FillError>> {
        let _ = sink;
        self.fetch_chunk(meta, index)
    }
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
    /// The chunks being filled (or delivered by a probe's body), readable as they arrive.
    growing: Mutex<HashMap<ChunkKey, Arc<Growing>>>,
    coalesce_wait: Duration,
    /// Called once per wait on another request's fill.
    on_coalesced: Box<dyn Fn() + Send + Sync>,
}

/// Takes a chunk's [`Growing`] out of the table when its fill ends, however it ends; a fill
/// that ends without completing it fails its readers.
struct Registered {
    filler: Arc<Filler>,
    key: ChunkKey,
    growing: Arc<Growing>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        if !self.growing.ended() {
            self.growing.fail(Arc::new(FillError::Abandoned));
        }
        let mut table = self.filler.table();
        if table
            .get(&self.key)
            .is_some_and(|g| Arc::ptr_eq(g, &self.growing))
        {
            table.remove(&self.key);
        }
    }
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
            growing: Mutex::default(),
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
            Err(_) => self
                .second_fill(meta, index)
                .await
                .map(|b| (b, Obtained::Alone)),
        }
    }

    /// The chunk's second fill, shared by every waiter whose wait on the first one ran out.
    fn second_fill(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        index: u64,
    ) -> crate::coalesce::SharedResult<Bytes, FillError> {
        tracing::warn!(key = %meta.version.key, index, "coalesced wait timed out; joining the chunk's second fill");
        let key = meta.chunk_key(index);
        let this = self.clone();
        let meta = meta.clone();
        let (retry, _) = self.retries.join_or_start(key.clone(), move || async move {
            // Waits run out at different moments: an earlier second fill may have
            // stored the chunk already.
            if let Some(b) = this.store.chunk(&key).await {
                return Ok(b);
            }
            let bytes = this.fetch(meta, index, None).await.map_err(Arc::new)?;
            this.store.put_chunk(key, bytes.clone()).await;
            Ok(bytes)
        });
        retry
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<ChunkKey, Arc<Growing>>> {
        self.growing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a fill's [`Growing`] for `key` (replacing a finished one's).
    fn register(self: &Arc<Self>, key: &ChunkKey, len: u64) -> Registered {
        let growing = Growing::new(len);
        self.table().insert(key.clone(), growing.clone());
        Registered {
            filler: self.clone(),
            key: key.clone(),
            growing,
        }
    }

    /// Bytes `from..to` of chunk `index` of `meta`: from the store, else from its fill (started
    /// if none is under way) as the bytes arrive. A request that waits on another's fill and
    /// gets no byte within the coalescing bound joins the chunk's second fill, as
    /// [`Filler::chunk`] does. Once a byte is given, a failure ends the stream with an error
    /// (the response is aborted, never passed for complete).
    pub fn window(
        self: &Arc<Self>,
        meta: &Arc<ObjectMeta>,
        index: u64,
        from: u64,
        to: u64,
    ) -> BoxStream<'static, Result<Bytes, Arc<FillError>>> {
        let this = self.clone();
        let meta = meta.clone();
        async move {
            let slice = move |b: Bytes| {
                let to = (to as usize).min(b.len());
                b.slice((from as usize).min(to)..to)
            };
            let key = meta.chunk_key(index);
            if let Some(b) = this.store.chunk(&key).await {
                return futures::stream::once(async move { Ok(slice(b)) }).boxed();
            }
            let (fill, leader) = this.start(&meta, index, key.clone());
            let growing = this.table().get(&key).cloned();
            let Some(growing) = growing else {
                // The fill ended between the lookup and the join: it has the bytes.
                return futures::stream::once(async move { fill.await.map(slice) }).boxed();
            };
            let mut bytes = growing.window(from, to).boxed();
            if leader {
                return bytes;
            }
            (this.on_coalesced)();
            match tokio::time::timeout(this.coalesce_wait, bytes.next()).await {
                Ok(Some(first)) => futures::stream::once(async move { first })
                    .chain(bytes)
                    .boxed(),
                Ok(None) => futures::stream::empty().boxed(),
                Err(_) => {
                    let retry = this.second_fill(&meta, index);
                    futures::stream::once(async move { retry.await.map(slice) }).boxed()
                }
            }
        }
        .flatten_stream()
        .boxed()
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
        self.fills.join_or_start(key.clone(), move || {
            let (s, e) = meta.chunk_span(index);
            let registered = this.register(&key, e - s + 1);
            async move {
                let growing = registered.growing.clone();
                // A fill that ended between the caller's lookup and its join has stored the
                // chunk.
                if let Some(b) = this.store.chunk(&key).await {
                    growing.complete(&b);
                    return Ok(b);
                }
                let bytes = match this.fetch(meta.clone(), index, Some(&growing)).await {
                    Ok(b) => b,
                    Err(FillError::Changed) => {
                        // The origin no longer has this version: forget its metadata (if it
                        // is still the stored one), so the next request probes the new
                        // version instead of failing on this one until it expires.
                        this.store.forget(&meta.version).await;
                        let e = Arc::new(FillError::Changed);
                        growing.fail(e.clone());
                        return Err(e);
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        growing.fail(e.clone());
                        return Err(e);
                    }
                };
                this.store.put_chunk(key, bytes.clone()).await;
                growing.complete(&bytes);
                drop(registered);
                Ok(bytes)
            }
        })
    }

    /// Tries each source in order; the first exact answer wins. With `growing`, a source
    /// that streams pushes into it; one that fails after pushing is replaced by the next.
    async fn fetch(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
        growing: Option<&Arc<Growing>>,
    ) -> Result<Bytes, FillError> {
        let (start, end) = meta.chunk_span(index);
        let want = end - start + 1;
        let mut last = FillError::Request("no fill source configured".into());
        for source in &self.sources {
            let answer = match growing {
                Some(g) => {
                    g.restart();
                    source
                        .fetch_chunk_into(meta.clone(), index, g.clone())
                        .await
                }
                None => source.fetch_chunk(meta.clone(), index).await,
            };
            match answer {
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
                let tx = self.fills.start_pending(key.clone())?;
                let (s, e) = meta.chunk_span(i);
                let registered = self.register(&key, e - s + 1);
                Some((i, key, (tx, registered)))
            })
            .collect();
        PendingChunks {
            filler: self.clone(),
            senders,
        }
    }
}

type ChunkSender = (oneshot::Sender<Result<Bytes, Arc<FillError>>>, Registered);

/// Chunks promised to waiters by a response being read (a probe's body). Each chunk is
/// stored and handed to its waiters as it completes; whatever is not delivered when this is
/// dropped fails for its waiters, who then fill it themselves on their next request.
pub struct PendingChunks {
    filler: Arc<Filler>,
    senders: Vec<(u64, ChunkKey, ChunkSender)>,
}

impl PendingChunks {
    /// Bytes of chunk `index` as they arrive (readers take them before it is complete).
    pub fn progress(&self, index: u64, data: Bytes) {
        if let Some((_, _, (_, registered))) = self.senders.iter().find(|(i, _, _)| *i == index) {
            registered.growing.push(data);
        }
    }

    /// Fills chunk `index` from the fill sources after the answer delivering it broke (a
    /// peer's stream cut or corrupt): readers that took bytes of it go on only if the new
    /// bytes agree with them ([`Growing::restart`]). The caller delivers or fails it.
    pub async fn refill(&self, meta: &Arc<ObjectMeta>, index: u64) -> Result<Bytes, FillError> {
        let growing = self
            .senders
            .iter()
            .find(|(i, _, _)| *i == index)
            .map(|(_, _, (_, registered))| registered.growing.clone())
            .ok_or(FillError::Abandoned)?;
        self.filler.fetch(meta.clone(), index, Some(&growing)).await
    }

    /// Delivers chunk `index` (exact bytes, already checked by the caller).
    pub async fn deliver(&mut self, index: u64, bytes: Bytes) {
        let key = match self.senders.iter().position(|(i, _, _)| *i == index) {
            Some(pos) => {
                let (_, key, (tx, registered)) = self.senders.swap_remove(pos);
                self.filler
                    .store
                    .put_chunk(key.clone(), bytes.clone())
                    .await;
                registered.growing.complete(&bytes);
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
        for (_, key, (tx, registered)) in self.senders.drain(..) {
            registered.growing.fail(error.clone());
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
