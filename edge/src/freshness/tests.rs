//! RFC 9111 arithmetic and Cache-Control parsing, case by case.

use super::*;
use http::HeaderValue;

fn hm(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut m = HeaderMap::new();
    for (k, v) in pairs {
        m.append(*k, HeaderValue::from_str(v).unwrap());
    }
    m
}

#[test]
fn parses_directives() {
    let cc = CacheControl::parse(&hm(&[
        (
            "cache-control",
            "public, max-age=60, stale-while-revalidate=30",
        ),
        (
            "cache-control",
            "s-maxage=\"10\", stale-if-error=600, x-ext=\"a,b\"",
        ),
    ]));
    assert!(cc.public);
    assert_eq!(cc.max_age, Some(60));
    assert_eq!(cc.s_maxage, Some(10));
    assert_eq!(cc.stale_while_revalidate, Some(30));
    assert_eq!(cc.stale_if_error, Some(600));
    let cc = CacheControl::parse(&hm(&[("cache-control", "max-age=60, max-age=5")]));
    assert_eq!(cc.max_age, Some(5));
    let cc = CacheControl::parse(&hm(&[("cache-control", "max-age=abc")]));
    assert_eq!(cc.max_age, Some(0));
    let cc = CacheControl::parse(&hm(&[("pragma", "no-cache")]));
    assert!(cc.no_cache);
    let cc = CacheControl::parse(&hm(&[(
        "cache-control",
        "private=\"set-cookie\", no-store",
    )]));
    assert!(cc.private && cc.no_store);
}

#[test]
fn storability() {
    let none = CacheControl::default();
    let ok = |resp: HeaderMap, req: HeaderMap| {
        let cc = CacheControl::parse(&resp);
        let rcc = CacheControl::parse(&req);
        storable(StatusCode::OK, &resp, &cc, &req, &rcc)
    };
    assert_eq!(ok(hm(&[("cache-control", "max-age=5")]), hm(&[])), Ok(()));
    assert_eq!(
        ok(hm(&[("cache-control", "no-store")]), hm(&[])),
        Err(NotStorable::NoStore)
    );
    assert_eq!(
        ok(hm(&[("cache-control", "private")]), hm(&[])),
        Err(NotStorable::Private)
    );
    assert_eq!(
        ok(hm(&[("vary", "accept, *")]), hm(&[])),
        Err(NotStorable::VaryStar)
    );
    assert_eq!(
        ok(hm(&[]), hm(&[("authorization", "Bearer x")])),
        Err(NotStorable::Authorization)
    );
    assert_eq!(
        ok(
            hm(&[("cache-control", "public")]),
            hm(&[("authorization", "Bearer x")])
        ),
        Ok(())
    );
    assert_eq!(
        storable(StatusCode::NOT_FOUND, &hm(&[]), &none, &hm(&[]), &none),
        Ok(())
    );
    for status in [304, 400, 403, 412, 416, 500, 502, 503] {
        let status = StatusCode::from_u16(status).unwrap();
        assert_eq!(
            storable(status, &hm(&[]), &none, &hm(&[]), &none),
            Err(NotStorable::Status),
            "{status}"
        );
    }
    let nf = hm(&[("cache-control", "no-store")]);
    assert_eq!(
        storable(
            StatusCode::NOT_FOUND,
            &nf,
            &CacheControl::parse(&nf),
            &hm(&[]),
            &none
        ),
        Err(NotStorable::NoStore)
    );
    let sc = hm(&[("set-cookie", "a=b")]);
    assert_eq!(
        storable(StatusCode::GONE, &sc, &none, &hm(&[]), &none),
        Err(NotStorable::SetCookie)
    );
}

