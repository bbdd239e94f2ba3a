//! Peer replication over QUIC (quinn, mutual TLS with the cluster CA).
//!
//! - **Sibling fill.** On a miss, an edge asks the peer of its own region that owns the chunk
//!   by rendezvous hashing (as Traffic Server's peering ring does); the owner answers from its
//!   cache or fills from the origin. When this node is the owner itself, it first asks the
//!   *runner-up* sibling, cache only: the one that would own the chunk without this node, so
//!   with rendezvous hashing the one that owned it before this node joined. A new edge warms
//!   from its region rather than from the origin. Then peers of other regions that advertised
//!   the object (cache only), then the origin. Requests a peer makes on another's behalf ask
//!   peers only cache-only, never as owner, so there are no fetch loops.
//! - **Hot push.** Requests per object are counted over a sliding window; an object that
//!   becomes hot is pushed, rate-limited, to the push peers and advertised to every peer.
//! - **Bounded tables.** The tables keyed by object key (hot windows, pushed objects, peers'
//!   adverts) are weighed in bytes, key plus [`TABLE_ENTRY_OVERHEAD`], each within
//!   `peer_table_bytes`: viewers choose URLs and peers send adverts, so an entry count alone
//!   would not bound their memory. [`Peers::table_sizes`] reports them (`/metrics`).
//! - **Membership.** The peer set can change at runtime ([`Peers::set_peers`]): from the
//!   config file when it changes or on SIGHUP, and from DNS (`peers_dns`, [`membership`]). Requests work on a snapshot
//!   ([`PeerSet`]); a peer that stays keeps its connection and push budget, and a removed
//!   peer's connection closes once its last request ends. Adverts are kept by peer name.
//! - **Admission.** The TLS handshake admits any node the cluster CA signed; the endpoint then
//!   serves only its *current* peers. Every request stream (get, push, advertise) is checked:
//!   the names in the client certificate ([`pki::peer_names`]) must name exactly one member of
//!   the set ([`Peers::identify`]), else the stream gets a [`wire::REFUSED`] answer, the
//!   refusal is counted (`cdn_edge_peer_refused_total{reason}`) and logged. Because the check
//!   is per stream, a removed peer's open connection stops being served at once and a
//!   just-added peer is served on the connection it already has. Advertisements are recorded
//!   under the authenticated name, not the one the message claims. The dialling side checks
//!   the answering node's certificate against the name it dialled ([`pki::client_config`]).
//! - **Integrity.** Every chunk travels with its length and SHA-256; frames are bounded.
//!
//! Modules: [`pki`] certificates and TLS configs, [`wire`] frames, [`client`] one peer,
//! [`server`] the endpoint's answers (over the node's [`server::ChunkSource`]), `push` hot
//! objects (window, push, adverts) and the bounded tables; this file the peer set, owner
//! selection and fetches from peers.

pub mod client;
pub mod membership;
pub mod pki;
mod push;
pub mod server;
pub mod tier;
pub mod wire;

/// The QUIC implementation, for callers that build endpoints of their own (tests).
pub use quinn;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use cdn_http::metrics::NodeMetrics;
use moka::policy::EvictionPolicy;

use crate::config::{EdgeConfig, PeerConfig};
use crate::fill::{FillError, FillSource};
use crate::growing::Growing;
use crate::store::ObjectMeta;
use client::{PeerBody, PeerClient};
use wire::{GetRequest, WireMeta};

pub use push::{TABLE_ENTRY_OVERHEAD, TableSize, TokenBucket, Window};
use push::{push_flags, table};

/// One peer of the current set: its configuration as last given, its client (the QUIC
/// connection) and its push budget.
pub struct Member {
    /// As last configured. `client.cfg` keeps the name and address the client was built
    /// with; a region or push change keeps the client, so read those two here.
    pub cfg: PeerConfig,
    pub client: Arc<PeerClient>,
    bucket: Arc<TokenBucket>,
    /// Hot objects are pushed to it.
    pub push: bool,
}

/// A snapshot of the peer set, in configured order (nearest first). Replaced whole by
/// [`Peers::set_peers`]; a request keeps the snapshot it started with.
#[derive(Default)]
pub struct PeerSet {
    members: Vec<Member>,
}

impl PeerSet {
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn get(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.cfg.name == name)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

/// What [`Peers::set_peers`] did, by peer name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerChange {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Same name, new address (a new connection), region or push setting.
    pub changed: Vec<String>,
}

