//! One peer as seen from this node: a lazily (re)connected QUIC connection and the three
//! requests of the protocol. A peer that does not start answering within the first-byte
//! timeout, or whose connection fails, is skipped for a short back-off so that a dead peer
//! costs a fall-back, not a stall. A client dropped (its peer left the set, see
//! [`super::Peers::set_peers`]) closes its connection once nothing uses it any more.
//!
//! Chunks are read as they arrive ([`PeerBody`]): a `stream: true` request gets the
//! [`wire::STREAMED`] answer, whose digest comes last and is checked before anything is
//! stored. While the peer waits on its own fill it repeats PENDING every [`wire::HEARTBEAT`];
//! a peer silent for longer than [`PeerClient::silence`] (a generous multiple of the link's
//! RTT and of the heartbeat) is dead: its connection is closed, which fails every request
//! on it at once (they all move to the next parent together), and it is backed off. A
//! connection that dies by itself (QUIC's idle timeout; keep-alives every quarter of it
//! tell a dead peer from a quiet one) does the same ([`PeerClient::connection`]'s watcher).
//!
//! The connection asks for the peer's configured name as the TLS server name, so a node at
//! that address with another node's certificate fails the handshake. A peer that does not
//! list this node answers every request with a refusal ([`WireError::Refused`]): a quick
//! answer, so there is no back-off, and the connection stays up for when it lists this node.

use std::sync::Arc;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use cdn_http::metrics::NodeMetrics;

use super::wire::{self, GetRequest, StreamedChunk, WireError, WireMeta};
use crate::config::PeerConfig;
use crate::growing::Growing;

/// Status byte a peer sends first when it must fill from the origin before answering.
pub const PENDING: u8 = 2;

/// How long an unreachable peer is skipped.
const BACKOFF: Duration = Duration::from_secs(1);

