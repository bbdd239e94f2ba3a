//! The edge's RFC 9111 arithmetic on arbitrary request and response headers
//! (cdn_edge::freshness: Cache-Control and targeted (CDN-Cache-Control, a Structured Fields
//! Dictionary) parsing, storable, lifetime, age, usability, stale-if-error) and the
//! Vary-derived cache key (cdn_edge::cache::variant_key over cdn_edge::store::variant_key):
//! no panic, no overflow.
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use libfuzzer_sys::fuzz_target;

use cdn_edge::freshness::{self, CacheControl, Timing};
use cdn_edge::cache;

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [s] = common::take::<1>(&mut data);
    let after = common::take_u64(&mut data);
    let status = [200u16, 206, 204, 301, 404, 500, 304][s as usize % 7];
    let status = StatusCode::from_u16(status).expect("valid");
    let (resp_part, req_part) = common::split_sections(data);
    let resp = common::headers(resp_part);
    let req = common::headers(req_part);
    // A response may carry CDN-Cache-Control: the targeted field replaces Cache-Control.
    let cc = CacheControl::for_response(&resp, &["CDN-Cache-Control"]);
    let req_cc = CacheControl::parse(&req);
    let _ = freshness::storable(status, &resp, &cc, &req, &req_cc);
    let lifetime = freshness::lifetime(&resp, &cc, Duration::from_secs(86_400));
    let request_time = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let response_time = request_time + Duration::from_millis(after % 10_000);
    let timing = Timing::new(request_time, response_time, &resp);
    let now: SystemTime = response_time + Duration::from_secs(after % (1 << 40));
    let age = timing.current_age(now);
    let _ = freshness::usability(&cc, lifetime, age, &req_cc);
    let _ = freshness::stale_if_error_allows(&cc, &req_cc, lifetime, age);
    let _ = freshness::may_serve_stale(&cc);
    let vary = cache::vary_names(&resp);
    let a = cache::variant_key("http://o/p", &vary, &req);
    let b = cache::variant_key("http://o/p", &vary, &req);
    assert_eq!(a, b);
    assert!(a.starts_with("http://o/p"));
});
