//! RFC 9111 for a shared cache, without I/O: Cache-Control parsing, whether a response may be
//! stored, its freshness lifetime (s-maxage, max-age, Expires, heuristic), its current age
//! (§4.2.3), and when a stale response may still be served (RFC 5861). Besides 200 and 206
//! (objects, stored in chunks), some final statuses are stored whole as *negative* responses
//! (404, 410, 301, ...): [`negative_status`] and [`negative_lifetime`] say which and how long.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};

/// The Cache-Control directives a shared cache acts on. Unknown directives are ignored;
/// a repeated directive keeps its most restrictive value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub no_store: bool,
    pub no_cache: bool,
    pub private: bool,
    pub public: bool,
    pub must_revalidate: bool,
    pub proxy_revalidate: bool,
    pub immutable: bool,
    pub only_if_cached: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `max-stale` with no value accepts any staleness: `Some(u64::MAX)`.
    pub max_stale: Option<u64>,
}

fn min_opt(a: Option<u64>, b: u64) -> Option<u64> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl CacheControl {
    /// Parses every Cache-Control field of `headers` (and `Pragma: no-cache` when there is no
    /// Cache-Control, as RFC 9111 §5.4 allows for requests).
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut cc = CacheControl::default();
        let mut seen = false;
        for value in headers.get_all(header::CACHE_CONTROL) {
            let Ok(value) = value.to_str() else { continue };
            seen = true;
            for directive in split_directives(value) {
                let (name, arg) = match directive.split_once('=') {
                    Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                    None => (directive.trim(), None),
                };
                let secs = arg.and_then(|a| a.parse::<u64>().ok());
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "immutable" => cc.immutable = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    // An invalid delta-seconds makes the response stale (RFC 9111 §4.2.1).
                    "max-age" => cc.max_age = min_opt(cc.max_age, secs.unwrap_or(0)),
                    "s-maxage" => cc.s_maxage = min_opt(cc.s_maxage, secs.unwrap_or(0)),
                    "stale-while-revalidate" => {
                        if let Some(s) = secs {
                            cc.stale_while_revalidate = min_opt(cc.stale_while_revalidate, s)
                        }
                    }
                    "stale-if-error" => {
                        if let Some(s) = secs {
                            cc.stale_if_error = min_opt(cc.stale_if_error, s)
                        }
                    }
                    "min-fresh" => cc.min_fresh = secs.or(cc.min_fresh),
                    "max-stale" => cc.max_stale = Some(secs.unwrap_or(u64::MAX)),
                    _ => {}
                }
            }
        }
        if !seen
            && headers.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
            })
        {
            cc.no_cache = true;
        }
        cc
    }
}

/// Splits a Cache-Control value on commas outside quoted strings.
fn split_directives(value: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted) = (0, false);
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&value[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect()
}

/// Why a response was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    Status,
    NoStore,
    Private,
    VaryStar,
    SetCookie,
    Authorization,
    RequestNoStore,
}

/// Whether RFC 9110 §15.1 lets a cache give `status` a heuristic freshness lifetime.
pub fn heuristically_cacheable(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 206 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Final statuses other than 200 and 206 that the edge understands well enough to store and
/// replay whole (RFC 9111 §3: "the cache understands the response status code"): the
/// heuristically cacheable ones plus the temporary redirects 302 and 307.
///
/// Never stored: 1xx; 304, 412 and 416 (answers to the edge's own conditional and Range
/// requests, not to the client's); 5xx other than 501 (a failing origin must be asked again);
/// and statuses that typically depend on request fields outside the cache key or on the
/// client — 400, 401, 403, 407, 408, 413, 429, 431 ... — since storing those would let one
/// malformed request deny a URL to everyone (cache-poisoned denial of service).
pub fn negative_status(status: StatusCode) -> bool {
    let s = status.as_u16();
    s != 200 && s != 206 && (heuristically_cacheable(status) || s == 302 || s == 307)
}

/// Whether the response carries an explicit expiration time (RFC 9111 §4.2.1): s-maxage,
/// max-age or Expires.
pub fn has_explicit_freshness(resp: &HeaderMap, cc: &CacheControl) -> bool {
    cc.s_maxage.is_some() || cc.max_age.is_some() || resp.contains_key(header::EXPIRES)
}

/// The freshness lifetime of a negative response (a [`negative_status`]), or `None` when it
/// must not be stored: the explicit lifetime when there is one; otherwise `heuristic` (the
/// edge's `negative_ttl_secs`) for heuristically cacheable statuses, unless it is zero.
pub fn negative_lifetime(
    status: StatusCode,
    resp: &HeaderMap,
    cc: &CacheControl,
    heuristic: Duration,
) -> Option<Duration> {
    if !negative_status(status) {
        return None;
    }
    if has_explicit_freshness(resp, cc) {
        return Some(lifetime(resp, cc, Duration::ZERO));
    }
    (heuristically_cacheable(status) && !heuristic.is_zero()).then_some(heuristic)
}

/// RFC 9111 §3 for a shared cache; also refuses responses that set cookies (as Varnish does),
/// so that one viewer's cookie is never handed to another. `status` must be 200, 206 or a
/// [`negative_status`] (whose freshness [`negative_lifetime`] checks separately).
pub fn storable(
    status: StatusCode,
    resp: &HeaderMap,
    resp_cc: &CacheControl,
    req: &HeaderMap,
    req_cc: &CacheControl,
) -> Result<(), NotStorable> {
    if status != StatusCode::OK && status != StatusCode::PARTIAL_CONTENT && !negative_status(status)
    {
        return Err(NotStorable::Status);
    }
    if req_cc.no_store {
        return Err(NotStorable::RequestNoStore);
    }
    if resp_cc.no_store {
        return Err(NotStorable::NoStore);
    }
    if resp_cc.private {
        return Err(NotStorable::Private);
    }
    if req.contains_key(header::AUTHORIZATION)
        && !(resp_cc.public || resp_cc.s_maxage.is_some() || resp_cc.must_revalidate)
    {
        return Err(NotStorable::Authorization);
    }
    if resp.get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(|f| f.trim() == "*"))
    }) {
        return Err(NotStorable::VaryStar);
    }
    if resp.contains_key(header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    Ok(())
}

