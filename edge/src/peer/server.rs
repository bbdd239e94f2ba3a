//! The answering side of the peer protocol: accepts QUIC connections (the TLS handshake has
//! already checked the peer's certificate against the cluster CA) and answers each stream.
//! Answers come from the node's store through the narrow [`ChunkSource`] (the peer code
//! knows nothing of the cache); only the owner of a chunk fills it from the origin, and a
//! fill made for a peer asks other peers only cache-only (the runner-up, advertisers), never
//! as owner, so fills cannot loop.
//!
//! A `stream: true` request is answered as the chunk arrives ([`wire::STREAMED`]): from the
//! store, or, for an owner (or top-tier) request, from the node's own fill of it, first byte
//! as soon as the fill has one, so a chunk crosses the tiers in pipeline; PENDING repeats
//! every [`wire::HEARTBEAT`] until then.
//!
//! Only current peers are served. The client certificate's names are read once per
//! connection; every request stream is then checked against the peer set as it is at that
//! moment ([`Peers::identify`]). A node that is not a peer gets [`wire::REFUSED`] before its
//! request is read, whatever the request (get, push or advertise); the refusal is counted in
//! `cdn_edge_peer_refused_total{reason}` and logged (a warning when a connection starts being
//! refused, not one per stream). The connection stays open, so a node added to the set later
//! is served on it without reconnecting, and a removed peer's next request is refused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use http::{HeaderMap, HeaderName, HeaderValue};

use cdn_http::metrics::NodeMetrics;

use super::client::{Advertise, PENDING, PushHeader};
use super::wire::{self, GetRequest, WireError, WireMeta};
use super::{Peers, Refusal, pki};
use crate::fill::FillError;
use crate::store::{ObjectMeta, Store};

/// What the peer server needs of its node, and no more: the store (answers from cache,
/// admission of pushed chunks), and, for a request made to this node as a chunk's owner, a
/// probe and a fill that never ask peers as owner again. The node implements it over its
/// cache; the peer code knows nothing of the cache.
pub trait ChunkSource: Send + Sync + 'static {
    fn store(&self) -> &Store;
    /// The metadata of variant `key` (path and query `path_and_query`, selecting request
    /// fields `req`), probed from the origin; `index` is the chunk the peer wants first.
    fn owner_probe(
        self: Arc<Self>,
        key: String,
        path_and_query: String,
        req: HeaderMap,
        index: u64,
    ) -> BoxFuture<'static, Option<Arc<ObjectMeta>>>;
    /// Chunk `index` of `meta`, from the store or filled.
    fn owner_fill(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxFuture<'static, Option<Bytes>>;
    /// Chunk `index` of `meta` as its bytes arrive: from the store, or from its fill (started
    /// if none is under way); the last byte only once the chunk is complete and checked.
    fn owner_window(
        self: Arc<Self>,
        meta: Arc<ObjectMeta>,
        index: u64,
    ) -> BoxStream<'static, Result<Bytes, Arc<FillError>>>;
}

/// The peer server of one node.
#[derive(Clone)]
pub struct Server {
    /// The node's cache (weak: a node that is gone answers nothing).
    pub source: Weak<dyn ChunkSource>,
    pub peers: Weak<Peers>,
    pub metrics: Arc<NodeMetrics>,
    pub chunk_size: u64,
    /// Field names read for freshness besides Cache-Control (for pushed metadata).
    pub targeted_cache_control: Vec<String>,
}

/// A live node for one stream: the server's settings with its source and peers held.
struct Node {
    server: Server,
    source: Arc<dyn ChunkSource>,
    peers: Arc<Peers>,
}

/// Accepts peer connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, server: Server) {
    while let Some(incoming) = endpoint.accept().await {
        let server = server.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "peer connection refused");
                    server.metrics.with(|| {
                        metrics::counter!("cdn_edge_peer_handshake_failures_total").increment(1)
                    });
                    return;
                }
            };
            let caller = Arc::new(Caller {
                names: pki::peer_names(&conn),
                remote,
                refused: AtomicBool::new(false),
            });
            tracing::debug!(%remote, names = ?caller.names, "peer connection");
            loop {
                let (send, recv) = match conn.accept_bi().await {
                    Ok(s) => s,
                    Err(_) => return,
                };
                let (Some(source), Some(peers)) = (server.source.upgrade(), server.peers.upgrade())
                else {
                    return;
                };
                let node = Node {
                    server: server.clone(),
                    source,
                    peers,
                };
                let caller = caller.clone();
                tokio::spawn(async move {
                    if let Err(e) = stream(&node, &caller, send, recv).await {
                        tracing::debug!(%remote, error = %e, "peer stream failed");
                    }
                });
            }
        });
    }
}

/// The node at the other end of a connection, as its certificate names it.
struct Caller {
    names: Vec<String>,
    remote: SocketAddr,
    /// Its last stream was refused (so a warning is logged once per change, not per stream).
    refused: AtomicBool,
}

