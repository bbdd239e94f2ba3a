//! Cache semantics: for each GET or HEAD, decide between serving from the store, revalidating,
//! serving stale, filling a miss, or passing through (RFC 9111 as a shared cache, RFC 5861).
//! The cache speaks in its own types ([`Decision`], [`Verdict`], [`CacheOutcome`]); turning
//! them into HTTP responses is the proxy's part. Below it are the store, the filler and the
//! origin client, which the proxy reaches only through the [`Cache`].
//!
//! Rooms: this file decides ([`Cache::decide`]) and keys requests; [`probe`] sends and reads
//! probes and revalidations (coalesced per object, like chunk fills are per chunk);
//! [`negative`] stores final answers other than 200/206.

mod negative;
mod probe;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, StatusCode, Uri, header};

use cdn_http::metrics::NodeMetrics;

use crate::budget::Budgets;
use crate::coalesce::Coalescer;
use crate::config::EdgeConfig;
use crate::fill::{FillError, Filler};
use crate::freshness::{self, CacheControl, Usability};
use crate::origin::{OriginClient, OriginResponse, strip_hop_by_hop};
use crate::peer::Peers;
use crate::store::{self, ObjectMeta, Store};

/// The cache of one node: its store, the filler and origin client below it, the probes in
/// flight, and the settings its decisions read.
pub struct Cache {
    cfg: EdgeConfig,
    store: Store,
    origin: Arc<OriginClient>,
    filler: Arc<Filler>,
    probes: Arc<Coalescer<String, ProbeOutcome, FillError>>,
    /// Second probes: one per variant for the waiters whose wait on `probes` ran out.
    second_probes: Arc<Coalescer<String, ProbeOutcome, FillError>>,
    metrics: Arc<NodeMetrics>,
    /// Peer replication, when this node has a peer endpoint (a probe asks peers first).
    peers: Option<Arc<Peers>>,
    /// Scheme and authority that prefix every cache key.
    key_base: String,
    /// Per-client budgets of amplified origin bytes.
    budgets: Budgets,
}

/// The answer of a probe or revalidation, shared by everyone who waited for it.
#[derive(Clone)]
enum ProbeOutcome {
    Stored {
        meta: Arc<ObjectMeta>,
        revalidated: bool,
    },
    /// An answer the cache does not store (not storable, a status it does not store, no
    /// usable length, a negative response too big). It belongs to the one request that
    /// started the probe, which takes it once; every other request that waited goes to the
    /// origin on its own, so nobody receives a response caused by another viewer's request.
    Unstored {
        status: u16,
        answer: Arc<Mutex<Option<Unstored>>>,
    },
}

/// An origin answer that is not stored, with what is needed to shape it for the request that
/// caused it (see `passthrough::answer`).
pub struct Unstored {
    pub resp: OriginResponse,
    /// Path and query, and the fields the probe sent (without its Range and preconditions),
    /// for a request of the rest of the representation.
    pub path_and_query: String,
    pub sent: HeaderMap,
}

/// What the cache made of a request, coarsely: the `cache` label of
/// `cdn_edge_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
    Stale,
    Pass,
}

impl CacheOutcome {
    pub fn label(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Pass => "pass",
        }
    }
}

/// What the Cache-Status field (RFC 9211) will say.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub kind: CacheOutcome,
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl Verdict {
    pub fn new(kind: CacheOutcome, fwd: Option<&'static str>) -> Self {
        Verdict {
            kind,
            fwd,
            fwd_status: None,
            stored: false,
            collapsed: false,
            detail: None,
        }
    }

    /// The Cache-Status member for this node; `ttl` is the remaining freshness in seconds.
    pub fn header(&self, node: &str, ttl: Option<i64>) -> String {
        let mut out = Vec::with_capacity(node.len() + 64);
        self.write_header(node, ttl, &mut out);
        // Only `str`s and digits went in.
        String::from_utf8(out).unwrap_or_default()
    }

    /// [`Verdict::header`], appended to `out` (the express lane writes it into the head).
    pub fn write_header(&self, node: &str, ttl: Option<i64>, out: &mut Vec<u8>) {
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(node.as_bytes());
        match self.fwd {
            None => out.extend_from_slice(b"; hit"),
            Some(f) => {
                out.extend_from_slice(b"; fwd=");
                out.extend_from_slice(f.as_bytes());
            }
        }
        if let Some(st) = self.fwd_status {
            out.extend_from_slice(b"; fwd-status=");
            out.extend_from_slice(num.format(st).as_bytes());
        }
        if let Some(t) = ttl {
            out.extend_from_slice(b"; ttl=");
            out.extend_from_slice(num.format(t).as_bytes());
        }
        if self.stored {
            out.extend_from_slice(b"; stored");
        }
        if self.collapsed {
            out.extend_from_slice(b"; collapsed");
        }
        if let Some(d) = self.detail {
            out.extend_from_slice(b"; detail=");
            out.extend_from_slice(d.as_bytes());
        }
    }
}

