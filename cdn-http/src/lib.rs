//! HTTP pieces shared by the origin and the edge, so that neither writes them twice:
//! byte-range evaluation (RFC 9110 §14), preconditions (§13), multipart/byteranges bodies,
//! the "serve one representation" responder, Content-Digest (RFC 9530), media types,
//! a per-node Prometheus registry, the token bucket (`bucket`), the open-file limit, and the hardened accept loop every
//! node runs.

pub mod access;
pub mod bucket;
pub mod conditional;
pub mod config;
pub mod digest;
pub mod dns;
pub mod limits;
pub mod logbuf;
pub mod metrics;
pub mod mime;
pub mod multipart;
pub mod nofile;
pub mod range;
pub mod represent;
pub mod server;
pub mod tls;

pub use represent::{ByteStream, Representation, respond};
