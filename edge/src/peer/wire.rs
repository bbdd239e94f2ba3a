//! The peer protocol's frames. One request per bidirectional QUIC stream:
//!
//! ```text
//! request:  op:u8  len:u32  json[len]                 (GET, PUSH, ADVERTISE)
//!           PUSH only: chunk frame
//! reply:    status:u8  len:u32  json[len]  chunk frame   (to GET; status 0 = found)
//! chunk:    len:u64  sha256:[u8;32]  bytes[len]
//! refusal:  3  len:u32  json[len]                    (to any request, see [`Refusal`])
//! ```
//! A GET with `stream: true` (version 2 of the answer, see [`GetRequest::stream`]) is
//! answered with [`STREAMED`] instead of [`FOUND`], whose chunk frame puts the digest last,
//! so the answering node sends bytes as they arrive from its own fill and the asker forwards
//! them as they come, checking the digest before it stores the chunk:
//!
//! ```text
//! reply:    4  len:u32  json[len]  streamed frame
//! streamed: len:u64  bytes[len]  sha256:[u8;32]
//! ```
//! While it waits on its own fill, the answering node repeats the PENDING status (2) every
//! [`HEARTBEAT`] for such a request, so a silent parent is a dead one; a fill that fails
//! after the first byte resets the stream ([`ABORTED_CODE`]), never ends it cleanly.
//! A node that is not in the answering node's peer set gets the refusal as the first bytes of
//! its stream, before the answering side reads the request (it stops reading with
//! [`REFUSED_CODE`]), so a refused push costs no chunk upload.
//! Every length is checked against a bound before anything is allocated: a JSON header is at
//! most [`MAX_HEADER`] bytes and a chunk at most the receiver's own chunk size. A chunk whose
//! digest does not match is an error, never data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::freshness::{CacheControl, Timing};
use crate::store::{ObjectMeta, VersionId};

pub const MAX_HEADER: usize = 64 * 1024;

pub const OP_GET: u8 = 1;
pub const OP_PUSH: u8 = 2;
pub const OP_ADVERTISE: u8 = 3;

pub const FOUND: u8 = 0;
pub const MISS: u8 = 1;
/// The asking node is not a peer of the answering node (2 is `client::PENDING`).
pub const REFUSED: u8 = 3;
/// The QUIC application error code a refused stream's request side is stopped with.
pub const REFUSED_CODE: u32 = 0x403;
/// A found chunk whose bytes follow as they arrive, digest last (answer to `stream: true`).
pub const STREAMED: u8 = 4;
/// The QUIC error code a streamed answer is reset with when its fill failed mid-chunk.
pub const ABORTED_CODE: u32 = 0x502;
/// How often a node repeats PENDING to a `stream: true` asker while it waits on its fill.
pub const HEARTBEAT: Duration = Duration::from_millis(250);

/// The body of a [`REFUSED`] answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Refusal {
    /// `unknown-peer`, `ambiguous-name` or `no-name` (as in `cdn_edge_peer_refused_total`).
    pub reason: String,
    /// For the asking node's log, e.g. `["x"] is not a peer of this node`.
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("stream: {0}")]
    Io(String),
    #[error("frame too large: {0} bytes")]
    TooLarge(u64),
    #[error("bad frame: {0}")]
    Bad(String),
    #[error("chunk digest mismatch")]
    Digest,
    /// The answering node does not serve this one (not in its peer set).
    #[error("refused by the peer: {0}")]
    Refused(String),
}

impl From<quinn::ReadExactError> for WireError {
    fn from(e: quinn::ReadExactError) -> Self {
        WireError::Io(e.to_string())
    }
}

impl From<quinn::WriteError> for WireError {
    fn from(e: quinn::WriteError) -> Self {
        WireError::Io(e.to_string())
    }
}

/// Asks for chunk `index` of `key` (and its metadata).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    /// Variant key of the object.
    pub key: String,
    /// The version the asker holds; `None` when it has no metadata yet.
    pub validator: Option<String>,
    pub index: u64,
    /// The asker believes the receiver owns this chunk: the receiver may fill it from the
    /// origin. Never set on requests a peer makes on another peer's behalf.
    pub owner: bool,
    /// Asked by a lower-tier node of one of its `parents` (`super::tier`): the receiver fills
    /// it only if it has no parents itself (top tier), else answers from its cache. Absent
    /// on the wire (older nodes): false.
    #[serde(default)]
    pub tier: bool,
    /// The asker reads [`STREAMED`] answers and PENDING heartbeats (answer version 2).
    /// Absent on the wire (older nodes): false, and the answer is a whole [`FOUND`] frame.
    #[serde(default)]
    pub stream: bool,
    /// The object's metadata as the asker holds it (chunk fills): an owner that has none yet
    /// takes it, as it takes a pushed chunk's, rather than probing the origin for a version
    /// its own fill of the chunk will not coalesce with. Absent from older nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<WireMeta>,
    pub path_and_query: String,
    /// Vary-selecting request headers of the asker.
    pub selecting: Vec<(String, String)>,
}

