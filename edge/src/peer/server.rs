//! The answering side of the peer protocol: accepts QUIC connections (the TLS handshake has
//! already checked the peer's certificate against the cluster CA) and answers each stream.
//! Answers come from the cache; only the owner of a chunk fills it from the origin, and a
//! fill made for a peer asks other peers only cache-only (the runner-up, advertisers), never
//! as owner, so fills cannot loop.
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

use http::{HeaderMap, HeaderName, HeaderValue};

use super::client::{Advertise, PENDING, PushHeader};
use super::wire::{self, GetRequest, WireError, WireMeta};
use super::{Peers, Refusal, pki};
use crate::cache::Edge;
use crate::store::{ObjectMeta, PrimaryEntry};

/// Accepts peer connections until the endpoint is closed.
pub async fn serve(endpoint: quinn::Endpoint, edge: Weak<Edge>) {
    while let Some(incoming) = endpoint.accept().await {
        let edge = edge.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%remote, error = %e, "peer connection refused");
                    if let Some(edge) = edge.upgrade() {
                        edge.metrics.with(|| {
                            metrics::counter!("cdn_edge_peer_handshake_failures_total").increment(1)
                        });
                    }
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
                let Some(edge) = edge.upgrade() else { return };
                let caller = caller.clone();
                tokio::spawn(async move {
                    if let Err(e) = stream(&edge, &caller, send, recv).await {
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
    edge: &Arc<Edge>,
    caller: &Caller,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), WireError> {
    let Some(peers) = &edge.peers else {
        return Ok(());
    };
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

fn refuse(edge: &Edge, caller: &Caller, refusal: &Refusal) {
    let reason = refusal.reason();
    edge.metrics
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
    edge: &Arc<Edge>,
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
            let admitted = match wire::read_chunk(&mut recv, edge.cfg.chunk_size).await {
                Ok(chunk) => admit(edge, header, chunk).await,
                Err(WireError::Digest) => {
                    tracing::warn!("pushed chunk failed its digest: dropped");
                    edge.metrics.with(|| {
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

async fn get(
    edge: &Arc<Edge>,
    req: GetRequest,
    send: &mut quinn::SendStream,
) -> Result<(), WireError> {
    let cached = edge.store.metas.get(&req.key).await.filter(|m| {
        req.validator
            .as_ref()
            .is_none_or(|v| *v == m.version.validator)
    });
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
            edge.probe_for_peer(&req.key, &req.path_and_query, &headers, req.index)
                .await
                .filter(|m| {
                    req.validator
                        .as_ref()
                        .is_none_or(|v| *v == m.version.validator)
                })
        }
        None => None,
    };
    let Some(meta) =
        meta.filter(|m| m.chunk_size == edge.cfg.chunk_size && req.index < m.chunk_count())
    else {
        return wire::write_tag(send, wire::MISS).await;
    };
    let key = meta.chunk_key(req.index);
    let chunk = match edge.store.chunks.get(&key).await {
        Some(c) => Some(c),
        None if req.owner => {
            if !pending_sent {
                wire::write_tag(send, PENDING).await?;
            }
            edge.filler
                .chunk(&meta, req.index)
                .await
                .ok()
                .map(|(c, _)| c)
        }
        None => None,
    };
    let Some(chunk) = chunk else {
        return wire::write_tag(send, wire::MISS).await;
    };
    wire::write_json(send, wire::FOUND, &WireMeta::from_meta(&meta)).await?;
    let corrupt = edge.peers.as_ref().is_some_and(|p| p.corrupt());
    wire::write_chunk(send, &chunk, corrupt).await?;
    edge.metrics.with(|| {
        metrics::counter!("cdn_edge_peer_bytes_total", "direction" => "out")
            .increment(chunk.len() as u64)
    });
    Ok(())
}

/// Admits a pushed chunk through the normal cache admission, keeping the origin's validators
/// and freshness; a push of another version than the one held is refused.
async fn admit(edge: &Arc<Edge>, header: PushHeader, chunk: bytes::Bytes) -> bool {
    let Some(meta) = header.meta.into_meta(&edge.cfg.targeted_cache_control) else {
        return false;
    };
    if meta.chunk_size != edge.cfg.chunk_size || header.index >= meta.chunk_count() {
        return false;
    }
    let (s, e) = meta.chunk_span(header.index);
    if chunk.len() as u64 != e - s + 1 {
        return false;
    }
    let meta = match edge.store.metas.get(&meta.version.key).await {
        Some(held) if held.version.validator != meta.version.validator => return false,
        Some(held) => held,
        None => {
            let meta = Arc::new(meta);
            install(edge, &meta).await;
            meta
        }
    };
    edge.store
        .chunks
        .insert(meta.chunk_key(header.index), chunk)
        .await;
    true
}

/// Stores metadata that came from a peer, with its URL's Vary information.
pub async fn install(edge: &Edge, meta: &Arc<ObjectMeta>) {
    let vary = meta.selecting.iter().map(|(n, _)| n.clone()).collect();
    edge.store
        .primaries
        .insert(
            meta.primary.clone(),
            Arc::new(PrimaryEntry {
                vary,
                pass_until: None,
            }),
        )
        .await;
    edge.store
        .metas
        .insert(meta.version.key.clone(), meta.clone())
        .await;
}
