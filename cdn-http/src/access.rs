//! The access line: one per request, written straight into the log buffer
//! ([`crate::logbuf`]) by a formatter of its own rather than through `tracing`'s generic one
//! (which visits each field through `Debug`/`Display` and `core::fmt`: ~6% of a 16 KiB hit's
//! CPU, BENCHMARKS.md "Hot path"). The line looks like every other log line of the node's
//! text format, with fields made for reading and for `awk`:
//!
//! ```text
//! 2026-12-05T15:25:01.123456Z  INFO cdn_edge::access: client=127.0.0.1 method=GET path=/v/a.mp4 range="bytes=0-99" status=206 cache=hit bytes=100 duration_ms=0
//! ```
//!
//! - `range` is `-` when the request had none; otherwise quoted, with `"`, `\` and bytes
//!   outside printable ASCII escaped (`\"`, `\\`, `\xNN`), so no request can forge a line or a
//!   field. `path` is the request's path as the HTTP parser accepted it (visible ASCII only);
//!   `client` is `-` when unknown.
//! - The timestamp's date and time of day are rendered once per second per thread; the line
//!   is built in a per-thread buffer and appended whole ([`crate::logbuf::BufferedLog`]).
//! - Used only when the process installed a sink ([`install`]: the `cdn` binary does, for the
//!   text format); otherwise [`emit`] returns the line's fields to the caller, which logs them
//!   through `tracing` as before (the JSON format, tests, other embedders).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderValue, Method};

use crate::logbuf::BufferedLog;

/// What one access line says.
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// The `tracing` target the line is written under, e.g. `cdn_edge::access`.
    pub target: &'static str,
    pub client: Option<IpAddr>,
    pub method: &'a Method,
    pub path: &'a str,
    pub range: Option<&'a HeaderValue>,
    pub status: u16,
    /// The cache's outcome (`hit`, `miss`, `pass`, ...).
    pub cache: &'a str,
    /// Body bytes sent.
    pub bytes: u64,
    pub duration: Duration,
}

static SINK: OnceLock<BufferedLog> = OnceLock::new();

/// Makes `log` the process's access-line sink (once; later calls change nothing and return
/// false).
pub fn install(log: &BufferedLog) -> bool {
    SINK.set(log.clone()).is_ok()
}

/// The sink, if the process installed one.
pub fn sink() -> Option<&'static BufferedLog> {
    SINK.get()
}