#[test]
fn negative_lifetimes() {
    let ttl = Duration::from_secs(10);
    let at = |status: u16, h: HeaderMap, ttl: Duration| {
        let cc = CacheControl::parse(&h);
        negative_lifetime(StatusCode::from_u16(status).unwrap(), &h, &cc, ttl)
    };
    // Heuristically cacheable without explicit freshness: the configured heuristic.
    for status in [203, 204, 300, 301, 308, 404, 405, 410, 414, 501] {
        assert_eq!(at(status, hm(&[]), ttl), Some(ttl), "{status}");
        assert_eq!(at(status, hm(&[]), Duration::ZERO), None, "{status}");
    }
    // Explicit freshness wins over the heuristic, whatever it is.
    let h = hm(&[("cache-control", "max-age=60")]);
    assert_eq!(at(410, h.clone(), ttl), Some(Duration::from_secs(60)));
    assert_eq!(
        at(410, h.clone(), Duration::ZERO),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        at(404, hm(&[("cache-control", "max-age=5, s-maxage=7")]), ttl),
        Some(Duration::from_secs(7))
    );
    let h = hm(&[
        ("date", "Sun, 01 Nov 2026 00:00:00 GMT"),
        ("expires", "Sun, 01 Nov 2026 00:00:30 GMT"),
    ]);
    assert_eq!(at(404, h, ttl), Some(Duration::from_secs(30)));
    // Temporary redirects only with explicit freshness.
    assert_eq!(at(302, hm(&[]), ttl), None);
    assert_eq!(
        at(302, hm(&[("cache-control", "max-age=30")]), ttl),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        at(307, hm(&[("cache-control", "s-maxage=30")]), ttl),
        Some(Duration::from_secs(30))
    );
    // Never: objects (stored as such), answers to the edge's own conditionals and ranges.
    for status in [200, 206, 304, 412, 416] {
        assert_eq!(
            at(status, hm(&[("cache-control", "max-age=60")]), ttl),
            None,
            "{status}"
        );
    }
    // Any other final status with explicit freshness, for as long as it says; without
    // it, errors are not stored.
    for status in [299, 303, 400, 401, 403, 429, 499, 500, 502, 503, 504, 599] {
        let want = if status >= 500 {
            ERROR_TTL_MAX
        } else {
            Duration::from_secs(60)
        };
        assert_eq!(
            at(status, hm(&[("cache-control", "max-age=60")]), ttl),
            Some(want),
            "{status}"
        );
        assert_eq!(
            at(status, hm(&[("cache-control", "max-age=3")]), ttl),
            Some(Duration::from_secs(3)),
            "{status}"
        );
        assert_eq!(at(status, hm(&[]), ttl), None, "{status}");
    }
}

#[test]
fn lifetimes() {
    let max = Duration::from_secs(86400);
    let h = hm(&[("cache-control", "max-age=10, s-maxage=20")]);
    assert_eq!(
        lifetime(&h, &CacheControl::parse(&h), max),
        Duration::from_secs(20)
    );
    let h = hm(&[
        ("date", "Sun, 01 Nov 2026 00:00:00 GMT"),
        ("expires", "Sun, 01 Nov 2026 00:01:00 GMT"),
    ]);
    assert_eq!(
        lifetime(&h, &CacheControl::parse(&h), max),
        Duration::from_secs(60)
    );
    let h = hm(&[("date", "Sun, 01 Nov 2026 00:00:00 GMT"), ("expires", "0")]);
    assert_eq!(lifetime(&h, &CacheControl::parse(&h), max), Duration::ZERO);
    let h = hm(&[
        ("date", "Sun, 01 Nov 2026 00:00:00 GMT"),
        ("last-modified", "Sun, 01 Nov 2026 00:00:00 GMT"),
    ]);
    assert_eq!(lifetime(&h, &CacheControl::parse(&h), max), Duration::ZERO);
    let h = hm(&[
        ("date", "Sun, 11 Oct 2026 00:00:00 GMT"),
        ("last-modified", "Thu, 01 Oct 2026 00:00:00 GMT"),
    ]);
    assert_eq!(
        lifetime(&h, &CacheControl::parse(&h), max),
        Duration::from_secs(86400)
    );
}

#[test]
fn ages_and_staleness() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let resp = hm(&[("age", "5"), ("date", &httpdate::fmt_http_date(t0))]);
    let t = Timing::new(t0, t0 + Duration::from_secs(1), &resp);
    assert_eq!(
        t.current_age(t0 + Duration::from_secs(11)),
        Duration::from_secs(16)
    );
    let cc = CacheControl::parse(&hm(&[(
        "cache-control",
        "max-age=10, stale-while-revalidate=5",
    )]));
    let none = CacheControl::default();
    let l = Duration::from_secs(10);
    assert_eq!(
        usability(&cc, l, Duration::from_secs(9), &none),
        Usability::Fresh
    );
    assert_eq!(
        usability(&cc, l, Duration::from_secs(12), &none),
        Usability::StaleWhileRevalidate
    );
    assert_eq!(
        usability(&cc, l, Duration::from_secs(16), &none),
        Usability::MustRevalidate
    );
    let req = CacheControl::parse(&hm(&[("cache-control", "no-cache")]));
    assert_eq!(
        usability(&cc, l, Duration::ZERO, &req),
        Usability::MustRevalidate
    );
    let mr = CacheControl::parse(&hm(&[(
        "cache-control",
        "max-age=10, must-revalidate, stale-while-revalidate=5, stale-if-error=60",
    )]));
    assert_eq!(
        usability(&mr, l, Duration::from_secs(12), &none),
        Usability::MustRevalidate
    );
    assert!(!stale_if_error_allows(
        &mr,
        &none,
        l,
        Duration::from_secs(12)
    ));
    let sie = CacheControl::parse(&hm(&[("cache-control", "max-age=10, stale-if-error=60")]));
    assert!(stale_if_error_allows(
        &sie,
        &none,
        l,
        Duration::from_secs(60)
    ));
    assert!(!stale_if_error_allows(
        &sie,
        &none,
        l,
        Duration::from_secs(80)
    ));
}
const CDN: &[&str] = &["CDN-Cache-Control"];

