//! Probes and revalidations: a miss (GET or HEAD) sends one *probe* to the origin, a Range
//! request for the chunk the client needs first, so a small range of a huge object never
//! pulls the whole object. Its answer yields the object's metadata and that chunk, and the
//! rest of its body streams into the store ([`read_body`]). A stale entry is revalidated with
//! the same request made conditional; a 304 refreshes its metadata (RFC 9111 §4.3.4).
//! Probes are coalesced per variant; a waiter waits at most the coalescing bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::negative::NegativeOutcome;
use super::{Cache, ProbeOutcome, Unstored, stored_headers, variant_key, vary_names};
use crate::fill::{FillError, PendingChunks};
use crate::freshness::{self, CacheControl, Timing, Usability};
use crate::origin::{OriginResponse, SmallBody, validators_of};
use crate::store::{self, ObjectMeta, VersionId};

impl Cache {
    /// Probes for a peer that asked this node as the chunk's owner: never via its region's
    /// peers again, only via its parents (upper tier, `peer::tier`) when it has any.
    pub async fn probe_for_peer(
        self: &Arc<Self>,
        key: &str,
        pq: &str,
        req: &HeaderMap,
        index: u64,
    ) -> Option<Arc<ObjectMeta>> {
        let primary = key.split('\0').next().unwrap_or(key).to_string();
        let this = self.clone();
        let (pq, req) = (pq.to_string(), req.clone());
        let hint = index * self.cfg.chunk_size;
        let (fut, _) = self
            .probes
            .join_or_start(key.to_string(), move || async move {
                this.run_probe(primary, pq, req, None, hint, false)
                    .await
                    .map_err(Arc::new)
            });
        match fut.await {
            Ok(ProbeOutcome::Stored { meta, .. }) if meta.version.key == key => Some(meta),
            _ => None,
        }
    }

    /// Starts (or joins) the probe or revalidation of `variant`.
    pub(super) fn probe(
        self: &Arc<Self>,
        primary: &str,
        variant: &str,
        pq: &str,
        req: &HeaderMap,
        stale: Option<Arc<ObjectMeta>>,
        hint: u64,
    ) -> (crate::coalesce::SharedResult<ProbeOutcome, FillError>, bool) {
        self.probe_in(&self.probes, primary, variant, pq, req, stale, hint)
    }

    /// The second probe of `variant`, for waiters whose wait on the first one ran out:
    /// coalesced among them in a table of its own; like any probe it first takes what an
    /// earlier one stored (waits run out at different moments).
    pub(super) fn second_probe(
        self: &Arc<Self>,
        primary: &str,
        variant: &str,
        pq: &str,
        req: &HeaderMap,
        hint: u64,
    ) -> (crate::coalesce::SharedResult<ProbeOutcome, FillError>, bool) {
        self.probe_in(&self.second_probes, primary, variant, pq, req, None, hint)
    }

    /// One probe per `variant` in `table`.
    #[allow(clippy::too_many_arguments)]
    fn probe_in(
        self: &Arc<Self>,
        table: &Arc<crate::coalesce::Coalescer<String, ProbeOutcome, FillError>>,
        primary: &str,
        variant: &str,
        pq: &str,
        req: &HeaderMap,
        stale: Option<Arc<ObjectMeta>>,
        hint: u64,
    ) -> (crate::coalesce::SharedResult<ProbeOutcome, FillError>, bool) {
        let this = self.clone();
        let (primary, pq, req) = (primary.to_string(), pq.to_string(), req.clone());
        let key = variant.to_string();
        table.join_or_start(variant.to_string(), move || async move {
            // A probe that ended between this request's lookup and its join has stored
            // what this one would fetch: use it rather than asking the origin again.
            if let Some(meta) = this.stored_since(&key, stale.as_ref(), &req).await {
                return Ok(ProbeOutcome::Stored {
                    revalidated: stale.as_ref().is_some_and(|s| s.version == meta.version),
                    meta,
                });
            }
            this.run_probe(primary, pq, req, stale, hint, true)
                .await
                .map_err(Arc::new)
        })
    }