impl PeerChange {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

/// A peer list [`Peers::set_peers`] refuses (the config check refuses the same).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerSetError {
    #[error("peer `{0}` is this node")]
    SelfPeer(String),
    #[error("peer `{0}` is listed twice")]
    Duplicate(String),
}

/// Why the endpoint refused a request (the `reason` label of `cdn_edge_peer_refused_total`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The certificate names no member of the current peer set.
    #[error("{names:?} is not a peer of this node")]
    Unknown { names: Vec<String> },
    /// The certificate names more than one member: it cannot say which one is asking.
    #[error("{names:?} names more than one peer of this node")]
    Ambiguous { names: Vec<String> },
    /// The certificate carries no name (no DNS SAN, no common name) or could not be read.
    #[error("the certificate names no node")]
    NoName,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unknown { .. } => "unknown-peer",
            Refusal::Ambiguous { .. } => "ambiguous-name",
            Refusal::NoName => "no-name",
        }
    }
}

/// What every [`PeerClient`] is built with.
struct ClientSettings {
    first_byte: Duration,
    fill_timeout: Duration,
    chunk_size: u64,
    push_bytes_per_sec: u64,
}

/// This node's view of its peers.
pub struct Peers {
    pub name: String,
    pub region: String,
    pub endpoint: quinn::Endpoint,
    /// Never held across an await: readers clone the `Arc` out.
    set: RwLock<Arc<PeerSet>>,
    /// What the set is made of: configured peers and peers found in DNS ([`membership`]).
    sources: parking_lot::Mutex<membership::Sources>,
    settings: ClientSettings,
    /// Object key → names of the peers that advertised it. The three tables keyed by object
    /// key are bounded in bytes ([`table`]), each by `peer_table_bytes`.
    advertised: moka::sync::Cache<String, Vec<String>>,
    /// Object key → its request count over the sliding window.
    hot: moka::sync::Cache<String, Arc<Mutex<Window>>>,
    /// Objects pushed lately (not pushed again while they stay here).
    pushed: moka::sync::Cache<String, ()>,
    table_budget: u64,
    hot_threshold: f64,
    hot_window: Duration,
    /// Until then, chunks this node owns are first asked of their previous owner.
    warm_until: Instant,
    /// Upper tier: names of the peers this node asks before the origin ([`tier`]); empty
    /// when this node is top tier.
    parents: Vec<String>,
    chunk_size: u64,
    /// Test hook (feature `test-hooks`, which the `cdn` binary is never built with): flip one
    /// byte of every chunk this node sends to a peer, after its digest is taken.
    #[cfg(feature = "test-hooks")]
    corrupt: std::sync::atomic::AtomicBool,
    metrics: Arc<NodeMetrics>,
    /// This node's `targeted_cache_control`: a peer's metadata is read as this node reads
    /// an origin response.
    pub targets: Vec<String>,
}

/// The one member (by configured name) a certificate's `names` name; see [`Peers::identify`].
fn identify<'a>(
    members: impl Iterator<Item = &'a str>,
    names: &[String],
) -> Result<&'a str, Refusal> {
    if names.is_empty() {
        return Err(Refusal::NoName);
    }
    let mut found = members.filter(|m| names.iter().any(|n| n.eq_ignore_ascii_case(m)));
    match (found.next(), found.next()) {
        (Some(m), None) => Ok(m),
        (None, _) => Err(Refusal::Unknown {
            names: names.to_vec(),
        }),
        (Some(_), Some(_)) => Err(Refusal::Ambiguous {
            names: names.to_vec(),
        }),
    }
}

/// Rendezvous score of `name` for chunk `index` of `key`.
fn score(name: &str, key: &str, index: u64) -> u64 {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.update(index.to_le_bytes());
    let d = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first)
}

