//! `Range` evaluation, `Content-Range` parsing, the first-byte hint and multipart planning
//! (cdn_http::range, cdn_http::multipart): no panic, and every answer is consistent.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use libfuzzer_sys::fuzz_target;

use cdn_http::range::{self, RangeRequest};

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let raw_len = common::take_u64(&mut data);
    // Lengths of every size, but multipart bodies are only streamed for small ones.
    let len = if raw_len & 1 == 0 { raw_len >> 1 } else { (raw_len >> 1) % 4096 };
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match range::evaluate_str(value, len) {
        RangeRequest::Full | RangeRequest::Unsatisfiable => {}
        RangeRequest::Ranges(ranges) => {
            assert!(!ranges.is_empty() && ranges.len() <= range::MAX_RANGES);
            assert!(len > 0, "ranges of an empty representation");
            for r in &ranges {
                assert!(r.start() <= r.end() && *r.end() < len, "{r:?} of {len}");
                let cr = range::content_range(r, len);
                assert_eq!(range::parse_content_range(&cr), Some((r.clone(), Some(len))));
            }
            if ranges.len() > 1 && len <= 4096 {
                let mp = cdn_http::multipart::Multipart::plan(&ranges, len, "video/mp4");
                let want = mp.content_length;
                let source: Arc<cdn_http::represent::SourceFn> = Arc::new(|r| {
                    let n = (r.end() - r.start() + 1) as usize;
                    futures::stream::once(async move { Ok(Bytes::from(vec![7u8; n])) }).boxed()
                });
                let body = futures::executor::block_on(
                    mp.into_stream(source)
                        .map(|b| b.expect("no error").len() as u64)
                        .collect::<Vec<_>>(),
                );
                assert_eq!(body.iter().sum::<u64>(), want, "multipart length");
            }
        }
    }
    if let Some((r, complete)) = range::parse_content_range(value) {
        assert!(r.start() <= r.end());
        if let Some(n) = complete {
            assert!(*r.end() < n);
        }
    }
    if let Ok(v) = http::HeaderValue::from_str(value) {
        let mut h = http::HeaderMap::new();
        h.insert(http::header::RANGE, v);
        let _ = range::first_byte_hint(&h);
        assert_eq!(range::evaluate(&h, len), range::evaluate_str(value, len));
    }
});