    /// The metadata stored under `variant` if it is fresh for `req` and is not `stale` itself.
    async fn stored_since(
        &self,
        variant: &str,
        stale: Option<&Arc<ObjectMeta>>,
        req: &HeaderMap,
    ) -> Option<Arc<ObjectMeta>> {
        let meta = self.store.lookup(variant).await?;
        if stale.is_some_and(|s| Arc::ptr_eq(s, &meta)) {
            return None;
        }
        let age = meta.age(SystemTime::now());
        let fresh = freshness::usability(&meta.cc, meta.lifetime, age, &CacheControl::parse(req));
        (fresh == Usability::Fresh).then_some(meta)
    }

    pub(super) fn probe_alone(
        self: &Arc<Self>,
        primary: &str,
        pq: &str,
        req: &HeaderMap,
        hint: u64,
    ) -> (crate::coalesce::SharedResult<ProbeOutcome, FillError>, bool) {
        use futures::FutureExt;
        let this = self.clone();
        let (primary, pq, req) = (primary.to_string(), pq.to_string(), req.clone());
        let fut = async move {
            this.run_probe(primary, pq, req, None, hint, true)
                .await
                .map_err(Arc::new)
        }
        .boxed()
        .shared();
        (fut, true)
    }

    /// One probe: a Range request for the chunk holding `hint` (conditional when a stale copy
    /// is held). Stores the metadata and streams the body's chunks to the store and waiters.
    async fn run_probe(
        self: Arc<Self>,
        primary: String,
        pq: String,
        req: HeaderMap,
        stale: Option<Arc<ObjectMeta>>,
        hint: u64,
        via_peers: bool,
    ) -> Result<ProbeOutcome, FillError> {
        let cs = self.cfg.chunk_size;
        let mut first = hint / cs;
        let req_cc = CacheControl::parse(&req);
        if stale.is_none()
            && let Some(peers) = &self.peers
        {
            let variant = variant_key(&primary, &self.store.vary_of(&primary).await, &req);
            // Tier hook: a probe made for a sibling (`!via_peers`) asks only the upper tier
            // (`peer::tier`; nothing when this node is top tier), never its region again.
            let found = match via_peers {
                true => peers.fetch_object(&variant, &pq, &req, first).await,
                false => peers.fetch_from_parents(&variant, &pq, &req, first).await,
            };
            if let Some((meta, body)) = found {
                // As with the origin's body: the chunk is promised to waiters before the
                // metadata is visible, and its bytes reach them as they arrive.
                let meta = Arc::new(meta);
                let pending = self.filler.pending(&meta, first..first + 1);
                self.store.install(&meta).await;
                tokio::spawn(read_peer_body(
                    self.clone(),
                    meta.clone(),
                    body,
                    first,
                    pending,
                ));
                return Ok(ProbeOutcome::Stored {
                    meta,
                    revalidated: false,
                });
            }
        }
        // Whether to ask for the whole representation: once a Range probe told that it is
        // empty (every range of 0 bytes is unsatisfiable, so only a plain GET gets its 200).
        let mut whole = false;
        // The fields the cache key includes (the Vary of what is stored) go with the fill.
        // The first answer for a URL may name in its Vary a field the fill did not send
        // (not on the allow list): it is still keyed by the client's value of that field, so
        // it is only ever served to requests with that same value, and later fills send it.
        let keyed = self.fill_vary(&primary).await;
        loop {
            let sent = self.origin.fill_headers(&req, &keyed);
            let mut h = sent.clone();
            if !whole {
                // `first` comes from the client's Range: no arithmetic on it may wrap.
                let start = first.saturating_mul(cs);
                let range = format!("bytes={}-{}", start, start.saturating_add(cs - 1));
                h.insert(header::RANGE, HeaderValue::from_str(&range).expect("ascii"));
            }
            // A stored 404 (or any non-2xx) is not revalidated: the origin must ignore
            // preconditions for it (RFC 9110 §13.2.1), so it is simply asked again.
            if let Some(s) = stale
                .as_ref()
                .filter(|s| s.negative.as_ref().is_none_or(|n| n.status.is_success()))
            {
                if let Some(etag) = s
                    .etag
                    .as_deref()
                    .and_then(|e| HeaderValue::from_str(e).ok())
                {
                    h.insert(header::IF_NONE_MATCH, etag);
                }
                if let Some(lm) = s.last_modified
                    && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm))
                {
                    h.insert(header::IF_MODIFIED_SINCE, v);
                }
            }
            let kind = if stale.is_some() {
                "revalidate"
            } else {
                "probe"
            };
            let request_time = SystemTime::now();
            let resp = self.origin.fetch(kind, &pq, h).await?;
            let response_time = SystemTime::now();
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED
                && let Some(s) = &stale
            {
                let meta = Arc::new(self.refreshed(s, resp.headers(), request_time, response_time));
                self.store.refresh(&meta).await;
                return Ok(ProbeOutcome::Stored {
                    meta,
                    revalidated: true,
                });
            }
            if status == StatusCode::RANGE_NOT_SATISFIABLE && !whole {
                if first > 0 {
                    // The client asked beyond the end: learn the object from its first chunk.
                    first = 0;
                    continue;
                }
                if unsatisfied_length(resp.headers()) == Some(0) {
                    // An empty representation: a 200 with no body, stored like any other.
                    whole = true;
                    continue;
                }
            }
            let unstored = |resp| Unstored {
                resp,
                path_and_query: pq.clone(),
                sent: sent.clone(),
            };
            if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT {
                let outcome = self
                    .negative(
                        &primary,
                        &pq,
                        &req,
                        &req_cc,
                        resp,
                        request_time,
                        response_time,
                    )
                    .await?;
                return Ok(match outcome {
                    NegativeOutcome::Stored(o) => o,
                    NegativeOutcome::Unstored(resp) => {
                        if resp.status().as_u16() < 500 {
                            self.remember_uncacheable(&primary).await;
                        }
                        unstored_outcome(unstored(resp))
                    }
                });
            }
            let cc = self.cfg.response_cc(resp.headers());
            if let Err(why) = freshness::storable(status, resp.headers(), &cc, &req, &req_cc) {
                tracing::debug!(%pq, ?why, "not storable");
                self.remember_uncacheable(&primary).await;
                return Ok(unstored_outcome(unstored(resp)));
            }
            let mut resp = resp;
            let (len, ranges) = match resp.object_length(first.saturating_mul(cs)) {
                Some(x) => x,
                // A 200 whose length only its end tells (chunked): up to a chunk of it is
                // read to learn it; a longer one is not stored.
                None if status == StatusCode::OK && resp.body_length() == Some(None) => {
                    let (version, headers) = (resp.version(), resp.headers().clone());
                    match resp.read_small(None, cs).await? {
                        SmallBody::Whole(body) => {
                            let len = body.len() as u64;
                            resp = OriginResponse::rebuilt(status, version, headers, body);
                            (len, false)
                        }
                        SmallBody::TooBig(resp) => {
                            tracing::debug!(%pq, "chunked answer longer than a chunk: not stored");
                            self.remember_uncacheable(&primary).await;
                            return Ok(unstored_outcome(unstored(resp)));
                        }
                    }
                }
                None => {
                    tracing::debug!(%pq, "origin response has no usable length: not stored");
                    self.remember_uncacheable(&primary).await;
                    return Ok(unstored_outcome(unstored(resp)));
                }
            };
            let vary = vary_names(resp.headers());
            let key = variant_key(&primary, &vary, &req);
            let (etag, last_modified) = validators_of(resp.headers());
            let validator = match (&etag, last_modified) {
                (Some(e), _) if !e.starts_with("W/") => format!("e:{e}:{len}"),
                (_, Some(lm)) => format!("lm:{}:{len}", httpdate::fmt_http_date(lm)),
                _ => format!(
                    "t:{}:{len}",
                    response_time
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos()
                ),
            };
            let meta = Arc::new(ObjectMeta {
                version: Arc::new(VersionId { key, validator }),
                primary: primary.clone(),
                path_and_query: pq.clone(),
                len,
                chunk_size: cs,
                content_type: resp
                    .headers()
                    .get(header::CONTENT_TYPE)
                    .map(store::detached)
                    .unwrap_or(HeaderValue::from_static("application/octet-stream")),
                etag,
                last_modified,
                headers: stored_headers(resp.headers(), status),
                digest: if ranges {
                    None
                } else {
                    resp.headers().get("content-digest").map(store::detached)
                },
                lifetime: freshness::lifetime(
                    resp.headers(),
                    &cc,
                    Duration::from_secs(self.cfg.heuristic_max_secs),
                ),
                cc,
                timing: Timing::new(request_time, response_time, resp.headers()),
                ranges,
                // What this fill sent, so that chunk fills ask for the same variant.
                selecting: vary
                    .iter()
                    .map(|n| (n.clone(), sent.get(n).map(store::detached)))
                    .collect(),
                negative: None,
                rendered: Default::default(),
            });
            // The body's chunks, promised to waiters before the metadata is visible.
            let (start_index, end_index) = if ranges {
                (first, (first + 1).min(meta.chunk_count()))
            } else {
                (0, meta.chunk_count())
            };
            let pending = self.filler.pending(&meta, start_index..end_index);
            self.store.install(&meta).await;
            tokio::spawn(read_body(
                self.clone(),
                meta.clone(),
                resp,
                start_index,
                end_index,
                pending,
            ));
            return Ok(ProbeOutcome::Stored {
                meta,
                revalidated: false,
            });
        }
    }

    /// The stored metadata updated by a 304 (RFC 9111 §4.3.4).
    fn refreshed(
        &self,
        old: &ObjectMeta,
        not_modified: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> ObjectMeta {
        let mut headers = old.headers.clone();
        let update = stored_headers(not_modified, StatusCode::NOT_MODIFIED);
        for name in update.keys() {
            headers.remove(name);
        }
        for (name, value) in &update {
            headers.append(name.clone(), value.clone());
        }
        let mut all = headers.clone();
        if let Some(lm) = old.last_modified
            && let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(lm))
        {
            all.insert(header::LAST_MODIFIED, v);
        }
        let cc = self.cfg.response_cc(&headers);
        let lifetime = match &old.negative {
            Some(n) => freshness::negative_lifetime(n.status, &all, &cc, self.negative_ttl())
                .unwrap_or_default(),
            None => {
                freshness::lifetime(&all, &cc, Duration::from_secs(self.cfg.heuristic_max_secs))
            }
        };
        ObjectMeta {
            lifetime,
            cc,
            timing: Timing::new(request_time, response_time, not_modified),
            headers,
            ..old.clone()
        }
    }

    /// The request fields a fill of `primary` forwards besides the configured ones: those
    /// the stored responses' Vary names, which are part of the cache key.
    async fn fill_vary(&self, primary: &str) -> Vec<header::HeaderName> {
        self.store.vary_of(primary).await
    }
}