/// What the HTTP layer must do with a request. (`Unstored` is large, but a decision is made
/// once per request and moved, not copied around: no box.)
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    Serve {
        meta: Arc<ObjectMeta>,
        verdict: Verdict,
    },
    Pass {
        verdict: Verdict,
    },
    /// The origin's answer to this request's own probe, not stored: shaped for this request.
    Unstored {
        answer: Unstored,
        verdict: Verdict,
    },
    Fail {
        status: StatusCode,
        verdict: Verdict,
        why: String,
    },
}

/// Response fields not replayed from the store (the responder sets them from metadata).
/// Content-Range is kept from a 200 only (where it is just another field, RFC 9111 §3.1).
const NOT_STORED: &[header::HeaderName] = &[
    header::CONTENT_LENGTH,
    header::CONTENT_TYPE,
    header::ETAG,
    header::LAST_MODIFIED,
    header::ACCEPT_RANGES,
    header::AGE,
    header::SET_COOKIE,
];

/// The fields of a response that are stored and replayed, each in memory of its own (see
/// [`store::detached`]).
pub(crate) fn stored_headers(resp: &HeaderMap, status: StatusCode) -> HeaderMap {
    let mut h = resp.clone();
    strip_hop_by_hop(&mut h);
    for n in NOT_STORED {
        h.remove(n);
    }
    if status != StatusCode::OK {
        h.remove(header::CONTENT_RANGE);
    }
    h.remove("content-digest");
    store::detached_map(&h)
}

impl Cache {
    /// The cache over `store`, filling through `filler` and probing `origin` (and `peers`
    /// first, when given).
    pub fn new(
        cfg: EdgeConfig,
        store: Store,
        origin: Arc<OriginClient>,
        filler: Arc<Filler>,
        peers: Option<Arc<Peers>>,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        let key_base = cfg
            .cache_key_base
            .clone()
            .unwrap_or_else(|| origin.base().to_string())
            .trim_end_matches('/')
            .to_string();
        let budgets = Budgets::new(cfg.amplification_bytes_per_sec, cfg.amplification_burst);
        Cache {
            cfg,
            store,
            origin,
            filler,
            probes: Arc::default(),
            second_probes: Arc::default(),
            metrics,
            peers,
            key_base,
            budgets,
        }
    }