/// Answers one request stream if the caller is a current peer, else refuses it.
async fn stream(
    edge: &Node,
    caller: &Caller,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), WireError> {
    let peers = &edge.peers;
    match peers.identify(&caller.names) {
        Ok(name) => {
            if caller.refused.swap(false, Ordering::Relaxed) {
                tracing::info!(peer = %name, remote = %caller.remote, "peer is served again");
            }
            answer(edge, peers, &name, send, recv).await
        }
        Err(refusal) => {
            refuse(edge, caller, &refusal);
            let body = wire::Refusal {
                reason: refusal.reason().into(),
                message: refusal.to_string(),
            };
            wire::refuse(&mut send, &mut recv, &body).await?;
            let _ = send.stopped().await;
            Ok(())
        }
    }
}

fn refuse(edge: &Node, caller: &Caller, refusal: &Refusal) {
    let reason = refusal.reason();
    edge.server
        .metrics
        .with(|| metrics::counter!("cdn_edge_peer_refused_total", "reason" => reason).increment(1));
    if !caller.refused.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            names = ?caller.names,
            remote = %caller.remote,
            reason,
            "peer request refused: the certificate names no node of this node's peer set"
        );
    } else {
        tracing::debug!(names = ?caller.names, reason, "peer request refused");
    }
}

/// Answers a request of the current peer `from`.
async fn answer(
    edge: &Node,
    peers: &Peers,
    from: &str,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), WireError> {
    let mut head = [0u8; 1];
    recv.read_exact(&mut head).await?;
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > wire::MAX_HEADER {
        return Err(WireError::TooLarge(len as u64));
    }
    let mut json = vec![0u8; len];
    recv.read_exact(&mut json).await?;
    let bad = |e: serde_json::Error| WireError::Bad(e.to_string());
    match head[0] {
        wire::OP_GET => {
            let req: GetRequest = serde_json::from_slice(&json).map_err(bad)?;
            // Tier hook: a lower tier's request is an owner request on a top-tier node only.
            let req = super::tier::on_request(peers, from, req);
            get(edge, req, &mut send).await?;
        }
        wire::OP_PUSH => {
            let header: PushHeader = serde_json::from_slice(&json).map_err(bad)?;
            let admitted = match wire::read_chunk(&mut recv, edge.server.chunk_size).await {
                Ok(chunk) => admit(edge, header, chunk).await,
                Err(WireError::Digest) => {
                    tracing::warn!("pushed chunk failed its digest: dropped");
                    edge.server.metrics.with(|| {
                        metrics::counter!("cdn_edge_peer_digest_mismatches_total").increment(1)
                    });
                    false
                }
                Err(e) => return Err(e),
            };
            let status = if admitted { wire::FOUND } else { wire::MISS };
            wire::write_tag(&mut send, status).await?;
        }
        wire::OP_ADVERTISE => {
            let msg: Advertise = serde_json::from_slice(&json).map_err(bad)?;
            if msg.from != from {
                tracing::debug!(peer = %from, claimed = %msg.from, "advertisement recorded under the certificate's name");
            }
            peers.advertised_by(from, msg.keys);
            wire::write_tag(&mut send, wire::FOUND).await?;
        }
        op => return Err(WireError::Bad(format!("unknown op {op}"))),
    }
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}

/// Awaits `work`; with `heartbeat`, repeats PENDING every [`wire::HEARTBEAT`] meanwhile (the
/// asker takes silence for a dead node).
async fn with_heartbeats<T>(
    send: &mut quinn::SendStream,
    heartbeat: bool,
    work: impl std::future::Future<Output = T>,
) -> Result<T, WireError> {
    if !heartbeat {
        return Ok(work.await);
    }
    let mut work = std::pin::pin!(work);
    let mut tick = tokio::time::interval(wire::HEARTBEAT);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            v = &mut work => return Ok(v),
            _ = tick.tick() => wire::write_tag(send, PENDING).await?,
        }
    }
}