/// Who fills a chunk in this node's region.
enum Owner<'a> {
    /// A sibling owns it.
    Peer(&'a Member),
    /// This node owns it; the runner-up is the sibling that would own it without this node.
    Me { runner_up: Option<&'a Member> },
}

impl Peers {
    /// Binds the QUIC endpoint; `None` when the node has no `peer_listen`.
    pub fn new(cfg: &EdgeConfig, metrics: Arc<NodeMetrics>) -> anyhow::Result<Option<Arc<Self>>> {
        let (Some(listen), Some(tls)) = (cfg.peer_listen, cfg.peer_tls.as_ref()) else {
            return Ok(None);
        };
        let server = pki::server_config(tls, cfg.chunk_size)?;
        let mut endpoint = quinn::Endpoint::server(server, listen)
            .map_err(|e| anyhow::anyhow!("peer endpoint cannot listen on udp {listen}: {e}"))?;
        endpoint.set_default_client_config(pki::client_config(tls, cfg.chunk_size)?);
        let window = Duration::from_secs(cfg.hot_window_secs.max(1));
        let peers = Arc::new(Peers {
            name: cfg.name.clone(),
            region: cfg.region.clone(),
            endpoint,
            set: RwLock::default(),
            sources: Default::default(),
            settings: ClientSettings {
                first_byte: Duration::from_millis(cfg.peer_first_byte_timeout_ms),
                fill_timeout: Duration::from_millis(cfg.origin_read_timeout_ms.max(1000) * 2),
                chunk_size: cfg.chunk_size,
                push_bytes_per_sec: cfg.push_bytes_per_sec,
            },
            // Adverts and pushes: the newest win (LRU). Hot windows: TinyLFU, so a flood of
            // one-off URLs does not push out the windows of objects requested often.
            advertised: table(
                cfg.peer_table_bytes,
                EvictionPolicy::lru(),
                |names: &Vec<String>| names.iter().map(|n| n.len()).sum(),
            )
            .time_to_live(window * 30)
            .build(),
            hot: table(cfg.peer_table_bytes, EvictionPolicy::tiny_lfu(), |_| 0)
                .time_to_idle(window * 2)
                .build(),
            pushed: table(cfg.peer_table_bytes, EvictionPolicy::lru(), |_| 0)
                .time_to_live(window * 30)
                .build(),
            table_budget: cfg.peer_table_bytes,
            hot_threshold: cfg.hot_threshold.max(1) as f64,
            hot_window: window,
            warm_until: Instant::now() + Duration::from_secs(cfg.peer_warmup_secs),
            parents: cfg.parents.clone(),
            chunk_size: cfg.chunk_size,
            #[cfg(feature = "test-hooks")]
            corrupt: std::sync::atomic::AtomicBool::new(false),
            metrics,
            targets: cfg.targeted_cache_control.clone(),
        });
        peers.set_peers(cfg.peers.clone())?;
        membership::start(cfg, &peers, peers.metrics.clone())?;
        Ok(Some(peers))
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The current peer set (a snapshot: later changes do not show in it). `Edge::cfg.peers`
    /// stays the list the node started with; this is the live one.
    pub fn peer_set(&self) -> Arc<PeerSet> {
        self.set.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Which current peer a client certificate with `names` ([`pki::peer_names`]) belongs to:
    /// its configured name when exactly one member is named (DNS names compare ASCII
    /// case-insensitively, as TLS compares them). Checked against the set as it is now, so a
    /// connection's standing follows [`Peers::set_peers`].
    pub fn identify(&self, names: &[String]) -> Result<String, Refusal> {
        let set = self.peer_set();
        identify(set.members.iter().map(|m| m.cfg.name.as_str()), names).map(String::from)
    }

    /// The clients of the current peers, in configured order.
    pub fn clients(&self) -> Vec<Arc<PeerClient>> {
        self.peer_set()
            .members
            .iter()
            .map(|m| m.client.clone())
            .collect()
    }

    /// Replaces the peer set with `peers` (the configured and DNS peers merged:
    /// [`Peers::set_peers`] and [`Peers::set_discovered_peers`] call it). A peer whose name
    /// and address are unchanged keeps its client (its QUIC connection) and push budget; new
    /// peers get new clients; a removed peer's connection is closed when the last request
    /// using it ends. Push targets follow the same rule as at start. In-flight requests
    /// finish on the set they started with.
    fn replace_set(&self, peers: Vec<PeerConfig>) -> Result<PeerChange, PeerSetError> {
        for (i, p) in peers.iter().enumerate() {
            if p.name == self.name {
                return Err(PeerSetError::SelfPeer(p.name.clone()));
            }
            if peers[..i].iter().any(|q| q.name == p.name) {
                return Err(PeerSetError::Duplicate(p.name.clone()));
            }
        }
        let push = push_flags(&self.region, &peers);
        let mut slot = self.set.write().unwrap_or_else(|p| p.into_inner());
        let old = slot.clone();
        let mut change = PeerChange::default();
        let members: Vec<Member> = peers
            .into_iter()
            .zip(push)
            .map(|(cfg, push)| {
                let before = old.get(&cfg.name);
                match before {
                    Some(m) if m.cfg.addr == cfg.addr => {
                        if m.cfg != cfg {
                            change.changed.push(cfg.name.clone());
                        }
                        Member {
                            cfg,
                            client: m.client.clone(),
                            bucket: m.bucket.clone(),
                            push,
                        }
                    }
                    _ => {
                        match before {
                            Some(_) => change.changed.push(cfg.name.clone()),
                            None => change.added.push(cfg.name.clone()),
                        }
                        self.member(cfg, push)
                    }
                }
            })
            .collect();
        change.removed = old
            .members
            .iter()
            .filter(|m| !members.iter().any(|n| n.cfg.name == m.cfg.name))
            .map(|m| m.cfg.name.clone())
            .collect();
        let count = members.len();
        *slot = Arc::new(PeerSet { members });
        drop(slot);
        self.metrics.with(|| {
            metrics::gauge!("cdn_edge_peers").set(count as f64);
            for name in &change.removed {
                metrics::gauge!("cdn_edge_peer_connected", "peer" => name.clone()).set(0.0);
            }
        });
        if !change.is_empty() {
            tracing::debug!(?change, peers = count, "peer set replaced");
        }
        Ok(change)
    }

    fn member(&self, cfg: PeerConfig, push: bool) -> Member {
        let s = &self.settings;
        Member {
            client: Arc::new(PeerClient::new(
                cfg.clone(),
                self.endpoint.clone(),
                s.first_byte,
                s.fill_timeout,
                s.chunk_size,
                self.metrics.clone(),
            )),
            bucket: Arc::new(TokenBucket::per_second(s.push_bytes_per_sec)),
            cfg,
            push,
        }
    }

    /// Rendezvous hashing of chunk `index` of `key` over this node and its region's peers.
    fn rank<'a>(&self, set: &'a PeerSet, key: &str, index: u64) -> Owner<'a> {
        let mut best: Option<(u64, &Member)> = None;
        for m in set.members.iter().filter(|m| m.cfg.region == self.region) {
            let s = score(&m.cfg.name, key, index);
            if best.is_none_or(|(b, _)| s > b) {
                best = Some((s, m));
            }
        }
        match best {
            Some((s, m)) if s > score(&self.name, key, index) => Owner::Peer(m),
            best => Owner::Me {
                runner_up: best.map(|(_, m)| m),
            },
        }
    }

    /// The same-region peer that owns chunk `index` of `key`, or `None` when this node does.
    pub fn owner(&self, key: &str, index: u64) -> Option<Arc<PeerClient>> {
        match self.rank(&self.peer_set(), key, index) {
            Owner::Peer(m) => Some(m.client.clone()),
            Owner::Me { .. } => None,
        }
    }

    /// When this node owns chunk `index` of `key`: the same-region peer that would own it
    /// without this node (with rendezvous hashing, its owner before this node joined).
    /// `None` when a peer owns it or the region has no other node.
    pub fn runner_up(&self, key: &str, index: u64) -> Option<Arc<PeerClient>> {
        match self.rank(&self.peer_set(), key, index) {
            Owner::Me { runner_up } => runner_up.map(|m| m.client.clone()),
            Owner::Peer(_) => None,
        }
    }

    /// Peers of other regions that advertised `key`, nearest (first listed) first.
    fn advertisers(&self, set: &PeerSet, key: &str) -> Vec<Arc<PeerClient>> {
        let names = self.advertised.get(key).unwrap_or_default();
        set.members
            .iter()
            .filter(|m| m.cfg.region != self.region && names.contains(&m.cfg.name))
            .map(|m| m.client.clone())
            .collect()
    }

    fn count(&self, result: &'static str, role: Role) {
        self.metrics.with(|| {
            metrics::counter!("cdn_edge_peer_fetches_total", "result" => result).increment(1);
            if role == Role::RunnerUp {
                metrics::counter!("cdn_edge_peer_runner_up_fetches_total", "result" => result)
                    .increment(1);
            }
            // Tier hook: fetches from the upper tier are also counted on their own.
            if role == Role::Parent {
                tier::count_fetch(result);
            }
        });
    }

    /// Asks the owner (or, when this node owns the chunk, the runner-up, cache only), then
    /// advertisers, for chunk `index` of an object. `validator` is the version the caller
    /// holds (a peer's other version is no use).
    async fn ask(&self, req: GetRequest, read: Read<'_>) -> Option<Found> {
        let set = self.peer_set();
        let mut candidates: Vec<(Arc<PeerClient>, Role)> = Vec::new();
        match self.rank(&set, &req.key, req.index) {
            Owner::Peer(m) => candidates.push((m.client.clone(), Role::Owner)),
            Owner::Me { runner_up: Some(m) } if Instant::now() < self.warm_until => {
                candidates.push((m.client.clone(), Role::RunnerUp))
            }
            Owner::Me { .. } => {}
        }
        // Tier hook: the upper tier comes after the region, before advertisers.
        candidates.extend(self.parents_for(&set, &req.key, req.index));
        candidates.extend(
            self.advertisers(&set, &req.key)
                .into_iter()
                .map(|c| (c, Role::Advertiser)),
        );
        drop(set);
        self.try_in_order(&req, candidates, read).await
    }

    /// Asks `candidates` in order for `req` until one has the chunk. A parent is asked only
    /// while no parent has answered: the next one takes the role of one that failed
    /// (unreachable, refused, timed out, its streamed answer broken), not of one that
    /// answered a miss. With [`Read::Head`] the first answer's body is left to the caller
    /// (it reads it as it arrives); with [`Read::Into`] it is read here, into the sink.
    async fn try_in_order(
        &self,
        req: &GetRequest,
        candidates: Vec<(Arc<PeerClient>, Role)>,
        read: Read<'_>,
    ) -> Option<Found> {
        let mut parent_answered = false;
        for (peer, role) in candidates {
            if role == Role::Parent && parent_answered {
                continue;
            }
            let r = GetRequest {
                owner: role == Role::Owner,
                tier: role == Role::Parent,
                stream: true,
                ..req.clone()
            };
            let answer = peer.get(&r, role == Role::Parent).await;
            let mut answered = answer.is_ok();
            match answer {
                Ok(Some((meta, body))) => {
                    let same_version = req.validator.as_ref().is_none_or(|v| *v == meta.validator);
                    let fits = meta.key == req.key
                        && meta.chunk_size == self.chunk_size
                        && same_version
                        && span_len(&meta, req.index) == Some(body.len());
                    if !fits {
                        self.count("miss", role);
                    } else {
                        match read {
                            Read::Head => {
                                self.count("found", role);
                                return Some(Found::Head(Box::new((meta, body))));
                            }
                            Read::Into(sink) => match body.read_into(sink.map(|g| &**g)).await {
                                Ok(bytes) => {
                                    self.count("found", role);
                                    return Some(Found::Whole(bytes));
                                }
                                Err(e) => {
                                    // A broken answer: whatever it pushed is dropped, and a
                                    // parent's role moves on as if it had not answered.
                                    if let Some(g) = sink {
                                        g.restart();
                                    }
                                    answered = false;
                                    self.count_error(&peer, role, &e);
                                }
                            },
                        }
                    }
                }
                Ok(None) => self.count("miss", role),
                Err(e) => self.count_error(&peer, role, &e),
            }
            parent_answered |= role == Role::Parent && answered;
        }
        None
    }

    fn count_error(&self, peer: &PeerClient, role: Role, e: &wire::WireError) {
        match e {
            // The body counted the mismatch itself (`PeerBody::next`).
            wire::WireError::Digest => self.count("digest-mismatch", role),
            wire::WireError::Refused(_) => self.count("not-a-peer", role),
            e => {
                tracing::debug!(peer = %peer.cfg.name, error = %e, "peer fetch failed");
                self.count("error", role);
            }
        }
    }

    /// For a probe: metadata from a peer, if one has the object, and the chunk at `index`
    /// as it arrives (the caller stores it once it is complete and checked).
    pub async fn fetch_object(
        &self,
        key: &str,
        path_and_query: &str,
        req: &HeaderMap,
        index: u64,
    ) -> Option<(ObjectMeta, PeerBody)> {
        let found = self
            .ask(probe_request(key, path_and_query, req, index), Read::Head)
            .await;
        self.object_from(found, index)
    }

    /// A peer's answer to a probe as metadata and the body of the chunk at `index`, if
    /// they fit.
    fn object_from(&self, found: Option<Found>, index: u64) -> Option<(ObjectMeta, PeerBody)> {
        let Some(Found::Head(head)) = found else {
            return None;
        };
        let (meta, body) = *head;
        let meta = meta.into_meta(&self.targets)?;
        let (s, e) = meta.chunk_span(index);
        (index < meta.chunk_count() && body.len() == e - s + 1).then_some((meta, body))
    }
}

/// How a fetch from peers takes the chunk's bytes.
#[derive(Clone, Copy)]
enum Read<'a> {
    /// The answer's metadata and body as soon as it starts (a probe reads the body itself).
    Head,
    /// The whole chunk, checked, its bytes pushed into the sink as they arrive.
    Into(Option<&'a Arc<Growing>>),
}

/// A peer's answer.
enum Found {
    Head(Box<(WireMeta, PeerBody)>),
    Whole(Bytes),
}

/// The length of chunk `index` of the object `meta` describes, if it has one.
fn span_len(meta: &WireMeta, index: u64) -> Option<u64> {
    let start = index.checked_mul(meta.chunk_size)?;
    if start >= meta.len {
        return None;
    }
    Some(meta.len.min(start.checked_add(meta.chunk_size)?) - start)
}

/// The request a probe sends to peers: no validator yet, the asker's content-negotiation
/// fields.
fn probe_request(key: &str, path_and_query: &str, req: &HeaderMap, index: u64) -> GetRequest {
    let selecting = req
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .filter(|(k, _)| k.starts_with("accept") || k == "origin")
        .collect();
    GetRequest {
        key: key.to_string(),
        validator: None,
        index,
        owner: false,
        tier: false,
        stream: true,
        meta: None,
        path_and_query: path_and_query.to_string(),
        selecting,
    }
}

/// Which peer a request goes to, for metrics and the `owner` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The same-region owner: may fill from the origin.
    Owner,
    /// This node owns the chunk; the sibling that owned it before (cache only).
    RunnerUp,
    /// A peer of another region that advertised the object (cache only).
    Advertiser,
    /// One of this node's `parents` (upper tier, [`tier`]): fills if it is top tier.
    Parent,
}

