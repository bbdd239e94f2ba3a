//! Cache-Control as this cache reads it: the directives a shared cache acts on (RFC 9111
//! §5.2), from Cache-Control or from the first valid targeted field of the edge's
//! `targeted_cache_control` list (RFC 9213: `CDN-Cache-Control` and the like, Structured
//! Field Dictionaries parsed strictly by the small RFC 8941 parser below).

use http::{HeaderMap, header};

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
pub(super) fn delta_seconds(s: &str) -> Option<u64> {
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