/// The floor of [`PeerClient::silence`]: generous, for a loaded machine's timers (a false
/// alarm closes the connection, and every transfer on it starts over from its next source).
const SILENCE_FLOOR: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PushHeader {
    pub meta: WireMeta,
    pub index: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Advertise {
    /// The sender's name. Informational: the receiver records the advertisement under the
    /// name the sender's certificate proved.
    pub from: String,
    pub keys: Vec<String>,
}

pub struct PeerClient {
    pub cfg: PeerConfig,
    endpoint: quinn::Endpoint,
    conn: tokio::sync::Mutex<Option<quinn::Connection>>,
    down_until: Arc<StdMutex<Option<Instant>>>,
    /// The peer's last answer was a refusal (logged once per change, not per request).
    refused: AtomicBool,
    first_byte: Duration,
    fill_timeout: Duration,
    max_chunk: u64,
    metrics: Arc<NodeMetrics>,
}

impl PeerClient {
    pub fn new(
        cfg: PeerConfig,
        endpoint: quinn::Endpoint,
        first_byte: Duration,
        fill_timeout: Duration,
        max_chunk: u64,
        metrics: Arc<NodeMetrics>,
    ) -> Self {
        PeerClient {
            cfg,
            endpoint,
            conn: tokio::sync::Mutex::new(None),
            down_until: Arc::default(),
            refused: AtomicBool::new(false),
            first_byte,
            fill_timeout,
            max_chunk,
            metrics,
        }
    }

    fn set_connected(&self, up: bool) {
        let name = self.cfg.name.clone();
        self.metrics.with(|| {
            metrics::gauge!("cdn_edge_peer_connected", "peer" => name).set(if up {
                1.0
            } else {
                0.0
            })
        });
    }

    fn backing_off(&self) -> bool {
        let g = self.down_until.lock().unwrap_or_else(|p| p.into_inner());
        g.is_some_and(|t| t > Instant::now())
    }

    fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + BACKOFF);
        self.set_connected(false);
    }

    /// Logs when the peer starts or stops refusing this node.
    fn note<T>(&self, r: Result<T, WireError>) -> Result<T, WireError> {
        match &r {
            Err(WireError::Refused(why)) => {
                if !self.refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(peer = %self.cfg.name, reason = %why, "peer refuses this node: not in its peer list");
                }
            }
            Ok(_) => {
                if self.refused.swap(false, Ordering::Relaxed) {
                    tracing::info!(peer = %self.cfg.name, "peer serves this node again");
                }
            }
            Err(_) => {}
        }
        r
    }

    async fn connection(&self) -> Result<quinn::Connection, WireError> {
        if self.backing_off() {
            return Err(WireError::Io(format!(
                "peer {} is backing off",
                self.cfg.name
            )));
        }
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connecting = self
            .endpoint
            .connect(self.cfg.addr, &self.cfg.name)
            .map_err(|e| WireError::Io(e.to_string()))?;
        match tokio::time::timeout(self.first_byte.max(Duration::from_millis(500)), connecting)
            .await
        {
            Ok(Ok(c)) => {
                tracing::info!(peer = %self.cfg.name, addr = %self.cfg.addr, "peer connected");
                self.set_connected(true);
                *slot = Some(c.clone());
                self.watch(&c);
                Ok(c)
            }
            Ok(Err(e)) => {
                self.mark_down();
                Err(WireError::Io(format!(
                    "connecting to {}: {e}",
                    self.cfg.name
                )))
            }
            Err(_) => {
                self.mark_down();
                Err(WireError::Io(format!(
                    "connecting to {}: timed out",
                    self.cfg.name
                )))
            }
        }
    }

    /// When `conn` dies other than by this node closing it (the peer is gone: QUIC's idle
    /// timeout, a reset), the peer is backed off at once for every request, not one request
    /// at a time.
    fn watch(&self, conn: &quinn::Connection) {
        let conn = conn.clone();
        let down_until = self.down_until_handle();
        let (name, metrics) = (self.cfg.name.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let reason = conn.closed().await;
            if matches!(reason, quinn::ConnectionError::LocallyClosed) {
                return;
            }
            tracing::warn!(peer = %name, %reason, "peer connection lost");
            *down_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + BACKOFF);
            metrics.with(|| metrics::gauge!("cdn_edge_peer_connected", "peer" => name).set(0.0));
        });
    }

    fn down_until_handle(&self) -> Arc<StdMutex<Option<Instant>>> {
        self.down_until.clone()
    }

    /// How long a peer may stay silent while it owes this node a PENDING heartbeat: two
    /// seconds plus four round trips and two heartbeats.
    pub fn silence(&self) -> Duration {
        let rtt = self
            .current_connection()
            .map(|c| c.rtt())
            .unwrap_or(Duration::from_millis(100));
        SILENCE_FLOOR + rtt * 4 + wire::HEARTBEAT * 2
    }

    /// The peer went silent: close its connection (every request on it fails now and moves
    /// on together) and back it off.
    async fn dead(&self, why: &str) {
        tracing::warn!(peer = %self.cfg.name, why, "peer silent: connection closed, backing off");
        if let Some(c) = self.conn.lock().await.take() {
            c.close(0u32.into(), b"silent");
        }
        self.mark_down();
    }

    async fn open(&self) -> Result<(quinn::SendStream, quinn::RecvStream), WireError> {
        let conn = self.connection().await?;
        match conn.open_bi().await {
            Ok(s) => Ok(s),
            Err(e) => {
                // The connection died (peer restarted): forget it; the next call reconnects.
                *self.conn.lock().await = None;
                Err(WireError::Io(e.to_string()))
            }
        }
    }

    /// Asks for a chunk (and metadata). `Ok(None)` when the peer does not have it; else its
    /// metadata and the chunk's bytes to read ([`PeerBody`]). `tier`: the answer's bytes are
    /// counted as bytes from the upper tier.
    pub async fn get(
        &self,
        req: &GetRequest,
        tier: bool,
    ) -> Result<Option<(WireMeta, PeerBody)>, WireError> {
        // The first-byte timeout counts from the request, not from a (re)connection: the QUIC
        // handshake to a far peer (a parent in another region) takes round trips of its own,
        // and `connection` bounds it. A stream waits for credit at most a fill's time.
        let (mut send, mut recv) = tokio::time::timeout(self.fill_timeout, self.open())
            .await
            .map_err(|_| WireError::Io(format!("{}: no stream in time", self.cfg.name)))??;
        let first = async {
            if let Err(e) = wire::write_json(&mut send, wire::OP_GET, req).await {
                return Err(wire::refusal_or(&mut recv, e).await);
            }
            let _ = send.finish();
            let (status, meta) = wire::read_reply::<WireMeta>(&mut recv).await?;
            Ok::<_, WireError>((status, meta, recv))
        };
        let (mut status, mut meta, mut recv) =
            match tokio::time::timeout(self.first_byte, first).await {
                Ok(r) => self.note(r)?,
                Err(_) => {
                    self.mark_down();
                    return Err(WireError::Io(format!(
                        "{}: no first byte in time",
                        self.cfg.name
                    )));
                }
            };
        while status == PENDING {
            // The owner is filling from the origin on our behalf. A streaming peer repeats
            // PENDING while it waits: silence means it is gone.
            let wait = if req.stream {
                self.silence()
            } else {
                self.fill_timeout
            };
            match tokio::time::timeout(wait, wire::read_reply::<WireMeta>(&mut recv)).await {
                Ok(r) => (status, meta) = r?,
                Err(_) if req.stream => {
                    self.dead("no heartbeat while pending").await;
                    return Err(WireError::Io(format!(
                        "{}: silent for {wait:?} while pending",
                        self.cfg.name
                    )));
                }
                Err(_) => return Err(WireError::Io("peer fill timed out".into())),
            }
        }
        let body = match status {
            wire::FOUND => {
                let chunk = tokio::time::timeout(
                    self.fill_timeout,
                    wire::read_chunk(&mut recv, self.max_chunk),
                )
                .await
                .map_err(|_| WireError::Io("peer body timed out".into()))??;
                Body::Whole(Some(chunk))
            }
            wire::STREAMED => {
                let frame =
                    StreamedChunk::start(&mut recv, self.max_chunk, self.fill_timeout).await?;
                Body::Streamed { recv, frame }
            }
            _ => return Ok(None),
        };
        let meta = meta.ok_or_else(|| WireError::Bad("found without metadata".into()))?;
        Ok(Some((
            meta,
            PeerBody {
                body,
                peer: self.cfg.name.clone(),
                tier,
                metrics: self.metrics.clone(),
            },
        )))
    }

    /// Pushes one chunk; `Ok(true)` when the peer admitted it.
    pub async fn push(
        &self,
        header: &PushHeader,
        chunk: &Bytes,
        corrupt: bool,
    ) -> Result<bool, WireError> {
        let exchange = async {
            let (mut send, mut recv) = self.open().await?;
            let written = async {
                wire::write_json(&mut send, wire::OP_PUSH, header).await?;
                wire::write_chunk(&mut send, chunk, corrupt).await
            };
            if let Err(e) = written.await {
                return Err(wire::refusal_or(&mut recv, e).await);
            }
            let _ = send.finish();
            let (status, _) = wire::read_reply::<serde_json::Value>(&mut recv).await?;
            Ok::<_, WireError>(status == wire::FOUND)
        };
        let admitted = tokio::time::timeout(self.fill_timeout, exchange)
            .await
            .map_err(|_| WireError::Io("push timed out".into()))?;
        let admitted = self.note(admitted)?;
        self.count_bytes("out", chunk.len());
        Ok(admitted)
    }

    /// Tells the peer which objects this node holds hot.
    pub async fn advertise(&self, msg: &Advertise) -> Result<(), WireError> {
        let exchange = async {
            let (mut send, mut recv) = self.open().await?;
            if let Err(e) = wire::write_json(&mut send, wire::OP_ADVERTISE, msg).await {
                return Err(wire::refusal_or(&mut recv, e).await);
            }
            let _ = send.finish();
            let _ = wire::read_reply::<serde_json::Value>(&mut recv).await?;
            Ok::<_, WireError>(())
        };
        let r = tokio::time::timeout(self.fill_timeout, exchange)
            .await
            .map_err(|_| WireError::Io("advertise timed out".into()))?;
        self.note(r)
    }

    /// The connection, if one is open now (tests compare it across peer-set changes).
    pub fn current_connection(&self) -> Option<quinn::Connection> {
        self.conn
            .try_lock()
            .ok()
            .and_then(|c| c.as_ref().filter(|c| c.close_reason().is_none()).cloned())
    }

    fn count_bytes(&self, direction: &'static str, n: usize) {
        self.metrics.with(|| {
            metrics::counter!("cdn_edge_peer_bytes_total", "direction" => direction)
                .increment(n as u64)
        });
    }
}