    /// The store, for reading (metrics, tests); writes go through the cache's operations.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Per-client budgets of amplified origin bytes (charged by the proxy as it shapes a
    /// body, read here before a probe).
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }

    /// Drops the stored responses of a primary key (exact), or of every key under a prefix.
    pub async fn invalidate(&self, primary: &str, prefix: bool) -> Result<(), String> {
        self.store.invalidate(primary, prefix).await
    }

    /// The primary key of a path (without query) for purges.
    pub fn path_key(&self, path: &str) -> String {
        format!("{}{path}", self.key_base)
    }

    /// The primary cache key of a request: origin scheme and authority, path, and the query
    /// when configured.
    pub fn primary_key(&self, uri: &Uri) -> String {
        self.primary_key_parts(uri.path(), uri.query())
    }

    /// [`Cache::primary_key`] of a request's path and query.
    pub fn primary_key_parts(&self, path: &str, query: Option<&str>) -> String {
        // Pushed, not `format!`ed: this runs on every request (the formatting machinery cost
        // a hit about 2% of its CPU).
        let query = query.filter(|_| self.cfg.cache_query);
        let len = self.key_base.len() + path.len() + query.map_or(0, |q| q.len() + 1);
        let mut key = String::with_capacity(len);
        key.push_str(&self.key_base);
        key.push_str(path);
        if let Some(q) = query {
            key.push('?');
            key.push_str(q);
        }
        key
    }

    /// Decides how to answer a GET or HEAD (alike: a HEAD miss probes as a GET would, as
    /// Varnish does, and is answered from the stored metadata with the whole object's
    /// headers; the probed chunk is there for the GETs that follow).
    pub async fn decide(
        self: &Arc<Self>,
        uri: &Uri,
        req: &HeaderMap,
        client: Option<std::net::IpAddr>,
    ) -> Decision {
        let req_cc = CacheControl::parse(req);
        if req.contains_key(header::AUTHORIZATION) || req_cc.no_store {
            return Decision::Pass {
                verdict: Verdict::new(CacheOutcome::Pass, Some("request")),
            };
        }
        let primary = self.primary_key(uri);
        // One lookup for a URL whose stored response has no Vary (most): its variant key is
        // the primary key, and a response stored there is never behind a hit-for-pass (the
        // store drops it when the URL turns hit-for-pass, and a newer response with Vary
        // replaces it: `Store::pass_until`, `Store::install`). Otherwise the URL's record
        // says whether it is hit-for-pass and which request fields select its variant.
        let (variant, found) = match self.store.lookup(&primary).await {
            Some(meta) if meta.selecting.is_empty() => (None, Some(meta)),
            _ => {
                let entry = self.store.primary(&primary).await;
                if let Some(e) = &entry
                    && e.pass_until.is_some_and(|t| t > Instant::now())
                {
                    let mut v = Verdict::new(CacheOutcome::Pass, Some("bypass"));
                    v.detail = Some("hit-for-pass");
                    return Decision::Pass { verdict: v };
                }
                match entry.as_deref().map(|e| e.vary.as_slice()) {
                    Some(vary) if !vary.is_empty() => {
                        let variant = variant_key(&primary, vary, req);
                        let found = self.store.lookup(&variant).await;
                        (Some(variant), found)
                    }
                    // Without Vary the variant is the primary key, looked up above.
                    _ => (None, None),
                }
            }
        };
        let variant: &str = variant.as_deref().unwrap_or(&primary);
        let hint = cdn_http::range::first_byte_hint(req);
        // The origin is asked for exactly what is keyed: without the query when the query is
        // not part of the key, or a query could choose what is stored under the bare path.
        // (Made only when the origin is asked: not for a fresh hit.)
        let pq_of = || match uri.path_and_query() {
            Some(p) if self.cfg.cache_query => p.as_str().to_string(),
            _ => uri.path().to_string(),
        };

        if let Some(meta) = found {
            let now = SystemTime::now();
            let age = meta.age(now);
            match freshness::usability(&meta.cc, meta.lifetime, age, &req_cc) {
                Usability::Fresh => {
                    return Decision::Serve {
                        meta,
                        verdict: Verdict::new(CacheOutcome::Hit, None),
                    };
                }
                Usability::StaleWhileRevalidate => {
                    // One background refresh per object; this request does not wait.
                    let pq = pq_of();
                    let _ = self.probe(&primary, variant, &pq, req, Some(meta.clone()), 0);
                    let mut v = Verdict::new(CacheOutcome::Stale, None);
                    v.detail = Some("stale-while-revalidate");
                    return Decision::Serve { meta, verdict: v };
                }
                Usability::MustRevalidate => {}
            }
            let pq = pq_of();
            if req_cc.only_if_cached {
                return gateway_timeout();
            }
            let (fut, leader) = self.probe(&primary, variant, &pq, req, Some(meta.clone()), hint);
            let outcome = self.wait(fut, leader).await;
            let sie = freshness::stale_if_error_allows(&meta.cc, &req_cc, meta.lifetime, age);
            let stale_if_error = |status: Option<u16>| {
                let mut v = Verdict::new(CacheOutcome::Stale, Some("stale"));
                v.fwd_status = status;
                v.detail = Some("stale-if-error");
                Decision::Serve {
                    meta: meta.clone(),
                    verdict: v,
                }
            };
            return match outcome {
                Some(Ok(ProbeOutcome::Stored {
                    meta: fresh,
                    revalidated,
                })) => {
                    let mut v = Verdict::new(CacheOutcome::Stale, Some("stale"));
                    v.fwd_status = Some(if revalidated {
                        304
                    } else {
                        fresh.negative.as_ref().map_or(200, |n| n.status.as_u16())
                    });
                    v.stored = true;
                    v.collapsed = !leader;
                    Decision::Serve {
                        meta: fresh,
                        verdict: v,
                    }
                }
                Some(Ok(ProbeOutcome::Unstored { status, .. })) if status >= 500 && sie => {
                    stale_if_error(Some(status))
                }
                Some(Err(_)) if sie => stale_if_error(None),
                other => self.settle(other, leader),
            };
        }

        if req_cc.only_if_cached {
            return gateway_timeout();
        }
        // A probe costs a chunk, of which a Range may ask a few bytes: a client whose
        // amplification budget is spent has its Range misses go to the origin as asked (the
        // probe's cost is charged when the answer is shaped, `proxy::body::within_bounds`).
        if req.contains_key(header::RANGE) && self.budgets.exhausted(client) {
            return over_budget(&self.metrics);
        }
        let pq = pq_of();
        let (fut, mut leader) = self.probe(&primary, variant, &pq, req, None, hint);
        let mut outcome = self.wait(fut, leader).await;
        if outcome.is_none() {
            // The probe is stuck (say on a peer that died mid-answer): every waiter whose
            // wait ran out joins one second probe, so the origin sees one more request at
            // most, never one per waiting viewer. Only if that one is stuck too, Pass.
            let (fut, second_leader) = self.second_probe(&primary, variant, &pq, req, hint);
            leader = second_leader;
            outcome = self.wait(fut, leader).await;
        }
        if let Some(Ok(ProbeOutcome::Stored { meta, .. })) = &outcome {
            // A waiter whose request selects another variant fetches on its own.
            let names: Vec<_> = meta.selecting.iter().map(|(n, _)| n.clone()).collect();
            if meta.version.key != variant_key(&primary, &names, req) {
                let (fut, leader) = self.probe_alone(&primary, &pq, req, hint);
                let outcome = self.wait(fut, leader).await;
                return self.settle(outcome, leader);
            }
        }
        self.settle(outcome, leader)
    }

    /// Turns a probe outcome into a decision for a miss.
    fn settle(
        &self,
        outcome: Option<Result<ProbeOutcome, Arc<FillError>>>,
        leader: bool,
    ) -> Decision {
        match outcome {
            Some(Ok(ProbeOutcome::Stored { meta, .. })) => {
                let mut v = Verdict::new(CacheOutcome::Miss, Some("miss"));
                v.fwd_status = meta.negative.as_ref().map(|n| n.status.as_u16());
                v.stored = true;
                v.collapsed = !leader;
                Decision::Serve { meta, verdict: v }
            }
            Some(Ok(ProbeOutcome::Unstored { status, answer })) => {
                // Only the request that caused the origin request may have its answer.
                let taken = leader
                    .then(|| answer.lock().unwrap_or_else(|p| p.into_inner()).take())
                    .flatten();
                let mut v = Verdict::new(CacheOutcome::Pass, Some("miss"));
                match taken {
                    Some(answer) => {
                        v.fwd_status = Some(status);
                        Decision::Unstored { answer, verdict: v }
                    }
                    None => {
                        v.detail = Some("uncacheable");
                        Decision::Pass { verdict: v }
                    }
                }
            }
            Some(Err(e)) => Decision::Fail {
                status: StatusCode::BAD_GATEWAY,
                verdict: Verdict::new(CacheOutcome::Miss, Some("miss")),
                why: e.to_string(),
            },
            // Waited too long for another request's probe: go alone, uncached.
            None => Decision::Pass {
                verdict: Verdict::new(CacheOutcome::Pass, Some("miss")),
            },
        }
    }

    /// Waits for a probe; a waiter (not the leader) waits at most the coalescing bound.
    async fn wait(
        &self,
        fut: crate::coalesce::SharedResult<ProbeOutcome, FillError>,
        leader: bool,
    ) -> Option<Result<ProbeOutcome, Arc<FillError>>> {
        if leader {
            return Some(fut.await);
        }
        self.metrics
            .with(|| metrics::counter!("cdn_edge_coalesced_waits_total").increment(1));
        tokio::time::timeout(self.cfg.coalesce_wait(), fut)
            .await
            .ok()
    }

    /// Chunk `index` of `meta` if it is stored (counted as a hit).
    pub async fn stored_chunk(&self, meta: &ObjectMeta, index: u64) -> Option<Bytes> {
        self.store.chunk(&meta.chunk_key(index)).await
    }

    /// Whether chunk `index` of `meta` is stored (not counted as a hit).
    pub fn has_chunk(&self, meta: &ObjectMeta, index: u64) -> bool {
        self.store.has_chunk(&meta.chunk_key(index))
    }

    /// Whether a body needing chunk `index` would have to fill it: neither stored nor being
    /// brought by another fill (or by the probe a request led).
    pub fn must_fill(&self, meta: &ObjectMeta, index: u64) -> bool {
        let key = meta.chunk_key(index);
        !self.store.has_chunk(&key) && !self.filler.in_flight(&key)
    }

    /// Chunk `index` of `meta`, from the store or filled (peers, then the origin).
    pub async fn chunk(&self, meta: &Arc<ObjectMeta>, index: u64) -> Result<Bytes, Arc<FillError>> {
        self.filler.chunk(meta, index).await.map(|(b, _)| b)
    }

    /// Bytes `from..to` of chunk `index` of `meta`, from the store or from its fill as they
    /// arrive (see [`Filler::window`]).
    pub fn chunk_window(
        &self,
        meta: &Arc<ObjectMeta>,
        index: u64,
        from: u64,
        to: u64,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, Arc<FillError>>> {
        self.filler.window(meta, index, from, to)
    }

    /// Starts filling chunk `index` in the background unless it is stored or under way.
    pub fn prefetch(&self, meta: &Arc<ObjectMeta>, index: u64) {
        self.filler.prefetch(meta, index);
    }

    /// Tells the peers that `meta` was served (hot objects are pushed and advertised).
    pub fn note_served(&self, meta: &Arc<ObjectMeta>) {
        if let Some(peers) = &self.peers {
            peers.note_request(&self.store, meta);
        }
    }
}