fn date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
}

/// The freshness lifetime (RFC 9111 §4.2.1), heuristic (10% of the time since
/// Last-Modified, capped) only when nothing explicit is given (§4.2.2: 200 and 206 are
/// heuristically cacheable).
pub fn lifetime(resp: &HeaderMap, cc: &CacheControl, heuristic_max: Duration) -> Duration {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Duration::from_secs(s);
    }
    if resp.contains_key(header::EXPIRES) {
        // An invalid Expires means "already expired".
        let expires = date(resp, header::EXPIRES);
        let base = date(resp, header::DATE);
        return match (expires, base) {
            (Some(e), Some(d)) => e.duration_since(d).unwrap_or_default(),
            _ => Duration::ZERO,
        };
    }
    match (date(resp, header::LAST_MODIFIED), date(resp, header::DATE)) {
        (Some(lm), Some(d)) => (d.duration_since(lm).unwrap_or_default() / 10).min(heuristic_max),
        _ => Duration::ZERO,
    }
}

/// The timing facts kept with a stored response for the age calculation of RFC 9111 §4.2.3.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    pub date: SystemTime,
    pub age_value: u64,
}

impl Timing {
    pub fn new(request_time: SystemTime, response_time: SystemTime, resp: &HeaderMap) -> Self {
        let age_value = resp
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        Timing {
            request_time,
            response_time,
            date: date(resp, header::DATE).unwrap_or(response_time),
            age_value,
        }
    }

    /// current_age per RFC 9111 §4.2.3.
    pub fn current_age(&self, now: SystemTime) -> Duration {
        let apparent = self
            .response_time
            .duration_since(self.date)
            .unwrap_or_default();
        let delay = self
            .response_time
            .duration_since(self.request_time)
            .unwrap_or_default();
        // Saturating: Age and the request's min-fresh come from outside (u64::MAX overflowed
        // Duration arithmetic and panicked; found by fuzz/cache_headers).
        let corrected_age = Duration::from_secs(self.age_value).saturating_add(delay);
        let initial = apparent.max(corrected_age);
        initial.saturating_add(now.duration_since(self.response_time).unwrap_or_default())
    }
}

/// How a stored response may be used now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usability {
    Fresh,
    /// Stale, but within stale-while-revalidate: serve and refresh in the background.
    StaleWhileRevalidate,
    /// Must be revalidated before use.
    MustRevalidate,
}

/// Decides how a stored response with `resp_cc`, `lifetime` and `age` serves a request with
/// `req_cc`.
pub fn usability(
    resp_cc: &CacheControl,
    lifetime: Duration,
    age: Duration,
    req_cc: &CacheControl,
) -> Usability {
    if resp_cc.no_cache || req_cc.no_cache {
        return Usability::MustRevalidate;
    }
    let mut fresh_for = lifetime;
    if let Some(ma) = req_cc.max_age {
        fresh_for = fresh_for.min(Duration::from_secs(ma));
    }
    let min_fresh = Duration::from_secs(req_cc.min_fresh.unwrap_or(0));
    if age.saturating_add(min_fresh) < fresh_for {
        return Usability::Fresh;
    }
    if !may_serve_stale(resp_cc) {
        return Usability::MustRevalidate;
    }
    let staleness = age.saturating_sub(lifetime);
    if let Some(ms) = req_cc.max_stale
        && staleness <= Duration::from_secs(ms)
        && req_cc.max_age.is_none()
    {
        return Usability::Fresh;
    }
    match resp_cc.stale_while_revalidate {
        Some(w) if staleness <= Duration::from_secs(w) => Usability::StaleWhileRevalidate,
        _ => Usability::MustRevalidate,
    }
}

/// Whether the response allows serving it stale at all (must-revalidate, proxy-revalidate
/// and s-maxage forbid it for a shared cache).
pub fn may_serve_stale(resp_cc: &CacheControl) -> bool {
    !(resp_cc.must_revalidate || resp_cc.proxy_revalidate || resp_cc.s_maxage.is_some())
}

/// Whether a stale response may answer for an origin error (RFC 5861 stale-if-error, from the
/// response or the request).
pub fn stale_if_error_allows(
    resp_cc: &CacheControl,
    req_cc: &CacheControl,
    lifetime: Duration,
    age: Duration,
) -> bool {
    if !may_serve_stale(resp_cc) {
        return false;
    }
    let staleness = age.saturating_sub(lifetime);
    let window = match (resp_cc.stale_if_error, req_cc.stale_if_error) {
        (Some(a), Some(b)) => a.max(b),
        (a, b) => match a.or(b) {
            Some(w) => w,
            None => return false,
        },
    };
    staleness <= Duration::from_secs(window)
}

#[cfg(test)]
mod tests {
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
        // Never: objects, 5xx but 501, answers to the edge's own conditionals and ranges, and
        // statuses that may depend on request fields outside the key.
        for status in [
            200, 206, 304, 400, 401, 403, 412, 416, 429, 500, 502, 503, 504,
        ] {
            assert_eq!(
                at(status, hm(&[("cache-control", "max-age=60")]), ttl),
                None,
                "{status}"
            );
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
}