#[test]
fn targeted_field_replaces_cache_control_and_expires() {
    let max = Duration::from_secs(86400);
    let cc = |h: &HeaderMap| CacheControl::for_response(h, CDN);
    // no-store downstream, stored here for 60 s.
    let h = hm(&[
        ("cache-control", "no-store"),
        ("cdn-cache-control", "max-age=60"),
    ]);
    let c = cc(&h);
    assert!(c.targeted && !c.no_store);
    assert_eq!(storable(StatusCode::OK, &h, &c, &hm(&[]), &c), Ok(()));
    assert_eq!(lifetime(&h, &c, max), Duration::from_secs(60));
    // The other way round: not stored here.
    let h = hm(&[
        ("cache-control", "max-age=60"),
        ("cdn-cache-control", "no-store"),
    ]);
    let c = cc(&h);
    assert_eq!(
        storable(StatusCode::OK, &h, &c, &hm(&[]), &CacheControl::default()),
        Err(NotStorable::NoStore)
    );
    let h = hm(&[
        ("cache-control", "max-age=60"),
        ("cdn-cache-control", "private"),
    ]);
    assert_eq!(
        storable(
            StatusCode::OK,
            &h,
            &cc(&h),
            &hm(&[]),
            &CacheControl::default()
        ),
        Err(NotStorable::Private)
    );
    let h = hm(&[
        ("cache-control", "max-age=60"),
        ("cdn-cache-control", "no-cache"),
    ]);
    let c = cc(&h);
    assert!(c.no_cache && !may_serve_stale(&c));
    // Expires is ignored with the targeted field, whichever way it points.
    let h = hm(&[
        ("cdn-cache-control", "max-age=0"),
        ("date", "Sun, 01 Nov 2026 00:00:00 GMT"),
        ("expires", "Sun, 01 Nov 2026 01:00:00 GMT"),
    ]);
    assert_eq!(lifetime(&h, &cc(&h), max), Duration::ZERO);
    let h = hm(&[
        ("cdn-cache-control", "max-age=3600"),
        ("date", "Sun, 01 Nov 2026 00:00:00 GMT"),
        ("expires", "0"),
    ]);
    assert_eq!(lifetime(&h, &cc(&h), max), Duration::from_secs(3600));
    // A short targeted max-age wins over a long Cache-Control one, and an extension
    // directive is ignored.
    let h = hm(&[
        ("cache-control", "max-age=3600"),
        ("cdn-cache-control", "foobar, max-age=1"),
    ]);
    assert_eq!(lifetime(&h, &cc(&h), max), Duration::from_secs(1));
    // Field lines combine into one dictionary.
    let h = hm(&[
        ("cdn-cache-control", "max-age=30"),
        ("cdn-cache-control", "must-revalidate"),
    ]);
    let c = cc(&h);
    assert_eq!((c.max_age, c.must_revalidate), (Some(30), true));
    // Without the field, or with only a field not on the target list: Cache-Control.
    let h = hm(&[
        ("cache-control", "max-age=7"),
        ("other-cdn-cache-control", "max-age=60"),
    ]);
    assert_eq!(cc(&h).max_age, Some(7));
    assert!(!cc(&h).targeted);
    // Target list order decides, not field order.
    let h = hm(&[
        ("cdn-cache-control", "max-age=60"),
        ("example-cdn-cache-control", "max-age=5"),
    ]);
    let c = CacheControl::for_response(&h, &["Example-CDN-Cache-Control", "CDN-Cache-Control"]);
    assert_eq!(c.max_age, Some(5));
}