/// The peers as a fill source: owner (or runner-up), then advertisers.
pub struct PeerSource(pub Arc<Peers>);

impl FillSource for PeerSource {
    fn name(&self) -> &'static str {
        "peer"
    }

    fn fetch_chunk(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Result<Bytes, FillError>> {
        self.fetch(meta, index, None)
    }

    fn fetch_chunk_into(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
        sink: Arc<Growing>,
    ) -> BoxFuture<'static, Result<Bytes, FillError>> {
        self.fetch(meta, index, Some(sink))
    }
}

impl PeerSource {
    fn fetch(
        &self,
        meta: Arc<ObjectMeta>,
        index: u64,
        sink: Option<Arc<Growing>>,
    ) -> BoxFuture<'static, Result<Bytes, FillError>> {
        let peers = self.0.clone();
        async move {
            let req = GetRequest {
                key: meta.version.key.clone(),
                validator: Some(meta.version.validator.clone()),
                index,
                owner: false,
                tier: false,
                stream: true,
                meta: Some(WireMeta::from_meta(&meta)),
                path_and_query: meta.path_and_query.clone(),
                selecting: meta
                    .selecting
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((n.to_string(), v.as_ref()?.to_str().ok()?.to_string()))
                    })
                    .collect(),
            };
            match peers.ask(req, Read::Into(sink.as_ref())).await {
                Some(Found::Whole(chunk)) => Ok(chunk),
                _ => Err(FillError::Request("no peer had the chunk".into())),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificate_must_name_exactly_one_current_peer() {
        let members = ["a1", "b1", "B1"];
        let id = |names: &[&str]| {
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            identify(members[..2].iter().copied(), &names).map_err(|e| e.reason())
        };
        assert_eq!(id(&["a1"]), Ok("a1"));
        // DNS names compare case-insensitively; the configured spelling is the identity.
        assert_eq!(id(&["A1"]), Ok("a1"));
        // Other names on the certificate do not matter.
        assert_eq!(id(&["a1.cdn.example", "a1"]), Ok("a1"));
        assert_eq!(id(&["c1"]), Err("unknown-peer"));
        assert_eq!(id(&["*.example", "a1.cdn.example"]), Err("unknown-peer"));
        assert_eq!(id(&[]), Err("no-name"));
        assert_eq!(id(&["a1", "b1"]), Err("ambiguous-name"));
        let names = vec!["b1".to_string()];
        assert_eq!(
            identify(members.iter().copied(), &names).map_err(|e| e.reason()),
            Err("ambiguous-name")
        );
    }
}