/// The variant key of a request for `primary`: the values `req` carries for each name in
/// `vary` (the URL's stored Vary), handed to [`store::variant_key`].
pub fn variant_key(primary: &str, vary: &[header::HeaderName], req: &HeaderMap) -> String {
    let selected: Vec<_> = vary
        .iter()
        .map(|n| (n, req.get_all(n).iter().collect()))
        .collect();
    store::variant_key(primary, &selected)
}

/// The header names listed by Vary (lowercase, in order, without duplicates).
pub fn vary_names(resp: &HeaderMap) -> Vec<header::HeaderName> {
    let mut names: Vec<header::HeaderName> = Vec::new();
    for v in resp.get_all(header::VARY) {
        let Ok(v) = v.to_str() else { continue };
        for f in v.split(',') {
            if let Ok(n) = header::HeaderName::from_bytes(f.trim().to_ascii_lowercase().as_bytes())
                && !names.contains(&n)
            {
                names.push(n);
            }
        }
    }
    names
}

/// A request whose fills would overdraw its client's amplification budget: forwarded as
/// asked, uncached.
fn over_budget(metrics: &NodeMetrics) -> Decision {
    metrics.with(|| metrics::counter!("cdn_edge_amplification_refused_total").increment(1));
    let mut v = Verdict::new(CacheOutcome::Pass, Some("miss"));
    v.detail = Some("amplification-budget");
    Decision::Pass { verdict: v }
}

fn gateway_timeout() -> Decision {
    Decision::Fail {
        status: StatusCode::GATEWAY_TIMEOUT,
        verdict: Verdict::new(CacheOutcome::Miss, Some("miss")),
        why: "only-if-cached and not in cache".into(),
    }
}
