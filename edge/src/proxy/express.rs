//! The edge's answers on the express lane ([`cdn_http::server::express`]): a GET or HEAD
//! that is a fresh hit on a URL without Vary, for the whole object or one byte range, with
//! every chunk it needs stored, or for a stored negative response (a 404, a 301...: replayed
//! whole), from a request that carries no field such an answer depends on besides Range
//! ([`IGNORED`]). Anything else declines, and the connection goes on in the
//! full stack ([`super::handle`]), which would have given the same answer.
//!
//! The answer is [`super::handle`]'s, rendered without a header map: the fields that do not
//! change from hit to hit are rendered once per stored version (`RenderedHeads`, from the
//! same [`super::stored_fields`] plus what the response adds: Via, Accept-Ranges,
//! Content-Type, Content-Digest for the whole object, and the node's own fields such as
//! CORS), then Age, Cache-Status, Content-Range, Content-Length and Date are appended. Every
//! field name carries the same values in the same order as on the full stack (fields of
//! different names may come in another order, which HTTP gives no meaning).
//! `tests/express.rs` compares the two answers field by field and byte by byte.
//! Counters, the access line and the read-ahead of a body spanning chunks are the full
//! stack's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, header};

use cdn_http::range::{self, RangeRequest};
use cdn_http::server::express::{Answer, Express, ExpressRequest, Piece, date_line};

use super::{AccessLine, AccessLog, CONTENT_DIGEST, age_and_ttl_at, record, stored_fields, via};
use crate::cache::{CacheOutcome, Verdict};
use crate::freshness::{self, CacheControl, Usability};
use crate::node::Edge;
use crate::store::{ObjectMeta, RenderedHeads};

/// Request fields a fresh hit's answer never reads when the stored response has no Vary
/// (besides Range, which the lane evaluates): a request with any other field (Authorization,
/// Cache-Control, Pragma, a precondition, If-Range, one nobody anticipated...) goes to the
/// full stack. `sec-*` (fetch metadata, client hints) are ignored as well.
pub const IGNORED: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "accept-encoding",
    "accept-language",
    "referer",
    "origin",
    "cookie",
    "connection",
    "keep-alive",
    "dnt",
    "priority",
    "upgrade-insecure-requests",
];

/// At most this many chunks in a body on the lane; larger bodies stream on the full stack.
const MAX_CHUNKS: u64 = 16;

/// The edge's [`Express`] responder.
pub struct EdgeExpress {
    edge: Arc<Edge>,
    /// Fields the node's layers add to every response when absent (CORS, Alt-Svc).
    extra: Vec<(HeaderName, HeaderValue)>,
}

impl EdgeExpress {
    /// The responder of `edge`, adding `extra` to each response that lacks the field (as the
    /// node's response layers do); `None` when the chunk policy's reads wait (moka's), so
    /// that no answer could be given without waiting.
    pub fn new(edge: Arc<Edge>, extra: Vec<(HeaderName, HeaderValue)>) -> Option<Self> {
        edge.cache
            .store()
            .reads_now()
            .then_some(EdgeExpress { edge, extra })
    }

    fn render(&self, meta: &ObjectMeta) -> RenderedHeads {
        if meta.negative.is_some() {
            // `super::replay`'s fields: the stored ones (with their own Content-Type and
            // validators), Age and Content-Length set per response, then Via and ours.
            let mut h = meta.headers.clone();
            h.remove(header::AGE);
            h.remove(header::CONTENT_LENGTH);
            if let Some(v) = via(&self.edge.cfg.name) {
                h.append(header::VIA, v);
            }
            self.add_extra(&mut h);
            return RenderedHeads {
                dated: h.contains_key(header::DATE),
                full: serialize(&h),
                part: Bytes::new(),
            };
        }
        let stored = meta
            .rendered
            .get_or_init(|| stored_fields(meta.etag.as_deref(), meta.last_modified, &meta.headers));
        let mut full = stored.clone();
        // Appended per hit, after the stored fields.
        full.remove(header::AGE);
        full.remove(header::CONTENT_LENGTH);
        if let Some(v) = via(&self.edge.cfg.name) {
            full.append(header::VIA, v);
        }
        full.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        full.insert(header::CONTENT_TYPE, meta.content_type.clone());
        // A stored 200's own Content-Range belongs to that 200 alone (`super::serve`).
        let mut part = full.clone();
        part.remove(header::CONTENT_RANGE);
        if let Some(d) = &meta.digest {
            full.append(CONTENT_DIGEST, d.clone());
        }
        self.add_extra(&mut full);
        self.add_extra(&mut part);
        RenderedHeads {
            dated: full.contains_key(header::DATE),
            full: serialize(&full),
            part: serialize(&part),
        }
    }

