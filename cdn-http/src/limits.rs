//! Connection and request limits, one set shared by every node (origin, edge, router) and
//! loaded from each node's TOML as a `[limits]` table. [`crate::server::serve`] enforces them.
//!
//! | field | default | what the client gets when it is exceeded |
//! |---|---|---|
//! | `max_header_bytes` | 16 KiB | `431` (the header fields, names and values) |
//! | `max_headers` | 100 | `431` |
//! | `max_uri_bytes` | 8 KiB | `414` (request target: path and query, or absolute form) |
//! | `max_body_bytes` | 16 MiB | `413` (a request body, e.g. a pass-through upload at an edge) |
//! | `header_read_timeout_ms` | 10 s | `408` then close, when part of a head came; a silent close when nothing did |
//! | `idle_timeout_ms` | 60 s | close, when no byte moved either way for that long |
//! | `max_connections` | 10 000 | `503` with `Retry-After`, then close |
//! | `h2_max_concurrent_streams` | 100 | HTTP/2: streams over it are refused (`REFUSED_STREAM`) |
//! | `h2_max_pending_accept_reset_streams` | 20 | HTTP/2: streams the client opens and resets before they are served (rapid reset, CVE-2023-44487) → `GOAWAY` `ENHANCE_YOUR_CALM`, close |
//! | `h2_max_local_error_reset_streams` | 128 | HTTP/2: streams the server must reset for the client's protocol errors → `GOAWAY`, close |
//!
//! HTTP/2's header list is bounded by the same buffer as HTTP/1.1's head (below); h2 also
//! bounds the CONTINUATION frames of one header block by it (the 2024 CONTINUATION flood),
//! answering more with `GOAWAY` and closing.
//!
//! A head larger than `max_header_bytes + max_uri_bytes + 1 KiB` cannot be buffered at all and
//! is answered `431` by hyper before its request line is looked at.
//!
//! `max_connections` is also bounded by the open-file limit ([`connection_budget`]): a node
//! out of descriptors cannot accept a connection even to refuse it, and its clients hang.

use serde::{Deserialize, Serialize};

/// The limits of one node. Every field has a default; see the module documentation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawLimits")]
pub struct Limits {
    /// Total size of a request's header fields (name + value + 4 per field), bytes → 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request → 431.
    pub max_headers: usize,
    /// Longest request target, bytes → 414.
    pub max_uri_bytes: usize,
    /// Largest request body, bytes → 413 (at once when Content-Length says so, else as soon as
    /// the body passes the limit; nothing beyond the limit is forwarded).
    pub max_body_bytes: u64,
    /// Time a client has to send a complete request head, milliseconds, counted from the
    /// connection's start or, on a kept-alive HTTP/1.1 connection, from the end of the previous
    /// exchange → 408 and close.
    pub header_read_timeout_ms: u64,
    /// A connection on which no byte was read or written for this long is closed, whatever it
    /// is doing (idle keep-alive, a client that stopped reading, a stalled exchange).
    pub idle_timeout_ms: u64,
    /// Most connections served at once; the next ones get 503 → `Retry-After`.
    pub max_connections: usize,
    /// Seconds in the `Retry-After` of a 503 for too many connections.
    pub retry_after_secs: u64,
    /// HTTP/2: most streams a client may have open at once on one connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2: most streams a client may open and reset before the server accepted them
    /// (rapid reset); more closes the connection with `ENHANCE_YOUR_CALM`.
    pub h2_max_pending_accept_reset_streams: usize,
    /// HTTP/2: most streams the server may reset for the client's errors on one connection;
    /// more closes it.
    pub h2_max_local_error_reset_streams: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 16 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            retry_after_secs: 1,
            h2_max_concurrent_streams: 100,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 128,
        }
    }
}

/// What the TOML holds, before [`Limits::check`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLimits {
    max_header_bytes: usize,
    max_headers: usize,
    max_uri_bytes: usize,
    max_body_bytes: u64,
    header_read_timeout_ms: u64,
    idle_timeout_ms: u64,
    max_connections: usize,
    retry_after_secs: u64,
    h2_max_concurrent_streams: u32,
    h2_max_pending_accept_reset_streams: usize,
    h2_max_local_error_reset_streams: usize,
}

