//! The peer protocol's frames. One request per bidirectional QUIC stream:
//!
//! ```text
//! request:  op:u8  len:u32  json[len]                 (GET, PUSH, ADVERTISE)
//!           PUSH only: chunk frame
//! reply:    status:u8  len:u32  json[len]  chunk frame   (to GET; status 0 = found)
//! chunk:    len:u64  sha256:[u8;32]  bytes[len]
//! refusal:  3  len:u32  json[len]                    (to any request, see [`Refusal`])
//! ```
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
