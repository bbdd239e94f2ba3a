//! The peer protocol's frame bodies (cdn_edge::peer::wire and client): the JSON a peer sends
//! (GET requests, object metadata, pushes, advertisements) and its conversion into stored
//! metadata. A peer is authenticated, but a bug or a compromised node must not crash another.
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;

use cdn_edge::peer::client::{Advertise, PushHeader};
use cdn_edge::peer::wire::{GetRequest, WireMeta};

fn check_meta(w: WireMeta) {
    let Some(meta) = w.into_meta(&["CDN-Cache-Control"]) else {
        return;
    };
    let count = meta.chunk_count();
    for i in 0..count.min(3) {
        let (s, e) = meta.chunk_span(i);
        assert!(s <= e && e < meta.len);
        let _ = meta.chunk_key(i);
    }
    let now = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
    let _ = meta.age(now);
    let back = WireMeta::from_meta(&meta);
    assert_eq!(back.len, meta.len);
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [kind] = common::take::<1>(&mut data);
    match kind % 4 {
        0 => {
            if let Ok(r) = serde_json::from_slice::<GetRequest>(data) {
                let _ = serde_json::to_vec(&r);
            }
        }
        1 => {
            if let Ok(w) = serde_json::from_slice::<WireMeta>(data) {
                check_meta(w);
            }
        }
        2 => {
            if let Ok(p) = serde_json::from_slice::<PushHeader>(data) {
                check_meta(p.meta);
            }
        }
        _ => {
            let _ = serde_json::from_slice::<Advertise>(data);
        }
    }
});