impl Default for RawLimits {
    fn default() -> Self {
        let d = Limits::default();
        RawLimits {
            max_header_bytes: d.max_header_bytes,
            max_headers: d.max_headers,
            max_uri_bytes: d.max_uri_bytes,
            max_body_bytes: d.max_body_bytes,
            header_read_timeout_ms: d.header_read_timeout_ms,
            idle_timeout_ms: d.idle_timeout_ms,
            max_connections: d.max_connections,
            retry_after_secs: d.retry_after_secs,
            h2_max_concurrent_streams: d.h2_max_concurrent_streams,
            h2_max_pending_accept_reset_streams: d.h2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams: d.h2_max_local_error_reset_streams,
        }
    }
}

impl TryFrom<RawLimits> for Limits {
    type Error = String;

    fn try_from(r: RawLimits) -> Result<Self, String> {
        let l = Limits {
            max_header_bytes: r.max_header_bytes,
            max_headers: r.max_headers,
            max_uri_bytes: r.max_uri_bytes,
            max_body_bytes: r.max_body_bytes,
            header_read_timeout_ms: r.header_read_timeout_ms,
            idle_timeout_ms: r.idle_timeout_ms,
            max_connections: r.max_connections,
            retry_after_secs: r.retry_after_secs,
            h2_max_concurrent_streams: r.h2_max_concurrent_streams,
            h2_max_pending_accept_reset_streams: r.h2_max_pending_accept_reset_streams,
            h2_max_local_error_reset_streams: r.h2_max_local_error_reset_streams,
        };
        l.check().map(|()| l)
    }
}

impl Limits {
    /// Checks the values: every limit must leave room for ordinary requests.
    pub fn check(&self) -> Result<(), String> {
        let fail = |field: &str, msg: &str| Err(format!("{field} {msg}"));
        if self.max_header_bytes < 1024 {
            return fail("max_header_bytes", "must be at least 1024");
        }
        if !(8..=65_534).contains(&self.max_uri_bytes) {
            return fail("max_uri_bytes", "must be between 8 and 65534");
        }
        if self.max_headers == 0 {
            return fail("max_headers", "must be at least 1");
        }
        if self.header_read_timeout_ms == 0 {
            return fail("header_read_timeout_ms", "must be at least 1");
        }
        if self.idle_timeout_ms == 0 {
            return fail("idle_timeout_ms", "must be at least 1");
        }
        if self.max_connections == 0 {
            return fail("max_connections", "must be at least 1");
        }
        if self.h2_max_concurrent_streams == 0 {
            return fail("h2_max_concurrent_streams", "must be at least 1");
        }
        Ok(())
    }

    /// hyper's read buffer: the largest head it will hold (at least 8 KiB, hyper's minimum).
    pub fn head_buffer_bytes(&self) -> usize {
        (self.max_header_bytes + self.max_uri_bytes + 1024).max(8192)
    }

    pub fn header_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.header_read_timeout_ms.max(1))
    }

    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.idle_timeout_ms.max(1))
    }
}

/// Descriptors kept out of the connection budget: listeners, the peers' UDP socket, logs,
/// config and geo files, the edge's chunk arena (at most 16 memory files, with `sendfile`
/// on), the runtime's own (epoll, eventfd, blocking threads' files).
pub const FD_RESERVE: u64 = 128;

/// How many connections a node serves and refuses (503) at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// Connections served at once (the effective `max_connections`).
    pub max_connections: usize,
    /// Connections beyond those answered `503` at once (the rest are closed unanswered).
    pub overflow: usize,
    /// Whether the open-file limit lowered `max_connections`.
    pub clamped: bool,
}

