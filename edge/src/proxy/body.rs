//! The body of a stored response: whether every chunk it needs is stored ([`stored`]),
//! whether filling the missing ones keeps within the origin-cost bounds ([`within_bounds`],
//! RangeAmp), and the body itself, chunk by chunk from the cache ([`Chunks`]).

use std::ops::RangeInclusive;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::ConnectInfo;
use bytes::Bytes;
use futures::StreamExt;
use http::Method;

use cdn_http::ByteStream;
use cdn_http::represent::{self, Plan, Source};

use crate::cache::{CacheOutcome, Verdict};
use crate::node::Edge;
use crate::store::ObjectMeta;

/// Whether every chunk the planned body needs is stored. A body within one chunk takes that
/// chunk in the same lookup (into `at_hand`); larger bodies only check, and stream the chunks
/// when they get to them.
pub(super) async fn stored(
    edge: &Edge,
    meta: &ObjectMeta,
    plan: &Plan,
    method: &Method,
    at_hand: &mut Option<(u64, Bytes)>,
) -> bool {
    let cs = meta.chunk_size;
    let mut ranges = plan.body_ranges(method, meta.len);
    let (first, second) = (ranges.next(), ranges.next());
    if let (Some(r), None) = (&first, &second)
        && r.start() / cs == r.end() / cs
    {
        let index = r.start() / cs;
        return match edge.cache.stored_chunk(meta, index).await {
            Some(bytes) => {
                *at_hand = Some((index, bytes));
                true
            }
            None => false,
        };
    }
    first
        .into_iter()
        .chain(second)
        .chain(ranges)
        .all(|r| (r.start() / cs..=r.end() / cs).all(|i| edge.cache.has_chunk(meta, i)))
}

/// Whether filling what `plan`'s body needs keeps within the bounds on origin bytes (RangeAmp):
/// per request, at most two chunks plus twice the bytes asked for (the chunk a miss probed
/// counts as one of the two); per client, amplified bytes (chunk bytes fetched for it beyond
/// what it asks for, the probed chunk included) within its budget ([`crate::budget`]). The
/// probe has happened already: its cost is charged whatever the answer, so a client that
/// overspends is in debt and its next Range misses go to the origin as asked. A single range
/// always keeps the per-request bound (its chunks exceed it by at most the two partly
/// covered ones), so only those (and the probed chunk) are looked at; sparse multi-range
/// requests count missing chunks, stopping past the bound.
pub(super) fn within_bounds(
    edge: &Edge,
    parts: &http::request::Parts,
    meta: &ObjectMeta,
    plan: &Plan,
    verdict: &Verdict,
) -> bool {
    let cs = meta.chunk_size;
    // A chunk another fill (or the probe this request led) is bringing costs it nothing.
    let missing = |i: u64| edge.cache.must_fill(meta, i);
    let span_len = |i: u64| {
        let (s, e) = meta.chunk_span(i);
        e - s + 1
    };
    let ranges: Vec<_> = plan.body_ranges(&parts.method, meta.len).collect();
    // Bytes of chunk `i` the request asks for.
    let asked_in = |i: u64| -> u64 {
        let (s, e) = meta.chunk_span(i);
        ranges
            .iter()
            .filter(|r| *r.start() <= e && *r.end() >= s)
            .map(|r| e.min(*r.end()) - s.max(*r.start()) + 1)
            .sum::<u64>()
            .min(e - s + 1)
    };
    let asked: u64 = ranges.iter().map(|r| r.end() - r.start() + 1).sum();
    // The chunk this request's own probe fetched (the one holding its first byte, or the
    // first chunk when that byte was past the end).
    let led = verdict.kind == CacheOutcome::Miss
        && verdict.fwd == Some("miss")
        && verdict.stored
        && !verdict.collapsed
        && meta.len > 0;
    let probed = led.then(|| {
        let hint = cdn_http::range::first_byte_hint(&parts.headers);
        if hint < meta.len { hint / cs } else { 0 }
    });
    let probe_cost = probed.map_or(0, |p| span_len(p) - asked_in(p));
    let client = parts
        .extensions
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let refuse = || {
        edge.cache.budgets().charge(client, probe_cost);
        edge.metrics
            .with(|| metrics::counter!("cdn_edge_amplification_refused_total").increment(1));
        false
    };
    let fill_cost = if ranges.len() <= 1 {
        // Only the partly covered first and last chunks hold bytes not asked for.
        ranges.first().map_or(0, |r| {
            let (a, b) = (r.start() / cs, r.end() / cs);
            let ends = if a == b { vec![a] } else { vec![a, b] };
            ends.into_iter()
                .filter(|&i| Some(i) != probed && missing(i))
                .map(|i| span_len(i) - asked_in(i))
                .sum()
        })
    } else {
        // What the fills may cost besides the probe: two chunks (less the probed one) plus
        // twice the bytes asked for.
        let bound = asked
            .saturating_mul(2)
            .saturating_add(if led { cs } else { 2 * cs });
        let mut fetch = 0u64;
        let mut extra = 0u64;
        let mut seen = std::collections::BTreeSet::new();
        'count: for r in &ranges {
            for i in r.start() / cs..=r.end() / cs {
                if seen.insert(i) && Some(i) != probed && missing(i) {
                    fetch += span_len(i);
                    extra += span_len(i) - asked_in(i);
                    if fetch > bound {
                        break 'count;
                    }
                }
            }
        }
        if fetch > bound {
            return refuse();
        }
        extra
    };
    if fill_cost == 0 {
        edge.cache.budgets().charge(client, probe_cost);
        return true;
    }
    if edge
        .cache
        .budgets()
        .take(client, fill_cost.saturating_add(probe_cost))
    {
        return true;
    }
    refuse()
}