fn unstored_outcome(answer: Unstored) -> ProbeOutcome {
    ProbeOutcome::Unstored {
        status: answer.resp.status().as_u16(),
        answer: Arc::new(Mutex::new(Some(answer))),
    }
}

/// The complete length a 416 reports (`Content-Range: bytes */N`).
fn unsatisfied_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_RANGE)?
        .to_str()
        .ok()?
        .trim()
        .strip_prefix("bytes */")?
        .parse()
        .ok()
}

/// Reads the chunk a peer answered a probe with, delivering its bytes to waiters as they
/// arrive; stored only once complete and its digest matched. A broken or corrupt answer is
/// never stored: the chunk is filled again from the sources, and if that fails too the
/// waiters fail (a viewer mid-body sees an aborted response) and the metadata is dropped,
/// so the next request probes again.
async fn read_peer_body(
    cache: Arc<Cache>,
    meta: Arc<ObjectMeta>,
    body: crate::peer::client::PeerBody,
    index: u64,
    mut pending: PendingChunks,
) {
    let read = {
        let pending = &pending;
        async move {
            let mut body = body;
            let mut buf = BytesMut::with_capacity(usize::try_from(body.len()).unwrap_or(0));
            while let Some(piece) = body.next().await? {
                buf.extend_from_slice(&piece);
                pending.progress(index, piece);
            }
            Ok::<_, crate::peer::wire::WireError>(buf.freeze())
        }
    };
    let read = match read.await {
        Ok(chunk) => Ok(chunk),
        Err(error) => {
            // The metadata is the origin's, the chunk's bytes are not known good: the chunk
            // is filled again from the sources (a viewer mid-chunk goes on only if the new
            // bytes agree with what it was sent).
            tracing::warn!(key = %meta.version.key, index, %error, "peer answer failed: filling the chunk again");
            pending
                .refill(&meta, index)
                .await
                .map_err(|e| format!("peer answer: {error}; then: {e}"))
        }
    };
    match read {
        Ok(chunk) => pending.deliver(index, chunk).await,
        Err(error) => {
            tracing::warn!(key = %meta.version.key, index, %error, "chunk fill failed: nothing of it is kept");
            cache
                .metrics
                .with(|| metrics::counter!("cdn_edge_fill_errors_total").increment(1));
            cache.store.discard(&meta, index..index).await;
            pending.fail(FillError::Request(error));
        }
    }
}

