//! Preconditions and If-Range (cdn_http::conditional) and the whole responder
//! (cdn_http::respond) on arbitrary request headers: no panic, and the status, the headers and
//! the body agree (Content-Length is the body's length, a 206 carries what Content-Range says).
#![no_main]

#[path = "common.rs"]
mod common;

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;

use cdn_http::conditional::{self, Validators};
use cdn_http::{Representation, respond};

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let [m, flags] = common::take::<2>(&mut data);
    let len = common::take_u64(&mut data) % 8192;
    let lm_secs = common::take_u64(&mut data) % 4_000_000_000;
    let method = match m % 4 {
        0 => Method::GET,
        1 => Method::HEAD,
        2 => Method::PUT,
        _ => Method::DELETE,
    };
    let (validator_part, req_part) = common::split_sections(data);
    let etag = std::str::from_utf8(validator_part)
        .ok()
        .filter(|_| flags & 1 == 1)
        .map(str::to_string);
    let validators = Validators {
        etag,
        last_modified: (flags & 2 == 2).then(|| UNIX_EPOCH + Duration::from_secs(lm_secs)),
    };
    let req = common::headers(req_part);
    let _ = conditional::evaluate(&method, &req, &validators);
    let _ = conditional::if_range_allows(&req, &validators);
    if method != Method::GET && method != Method::HEAD {
        return;
    }
    let rep = Representation {
        len,
        content_type: HeaderValue::from_static("video/mp4"),
        validators,
        headers: HeaderMap::new(),
        full_headers: HeaderMap::new(),
    };
    let resp = respond(&method, &req, &rep, |r| {
        let n = (r.end() - r.start() + 1) as usize;
        // Byte i of the representation is i % 251, so a wrong offset shows.
        let bytes: Vec<u8> = (*r.start()..=*r.end()).map(|i| (i % 251) as u8).collect();
        assert_eq!(bytes.len(), n);
        futures::stream::once(async move { Ok(Bytes::from(bytes)) }).boxed()
    });
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = futures::executor::block_on(resp.into_body().collect())
        .expect("body streams")
        .to_bytes();
    let declared: Option<u64> = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    match status {
        StatusCode::OK => {
            assert_eq!(declared, Some(len));
            let want = if method == Method::HEAD { 0 } else { len };
            assert_eq!(body.len() as u64, want);
            for (i, b) in body.iter().enumerate() {
                assert_eq!(*b, (i % 251) as u8);
            }
        }
        StatusCode::PARTIAL_CONTENT => {
            assert_eq!(method, Method::GET);
            assert_eq!(declared, Some(body.len() as u64));
            if let Some(cr) = headers.get(header::CONTENT_RANGE) {
                let (r, total) =
                    cdn_http::range::parse_content_range(cr.to_str().unwrap()).expect("valid");
                assert_eq!(total, Some(len));
                assert_eq!(body.len() as u64, r.end() - r.start() + 1);
                for (k, b) in body.iter().enumerate() {
                    assert_eq!(*b, ((r.start() + k as u64) % 251) as u8);
                }
            }
        }
        StatusCode::NOT_MODIFIED
        | StatusCode::PRECONDITION_FAILED
        | StatusCode::RANGE_NOT_SATISFIABLE => assert!(body.is_empty()),
        s => panic!("unexpected status {s}"),
    }
});