    /// The node's own fields, where the response lacks them (as its layers add them).
    fn add_extra(&self, h: &mut HeaderMap) {
        for (name, value) in &self.extra {
            if !h.contains_key(name) {
                h.insert(name.clone(), value.clone());
            }
        }
    }
}

/// `name: value\r\n` for each field, in the map's order.
fn serialize(h: &HeaderMap) -> Bytes {
    let mut out = Vec::with_capacity(h.len() * 48);
    for (k, v) in h {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    Bytes::from(out)
}

fn ignored(name: &str) -> bool {
    IGNORED.iter().any(|n| n.eq_ignore_ascii_case(name))
        || name
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("sec-"))
}

impl Express for EdgeExpress {
    fn answer(&self, req: &ExpressRequest<'_>, head: &mut Vec<u8>) -> Option<Answer> {
        let started = Instant::now();
        let mut range_field = None;
        for f in req.headers {
            if f.name.eq_ignore_ascii_case("range") {
                if range_field.replace(f.value).is_some() {
                    return None;
                }
            } else if !ignored(f.name) {
                return None;
            }
        }
        let pq = http::uri::PathAndQuery::try_from(req.target).ok()?;
        if crate::ADMIN_PATHS.contains(&pq.path()) {
            return None;
        }
        let edge = &self.edge;
        let primary = edge.cache.primary_key_parts(pq.path(), pq.query());
        let meta = edge.cache.store().lookup_now(&primary)?;
        // No Vary: the stored response is the one for every request (`Cache::decide`).
        if !meta.selecting.is_empty() {
            return None;
        }
        // One clock reading for the freshness, Age, the TTL and Date.
        let now = SystemTime::now();
        let age = meta.age(now);
        if freshness::usability(&meta.cc, meta.lifetime, age, &CacheControl::default())
            != Usability::Fresh
        {
            return None;
        }
        let range_value = match range_field {
            Some(v) => Some(HeaderValue::from_bytes(v).ok()?),
            None => None,
        };
        let (status, body) = match &meta.negative {
            Some(neg) => {
                // A stored 404, 301...: replayed whole (`super::replay`; Range does not
                // apply, and no precondition can be in the request).
                let heads = meta.rendered.heads_or_init(|| self.render(&meta));
                let bodiless = neg.status == http::StatusCode::NO_CONTENT
                    || neg.status == http::StatusCode::NOT_MODIFIED;
                let len = (!bodiless).then_some(neg.body.len() as u64);
                self.write_head(
                    neg.status,
                    &heads.full,
                    heads.dated,
                    &meta,
                    now,
                    None,
                    len,
                    head,
                );
                let body = match req.head || neg.body.is_empty() {
                    true => Vec::new(),
                    false => vec![Piece {
                        bytes: neg.body.clone(),
                        file: None,
                    }],
                };
                (neg.status.as_u16(), body)
            }
            None => self.hit(&meta, req.head, range_value.as_ref(), now, head)?,
        };

        // Counted and logged as the full stack does (`super::handle`, `super::finish`).
        edge.inflight.fetch_add(1, Ordering::Relaxed);
        let (served, duration) = record(&edge.metrics, CacheOutcome::Hit, started.elapsed(), true);
        let line = tracing::enabled!(target: "cdn_edge::access", tracing::Level::INFO).then(|| {
            Box::new(AccessLine {
                client: Some(req.peer.ip()),
                method: if req.head { Method::HEAD } else { Method::GET },
                uri: http::Uri::from(pq),
                range: range_value,
            })
        });
        let mut log = AccessLog {
            line,
            status,
            cache: CacheOutcome::Hit.label(),
            bytes: 0,
            started,
            duration,
            inflight: edge.inflight.clone(),
        };
        Some(Answer {
            body,
            done: Box::new(move |sent| {
                served.increment(sent);
                log.bytes = sent;
                drop(log);
            }),
        })
    }
}