/// Reads a probe's body, cutting it into chunks `start_index..end_index` and delivering each
/// as it completes. A short, long or broken body fails the undelivered chunks and drops the
/// metadata, so nothing of it passes for complete.
async fn read_body(
    cache: Arc<Cache>,
    meta: Arc<ObjectMeta>,
    mut resp: OriginResponse,
    start_index: u64,
    end_index: u64,
    mut pending: PendingChunks,
) {
    let want_total: u64 = (start_index..end_index)
        .map(|i| {
            let (s, e) = meta.chunk_span(i);
            e - s + 1
        })
        .sum();
    let mut index = start_index;
    // Each chunk is assembled in an allocation of exactly its size: a chunk that shared a
    // growing buffer would keep that buffer's whole capacity alive, beyond what the store
    // counts for it.
    let chunk_len = |i: u64| -> usize {
        let (s, e) = meta.chunk_span(i);
        usize::try_from(e - s + 1).unwrap_or(usize::MAX)
    };
    let mut buf = BytesMut::with_capacity(if index < end_index {
        chunk_len(index)
    } else {
        0
    });
    let mut total = 0u64;
    let failure = loop {
        match resp.next_bytes().await {
            Ok(Some(data)) => {
                cache.origin.count_bytes(data.len());
                total += data.len() as u64;
                if total > want_total {
                    break Some(FillError::Mismatch(format!(
                        "body longer than the {want_total} bytes announced"
                    )));
                }
                let mut data = data;
                while !data.is_empty() && index < end_index {
                    let need = chunk_len(index) - buf.len();
                    let take = need.min(data.len());
                    let piece = data.split_to(take);
                    buf.extend_from_slice(&piece);
                    // Readers of the chunk (viewers, peers) take its bytes as they arrive.
                    pending.progress(index, piece);
                    if buf.len() == chunk_len(index) {
                        let chunk = std::mem::take(&mut buf).freeze();
                        pending.deliver(index, chunk).await;
                        index += 1;
                        if index < end_index {
                            buf = BytesMut::with_capacity(chunk_len(index));
                        }
                    }
                }
            }
            Ok(None) if total == want_total => break None,
            Ok(None) => {
                break Some(FillError::Truncated {
                    got: total,
                    want: want_total,
                });
            }
            Err(e) => break Some(e),
        }
    };
    if let Some(error) = failure {
        tracing::warn!(key = %meta.version.key, %error, "origin body failed: nothing of it is kept");
        cache
            .metrics
            .with(|| metrics::counter!("cdn_edge_fill_errors_total").increment(1));
        cache.store.discard(&meta, start_index..index).await;
        pending.fail(error);
    }
}