/// The connections a node can hold with `soft` descriptors (`None`: no limit known):
///
/// ```text
/// budget    = soft - FD_RESERVE (128)
/// overflow  = min(clamp(max_connections / 10, 64, 1024), budget / 8)   1 fd each (503, close)
/// effective = min(max_connections, (budget - overflow) / 2)            2 fds each
/// ```
///
/// A served connection counts twice: its socket, plus the origin connection (edge), open file
/// (origin) or health check (router) it may cause. With the default 10 000 connections a node
/// needs about 21 200 descriptors; at a soft limit of 1024 it serves 392 at once.
pub fn connection_budget(max_connections: usize, soft: Option<u64>) -> ConnectionBudget {
    let wanted_overflow = (max_connections / 10).clamp(64, 1024);
    let Some(soft) = soft else {
        return ConnectionBudget {
            max_connections,
            overflow: wanted_overflow,
            clamped: false,
        };
    };
    let budget = soft.saturating_sub(FD_RESERVE);
    let overflow = (wanted_overflow as u64).min(budget / 8);
    let fits = usize::try_from(budget.saturating_sub(overflow) / 2).unwrap_or(usize::MAX);
    let effective = max_connections.min(fits).max(1);
    ConnectionBudget {
        max_connections: effective,
        overflow: usize::try_from(overflow).unwrap_or(usize::MAX).max(1),
        clamped: effective < max_connections,
    }
}

/// The size of a request target as sent: the absolute form when there is a scheme, else the
/// path and query.
pub fn uri_len(uri: &http::Uri) -> usize {
    let pq = uri.path_and_query().map_or(0, |p| p.as_str().len());
    match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => s.len() + 3 + a.as_str().len() + pq,
        (None, Some(a)) if pq == 0 => a.as_str().len(),
        _ => pq,
    }
}

/// The size of the header fields as [`Limits::max_header_bytes`] counts them.
pub fn header_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Node {
        #[serde(default)]
        limits: Limits,
    }

    #[test]
    fn defaults_and_partial_tables() {
        let n: Node = crate::config::parse_toml("", "n.toml").unwrap();
        assert_eq!(n.limits, Limits::default());
        let n: Node =
            crate::config::parse_toml("[limits]\nmax_connections = 3\n", "n.toml").unwrap();
        assert_eq!(n.limits.max_connections, 3);
        assert_eq!(n.limits.max_uri_bytes, 8192);
    }

    #[test]
    fn bad_values_are_refused_with_the_field() {
        let e = crate::config::parse_toml::<Node>("[limits]\nmax_connections = 0\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connections must be at least 1"), "{e}");
        assert!(e.starts_with("n.toml:"), "{e}");
        let e = crate::config::parse_toml::<Node>("[limits]\nmax_conections = 5\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
        let e = crate::config::parse_toml::<Node>("[limits]\nmax_uri_bytes = 70000\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_uri_bytes"), "{e}");
    }

    #[test]
    fn round_trips_through_toml() {
        let l = Limits {
            max_body_bytes: 5,
            ..Default::default()
        };
        let text = toml::to_string(&l).unwrap();
        let back: Limits = toml::from_str(&text).unwrap();
        assert_eq!(back, l);
    }

    #[test]
    fn connection_budget_fits_the_descriptors() {
        // No limit known, or plenty: as configured.
        let b = connection_budget(10_000, None);
        assert_eq!(
            (b.max_connections, b.overflow, b.clamped),
            (10_000, 1000, false)
        );
        let b = connection_budget(10_000, Some(1 << 20));
        assert_eq!(
            (b.max_connections, b.overflow, b.clamped),
            (10_000, 1000, false)
        );
        // 256: budget 128, overflow 16, (128 - 16) / 2 = 56 served.
        let b = connection_budget(10_000, Some(256));
        assert_eq!((b.max_connections, b.overflow, b.clamped), (56, 16, true));
        assert!(2 * b.max_connections + b.overflow + FD_RESERVE as usize <= 256);
        let b = connection_budget(10_000, Some(1024));
        assert_eq!((b.max_connections, b.overflow), (392, 112));
        // A configured value that fits is kept; a limit below the reserve still serves one.
        assert_eq!(connection_budget(30, Some(1024)).max_connections, 30);
        assert!(!connection_budget(30, Some(1024)).clamped);
        assert_eq!(connection_budget(10_000, Some(10)).max_connections, 1);
    }

    #[test]
    fn sizes() {
        let u: http::Uri = "/a?b=c".parse().unwrap();
        assert_eq!(uri_len(&u), 6);
        let u: http::Uri = "http://h:1/a".parse().unwrap();
        assert_eq!(uri_len(&u), "http://h:1/a".len());
        let mut h = http::HeaderMap::new();
        h.insert("x", http::HeaderValue::from_static("yy"));
        assert_eq!(header_bytes(&h), 7);
    }
}
