//! Cache semantics: for each GET or HEAD, decide between serving from the store, revalidating,
//! serving stale, filling a miss, or passing through (RFC 9111 as a shared cache, RFC 5861).
//!
//! A miss (GET or HEAD) sends one *probe* to the origin: a Range request for the chunk the
//! client needs first, so a small range of a huge object never pulls the whole object. Its
//! answer yields the object's metadata and that chunk. Probes and revalidations are coalesced
//! per object, like chunk fills are per chunk.
//!
//! A probe answered with another final status (404, 410, 301, ...) is stored whole as a
//! *negative* entry when RFC 9111 allows it ([`freshness::negative_lifetime`]) and its body is
//! small; otherwise it is handed to the client as it is and nothing is kept.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};

use cdn_http::conditional::{Precondition, Validators};
use cdn_http::metrics::NodeMetrics;

use crate::coalesce::Coalescer;
use crate::config::EdgeConfig;
use crate::fill::{FillError, FillSource, Filler, PendingChunks};
use crate::freshness::{self, CacheControl, Timing, Usability};
use crate::origin::{OriginClient, strip_hop_by_hop};
use crate::store::{self, NEGATIVE_MAX_BODY, Negative, ObjectMeta, PrimaryEntry, Store, VersionId};

/// The edge's shared state.
pub struct Edge {
    pub cfg: EdgeConfig,
    pub store: Store,
    pub origin: Arc<OriginClient>,
    pub filler: Arc<Filler>,
    probes: Arc<Coalescer<String, ProbeOutcome, FillError>>,
    pub metrics: Arc<NodeMetrics>,
    /// Peer replication, when this node has a peer endpoint.
    pub peers: Option<Arc<crate::peer::Peers>>,
    /// Scheme and authority that prefix every cache key.
    pub key_base: String,
    /// Requests being answered (head or body) right now.
    pub inflight: Arc<std::sync::atomic::AtomicU64>,
    /// Per-client budgets of amplified origin bytes.
    pub budgets: crate::budget::Budgets,
}

/// The answer of a probe or revalidation, shared by everyone who waited for it.
#[derive(Clone)]
pub enum ProbeOutcome {
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
    pub resp: reqwest::Response,
    /// Path and query, and the fields the probe sent (without its Range and preconditions),
    /// for a request of the rest of the representation.
    pub path_and_query: String,
    pub sent: HeaderMap,
}

/// Coarse result, the `cache` label of `cdn_edge_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Hit,
    Miss,
    Stale,
    Pass,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::Miss => "miss",
            Kind::Stale => "stale",
            Kind::Pass => "pass",
        }
    }
}

/// What the Cache-Status field (RFC 9211) will say.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub kind: Kind,
    pub fwd: Option<&'static str>,
    pub fwd_status: Option<u16>,
    pub stored: bool,
    pub collapsed: bool,
    pub detail: Option<&'static str>,
}