impl EdgeExpress {
    /// A whole head: the status line, `fixed` (the fields rendered once per version), Age and
    /// this node's Cache-Status member at `now`, Content-Range and Content-Length when given,
    /// Date unless the stored fields carry one, and the empty line.
    #[allow(clippy::too_many_arguments)]
    fn write_head(
        &self,
        status: http::StatusCode,
        fixed: &[u8],
        dated: bool,
        meta: &ObjectMeta,
        now: SystemTime,
        content_range: Option<&str>,
        content_length: Option<u64>,
        head: &mut Vec<u8>,
    ) {
        let field = |head: &mut Vec<u8>, name: &[u8], value: &[u8]| {
            head.extend_from_slice(name);
            head.extend_from_slice(b": ");
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        };
        let mut num = itoa::Buffer::new();
        head.extend_from_slice(b"HTTP/1.1 ");
        head.extend_from_slice(status.as_str().as_bytes());
        head.extend_from_slice(b" ");
        head.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(fixed);
        let (age, ttl) = age_and_ttl_at(meta, now);
        field(head, b"age", num.format(age).as_bytes());
        head.extend_from_slice(b"cache-status: ");
        Verdict::new(CacheOutcome::Hit, None).write_header(&self.edge.cfg.name, Some(ttl), head);
        head.extend_from_slice(b"\r\n");
        if let Some(r) = content_range {
            field(head, b"content-range", r.as_bytes());
        }
        if let Some(len) = content_length {
            field(head, b"content-length", num.format(len).as_bytes());
        }
        if !dated {
            date_line(head, now);
        }
        head.extend_from_slice(b"\r\n");
    }

    /// The head and body of a hit on a stored 200 (the whole object, or the range of
    /// `range_value` when it is one satisfiable range), or `None` when the lane cannot
    /// give it (several ranges or none satisfiable, a chunk not stored, too many chunks).
    fn hit(
        &self,
        meta: &Arc<ObjectMeta>,
        head_only: bool,
        range_value: Option<&HeaderValue>,
        now: SystemTime,
        head: &mut Vec<u8>,
    ) -> Option<(u16, Vec<Piece>)> {
        let edge = &self.edge;
        let len = meta.len;
        // Range is for GET only; an invalid one is ignored; several ranges, or none
        // satisfiable, are the full stack's (multipart, 416).
        let part = match (range_value, head_only) {
            (Some(v), false) => match v.to_str().map(|s| range::evaluate_str(s, len)) {
                Ok(RangeRequest::Ranges(r)) if r.len() == 1 => Some(r[0].clone()),
                Ok(RangeRequest::Ranges(_) | RangeRequest::Unsatisfiable) => return None,
                Ok(RangeRequest::Full) | Err(_) => None,
            },
            _ => None,
        };
        let body_range = match &part {
            Some(r) => Some(r.clone()),
            None if !head_only && len > 0 => Some(0..=len - 1),
            None => None,
        };
        let mut body = Vec::new();
        if let Some(r) = &body_range {
            let cs = meta.chunk_size;
            let (first, last) = (r.start() / cs, r.end() / cs);
            if last - first >= MAX_CHUNKS {
                return None;
            }
            let store = edge.cache.store();
            // A body of one chunk takes it in one counted lookup; a longer one checks that
            // every chunk is held before taking any (as the full stack does).
            if first != last && !(first..=last).all(|i| store.has_chunk(&meta.chunk_key(i))) {
                return None;
            }
            let readahead = edge.cfg.readahead;
            for index in first..=last {
                let chunk = store.chunk_now(&meta.chunk_key(index))?;
                let (cstart, cend) = meta.chunk_span(index);
                if first != last {
                    super::body::read_ahead(edge, meta, index, first, *r.end(), readahead);
                }
                let from = usize::try_from(r.start().max(&cstart) - cstart).ok()?;
                let to = usize::try_from(r.end().min(&cend) - cstart + 1).ok()?;
                if to > chunk.len() {
                    return None;
                }
                let bytes = chunk.slice(from..to);
                // Large chunks held in the arena's files go out with `sendfile`.
                let file = store.file_span(&bytes);
                body.push(Piece { bytes, file });
            }
        }
        edge.cache.note_served(meta);
        let heads = meta.rendered.heads_or_init(|| self.render(meta));
        match &part {
            Some(r) => {
                let content_range = range::content_range(r, len);
                let body_len = r.end() - r.start() + 1;
                let status = http::StatusCode::PARTIAL_CONTENT;
                let (fixed, dated) = (&heads.part, heads.dated);
                let cr = Some(content_range.as_str());
                self.write_head(status, fixed, dated, meta, now, cr, Some(body_len), head);
            }
            None => {
                let status = http::StatusCode::OK;
                let (fixed, dated) = (&heads.full, heads.dated);
                self.write_head(status, fixed, dated, meta, now, None, Some(len), head);
            }
        }
        Some((if part.is_some() { 206 } else { 200 }, body))
    }
}