async fn get(edge: &Node, req: GetRequest, send: &mut quinn::SendStream) -> Result<(), WireError> {
    let cached = edge.source.store().lookup(&req.key).await.filter(|m| {
        req.validator
            .as_ref()
            .is_none_or(|v| *v == m.version.validator)
    });
    let cached = match cached {
        Some(m) => Some(m),
        None if req.owner => adopt(edge, &req).await,
        None => None,
    };
    let mut pending_sent = false;
    let meta = match cached {
        Some(m) => Some(m),
        None if req.owner => {
            wire::write_tag(send, PENDING).await?;
            pending_sent = true;
            let mut headers = HeaderMap::new();
            for (k, v) in &req.selecting {
                if let (Ok(k), Ok(v)) = (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    headers.append(k, v);
                }
            }
            let probe = edge.source.clone().owner_probe(
                req.key.clone(),
                req.path_and_query.clone(),
                headers,
                req.index,
            );
            with_heartbeats(send, req.stream, probe).await?.filter(|m| {
                req.validator
                    .as_ref()
                    .is_none_or(|v| *v == m.version.validator)
            })
        }
        None => None,
    };
    let Some(meta) =
        meta.filter(|m| m.chunk_size == edge.server.chunk_size && req.index < m.chunk_count())
    else {
        return wire::write_tag(send, wire::MISS).await;
    };
    let key = meta.chunk_key(req.index);
    if req.stream {
        return get_streamed(edge, &req, meta, pending_sent, send).await;
    }
    let chunk = match edge.source.store().chunk(&key).await {
        Some(c) => Some(c),
        None if req.owner => {
            if !pending_sent {
                wire::write_tag(send, PENDING).await?;
            }
            edge.source
                .clone()
                .owner_fill(meta.clone(), req.index)
                .await
        }
        None => None,
    };
    let Some(chunk) = chunk else {
        return wire::write_tag(send, wire::MISS).await;
    };
    wire::write_json(send, wire::FOUND, &WireMeta::from_meta(&meta)).await?;
    let corrupt = edge.peers.corrupt();
    wire::write_chunk(send, &chunk, corrupt).await?;
    edge.server.metrics.with(|| {
        metrics::counter!("cdn_edge_peer_bytes_total", "direction" => "out")
            .increment(chunk.len() as u64)
    });
    Ok(())
}

/// The [`wire::STREAMED`] answer: the stored chunk, or (owner requests) the node's fill of it
/// as it arrives. The answer starts at the fill's first byte (PENDING heartbeats until
/// then); a fill that fails before it is a MISS, after it a reset stream.
async fn get_streamed(
    edge: &Node,
    req: &GetRequest,
    meta: Arc<ObjectMeta>,
    pending_sent: bool,
    send: &mut quinn::SendStream,
) -> Result<(), WireError> {
    let (s, e) = meta.chunk_span(req.index);
    let len = e - s + 1;
    let mut pieces = match edge.source.store().chunk(&meta.chunk_key(req.index)).await {
        Some(c) => futures::stream::once(async move { Ok(c) }).boxed(),
        None if req.owner => {
            if !pending_sent {
                wire::write_tag(send, PENDING).await?;
            }
            edge.source.clone().owner_window(meta.clone(), req.index)
        }
        None => return wire::write_tag(send, wire::MISS).await,
    };
    let first = if len == 0 {
        Bytes::new()
    } else {
        match with_heartbeats(send, true, pieces.next()).await? {
            Some(Ok(b)) => b,
            Some(Err(e)) => {
                tracing::debug!(key = %req.key, index = req.index, error = %e, "fill for a peer failed");
                return wire::write_tag(send, wire::MISS).await;
            }
            None => return wire::write_tag(send, wire::MISS).await,
        }
    };
    wire::write_json(send, wire::STREAMED, &WireMeta::from_meta(&meta)).await?;
    let corrupt = edge.peers.corrupt();
    let all = futures::stream::once(async move { Ok::<_, Arc<FillError>>(first) })
        .chain(pieces)
        .boxed();
    let sent = wire::write_streamed(send, len, all, corrupt).await?;
    edge.server.metrics.with(|| {
        metrics::counter!("cdn_edge_peer_bytes_total", "direction" => "out").increment(sent)
    });
    Ok(())
}

/// For an owner request without metadata here: the asker's metadata of the version it
/// asks for, installed as a pushed chunk's is (the origin's validators and timing), when no
/// version of the object is held. The chunk is then filled by this node's own fill, which
/// its own viewers' requests join: one origin request, not a probe beside a fill.
async fn adopt(edge: &Node, req: &GetRequest) -> Option<Arc<ObjectMeta>> {
    let wire = req.meta.clone()?;
    if wire.key != req.key || req.validator.as_ref() != Some(&wire.validator) {
        return None;
    }
    let meta = wire.into_meta(&edge.server.targeted_cache_control)?;
    if meta.chunk_size != edge.server.chunk_size || meta.negative.is_some() {
        return None;
    }
    if edge.source.store().lookup(&req.key).await.is_some() {
        return None;
    }
    let meta = Arc::new(meta);
    edge.source.store().install(&meta).await;
    Some(meta)
}

/// Admits a pushed chunk through the normal cache admission, keeping the origin's validators
/// and freshness; a push of another version than the one held is refused.
async fn admit(edge: &Node, header: PushHeader, chunk: Bytes) -> bool {
    let Some(meta) = header.meta.into_meta(&edge.server.targeted_cache_control) else {
        return false;
    };
    if meta.chunk_size != edge.server.chunk_size || header.index >= meta.chunk_count() {
        return false;
    }
    let (s, e) = meta.chunk_span(header.index);
    if chunk.len() as u64 != e - s + 1 {
        return false;
    }
    let meta = match edge.source.store().lookup(&meta.version.key).await {
        Some(held) if held.version.validator != meta.version.validator => return false,
        Some(held) => held,
        None => {
            let meta = Arc::new(meta);
            edge.source.store().install(&meta).await;
            meta
        }
    };
    edge.source
        .store()
        .put_chunk(meta.chunk_key(header.index), chunk)
        .await;
    true
}