/// The chunks of one object version as a [`Source`]: a body within the chunk already taken
/// is that chunk's slice; anything else streams.
pub(super) struct Chunks {
    pub(super) edge: Arc<Edge>,
    pub(super) meta: Arc<ObjectMeta>,
    pub(super) at_hand: Option<(u64, Bytes)>,
    pub(super) readahead: bool,
}

impl Source for Chunks {
    fn stream(&self, range: RangeInclusive<u64>) -> ByteStream {
        let readahead = if self.readahead {
            self.edge.cfg.readahead
        } else {
            0
        };
        chunk_stream(self.edge.clone(), self.meta.clone(), range, readahead)
    }

    fn body(&self, range: RangeInclusive<u64>) -> Body {
        let cs = self.meta.chunk_size;
        if let Some((index, bytes)) = &self.at_hand
            && range.start() / cs == *index
            && range.end() / cs == *index
        {
            let from = (range.start() - index * cs) as usize;
            let to = (range.end() - index * cs) as usize;
            if to < bytes.len() {
                return Body::from(bytes.slice(from..=to));
            }
        }
        Body::from_stream(self.stream(range))
    }
}

/// Starts the read-ahead of a body that reads chunk `index` on its way from chunk `first` to
/// byte `end` (see [`chunk_stream`]): the next `readahead` chunks, once the reader is
/// sequential.
pub(super) fn read_ahead(
    edge: &Edge,
    meta: &Arc<ObjectMeta>,
    index: u64,
    first: u64,
    end: u64,
    readahead: u64,
) {
    let (_, cend) = meta.chunk_span(index);
    let crossed = index > first;
    if end > cend || (crossed && end == cend) {
        for ahead in 1..=readahead {
            edge.cache.prefetch(meta, index + ahead);
        }
    }
}

/// Streams `range` of an object chunk by chunk.
///
/// Read-ahead of the next `readahead` chunks starts at a chunk the reader goes on to the end
/// of, and only once the reading is sequential: this response has crossed from one chunk
/// into the next, or its range goes on past the current chunk (it spans at least two). A
/// response within one chunk never reads ahead, so a viewer that asks for one chunk and
/// leaves costs the origin that chunk alone.
fn chunk_stream(
    edge: Arc<Edge>,
    meta: Arc<ObjectMeta>,
    range: RangeInclusive<u64>,
    readahead: u64,
) -> ByteStream {
    let (start, end) = (*range.start(), *range.end());
    let len = end - start + 1;
    let first = start / meta.chunk_size;
    let last = end / meta.chunk_size;
    // Each chunk is read from the store or, as its bytes arrive, from its fill (tier.rs: a
    // chunk crosses the tiers in pipeline); the stream stops at the first error.
    let stream = futures::stream::iter(first..=last)
        .map(move |index| {
            let (cstart, cend) = meta.chunk_span(index);
            read_ahead(&edge, &meta, index, first, end, readahead);
            let (from, to) = (start.max(cstart) - cstart, end.min(cend) - cstart + 1);
            let key = meta.version.key.clone();
            edge.cache
                .chunk_window(&meta, index, from, to)
                .map(move |r| {
                    r.map_err(|e| {
                        tracing::warn!(%key, index, error = %e, "chunk fill failed; aborting response");
                        std::io::Error::other(e.to_string())
                    })
                })
        })
        .flatten()
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            *failed = item.is_err();
            futures::future::ready(Some(item))
        })
        .boxed();
    represent::exact_len(stream, len)
}