/// Object metadata as it travels between peers: the origin's validators and freshness
/// timing go along, so a peer copy is never fresher than the origin said.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireMeta {
    pub key: String,
    pub validator: String,
    pub primary: String,
    pub path_and_query: String,
    pub len: u64,
    pub chunk_size: u64,
    pub content_type: String,
    pub etag: Option<String>,
    pub last_modified: Option<u64>,
    pub headers: Vec<(String, String)>,
    pub digest: Option<String>,
    pub lifetime_ms: u64,
    pub request_time_ms: u64,
    pub response_time_ms: u64,
    pub date_ms: u64,
    pub age_value: u64,
    pub ranges: bool,
    pub selecting: Vec<(String, Option<String>)>,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

impl WireMeta {
    pub fn from_meta(m: &ObjectMeta) -> Self {
        WireMeta {
            key: m.version.key.clone(),
            validator: m.version.validator.clone(),
            primary: m.primary.clone(),
            path_and_query: m.path_and_query.clone(),
            len: m.len,
            chunk_size: m.chunk_size,
            content_type: m
                .content_type
                .to_str()
                .unwrap_or("application/octet-stream")
                .into(),
            etag: m.etag.clone(),
            last_modified: m.last_modified.map(|t| ms(t) / 1000),
            headers: m
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
                .collect(),
            digest: m
                .digest
                .as_ref()
                .and_then(|d| d.to_str().ok())
                .map(String::from),
            lifetime_ms: m.lifetime.as_millis() as u64,
            request_time_ms: ms(m.timing.request_time),
            response_time_ms: ms(m.timing.response_time),
            date_ms: ms(m.timing.date),
            age_value: m.timing.age_value,
            ranges: m.ranges,
            selecting: m
                .selecting
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        v.as_ref().and_then(|v| v.to_str().ok()).map(String::from),
                    )
                })
                .collect(),
        }
    }

    /// Rebuilds stored metadata; `None` when a field is not valid HTTP. `targets` is the
    /// receiving node's `targeted_cache_control`.
    pub fn into_meta<S: AsRef<str>>(self, targets: &[S]) -> Option<ObjectMeta> {
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            headers.append(
                HeaderName::from_bytes(k.as_bytes()).ok()?,
                HeaderValue::from_str(v).ok()?,
            );
        }
        let selecting = self
            .selecting
            .iter()
            .map(|(n, v)| {
                Some((
                    HeaderName::from_bytes(n.as_bytes()).ok()?,
                    match v {
                        Some(v) => Some(HeaderValue::from_str(v).ok()?),
                        None => None,
                    },
                ))
            })
            .collect::<Option<Vec<_>>>()?;
        if self.chunk_size == 0 {
            return None;
        }
        Some(ObjectMeta {
            version: std::sync::Arc::new(VersionId {
                key: self.key,
                validator: self.validator,
            }),
            primary: self.primary,
            path_and_query: self.path_and_query,
            len: self.len,
            chunk_size: self.chunk_size,
            content_type: HeaderValue::from_str(&self.content_type).ok()?,
            etag: self.etag,
            // A peer's seconds past what milliseconds can hold are invalid, not a panic
            // (found by fuzz/peer_frames).
            last_modified: match self.last_modified {
                Some(s) => Some(time(s.checked_mul(1000)?)),
                None => None,
            },
            cc: CacheControl::for_response(&headers, targets),
            headers,
            digest: match self.digest {
                Some(d) => Some(HeaderValue::from_str(&d).ok()?),
                None => None,
            },
            lifetime: Duration::from_millis(self.lifetime_ms),
            timing: Timing {
                request_time: time(self.request_time_ms),
                response_time: time(self.response_time_ms),
                date: time(self.date_ms),
                age_value: self.age_value,
            },
            ranges: self.ranges,
            selecting,
            negative: None,
            rendered: Default::default(),
        })
    }
}

/// Writes `tag`, then `value` as length-prefixed JSON.
pub async fn write_json(
    send: &mut quinn::SendStream,
    tag: u8,
    value: &impl Serialize,
) -> Result<(), WireError> {
    let json = serde_json::to_vec(value).map_err(|e| WireError::Bad(e.to_string()))?;
    if json.len() > MAX_HEADER {
        return Err(WireError::TooLarge(json.len() as u64));
    }
    let mut head = Vec::with_capacity(5 + json.len());
    head.push(tag);
    head.extend_from_slice(&(json.len() as u32).to_be_bytes());
    head.extend_from_slice(&json);
    send.write_all(&head).await?;
    Ok(())
}

