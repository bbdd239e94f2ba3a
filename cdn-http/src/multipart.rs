//! `multipart/byteranges` bodies for multi-range 206 responses (RFC 9110 §14.6).
//!
//! The length of the whole body is known before the first byte is sent, so responses carry a
//! Content-Length and the parts are streamed from the representation's source one by one.

use std::ops::RangeInclusive;
use std::sync::Arc;

use bytes::Bytes;
use futures::{StreamExt, stream};
use rand::Rng;
use rand::distr::Alphanumeric;

use crate::range::content_range;
use crate::represent::{ByteStream, SourceFn};

/// A multipart/byteranges body, planned but not yet streamed.
pub struct Multipart {
    /// `multipart/byteranges; boundary=...`
    pub content_type: String,
    /// Exact length of the body, delimiters included.
    pub content_length: u64,
    parts: Vec<(Bytes, RangeInclusive<u64>)>,
    trailer: Bytes,
}

impl Multipart {
    /// Plans the body for `ranges` of a representation of `len` bytes of `part_type`.
    pub fn plan(ranges: &[RangeInclusive<u64>], len: u64, part_type: &str) -> Self {
        let boundary: String = rand::rng()
            .sample_iter(Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        let mut content_length = 0;
        let parts = ranges
            .iter()
            .map(|r| {
                let head = format!(
                    "\r\n--{boundary}\r\ncontent-type: {part_type}\r\ncontent-range: {}\r\n\r\n",
                    content_range(r, len)
                );
                content_length += head.len() as u64 + (r.end() - r.start() + 1);
                (Bytes::from(head), r.clone())
            })
            .collect();
        let trailer = Bytes::from(format!("\r\n--{boundary}--\r\n"));
        content_length += trailer.len() as u64;
        Multipart {
            content_type: format!("multipart/byteranges; boundary={boundary}"),
            content_length,
            parts,
            trailer,
        }
    }

    /// Streams the body, reading each part from `source`.
    pub fn into_stream(self, source: Arc<SourceFn>) -> ByteStream {
        let trailer = self.trailer;
        stream::iter(self.parts)
            .flat_map(move |(head, range)| {
                stream::once(async move { Ok(head) }).chain((source)(range))
            })
            .chain(stream::once(async move { Ok(trailer) }))
            .boxed()
    }
}