#[test]
fn invalid_or_empty_targeted_fields_are_ignored() {
    let base = [("cache-control", "no-store")];
    for bad in [
        "max-age=10000, &&&&&",
        "max-age =100",
        "max-age= 100",
        "MaX-aGe=3600",
        "max-age=60,",
        ", max-age=60",
        "max-age=1234567890123456",
        "max-age=\"60",
        "max-age=60 no-store",
        "",
        " ",
    ] {
        let mut h = hm(&base);
        h.append("cdn-cache-control", HeaderValue::from_str(bad).unwrap());
        let c = CacheControl::for_response(&h, CDN);
        assert!(!c.targeted && c.no_store, "{bad:?}: {c:?}");
    }
    // Valid, but a value of the wrong type: that directive alone is ignored.
    for (value, want) in [
        ("max-age=\"10000\"", None),
        ("max-age=-5", None),
        ("max-age=1.5", None),
        ("max-age=?1", None),
        ("max-age=60;foo=bar", Some(60)),
        ("max-age=60, x=(a b);q=1, y=:aGVsbG8=:, z=tok/en", Some(60)),
    ] {
        let mut h = hm(&base);
        h.append("cdn-cache-control", HeaderValue::from_str(value).unwrap());
        let c = CacheControl::for_response(&h, CDN);
        assert!(c.targeted && !c.no_store, "{value:?}: {c:?}");
        assert_eq!(c.max_age, want, "{value:?}");
    }
    let h = hm(&[("cdn-cache-control", "no-store=?0, private=\"x\"")]);
    let c = CacheControl::for_response(&h, CDN);
    assert!(!c.no_store && c.private);
    // The largest Integer a Structured Field holds.
    let h = hm(&[("cdn-cache-control", "max-age=999999999999999")]);
    let c = CacheControl::for_response(&h, CDN);
    assert_eq!(c.max_age, Some(999_999_999_999_999));
}

#[test]
fn age_is_the_first_member_of_the_first_line_or_ignored() {
    let age = |lines: &[&str]| {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(header::AGE, HeaderValue::from_str(l).unwrap());
        }
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        Timing::new(t0, t0, &h).age_value
    };
    assert_eq!(age(&["7200, 0"]), 7200);
    assert_eq!(age(&["0, 7200"]), 0);
    assert_eq!(age(&["7200", "0"]), 7200);
    assert_eq!(age(&[" 30 "]), 30);
    for invalid in ["abc", "-7200", "7200.0", "10abc", "7200;foo=bar", "+5", ""] {
        assert_eq!(age(&[invalid]), 0, "{invalid:?}");
    }
    assert_eq!(age(&["2147483648"]), 2_147_483_648);
    assert_eq!(age(&["99999999999999999999999"]), u64::MAX);
    assert_eq!(age(&[]), 0);
}

#[test]
fn delta_seconds_saturate_and_must_understand_lifts_no_store() {
    let cc = CacheControl::parse(&hm(&[("cache-control", "max-age=99999999999999999999")]));
    assert_eq!(cc.max_age, Some(u64::MAX));
    let cc = CacheControl::parse(&hm(&[("cache-control", "max-age=-1")]));
    assert_eq!(cc.max_age, Some(0));
    let h = hm(&[("cache-control", "max-age=3600, no-store, must-understand")]);
    let c = CacheControl::parse(&h);
    let none = CacheControl::default();
    assert_eq!(storable(StatusCode::OK, &h, &c, &hm(&[]), &none), Ok(()));
    let s599 = StatusCode::from_u16(599).unwrap();
    // A status the edge does not understand: no-store holds.
    assert_eq!(
        storable(s599, &h, &c, &hm(&[]), &none),
        Err(NotStorable::NoStore)
    );
    let s404 = StatusCode::NOT_FOUND;
    assert_eq!(storable(s404, &h, &c, &hm(&[]), &none), Ok(()));
}

#[test]
fn no_cache_is_never_served_stale() {
    let l = Duration::from_secs(10);
    let nc = CacheControl::parse(&hm(&[(
        "cache-control",
        "max-age=10, no-cache, stale-if-error=600, stale-while-revalidate=600",
    )]));
    let none = CacheControl::default();
    assert!(!stale_if_error_allows(
        &nc,
        &none,
        l,
        Duration::from_secs(12)
    ));
    let req = CacheControl::parse(&hm(&[("cache-control", "stale-if-error=600")]));
    assert!(!stale_if_error_allows(
        &nc,
        &req,
        l,
        Duration::from_secs(12)
    ));
}

#[test]
fn huge_values_do_not_overflow() {
    // Regression (fuzz/cache_headers): Age and min-fresh of u64::MAX seconds.
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let resp = hm(&[
        ("age", "18446744073709551615"),
        (
            "cache-control",
            "max-age=18446744073709551615, stale-while-revalidate=18446744073709551615",
        ),
    ]);
    let timing = Timing::new(t0, t0 + Duration::from_millis(5), &resp);
    let age = timing.current_age(t0 + Duration::from_secs(10));
    assert_eq!(age, Duration::MAX);
    let cc = CacheControl::parse(&resp);
    let req = CacheControl::parse(&hm(&[(
        "cache-control",
        "min-fresh=18446744073709551615, max-stale=18446744073709551615",
    )]));
    let lifetime = lifetime(&resp, &cc, Duration::from_secs(60));
    let _ = usability(&cc, lifetime, Duration::from_secs(3), &req);
    let _ = usability(&cc, lifetime, age, &req);
    let _ = stale_if_error_allows(&cc, &req, lifetime, age);
}