/// Reads a tag and its length-prefixed JSON, bounded by [`MAX_HEADER`].
pub async fn read_json<T: for<'de> Deserialize<'de>>(
    recv: &mut quinn::RecvStream,
) -> Result<(u8, Option<T>), WireError> {
    let (tag, json) = read_raw(recv).await?;
    Ok((tag, parse(json.as_deref())?))
}

/// Reads a reply: a tag and its JSON as [`read_json`] does, except that a [`REFUSED`] answer
/// is [`WireError::Refused`].
pub async fn read_reply<T: for<'de> Deserialize<'de>>(
    recv: &mut quinn::RecvStream,
) -> Result<(u8, Option<T>), WireError> {
    let (tag, json) = read_raw(recv).await?;
    if tag == REFUSED {
        let r: Option<Refusal> = parse(json.as_deref())?;
        let message = r.map_or_else(|| "no reason given".into(), |r| r.message);
        return Err(WireError::Refused(message));
    }
    Ok((tag, parse(json.as_deref())?))
}

/// After a request could not be written: the peer's refusal when that is why it stopped
/// reading, else `err`.
pub async fn refusal_or(recv: &mut quinn::RecvStream, err: WireError) -> WireError {
    match read_reply::<serde_json::Value>(recv).await {
        Err(refused @ WireError::Refused(_)) => refused,
        _ => err,
    }
}

async fn read_raw(recv: &mut quinn::RecvStream) -> Result<(u8, Option<Vec<u8>>), WireError> {
    let mut head = [0u8; 5];
    recv.read_exact(&mut head).await?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len > MAX_HEADER {
        return Err(WireError::TooLarge(len as u64));
    }
    if len == 0 {
        return Ok((head[0], None));
    }
    let mut buf = vec![0u8; len];
    recv.read_exact(&mut buf).await?;
    Ok((head[0], Some(buf)))
}

fn parse<T: for<'de> Deserialize<'de>>(json: Option<&[u8]>) -> Result<Option<T>, WireError> {
    json.map(|j| serde_json::from_slice(j).map_err(|e| WireError::Bad(e.to_string())))
        .transpose()
}

/// Refuses a request stream: the [`REFUSED`] answer, then the request side stopped unread.
pub async fn refuse(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    refusal: &Refusal,
) -> Result<(), WireError> {
    let _ = recv.stop(REFUSED_CODE.into());
    write_json(send, REFUSED, refusal).await?;
    let _ = send.finish();
    Ok(())
}

/// Writes a tag with no JSON (e.g. MISS).
pub async fn write_tag(send: &mut quinn::SendStream, tag: u8) -> Result<(), WireError> {
    let mut head = vec![tag];
    head.extend_from_slice(&0u32.to_be_bytes());
    send.write_all(&head).await?;
    Ok(())
}

/// Writes a chunk frame. `corrupt` flips a byte after the digest is taken (a test hook).
pub async fn write_chunk(
    send: &mut quinn::SendStream,
    chunk: &Bytes,
    corrupt: bool,
) -> Result<(), WireError> {
    let digest: [u8; 32] = Sha256::digest(chunk).into();
    let mut head = Vec::with_capacity(40);
    head.extend_from_slice(&(chunk.len() as u64).to_be_bytes());
    head.extend_from_slice(&digest);
    send.write_all(&head).await?;
    if corrupt && !chunk.is_empty() {
        let mut bad = chunk.to_vec();
        bad[chunk.len() / 2] ^= 0xff;
        send.write_all(&bad).await?;
    } else {
        send.write_all(chunk).await?;
    }
    Ok(())
}

/// Writes a streamed chunk frame of `len` bytes from `pieces`, digest last. A piece that
/// fails, or pieces that do not add up to `len`, reset the stream ([`ABORTED_CODE`]): the
/// asker sees an error, never a chunk. `corrupt` flips a byte after it is hashed (a test
/// hook). Returns the bytes sent.
pub async fn write_streamed<E: std::fmt::Display>(
    send: &mut quinn::SendStream,
    len: u64,
    mut pieces: impl futures::Stream<Item = Result<Bytes, E>> + Unpin,
    corrupt: bool,
) -> Result<u64, WireError> {
    use futures::StreamExt;
    send.write_all(&len.to_be_bytes()).await?;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let mut flipped = !corrupt;
    let failure = loop {
        match pieces.next().await {
            Some(Ok(piece)) => {
                sent = sent.saturating_add(piece.len() as u64);
                if sent > len {
                    break Some(format!("more than the {len} bytes announced"));
                }
                hasher.update(&piece);
                if !flipped && !piece.is_empty() {
                    let mut bad = piece.to_vec();
                    bad[piece.len() / 2] ^= 0xff;
                    flipped = true;
                    send.write_all(&bad).await?;
                } else {
                    send.write_all(&piece).await?;
                }
            }
            Some(Err(e)) => break Some(e.to_string()),
            None if sent == len => break None,
            None => break Some(format!("ended after {sent} of {len} bytes")),
        }
    };
    if let Some(why) = failure {
        let _ = send.reset(ABORTED_CODE.into());
        return Err(WireError::Io(format!("streamed chunk aborted: {why}")));
    }
    let digest: [u8; 32] = hasher.finalize().into();
    send.write_all(&digest).await?;
    Ok(sent)
}

