//! RFC 9111 for a shared cache, without I/O: Cache-Control parsing, targeted cache control
//! (RFC 9213: `CDN-Cache-Control` and the like, Structured Field Dictionaries that replace
//! Cache-Control and Expires for this cache), whether a response may be stored, its freshness
//! lifetime (s-maxage, max-age, Expires, heuristic), its current age (§4.2.3, Age parsed as
//! §5.1 says), and when a stale response may still be served (RFC 5861). Besides 200 and 206
//! (objects, stored in chunks), some final statuses are stored whole as *negative* responses
//! (404, 410, 301, ...): [`negative_status`] and [`negative_lifetime`] say which and how long.
//!
//! [`cache_control`] parses the directives (Cache-Control and the targeted fields); this file
//! holds the arithmetic over them.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, header};

mod cache_control;
#[cfg(test)]
mod tests;

pub use cache_control::CacheControl;
use cache_control::delta_seconds;

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

/// Final statuses other than 200 and 206 that the edge stores without being told how long
/// (with `negative_ttl_secs` when they carry no explicit freshness): the heuristically
/// cacheable ones, plus the temporary redirects 302 and 307 (only with explicit freshness,
/// see [`negative_lifetime`]).
pub fn negative_status(status: StatusCode) -> bool {
    let s = status.as_u16();
    s != 200 && s != 206 && (heuristically_cacheable(status) || s == 302 || s == 307)
}

/// Whether `status` is one RFC 9110 defines (§15), so its caching rules are known.
fn understood(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200..=206 | 300..=305 | 307 | 308 | 400..=417 | 421 | 422 | 426 | 500..=505
    )
}

/// Longest a stored 5xx is fresh, even with a longer explicit lifetime.
pub const ERROR_TTL_MAX: Duration = Duration::from_secs(10);

/// Whether a final status other than 200 and 206 may be stored when the origin gives it an
/// explicit lifetime (RFC 9111 §3: any final status the cache understands): every status but
/// 1xx, and 304, 412 and 416, which answer the edge's own conditional and Range requests, not
/// the client's. A 400 or a 503 with `max-age` is stored for that long, as the origin asked:
/// what could make the origin fail for one client and not for another cannot reach it on a
/// fill (fills carry an allow list of fields, all of them keyed or content negotiation), so
/// no client can store an error in another's place (CPDoS). Without explicit freshness only
/// [`negative_status`] statuses are stored.
pub fn storable_with_explicit_freshness(status: StatusCode) -> bool {
    let s = status.as_u16();
    s > 200 && s != 206 && s != 304 && s != 412 && s != 416
}

/// Whether the response carries an explicit expiration time (RFC 9111 §4.2.1): s-maxage,
/// max-age or Expires.
pub fn has_explicit_freshness(resp: &HeaderMap, cc: &CacheControl) -> bool {
    cc.s_maxage.is_some()
        || cc.max_age.is_some()
        || (!cc.targeted && resp.contains_key(header::EXPIRES))
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
    if has_explicit_freshness(resp, cc) && storable_with_explicit_freshness(status) {
        let explicit = lifetime(resp, cc, Duration::ZERO);
        // A server error is kept at most ERROR_TTL_MAX, whatever it says: a blanket
        // Cache-Control on every response of an origin must not turn a moment's failure into
        // minutes of errors for every viewer (a cache may always expire early).
        return Some(if status.is_server_error() {
            explicit.min(ERROR_TTL_MAX)
        } else {
            explicit
        });
    }
    if !negative_status(status) {
        return None;
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
    if status != StatusCode::OK
        && status != StatusCode::PARTIAL_CONTENT
        && !negative_status(status)
        && !(storable_with_explicit_freshness(status) && has_explicit_freshness(resp, resp_cc))
    {
        return Err(NotStorable::Status);
    }
    if req_cc.no_store {
        return Err(NotStorable::RequestNoStore);
    }
    // must-understand (RFC 9111 §5.2.2.3) lifts no-store only for a status whose caching
    // rules the edge knows: RFC 9110's own.
    if resp_cc.no_store && !(resp_cc.must_understand && understood(status)) {
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
    if !cc.targeted && resp.contains_key(header::EXPIRES) {
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

/// The value of an Age field line (RFC 9111 §5.1): of a list, the first member; anything but
/// delta-seconds (a sign, a fraction, a parameter, letters) is ignored (0); a value too
/// large to represent saturates.
pub fn age_value(v: &http::HeaderValue) -> u64 {
    v.to_str()
        .ok()
        .and_then(|v| delta_seconds(v.split(',').next().unwrap_or("").trim()))
        .unwrap_or(0)
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
        let age_value = resp.get(header::AGE).map_or(0, age_value);
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
/// and s-maxage forbid it for a shared cache; no-cache forbids any use without a successful
/// validation, RFC 9111 §5.2.2.4).
pub fn may_serve_stale(resp_cc: &CacheControl) -> bool {
    !(resp_cc.must_revalidate
        || resp_cc.proxy_revalidate
        || resp_cc.no_cache
        || resp_cc.s_maxage.is_some())
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