/// A chunk a peer is sending: whole (an older peer's [`wire::FOUND`]) or as it arrives
/// ([`wire::STREAMED`], digest last). Its bytes are counted (`cdn_edge_peer_bytes_total`, and
/// the tier's own counter for a parent's answer) once its digest matched; a mismatch is
/// counted in `cdn_edge_peer_digest_mismatches_total`.
pub struct PeerBody {
    body: Body,
    peer: String,
    tier: bool,
    metrics: Arc<NodeMetrics>,
}

enum Body {
    Whole(Option<Bytes>),
    Streamed {
        recv: quinn::RecvStream,
        frame: StreamedChunk,
    },
}

impl PeerBody {
    /// The chunk's length, as the peer announced it.
    pub fn len(&self) -> u64 {
        match &self.body {
            Body::Whole(b) => b.as_ref().map_or(0, |b| b.len() as u64),
            Body::Streamed { frame, .. } => frame.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next bytes; `Ok(None)` once the chunk is complete and its digest matched.
    pub async fn next(&mut self) -> Result<Option<Bytes>, WireError> {
        let len = self.len();
        let r = match &mut self.body {
            Body::Whole(b) => Ok(b.take()),
            Body::Streamed { recv, frame } => frame.next(recv).await,
        };
        match &r {
            Ok(None) => self.metrics.with(|| {
                metrics::counter!("cdn_edge_peer_bytes_total", "direction" => "in").increment(len);
                if self.tier {
                    super::tier::count_bytes(len as usize);
                }
            }),
            Err(WireError::Digest) => {
                tracing::warn!(peer = %self.peer, "peer chunk failed its digest: dropped");
                self.metrics.with(|| {
                    metrics::counter!("cdn_edge_peer_digest_mismatches_total").increment(1)
                });
            }
            _ => {}
        }
        r
    }

    /// Reads the whole chunk, pushing its bytes into `sink` as they arrive; the chunk only
    /// once its digest matched.
    pub async fn read_into(mut self, sink: Option<&Growing>) -> Result<Bytes, WireError> {
        let len = usize::try_from(self.len()).map_err(|_| WireError::TooLarge(self.len()))?;
        let mut buf: Option<BytesMut> = None;
        let mut whole: Option<Bytes> = None;
        while let Some(piece) = self.next().await? {
            if let Some(sink) = sink {
                sink.push(piece.clone());
            }
            match (&mut buf, whole.take()) {
                (None, None) if piece.len() == len => whole = Some(piece),
                (None, first) => {
                    // Assembled in an allocation of exactly the chunk's size.
                    let mut b = BytesMut::with_capacity(len);
                    if let Some(f) = first {
                        b.extend_from_slice(&f);
                    }
                    b.extend_from_slice(&piece);
                    buf = Some(b);
                }
                (Some(b), _) => b.extend_from_slice(&piece),
            }
        }
        Ok(match (buf, whole) {
            (Some(b), _) => b.freeze(),
            (None, Some(w)) => w,
            (None, None) => Bytes::new(),
        })
    }
}

impl Drop for PeerClient {
    /// The last user is gone (the peer left the set, or the node stops): close the
    /// connection now, with an application close the peer sees at once.
    fn drop(&mut self) {
        if let Some(c) = self.conn.get_mut().take() {
            c.close(0u32.into(), b"peer client dropped");
        }
    }
}