/// Writes `line` to the installed sink and returns `None`; without a sink, returns the line
/// for the caller to log through `tracing`.
pub fn emit(line: Line<'_>) -> Option<Line<'_>> {
    let Some(sink) = sink() else {
        return Some(line);
    };
    BUF.with(|b| {
        let mut b = b.borrow_mut();
        let b = &mut *b;
        b.line.clear();
        format_line(&mut b.line, &mut b.clock, SystemTime::now(), &line);
        sink.append_batched(b.line.as_bytes());
    });
    None
}

struct Buf {
    line: String,
    clock: Clock,
}

thread_local! {
    static BUF: RefCell<Buf> = RefCell::new(Buf {
        line: String::with_capacity(256),
        clock: Clock::default(),
    });
}

/// The rendered date and time of day of the last second seen (`2026-12-05T15:25:01.`).
#[derive(Default)]
struct Clock {
    second: Option<u64>,
    prefix: String,
}

impl Clock {
    fn prefix(&mut self, secs: u64) -> &str {
        if self.second != Some(secs) {
            self.prefix.clear();
            let t = i64::try_from(secs)
                .ok()
                .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let _ = write!(
                self.prefix,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            );
            self.second = Some(secs);
        }
        &self.prefix
    }
}

/// Appends the whole line, newline included, to `out`.
fn format_line(out: &mut String, clock: &mut Clock, now: SystemTime, line: &Line<'_>) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    out.push_str(clock.prefix(since.as_secs()));
    let micros = since.subsec_micros();
    // Six digits, zero-padded.
    let mut digits = itoa::Buffer::new();
    let m = digits.format(micros);
    for _ in m.len()..6 {
        out.push('0');
    }
    out.push_str(m);
    out.push_str("Z  INFO ");
    out.push_str(line.target);
    out.push_str(": client=");
    match line.client {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push('-'),
    }
    out.push_str(" method=");
    out.push_str(line.method.as_str());
    out.push_str(" path=");
    push_escaped(out, line.path.as_bytes(), false);
    out.push_str(" range=");
    match line.range {
        Some(r) => push_escaped(out, r.as_bytes(), true),
        None => out.push('-'),
    }
    out.push_str(" status=");
    out.push_str(digits.format(line.status));
    out.push_str(" cache=");
    push_escaped(out, line.cache.as_bytes(), false);
    out.push_str(" bytes=");
    out.push_str(digits.format(line.bytes));
    out.push_str(" duration_ms=");
    out.push_str(digits.format(line.duration.as_millis()));
    out.push('\n');
}

/// `bytes` as printable ASCII: `"` and `\` escaped, controls, spaces (unquoted) and bytes
/// of 0x7f and above as `\xNN`; `quoted` puts the value in double quotes.
fn push_escaped(out: &mut String, bytes: &[u8], quoted: bool) {
    if quoted {
        out.push('"');
    }
    for &b in bytes {
        match b {
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b' ' if quoted => out.push(' '),
            0x21..=0x7e => out.push(char::from(b)),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    if quoted {
        out.push('"');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(method: &'a Method, range: Option<&'a HeaderValue>) -> Line<'a> {
        Line {
            target: "cdn_edge::access",
            client: Some("127.0.0.7".parse().unwrap()),
            method,
            path: "/v/a.mp4",
            range,
            status: 206,
            cache: "hit",
            bytes: 100,
            duration: Duration::from_micros(2_500),
        }
    }

    fn formatted(now: SystemTime, l: &Line<'_>) -> String {
        let mut out = String::new();
        format_line(&mut out, &mut Clock::default(), now, l);
        out
    }

    #[test]
    fn a_line_reads_as_documented() {
        let now = UNIX_EPOCH + Duration::from_micros(1_796_484_301_012_345);
        let range = HeaderValue::from_static("bytes=0-99");
        assert_eq!(
            formatted(now, &line(&Method::GET, Some(&range))),
            "2026-12-05T15:25:01.012345Z  INFO cdn_edge::access: client=127.0.0.7 method=GET \
             path=/v/a.mp4 range=\"bytes=0-99\" status=206 cache=hit bytes=100 duration_ms=2\n"
        );
        let mut l = line(&Method::HEAD, None);
        l.client = None;
        assert_eq!(
            formatted(UNIX_EPOCH, &l),
            "1970-01-01T00:00:00.000000Z  INFO cdn_edge::access: client=- method=HEAD \
             path=/v/a.mp4 range=- status=206 cache=hit bytes=100 duration_ms=2\n"
        );
    }

    #[test]
    fn the_date_is_right_across_leap_days_and_seconds() {
        let mut clock = Clock::default();
        // 2000-02-29T23:59:59 and the second after it.
        assert_eq!(clock.prefix(951_868_799), "2000-02-29T23:59:59.");
        assert_eq!(clock.prefix(951_868_800), "2000-03-01T00:00:00.");
        // 2024-12-31T23:59:59 (a leap year's 366th day).
        assert_eq!(clock.prefix(1_735_689_599), "2024-12-31T23:59:59.");
        // Cached within a second, rendered again for the next.
        assert_eq!(clock.prefix(1_735_689_599), "2024-12-31T23:59:59.");
        assert_eq!(clock.prefix(1_735_689_600), "2025-01-01T00:00:00.");
    }

    #[test]
    fn no_request_can_forge_a_field_or_a_line() {
        let evil = HeaderValue::from_bytes(b"bytes=0-1\" status=200 \\ \xff\t").unwrap();
        let out = formatted(UNIX_EPOCH, &line(&Method::GET, Some(&evil)));
        assert!(
            out.contains(r#" range="bytes=0-1\" status=200 \\ \xff\x09" status=206 "#),
            "{out}"
        );
        assert_eq!(out.matches('\n').count(), 1);
        let method = Method::from_bytes(b"PURGE").unwrap();
        let mut l = line(&method, None);
        l.path = "/a b\"c";
        let out = formatted(UNIX_EPOCH, &l);
        assert!(
            out.contains(r#" method=PURGE path=/a\x20b\"c range=- "#),
            "{out}"
        );
    }
}