/// The reading side of a streamed chunk frame: the bytes as they arrive, then the digest.
pub struct StreamedChunk {
    len: u64,
    left: u64,
    hasher: Sha256,
    /// Longest silence between two reads before the answer counts as dead.
    idle: Duration,
}

impl StreamedChunk {
    /// Reads the frame's length (at most `max`); `idle` bounds every later read.
    pub async fn start(
        recv: &mut quinn::RecvStream,
        max: u64,
        idle: Duration,
    ) -> Result<Self, WireError> {
        let mut head = [0u8; 8];
        tokio::time::timeout(idle, recv.read_exact(&mut head))
            .await
            .map_err(|_| WireError::Io("peer body stalled".into()))??;
        let len = u64::from_be_bytes(head);
        if len > max {
            return Err(WireError::TooLarge(len));
        }
        Ok(StreamedChunk {
            len,
            left: len,
            hasher: Sha256::new(),
            idle,
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next bytes; `Ok(None)` once all of them came and the digest matched.
    pub async fn next(&mut self, recv: &mut quinn::RecvStream) -> Result<Option<Bytes>, WireError> {
        if self.left == 0 {
            let mut digest = [0u8; 32];
            tokio::time::timeout(self.idle, recv.read_exact(&mut digest))
                .await
                .map_err(|_| WireError::Io("peer body stalled".into()))??;
            let want: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            if want != digest {
                return Err(WireError::Digest);
            }
            return Ok(None);
        }
        let max = usize::try_from(self.left.min(64 * 1024)).unwrap_or(64 * 1024);
        let chunk = tokio::time::timeout(self.idle, recv.read_chunk(max, true))
            .await
            .map_err(|_| WireError::Io("peer body stalled".into()))?
            .map_err(|e| WireError::Io(e.to_string()))?;
        let Some(chunk) = chunk else {
            return Err(WireError::Io(format!(
                "peer body ended after {} of {} bytes",
                self.len - self.left,
                self.len
            )));
        };
        let n = chunk.bytes.len() as u64;
        if n > self.left {
            return Err(WireError::TooLarge(self.len - self.left + n));
        }
        self.left -= n;
        self.hasher.update(&chunk.bytes);
        Ok(Some(chunk.bytes))
    }
}

/// Reads a chunk frame of at most `max` bytes and checks its digest.
pub async fn read_chunk(recv: &mut quinn::RecvStream, max: u64) -> Result<Bytes, WireError> {
    let mut head = [0u8; 40];
    recv.read_exact(&mut head).await?;
    let len = u64::from_be_bytes(head[..8].try_into().expect("8 bytes"));
    if len > max {
        return Err(WireError::TooLarge(len));
    }
    let mut buf = BytesMut::zeroed(len as usize);
    recv.read_exact(&mut buf).await?;
    let digest: [u8; 32] = Sha256::digest(&buf).into();
    if digest[..] != head[8..] {
        return Err(WireError::Digest);
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_with_out_of_range_times_is_refused_not_a_panic() {
        // Regression (fuzz/peer_frames): last_modified * 1000 overflowed.
        let json = r#"{"key":"http://o/a","validator":"v","primary":"http://o/a",
            "path_and_query":"/a","len":10,"chunk_size":4,"content_type":"video/mp4",
            "etag":null,"last_modified":17000000004294967295,"headers":[],"digest":null,
            "lifetime_ms":60000,"request_time_ms":1,"response_time_ms":2,"date_ms":1,
            "age_value":18446744073709551615,"ranges":true,"selecting":[]}"#;
        let w: WireMeta = serde_json::from_str(json).unwrap();
        assert!(w.clone().into_meta(&["CDN-Cache-Control"]).is_none());
        let ok = WireMeta {
            last_modified: Some(1_700_000_000),
            ..w
        };
        let meta = ok.into_meta(&["CDN-Cache-Control"]).expect("valid");
        // A huge Age from a peer saturates instead of overflowing.
        let _ = meta.age(SystemTime::now());
    }
}