impl Verdict {
    pub fn new(kind: Kind, fwd: Option<&'static str>) -> Self {
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
        use std::fmt::Write as _;
        // On every response: one buffer, no intermediate strings.
        let mut s = String::with_capacity(node.len() + 64);
        s.push_str(node);
        match self.fwd {
            None => s.push_str("; hit"),
            Some(f) => {
                s.push_str("; fwd=");
                s.push_str(f);
            }
        }
        if let Some(st) = self.fwd_status {
            let _ = write!(s, "; fwd-status={st}");
        }
        if let Some(t) = ttl {
            let _ = write!(s, "; ttl={t}");
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
        }
        s
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
fn stored_headers(resp: &HeaderMap, status: StatusCode) -> HeaderMap {
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

impl Edge {
    /// Builds the edge; with `peer_listen` set, binds its QUIC endpoint and starts answering
    /// peers (must run inside a tokio runtime).
    pub fn new(cfg: EdgeConfig, metrics: Arc<NodeMetrics>) -> anyhow::Result<Arc<Self>> {
        let store = Store::new(cfg.capacity, cfg.policy);
        let origin = Arc::new(
            OriginClient::new(
                &cfg.origin,
                &cfg.name,
                Duration::from_millis(cfg.origin_connect_timeout_ms),
                Duration::from_millis(cfg.origin_read_timeout_ms),
                metrics.clone(),
            )?
            .with_fill_fields(cfg.fill_fields()),
        );
        let m = metrics.clone();
        let peers = crate::peer::Peers::new(&cfg, metrics.clone())?;
        let mut sources: Vec<Arc<dyn FillSource>> = Vec::new();
        if let Some(p) = &peers {
            sources.push(Arc::new(crate::peer::PeerSource(p.clone())));
        }
        sources.push(Arc::new(origin.clone()));
        let key_base = cfg
            .cache_key_base
            .clone()
            .unwrap_or_else(|| origin.base().to_string())
            .trim_end_matches('/')
            .to_string();
        let filler = Arc::new(Filler::new(
            store.clone(),
            sources,
            cfg.coalesce_wait(),
            Box::new(move || {
                m.with(|| metrics::counter!("cdn_edge_coalesced_waits_total").increment(1))
            }),
        ));
        let cfg_budget = (cfg.amplification_bytes_per_sec, cfg.amplification_burst);
        let edge = Arc::new(Edge {
            cfg,
            store,
            origin,
            filler,
            probes: Arc::default(),
            metrics,
            peers,
            key_base,
            inflight: Arc::default(),
            budgets: crate::budget::Budgets::new(cfg_budget.0, cfg_budget.1),
        });
        if let Some(p) = &edge.peers {
            tokio::spawn(crate::peer::server::serve(
                p.endpoint.clone(),
                Arc::downgrade(&edge),
            ));
        }
        Ok(edge)
    }

    /// Closes the peer endpoint (at shutdown, or to simulate a peer going away).
    pub fn close_peers(&self) {
        if let Some(p) = &self.peers {
            p.endpoint.close(0u32.into(), b"shutting down");
        }
    }

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

    /// The primary cache key of a request: origin scheme and authority, path, and the query
    /// when configured.
    pub fn primary_key(&self, uri: &Uri) -> String {
        let path = uri.path();
        match (self.cfg.cache_query, uri.query()) {
            (true, Some(q)) => format!("{}{path}?{q}", self.key_base),
            _ => format!("{}{path}", self.key_base),
        }
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
                verdict: Verdict::new(Kind::Pass, Some("request")),
            };
        }
        let primary = self.primary_key(uri);
        let entry = self.store.primaries.get(&primary).await;
        if let Some(e) = &entry
            && e.pass_until.is_some_and(|t| t > Instant::now())
        {
            let mut v = Verdict::new(Kind::Pass, Some("bypass"));
            v.detail = Some("hit-for-pass");
            return Decision::Pass { verdict: v };
        }
        let vary = entry.map(|e| e.vary.clone()).unwrap_or_default();
        let variant = store::variant_key(&primary, &vary, req);
        let hint = cdn_http::range::first_byte_hint(req);
        // The origin is asked for exactly what is keyed: without the query when the query is
        // not part of the key, or a query could choose what is stored under the bare path.
        let pq = match uri.path_and_query() {
            Some(p) if self.cfg.cache_query => p.as_str().to_string(),
            _ => uri.path().to_string(),
        };

        if let Some(meta) = self.store.metas.get(&variant).await {
            let now = SystemTime::now();
            let age = meta.age(now);
            match freshness::usability(&meta.cc, meta.lifetime, age, &req_cc) {
                Usability::Fresh => {
                    return Decision::Serve {
                        meta,
                        verdict: Verdict::new(Kind::Hit, None),
                    };
                }
                Usability::StaleWhileRevalidate => {
                    // One background refresh per object; this request does not wait.
                    let _ = self.probe(&primary, &variant, &pq, req, Some(meta.clone()), 0);
                    let mut v = Verdict::new(Kind::Stale, None);
                    v.detail = Some("stale-while-revalidate");
                    return Decision::Serve { meta, verdict: v };
                }
                Usability::MustRevalidate => {}
            }
            if req_cc.only_if_cached {
                return gateway_timeout();
            }
            let (fut, leader) = self.probe(&primary, &variant, &pq, req, Some(meta.clone()), hint);
            let outcome = self.wait(fut, leader).await;
            let sie = freshness::stale_if_error_allows(&meta.cc, &req_cc, meta.lifetime, age);
            let stale_if_error = |status: Option<u16>| {
                let mut v = Verdict::new(Kind::Stale, Some("stale"));
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
                    let mut v = Verdict::new(Kind::Stale, Some("stale"));
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
        // probe's cost is charged when the answer is shaped, `proxy::within_bounds`).
        if req.contains_key(header::RANGE) && self.budgets.exhausted(client) {
            return over_budget(&self.metrics);
        }
        let (fut, leader) = self.probe(&primary, &variant, &pq, req, None, hint);
        let outcome = self.wait(fut, leader).await;
        if let Some(Ok(ProbeOutcome::Stored { meta, .. })) = &outcome {
            // A waiter whose request selects another variant fetches on its own.
            let names: Vec<_> = meta.selecting.iter().map(|(n, _)| n.clone()).collect();
            if meta.version.key != store::variant_key(&primary, &names, req) {
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
                let mut v = Verdict::new(Kind::Miss, Some("miss"));
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
                let mut v = Verdict::new(Kind::Pass, Some("miss"));
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
                verdict: Verdict::new(Kind::Miss, Some("miss")),
                why: e.to_string(),
            },
            // Waited too long for another request's probe: go alone, uncached.
            None => Decision::Pass {
                verdict: Verdict::new(Kind::Pass, Some("miss")),
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

    /// Starts (or joins) the probe or revalidation of `variant`.
    fn probe(
        self: &Arc<Self>,
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
        self.probes
            .join_or_start(variant.to_string(), move || async move {
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
        let meta = self.store.metas.get(variant).await?;
        if stale.is_some_and(|s| Arc::ptr_eq(s, &meta)) {
            return None;
        }
        let age = meta.age(SystemTime::now());
        let fresh = freshness::usability(&meta.cc, meta.lifetime, age, &CacheControl::parse(req));
        (fresh == Usability::Fresh).then_some(meta)
    }

    fn probe_alone(
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
            let variant = store::variant_key(
                &primary,
                &self
                    .store
                    .primaries
                    .get(&primary)
                    .await
                    .map(|e| e.vary.clone())
                    .unwrap_or_default(),
                &req,
            );
            // Tier hook: a probe made for a sibling (`!via_peers`) asks only the upper tier
            // (`peer::tier`; nothing when this node is top tier), never its region again.
            let found = match via_peers {
                true => peers.fetch_object(&variant, &pq, &req, first).await,
                false => peers.fetch_from_parents(&variant, &pq, &req, first).await,
            };
            if let Some((meta, chunk)) = found {
                let meta = Arc::new(meta);
                crate::peer::server::install(&self, &meta).await;
                self.store.chunks.insert(meta.chunk_key(first), chunk).await;
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
            let resp = self.origin.send(kind, Method::GET, &pq, h, None).await?;
            let response_time = SystemTime::now();
            let status = resp.status();
            if status == StatusCode::NOT_MODIFIED
                && let Some(s) = &stale
            {
                let meta = Arc::new(self.refreshed(s, resp.headers(), request_time, response_time));
                self.store
                    .metas
                    .insert(meta.version.key.clone(), meta.clone())
                    .await;
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
            let (len, ranges) = match object_length(&resp, first.saturating_mul(cs)) {
                Some(x) => x,
                // A 200 whose length only its end tells (chunked): up to a chunk of it is
                // read to learn it; a longer one is not stored.
                None if status == StatusCode::OK && body_length(&resp) == Some(None) => {
                    let (version, headers) = (resp.version(), resp.headers().clone());
                    match read_small(&self.origin, resp, cs, false).await? {
                        SmallBody::Whole(body) => {
                            let len = body.len() as u64;
                            resp = rebuilt(status, version, headers, body);
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
            let vary = store::vary_names(resp.headers());
            let key = store::variant_key(&primary, &vary, &req);
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
            });
            self.store
                .primaries
                .insert(
                    primary.clone(),
                    Arc::new(PrimaryEntry {
                        vary,
                        pass_until: None,
                    }),
                )
                .await;
            // The body's chunks, promised to waiters before the metadata is visible.
            let (start_index, end_index) = if ranges {
                (first, (first + 1).min(meta.chunk_count()))
            } else {
                (0, meta.chunk_count())
            };
            let pending = self.filler.pending(&meta, start_index..end_index);
            self.store
                .metas
                .insert(meta.version.key.clone(), meta.clone())
                .await;
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
}

impl Edge {
    fn negative_ttl(&self) -> Duration {
        Duration::from_secs(self.cfg.negative_ttl_secs)
    }

    /// A probe answered with a final status other than 200/206: stored whole as a negative
    /// entry when RFC 9111 allows it (a status the edge understands, explicit freshness or a
    /// heuristically cacheable status with `negative_ttl_secs` > 0, no no-store, private or
    /// Set-Cookie), its body is at most [`NEGATIVE_MAX_BODY`] bytes and its end can be told
    /// from a truncation; otherwise handed on as it is. A body that ends short is an error and
    /// nothing of it is kept.
    #[allow(clippy::too_many_arguments)]
    async fn negative(
        &self,
        primary: &str,
        pq: &str,
        req: &HeaderMap,
        req_cc: &CacheControl,
        resp: reqwest::Response,
        request_time: SystemTime,
        response_time: SystemTime,
    ) -> Result<NegativeOutcome, FillError> {
        let status = resp.status();
        let cc = self.cfg.response_cc(resp.headers());
        let lifetime =
            freshness::negative_lifetime(status, resp.headers(), &cc, self.negative_ttl());
        let storable = freshness::storable(status, resp.headers(), &cc, req, req_cc);
        let (Some(lifetime), Ok(()), Some(declared)) = (lifetime, storable, body_length(&resp))
        else {
            tracing::debug!(%pq, %status, ?storable, "negative response not stored");
            return Ok(NegativeOutcome::Unstored(resp));
        };
        if declared.is_some_and(|n| n > NEGATIVE_MAX_BODY) {
            return Ok(NegativeOutcome::Unstored(resp));
        }
        let resp_headers = resp.headers().clone();
        let body = match read_small(&self.origin, resp, NEGATIVE_MAX_BODY, true).await? {
            SmallBody::Whole(b) => b,
            SmallBody::TooBig(resp) => return Ok(NegativeOutcome::Unstored(resp)),
        };
        if let Some(want) = declared
            && want != body.len() as u64
        {
            return Err(FillError::Truncated {
                got: body.len() as u64,
                want,
            });
        }
        let vary = store::vary_names(&resp_headers);
        let (etag, last_modified) = validators_of(&resp_headers);
        let mut headers = store::detached_map(&resp_headers);
        strip_hop_by_hop(&mut headers);
        for n in [
            header::CONTENT_LENGTH,
            header::CONTENT_RANGE,
            header::AGE,
            header::SET_COOKIE,
        ] {
            headers.remove(n);
        }
        let nanos = response_time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let meta = Arc::new(ObjectMeta {
            version: Arc::new(VersionId {
                key: store::variant_key(primary, &vary, req),
                validator: format!("n:{}:{nanos}", status.as_u16()),
            }),
            primary: primary.to_string(),
            path_and_query: pq.to_string(),
            len: 0,
            chunk_size: self.cfg.chunk_size,
            content_type: resp_headers
                .get(header::CONTENT_TYPE)
                .map(store::detached)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
            etag,
            last_modified,
            headers,
            digest: None,
            lifetime,
            cc,
            timing: Timing::new(request_time, response_time, &resp_headers),
            ranges: false,
            selecting: vary
                .iter()
                .map(|n| (n.clone(), req.get(n).map(store::detached)))
                .collect(),
            negative: Some(Negative { status, body }),
        });
        self.store
            .primaries
            .insert(
                primary.to_string(),
                Arc::new(PrimaryEntry {
                    vary,
                    pass_until: None,
                }),
            )
            .await;
        self.store
            .metas
            .insert(meta.version.key.clone(), meta.clone())
            .await;
        tracing::debug!(%pq, %status, ?lifetime, "negative response stored");
        Ok(NegativeOutcome::Stored(ProbeOutcome::Stored {
            meta,
            revalidated: false,
        }))
    }

    /// Marks a URL as uncacheable for `hit_for_pass_secs` (Varnish's hit-for-miss): its
    /// requests go to the origin at once instead of queueing behind one another's probes.
    async fn remember_uncacheable(&self, primary: &str) {
        let pass_until = Instant::now() + Duration::from_secs(self.cfg.hit_for_pass_secs);
        self.store
            .primaries
            .insert(
                primary.to_string(),
                Arc::new(PrimaryEntry {
                    vary: Vec::new(),
                    pass_until: Some(pass_until),
                }),
            )
            .await;
    }

    /// The request fields a fill of `primary` forwards besides the configured ones: those
    /// the stored responses' Vary names, which are part of the cache key.
    async fn fill_vary(&self, primary: &str) -> Vec<header::HeaderName> {
        self.store
            .primaries
            .get(primary)
            .await
            .map(|e| e.vary.clone())
            .unwrap_or_default()
    }
}

/// What became of a probe answered with a status other than 200/206.
enum NegativeOutcome {
    Stored(ProbeOutcome),
    Unstored(reqwest::Response),
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

/// The ETag and Last-Modified of a response.
pub(crate) fn validators_of(h: &HeaderMap) -> (Option<String>, Option<SystemTime>) {
    let etag = h
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let last_modified = h
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    (etag, last_modified)
}

/// How the end of a response body is known: `Some(Some(n))` from Content-Length (0 for 204),
/// `Some(None)` from chunked coding or HTTP/2 framing, `None` when only the connection's
/// close ends it (then a truncation cannot be told from the end, and it is not stored).
fn body_length(resp: &reqwest::Response) -> Option<Option<u64>> {
    if resp.status() == StatusCode::NO_CONTENT {
        return Some(Some(0));
    }
    let h = resp.headers();
    if h.contains_key(header::TRANSFER_ENCODING) {
        let chunked = h
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        return chunked.then_some(None);
    }
    if let Some(n) = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Some(Some(n));
    }
    (resp.version() >= http::Version::HTTP_2).then_some(None)
}

enum SmallBody {
    Whole(Bytes),
    /// Longer than the bound: the response with what was read put back in front.
    TooBig(reqwest::Response),
}

/// Reads a body of at most `max` bytes; a broken body is an error. `count`: whether the
/// bytes are counted here (not when the body is read again, from a [`rebuilt`] response).
async fn read_small(
    origin: &OriginClient,
    mut resp: reqwest::Response,
    max: u64,
    count: bool,
) -> Result<SmallBody, FillError> {
    let origin = count.then_some(origin);
    let mut buf = BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(data)) => {
                buf.extend_from_slice(&data);
                if buf.len() as u64 > max {
                    // Counted by whoever relays it.
                    return Ok(SmallBody::TooBig(prepend(resp, buf.freeze())));
                }
            }
            Ok(None) => break,
            Err(e) => {
                if let Some(o) = origin {
                    o.count_bytes(buf.len());
                }
                return Err(FillError::Request(crate::origin::error_chain(&e)));
            }
        }
    }
    if let Some(o) = origin {
        o.count_bytes(buf.len());
    }
    Ok(SmallBody::Whole(buf.freeze()))
}

/// A response with `body` read already, as the origin sent it otherwise.
fn rebuilt(
    status: StatusCode,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
) -> reqwest::Response {
    let mut out = http::Response::new(reqwest::Body::from(body));
    *out.status_mut() = status;
    *out.version_mut() = version;
    *out.headers_mut() = headers;
    reqwest::Response::from(out)
}

/// `resp` with `head`, bytes already read from its body, put back in front of the rest.
fn prepend(resp: reqwest::Response, head: Bytes) -> reqwest::Response {
    let (status, version, headers) = (resp.status(), resp.version(), resp.headers().clone());
    let rest = resp.bytes_stream();
    let body = futures::stream::once(async move { Ok::<_, reqwest::Error>(head) }).chain(rest);
    let mut out = http::Response::new(reqwest::Body::wrap_stream(body));
    *out.status_mut() = status;
    *out.version_mut() = version;
    *out.headers_mut() = headers;
    reqwest::Response::from(out)
}

/// The response a stored negative entry gives: its status, `headers` (the stored fields plus
/// what the HTTP layer adds: Age, Via, Cache-Status), Content-Length and body (none to
/// HEAD). Preconditions are evaluated for 2xx statuses only (RFC 9110 §13.2.1: a server
/// ignores them when its answer would not be 2xx); Range is ignored (it applies to 200).
pub fn replay(
    meta: &ObjectMeta,
    neg: &Negative,
    method: &Method,
    req: &HeaderMap,
    mut headers: HeaderMap,
) -> axum::response::Response {
    let mut status = neg.status;
    let mut body = neg.body.clone();
    if status.is_success() {
        let v = Validators {
            etag: meta.etag.clone(),
            last_modified: meta.last_modified,
        };
        let precondition = cdn_http::conditional::evaluate(method, req, &v);
        if precondition != Precondition::Proceed {
            status = match precondition {
                Precondition::NotModified => StatusCode::NOT_MODIFIED,
                _ => StatusCode::PRECONDITION_FAILED,
            };
            body = Bytes::new();
            headers.remove(header::CONTENT_TYPE);
            headers.remove("content-digest");
        }
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        headers.remove(header::CONTENT_LENGTH);
    } else {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let body = if method == Method::HEAD {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from(body)
    };
    let mut resp = axum::response::Response::new(body);
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// A request whose fills would overdraw its client's amplification budget: forwarded as
/// asked, uncached.
pub fn over_budget(metrics: &NodeMetrics) -> Decision {
    metrics.with(|| metrics::counter!("cdn_edge_amplification_refused_total").increment(1));
    let mut v = Verdict::new(Kind::Pass, Some("miss"));
    v.detail = Some("amplification-budget");
    Decision::Pass { verdict: v }
}

fn gateway_timeout() -> Decision {
    Decision::Fail {
        status: StatusCode::GATEWAY_TIMEOUT,
        verdict: Verdict::new(Kind::Miss, Some("miss")),
        why: "only-if-cached and not in cache".into(),
    }
}

/// The representation's length and whether the origin honoured the range: from the
/// Content-Range of a 206 (which must start where asked), or the Content-Length of a 200.
fn object_length(resp: &reqwest::Response, asked_start: u64) -> Option<(u64, bool)> {
    let h = resp.headers();
    if resp.status() == StatusCode::PARTIAL_CONTENT {
        let (span, complete) = h
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(cdn_http::range::parse_content_range)?;
        (*span.start() == asked_start).then_some(())?;
        return complete.map(|len| (len, true));
    }
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .map(|len| (len, false))
}

/// Reads a probe's body, cutting it into chunks `start_index..end_index` and delivering each
/// as it completes. A short, long or broken body fails the undelivered chunks and drops the
/// metadata, so nothing of it passes for complete.
async fn read_body(
    edge: Arc<Edge>,
    meta: Arc<ObjectMeta>,
    mut resp: reqwest::Response,
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
        match resp.chunk().await {
            Ok(Some(data)) => {
                edge.origin.count_bytes(data.len());
                total += data.len() as u64;
                if total > want_total {
                    break Some(FillError::Mismatch(format!(
                        "body longer than the {want_total} bytes announced"
                    )));
                }
                let mut data = &data[..];
                while !data.is_empty() && index < end_index {
                    let need = chunk_len(index) - buf.len();
                    let take = need.min(data.len());
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
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
            Err(e) => break Some(FillError::Request(crate::origin::error_chain(&e))),
        }
    };
    if let Some(error) = failure {
        tracing::warn!(key = %meta.version.key, %error, "origin body failed: nothing of it is kept");
        edge.metrics
            .with(|| metrics::counter!("cdn_edge_fill_errors_total").increment(1));
        edge.store.metas.invalidate(&meta.version.key).await;
        for i in start_index..index {
            edge.store.chunks.invalidate(&meta.chunk_key(i)).await;
        }
        pending.fail(error);
    }
}
