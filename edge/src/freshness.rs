//! RFC 9111 for a shared cache, without I/O: Cache-Control parsing, targeted cache control
//! (RFC 9213: `CDN-Cache-Control` and the like, Structured Field Dictionaries that replace
//! Cache-Control and Expires for this cache), whether a response may be stored, its freshness
//! lifetime (s-maxage, max-age, Expires, heuristic), its current age (§4.2.3, Age parsed as
//! §5.1 says), and when a stale response may still be served (RFC 5861). Besides 200 and 206
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
    /// `must-understand`: no-store does not apply when the cache understands the status
    /// (RFC 9111 §5.2.2.3); every status it stores is one it understands.
    pub must_understand: bool,
    pub max_age: Option<u64>,
    pub s_maxage: Option<u64>,
    pub stale_while_revalidate: Option<u64>,
    pub stale_if_error: Option<u64>,
    pub min_fresh: Option<u64>,
    /// `max-stale` with no value accepts any staleness: `Some(u64::MAX)`.
    pub max_stale: Option<u64>,
    /// The directives come from a targeted field (RFC 9213), not Cache-Control: Expires is
    /// ignored as well.
    pub targeted: bool,
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
                let secs = arg.and_then(delta_seconds);
                match name.to_ascii_lowercase().as_str() {
                    "no-store" => cc.no_store = true,
                    "no-cache" => cc.no_cache = true,
                    "private" => cc.private = true,
                    "public" => cc.public = true,
                    "must-revalidate" => cc.must_revalidate = true,
                    "proxy-revalidate" => cc.proxy_revalidate = true,
                    "immutable" => cc.immutable = true,
                    "only-if-cached" => cc.only_if_cached = true,
                    "must-understand" => cc.must_understand = true,
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

/// delta-seconds (RFC 9111 §1.2.2): digits only; a value too large to represent saturates.
fn delta_seconds(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

impl CacheControl {
    /// The response directives this cache obeys: those of the first field of `targets` (its
    /// target list, in priority order, e.g. `["CDN-Cache-Control"]`) that is present, valid
    /// and not empty (RFC 9213 §2.1); otherwise Cache-Control's.
    pub fn for_response<S: AsRef<str>>(headers: &HeaderMap, targets: &[S]) -> Self {
        targets
            .iter()
            .find_map(|name| Self::targeted(headers, name.as_ref()))
            .unwrap_or_else(|| Self::parse(headers))
    }

    /// The directives of the targeted field `name` (RFC 9213 §2.2): its field lines combined
    /// and parsed as a Structured Fields Dictionary. `None` when it is absent, empty or
    /// invalid, as if it were not there. A directive whose value has the wrong type (e.g.
    /// `max-age="60"`) is ignored; parameters are ignored.
    pub fn targeted(headers: &HeaderMap, name: &str) -> Option<Self> {
        let mut combined = String::new();
        for line in headers.get_all(name) {
            let line = line.to_str().ok()?;
            if !combined.is_empty() {
                combined.push_str(", ");
            }
            combined.push_str(line);
        }
        if combined.trim().is_empty() {
            return None;
        }
        let members = sf::parse_dictionary(&combined)?;
        let mut cc = CacheControl {
            targeted: true,
            ..Default::default()
        };
        for (key, value) in members {
            // Flags: a Boolean true; no-cache and private may also name fields (a String),
            // which a shared cache treats as the unqualified directive.
            let flag = match &value {
                sf::Value::Boolean(b) => *b,
                sf::Value::String => matches!(key.as_str(), "no-cache" | "private"),
                _ => false,
            };
            let secs = match value {
                sf::Value::Integer(n) => u64::try_from(n).ok(),
                _ => None,
            };
            match key.as_str() {
                "no-store" => cc.no_store |= flag,
                "no-cache" => cc.no_cache |= flag,
                "private" => cc.private |= flag,
                "public" => cc.public |= flag,
                "must-revalidate" => cc.must_revalidate |= flag,
                "proxy-revalidate" => cc.proxy_revalidate |= flag,
                "immutable" => cc.immutable |= flag,
                "must-understand" => cc.must_understand |= flag,
                "max-age" => cc.max_age = secs,
                "s-maxage" => cc.s_maxage = secs,
                "stale-while-revalidate" => cc.stale_while_revalidate = secs,
                "stale-if-error" => cc.stale_if_error = secs,
                _ => {}
            }
        }
        Some(cc)
    }
}

/// Just enough of RFC 8941 (Structured Field Values) to parse a Dictionary strictly: any
/// syntax error fails the whole field.
mod sf {
    /// A member's value, as far as cache directives care.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Value {
        Integer(i64),
        Boolean(bool),
        String,
        /// Decimal, Token, Byte Sequence or Inner List.
        Other,
    }

    struct Parser<'a> {
        s: &'a [u8],
        i: usize,
    }

    /// The members in order; a repeated key keeps its last value (RFC 8941 §4.2.2).
    pub fn parse_dictionary(input: &str) -> Option<Vec<(String, Value)>> {
        let mut p = Parser {
            s: input.as_bytes(),
            i: 0,
        };
        p.skip(|c| c == b' ');
        let mut out: Vec<(String, Value)> = Vec::new();
        while p.i < p.s.len() {
            let key = p.key()?;
            let value = if p.eat(b'=') {
                p.item_or_inner_list()?
            } else {
                p.parameters()?;
                Value::Boolean(true)
            };
            out.retain(|(k, _)| *k != key);
            out.push((key, value));
            p.skip(|c| c == b' ' || c == b'\t');
            if p.i == p.s.len() {
                return Some(out);
            }
            if !p.eat(b',') {
                return None;
            }
            p.skip(|c| c == b' ' || c == b'\t');
            if p.i == p.s.len() {
                return None; // trailing comma
            }
        }
        Some(out)
    }

    impl Parser<'_> {
        fn peek(&self) -> Option<u8> {
            self.s.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> bool {
            let hit = self.peek() == Some(c);
            if hit {
                self.i += 1;
            }
            hit
        }

        fn skip(&mut self, f: impl Fn(u8) -> bool) {
            while self.peek().is_some_and(&f) {
                self.i += 1;
            }
        }

        fn key(&mut self) -> Option<String> {
            let start = self.i;
            match self.peek() {
                Some(c) if c.is_ascii_lowercase() || c == b'*' => self.i += 1,
                _ => return None,
            }
            self.skip(|c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'.' | b'*')
            });
            Some(String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
        }

        fn parameters(&mut self) -> Option<()> {
            while self.eat(b';') {
                self.skip(|c| c == b' ');
                self.key()?;
                if self.eat(b'=') {
                    self.bare_item()?;
                }
            }
            Some(())
        }

        fn item_or_inner_list(&mut self) -> Option<Value> {
            if self.eat(b'(') {
                loop {
                    self.skip(|c| c == b' ');
                    if self.eat(b')') {
                        break;
                    }
                    self.bare_item()?;
                    self.parameters()?;
                    match self.peek() {
                        Some(b' ') | Some(b')') => {}
                        _ => return None,
                    }
                }
                self.parameters()?;
                return Some(Value::Other);
            }
            let v = self.bare_item()?;
            self.parameters()?;
            Some(v)
        }

        fn bare_item(&mut self) -> Option<Value> {
            match self.peek()? {
                b'-' | b'0'..=b'9' => self.number(),
                b'"' => {
                    self.i += 1;
                    loop {
                        match self.peek()? {
                            b'\\' => {
                                self.i += 1;
                                if !matches!(self.peek()?, b'"' | b'\\') {
                                    return None;
                                }
                                self.i += 1;
                            }
                            b'"' => {
                                self.i += 1;
                                return Some(Value::String);
                            }
                            0x20..=0x7e => self.i += 1,
                            _ => return None,
                        }
                    }
                }
                b'?' => {
                    self.i += 1;
                    let b = match self.peek()? {
                        b'0' => false,
                        b'1' => true,
                        _ => return None,
                    };
                    self.i += 1;
                    Some(Value::Boolean(b))
                }
                b':' => {
                    self.i += 1;
                    self.skip(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'='));
                    self.eat(b':').then_some(Value::Other)
                }
                c if c.is_ascii_alphabetic() || c == b'*' => {
                    self.i += 1;
                    self.skip(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~:/".contains(&c));
                    Some(Value::Other)
                }
                _ => None,
            }
        }

        /// sf-integer (at most 15 digits) or sf-decimal (at most 12 + 3 digits).
        fn number(&mut self) -> Option<Value> {
            let neg = self.eat(b'-');
            let start = self.i;
            self.skip(|c| c.is_ascii_digit());
            let int_digits = self.i - start;
            if int_digits == 0 {
                return None;
            }
            if self.eat(b'.') {
                let frac = self.i;
                self.skip(|c| c.is_ascii_digit());
                let frac_digits = self.i - frac;
                return (int_digits <= 12 && (1..=3).contains(&frac_digits))
                    .then_some(Value::Other);
            }
            if int_digits > 15 {
                return None;
            }
            let n: i64 = std::str::from_utf8(&self.s[start..self.i])
                .ok()?
                .parse()
                .ok()?;
            Some(Value::Integer(if neg { -n } else { n }))
        }
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
}
