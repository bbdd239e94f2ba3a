//! The edge's configuration: a TOML file (`--config FILE`) whose every field has a default,
//! overridden by command-line flags. `cdn edge` follows the file while it runs
//! ([`crate::reload`]): a changed `peers` list is applied at once, other fields at the next
//! start.

use std::path::Path;
use std::time::Duration;

use cdn_http::config::{ConfigError, line_of_field, parse_toml};
use serde::{Deserialize, Deserializer, Serialize};

use crate::freshness::CacheControl;

/// Which eviction policy the chunk store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// moka's TinyLFU: admission by frequency, LRU eviction.
    TinyLfu,
    /// Plain LRU (moka).
    Lru,
    /// S3-FIFO (`crate::s3fifo`): small, main and ghost FIFO queues; scan-resistant.
    #[serde(rename = "s3-fifo")]
    #[value(name = "s3-fifo")]
    S3Fifo,
    /// S3-FIFO that knows each chunk's object (`crate::s3fifo`, grouped): a chunk an
    /// active viewer of its object is about to reach stays.
    #[serde(rename = "grouped-s3-fifo")]
    #[value(name = "grouped-s3-fifo")]
    GroupedS3Fifo,
    /// S3-FIFO for first chunks and single objects, the expected request rate (the object's
    /// session starts × the share of sessions that reach the chunk, plus active viewers)
    /// among later chunks (`crate::s3fifo::rate`): for stores that hold video.
    #[serde(rename = "s3-fifo-rate")]
    #[value(name = "s3-fifo-rate")]
    S3FifoRate,
}

impl Policy {
    /// Whether the store is the edge's own S3-FIFO (any form): reads never wait, evictions
    /// happen within the insert.
    pub fn is_s3fifo(self) -> bool {
        matches!(
            self,
            Policy::S3Fifo | Policy::GroupedS3Fifo | Policy::S3FifoRate
        )
    }
}

/// Everything an edge needs to run (the lab writes its edges' files from it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Node name, shown in Via, Cache-Status and metrics.
    pub name: String,
    /// Region the node belongs to.
    pub region: String,
    /// Base URL of the origin, e.g. `http://127.0.0.1:8081`.
    pub origin: String,
    /// Memory budget of the cache (chunks plus metadata), bytes; accepts `512MiB`.
    #[serde(deserialize_with = "de_bytes")]
    pub capacity: u64,
    /// Chunk size, bytes; accepts `1MiB`.
    #[serde(deserialize_with = "de_bytes")]
    pub chunk_size: u64,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead: u64,
    /// Chunk eviction policy; default S3-FIFO (the lowest byte miss ratio on video traffic,
    /// see BENCHMARKS.md).
    pub policy: Policy,
    /// How long a request waits for another request's fill before fetching on its own.
    pub coalesce_wait_ms: u64,
    pub origin_connect_timeout_ms: u64,
    /// Longest silence while reading an origin response (first byte included).
    pub origin_read_timeout_ms: u64,
    /// How long a URL whose response was not storable is passed straight to the origin.
    pub hit_for_pass_secs: u64,
    /// Client request fields a cache fill forwards to the origin, besides those the stored
    /// responses' Vary names (which are part of the cache key). An allow list: every other
    /// field of the client (cookies, `X-Forwarded-*`, method overrides...) stays out of
    /// requests whose answers are shared. Default: the content negotiation fields.
    pub fill_request_headers: Vec<String>,
    /// Per-client budget of amplified origin bytes (what a client's misses make the edge
    /// fetch beyond the bytes they ask for: a 1-byte range of a cold object costs a chunk),
    /// refilled at this rate; a request that would overdraw it is forwarded as asked,
    /// uncached. 0 disables the budgets (the per-request bound stays). See SECURITY.md.
    #[serde(deserialize_with = "de_bytes")]
    pub amplification_bytes_per_sec: u64,
    /// Most amplified bytes a client may spend at once.
    #[serde(deserialize_with = "de_bytes")]
    pub amplification_burst: u64,
    /// Cap of heuristic freshness (10% of the time since Last-Modified).
    pub heuristic_max_secs: u64,
    /// Negative caching: how long a heuristically cacheable final response other than 200/206
    /// (404, 410, 301, 308, 204, 405, 414, 501, ... — RFC 9110 §15.1) without explicit
    /// freshness is stored, like nginx's `proxy_cache_valid 404 10s`. Responses with
    /// max-age, s-maxage or Expires keep their own lifetime whatever this says; 0 stores only
    /// those. Never stored: 5xx other than 501, no-store, private, Set-Cookie, bodies over
    /// 64 KiB.
    pub negative_ttl_secs: u64,
    /// Targeted cache-control fields this edge obeys (RFC 9213), in priority order, e.g.
    /// `["Example-CDN-Cache-Control", "CDN-Cache-Control"]`. The first one a response carries
    /// (valid and not empty) replaces its Cache-Control and Expires for this cache's
    /// decisions; all are forwarded unchanged, as is Cache-Control. Empty: Cache-Control only.
    pub targeted_cache_control: Vec<String>,
    /// Whether the query string is part of the cache key.
    pub cache_query: bool,
    /// Bearer token for PURGE and /_admin/purge; purging is refused when unset.
    pub purge_token: Option<String>,
    /// In-flight requests at which /healthz reports load 1.0.
    pub overload_inflight: u64,
    /// Connection and request limits (`[limits]`, see `cdn_http::limits`).
    pub limits: cdn_http::limits::Limits,
    /// Deadline for in-flight responses at shutdown.
    pub drain_secs: u64,
    /// Scheme and authority objects are keyed under; defaults to the origin URL's. Edges that
    /// reach the same origin by different addresses (the lab's relays) must share it, or their
    /// peers will not recognise each other's objects.
    pub cache_key_base: Option<String>,
    /// UDP address of this node's QUIC peer endpoint; no peering when unset.
    pub peer_listen: Option<std::net::SocketAddr>,
    /// Certificates for peer mutual TLS (PEM files).
    pub peer_tls: Option<PeerTls>,
    /// The other edges of the cluster (`[[peers]]`, nearest first; names unique). The only
    /// field `cdn edge` applies while running: it re-reads the file when it changes (polled
    /// every second) and on SIGHUP.
    #[serde(rename = "peers")]
    pub peers: Vec<PeerConfig>,
    /// Peers found in DNS (`[[peers_dns]]`, next to the static `peers`, which keep working
    /// and win on a shared name): SRV records naming each edge (a Kubernetes headless
    /// Service's `_peer._udp.<svc>.<ns>.svc.cluster.local`) or the A/AAAA records of a name,
    /// re-resolved as `[dns]` says ([`crate::peer::membership`]). A member is named by its
    /// DNS name, which its certificate must carry and rendezvous hashing uses; this node's
    /// own name (`name`, its stable DNS name) is skipped. Read at start.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers_dns: Vec<PeerDns>,
    /// How `peers_dns` is resolved (`[dns]`: nameserver, refresh bounds, grace).
    #[serde(skip_serializing_if = "cdn_http::dns::DnsSettings::is_default")]
    pub dns: cdn_http::dns::DnsSettings,
    /// A separate listener for the admin endpoints (PURGE, `/_admin/purge`); when set, the
    /// viewers' listeners refuse them (403), so only what can reach this address (the admin
    /// namespace, in Kubernetes) can purge. `/healthz` and `/metrics` are on both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<std::net::SocketAddr>,
    /// Upper tier (issue #14): names of peers (in `peers`, any region) this node asks, with
    /// `tier: true`, for a chunk it would otherwise fill from the origin; per chunk the parent
    /// is chosen by rendezvous hashing over them (`peer::tier`). Empty: this node is top
    /// tier, and it is the only kind of node that fills for a lower tier's request.
    pub parents: Vec<String>,
    /// Time a peer has to start answering before the next source is tried.
    pub peer_first_byte_timeout_ms: u64,
    /// For this long after the node starts, a chunk it owns is first asked of the sibling
    /// that owned it before the node joined (cache only), so a new node warms from its
    /// region's peers; afterwards that extra round trip would rarely find anything.
    pub peer_warmup_secs: u64,
    /// Requests within `hot_window_secs` that make an object hot (pushed to peers).
    pub hot_threshold: u32,
    pub hot_window_secs: u64,
    /// Push budget per peer, bytes per second.
    #[serde(deserialize_with = "de_bytes")]
    pub push_bytes_per_sec: u64,
    /// Memory budget of each of the three peer tables keyed by object URL (hot-window counts,
    /// objects pushed, peers' advertisements), bytes; accepts `4MiB`. An entry weighs its key
    /// plus a fixed overhead (`peer::TABLE_ENTRY_OVERHEAD`), so the tables stay bounded
    /// whatever URLs viewers request or peers advertise; the least useful entries go first.
    #[serde(deserialize_with = "de_bytes")]
    pub peer_table_bytes: u64,
    /// An `https://` origin's certificate is verified against this CA file (PEM) only;
    /// unset: against the system's roots. A certificate that does not verify (unknown
    /// issuer, expired, another name) fails the request: 502, never a plain-HTTP retry.
    pub origin_ca: Option<std::path::PathBuf>,
    /// Connect to this address instead of resolving the origin URL's host; TLS still sends
    /// and verifies the URL's host name (SNI). Its port must be the URL's.
    pub origin_connect: Option<std::net::SocketAddr>,
    /// Speak HTTP/2 to the origin: offered by ALPN over TLS (HTTP/1.1 when the origin does
    /// not pick it), with prior knowledge over cleartext. One connection then carries many
    /// chunk fills.
    pub origin_http2: bool,
    /// HTTPS for viewers (`[tls]`: listener, certificates by SNI, reload, redirect).
    pub tls: cdn_http::tls::TlsSettings,
    /// HTTP/3 on the HTTPS port over UDP, with the `[tls]` certificates (`--no-http3` turns it
    /// off); an explicit `[http3]` table takes precedence.
    pub http3_on_https: bool,
    /// HTTP/3 to viewers (`[http3]`: UDP address, certificate, QUIC limits; see
    /// [`crate::http3`]); off when absent. While on, TCP responses advertise it (`Alt-Svc`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http3: Option<crate::http3::Http3Config>,
    /// `Alt-Svc` names the port each HTTPS request came to (its `Host`) instead of the HTTP/3
    /// endpoint's own: for a port mapping or relay that carries the same port number over
    /// TCP and UDP to this node's HTTPS and HTTP/3 ports (the lab's viewers' links).
    pub alt_svc_request_port: bool,
    /// Every response says any page may read it and its timings (`Access-Control-Allow-Origin:
    /// *`, `Access-Control-Expose-Headers` of Cache-Status, Age, Content-Range and
    /// Content-Length, `Timing-Allow-Origin: *`), so players on another origin's page (the
    /// lab's, hls.js) can fetch media over HTTPS and HTTP/3. Off by default.
    pub cors_any_origin: bool,
    /// The express lane on the plain HTTP listener: stored hits answered without hyper
    /// (`proxy::express`), the rest by the full stack. On by default; off sends every request
    /// through the full stack (the answers are the same).
    pub express: bool,
    /// Keep chunks of 64 KiB and more in memory files (`arena`) and send them on the express
    /// lane with `sendfile`, without copying them into the socket. Off by default: on
    /// loopback it cut the edge's CPU per 1 MiB hit by a third under wrk but moved the copy to
    /// the client, whose reads of cold pages lowered requests per second (BENCHMARKS.md); a
    /// NIC reads the pages itself, so on a real network it is the cheaper send.
    pub sendfile: bool,
}

/// The cluster's TLS material for one node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTls {
    /// The cluster CA certificate: peers must present certificates it signed.
    pub ca: std::path::PathBuf,
    /// This node's certificate (its name as a DNS SAN) and private key.
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

/// Another edge this node cooperates with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// Node name; must match the DNS name in its certificate.
    pub name: String,
    pub region: String,
    /// UDP address of its QUIC endpoint.
    pub addr: std::net::SocketAddr,
    /// Whether hot objects are pushed to it. Default: the first listed peer of each other
    /// region (peers are listed nearest first).
    pub push: Option<bool>,
}

/// Peers found in DNS: `{ srv = "_peer._udp.edges.eu.svc.cluster.local", region = "eu" }`
/// or `{ name = "edges.eu.svc.cluster.local", port = 7443, region = "eu" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerDns {
    /// SRV records: each target is a peer named by the target's DNS name, at the record's
    /// port (or `port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srv: Option<String>,
    /// A/AAAA records: each address is a peer at `port`, named by its PTR record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// UDP port of the peers' QUIC endpoints (required with `name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The region of every peer this entry finds.
    pub region: String,
    /// As [`PeerConfig::push`], for every peer this entry finds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<bool>,
}

impl PeerDns {
    pub fn query(&self) -> Result<cdn_http::dns::Query, (&'static str, String)> {
        cdn_http::dns::Query::from_fields(self.name.as_deref(), self.srv.as_deref(), self.port)
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            name: "edge".into(),
            region: "local".into(),
            origin: "http://127.0.0.1:8081".into(),
            capacity: 512 * 1024 * 1024,
            chunk_size: 1024 * 1024,
            readahead: 1,
            policy: Policy::S3Fifo,
            coalesce_wait_ms: 5_000,
            origin_connect_timeout_ms: 2_000,
            origin_read_timeout_ms: 10_000,
            hit_for_pass_secs: 30,
            amplification_bytes_per_sec: 16 * 1024 * 1024,
            amplification_burst: 256 * 1024 * 1024,
            fill_request_headers: vec![
                "accept".into(),
                "accept-encoding".into(),
                "accept-language".into(),
            ],
            heuristic_max_secs: 86_400,
            negative_ttl_secs: 10,
            targeted_cache_control: vec!["CDN-Cache-Control".into()],
            cache_query: true,
            purge_token: None,
            overload_inflight: 1_000,
            limits: Default::default(),
            drain_secs: 10,
            cache_key_base: None,
            peer_listen: None,
            peer_tls: None,
            peers: Vec::new(),
            peers_dns: Vec::new(),
            dns: Default::default(),
            admin_listen: None,
            parents: Vec::new(),
            peer_first_byte_timeout_ms: 200,
            hot_threshold: 20,
            hot_window_secs: 10,
            peer_warmup_secs: 300,
            push_bytes_per_sec: 50 * 1024 * 1024,
            peer_table_bytes: 4 * 1024 * 1024,
            origin_ca: None,
            origin_connect: None,
            origin_http2: false,
            tls: Default::default(),
            http3_on_https: true,
            http3: None,
            alt_svc_request_port: false,
            cors_any_origin: false,
            express: true,
            sendfile: false,
        }
    }
}

impl EdgeConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&read(path)?, &path.display().to_string())
    }

    /// Parses and checks TOML `text`; errors name `file`, the line and the field.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let c: Self = parse_toml(text, file)?;
        c.check(file).map_err(|e| match e {
            ConfigError::Invalid {
                file,
                line: 0,
                column,
                field,
                message,
            } => ConfigError::Invalid {
                line: line_of_field(text, &field).unwrap_or(0),
                file,
                column,
                field,
                message,
            },
            e => e,
        })
    }

    /// Checks values serde cannot; `file` names the source in errors.
    pub fn check(self, file: &str) -> Result<Self, ConfigError> {
        let bad = |field: &str, message: &str| ConfigError::Invalid {
            file: file.into(),
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
        };
        if self.chunk_size < 4096 || self.chunk_size > 64 * 1024 * 1024 {
            return Err(bad("chunk_size", "must be between 4KiB and 64MiB"));
        }
        if self.capacity < 4 * self.chunk_size {
            return Err(bad("capacity", "must hold at least 4 chunks"));
        }
        match reqwest::Url::parse(&self.origin) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return Err(bad("origin", "must be an http:// or https:// URL")),
        }

        for (i, n) in self.fill_request_headers.iter().enumerate() {
            if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                return Err(bad(
                    &format!("fill_request_headers[{i}]"),
                    "not a valid field name",
                ));
            }
        }
        if self.peer_table_bytes < 1024 * 1024 {
            return Err(bad("peer_table_bytes", "must be at least 1MiB"));
        }
        for (i, name) in self.targeted_cache_control.iter().enumerate() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                let field = format!("targeted_cache_control[{i}]");
                return Err(bad(&field, "not a header field name"));
            }
        }
        if self.peer_listen.is_some() && self.peer_tls.is_none() {
            return Err(bad("peer_tls", "peering needs the cluster's certificates"));
        }
        if let Some(h) = &self.http3
            && let Err((field, message)) = h.check()
        {
            return Err(bad(field, message));
        }
        for (i, p) in self.peers.iter().enumerate() {
            let field = format!("peers[{i}].name");
            if p.name == self.name {
                return Err(bad(&field, "a node cannot be its own peer"));
            }
            if self.peers[..i].iter().any(|q| q.name == p.name) {
                return Err(bad(&field, "peer names must be unique"));
            }
        }
        for (i, d) in self.peers_dns.iter().enumerate() {
            if let Err((f, message)) = d.query() {
                return Err(bad(&format!("peers_dns[{i}].{f}"), &message));
            }
            if d.region.trim().is_empty() {
                return Err(bad(&format!("peers_dns[{i}].region"), "must not be empty"));
            }
        }
        if let Err((field, message)) = self.dns.check() {
            return Err(bad(field, message));
        }
        for (i, parent) in self.parents.iter().enumerate() {
            let field = format!("parents[{i}]");
            if *parent == self.name {
                return Err(bad(&field, "a node cannot be its own parent"));
            }
            // A parent found in DNS is known only at run time.
            if self.peers_dns.is_empty() && !self.peers.iter().any(|p| p.name == *parent) {
                return Err(bad(&field, "a parent must be one of `peers` (by name)"));
            }
            if self.parents[..i].contains(parent) {
                return Err(bad(&field, "parent names must be unique"));
            }
        }
        Ok(self)
    }

    /// [`EdgeConfig::check`], then what depends on fields a flag may set (the origin URL):
    /// what `cdn edge` runs with once the flags are applied.
    pub fn check_complete(self, file: &str) -> Result<Self, ConfigError> {
        let c = self.check(file)?;
        let bad = |field: &str, message: &str| ConfigError::Invalid {
            file: file.into(),
            line: 0,
            column: 0,
            field: field.into(),
            message: message.into(),
        };
        let origin = reqwest::Url::parse(&c.origin)
            .map_err(|_| bad("origin", "must be an http:// or https:// URL"))?;
        if let Some(a) = c.origin_connect {
            if origin.host_str().is_none() {
                return Err(bad("origin_connect", "the origin URL has no host"));
            }
            if origin.port_or_known_default() != Some(a.port()) {
                return Err(bad(
                    "origin_connect",
                    "its port must be the origin URL's (only the address is overridden)",
                ));
            }
        }
        // The endpoint may come from --peer-listen.
        if !c.peers_dns.is_empty() && c.peer_listen.is_none() {
            return Err(bad(
                "peers_dns",
                "peers need this node's peer endpoint (peer_listen)",
            ));
        }
        if c.origin_ca.is_some() && origin.scheme() != "https" {
            return Err(bad("origin_ca", "only for an https:// origin"));
        }
        Ok(c)
    }

    /// The fields other than `peers` whose values differ between `self` and `other`: what a
    /// reload cannot apply without a restart.
    pub fn fields_changed(&self, other: &EdgeConfig) -> Vec<&'static str> {
        // One list of fields, destructured without `..`: a new field must be added here to
        // compile, and is then compared.
        macro_rules! changed {
            ($($f:ident),* $(,)?) => {{
                let EdgeConfig { $($f,)* peers: _ } = self;
                let mut changed = Vec::new();
                $(if *$f != other.$f {
                    changed.push(stringify!($f));
                })*
                changed
            }};
        }
        changed!(
            name,
            region,
            origin,
            capacity,
            chunk_size,
            readahead,
            policy,
            coalesce_wait_ms,
            origin_connect_timeout_ms,
            origin_read_timeout_ms,
            hit_for_pass_secs,
            fill_request_headers,
            amplification_bytes_per_sec,
            amplification_burst,
            heuristic_max_secs,
            negative_ttl_secs,
            targeted_cache_control,
            cache_query,
            purge_token,
            overload_inflight,
            limits,
            drain_secs,
            cache_key_base,
            peer_listen,
            peer_tls,
            peers_dns,
            dns,
            admin_listen,
            parents,
            peer_first_byte_timeout_ms,
            hot_threshold,
            hot_window_secs,
            peer_warmup_secs,
            push_bytes_per_sec,
            peer_table_bytes,
            origin_ca,
            origin_connect,
            origin_http2,
            tls,
            http3_on_https,
            http3,
            alt_svc_request_port,
            cors_any_origin,
            express,
            sendfile,
        )
    }

    /// [`EdgeConfig::fill_request_headers`] as field names (lowercase; checked at load).
    pub fn fill_fields(&self) -> Vec<http::HeaderName> {
        self.fill_request_headers
            .iter()
            .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect()
    }

    /// The response directives this edge obeys: the first targeted field of
    /// `targeted_cache_control` the response carries, else its Cache-Control.
    pub fn response_cc(&self, headers: &http::HeaderMap) -> CacheControl {
        CacheControl::for_response(headers, &self.targeted_cache_control)
    }

    pub fn coalesce_wait(&self) -> Duration {
        Duration::from_millis(self.coalesce_wait_ms)
    }

    pub fn serve_options(&self) -> cdn_http::server::ServeOptions {
        cdn_http::server::ServeOptions {
            limits: self.limits.clone(),
            drain_deadline: Duration::from_secs(self.drain_secs),
            express: None,
        }
    }
}

/// Reads a config file; the error names it.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Parses `1048576`, `512KiB`, `512MiB`, `2GiB`, `1MB` (powers of 1024 for `Ki/Mi/Gi`, of
/// 1000 for `K/M/G` and `KB/MB/GB`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000 * 1000,
        "g" | "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        u => return Err(format!("unknown size unit `{u}` in `{s}`")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}` is too large"))
}

fn de_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        N(u64),
        S(String),
    }
    match Size::deserialize(d)? {
        Size::N(n) => Ok(n),
        Size::S(s) => parse_bytes(&s).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("512MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("1MB"), Ok(1_000_000));
        assert!(parse_bytes("12XB").is_err());
        assert!(parse_bytes("").is_err());
    }

    #[test]
    fn config_errors_name_the_field() {
        let e = EdgeConfig::parse("name = \"a\"\ncapacity = \"lots\"\n", "edge.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("edge.toml:2:"), "{e}");
        assert!(e.contains("capacity"), "{e}");
        let e = EdgeConfig::parse("policy = \"arc\"\n", "edge.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("policy"), "{e}");
        let c = EdgeConfig::parse("capacity = \"64MiB\"\npolicy = \"lru\"\n", "e").unwrap();
        assert_eq!((c.capacity, c.policy), (64 << 20, Policy::Lru));
    }

    #[test]
    fn peer_errors_name_the_line_and_the_peer() {
        let text = "name = \"a\"\n\n[[peers]]\nname = \"b\"\nregion = \"r\"\naddr = \"127.0.0.1:1\"\n\n[[peers]]\nname = \"b\"\nregion = \"r\"\naddr = \"127.0.0.1:2\"\n";
        let e = EdgeConfig::parse(text, "edge.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("edge.toml:9:"), "{e}");
        assert!(e.contains("peers[1].name") && e.contains("unique"), "{e}");
        let e = EdgeConfig::parse(&text.replace("\"b\"", "\"a\""), "edge.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("edge.toml:4:"), "{e}");
        assert!(e.contains("peers[0].name") && e.contains("own peer"), "{e}");
    }

    #[test]
    fn parent_errors_name_the_file_line_and_field() {
        let text = "name = \"a\"\nparents = [\"b\", \"x\"]\n\n[[peers]]\nname = \"b\"\nregion = \"r\"\naddr = \"127.0.0.1:1\"\n";
        let e = EdgeConfig::parse(text, "edge.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("edge.toml:2:"), "{e}");
        assert!(
            e.contains("parents[1]") && e.contains("one of `peers`"),
            "{e}"
        );
        let e = EdgeConfig::parse(&text.replace("\"x\"", "\"a\""), "edge.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("edge.toml:2:"), "{e}");
        assert!(e.contains("parents[1]") && e.contains("own parent"), "{e}");
        let ok = EdgeConfig::parse(&text.replace(", \"x\"", ""), "edge.toml").unwrap();
        assert_eq!(ok.parents, ["b"]);
    }

    #[test]
    fn fields_changed_ignores_peers() {
        let a = EdgeConfig::default();
        let mut b = a.clone();
        b.peers.push(PeerConfig {
            name: "b".into(),
            region: "r".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            push: None,
        });
        assert!(a.fields_changed(&b).is_empty());
        b.capacity *= 2;
        b.hot_threshold += 1;
        assert_eq!(a.fields_changed(&b), ["capacity", "hot_threshold"]);
    }

    #[test]
    fn targeted_cache_control_is_a_list_of_field_names() {
        let c = EdgeConfig::default();
        assert_eq!(c.targeted_cache_control, ["CDN-Cache-Control"]);
        let c = EdgeConfig::parse(
            "targeted_cache_control = [\"Example-CDN-Cache-Control\", \"CDN-Cache-Control\"]\n",
            "e",
        )
        .unwrap();
        let mut h = http::HeaderMap::new();
        h.insert("cache-control", http::HeaderValue::from_static("no-store"));
        h.insert(
            "cdn-cache-control",
            http::HeaderValue::from_static("max-age=60"),
        );
        h.insert(
            "example-cdn-cache-control",
            http::HeaderValue::from_static("max-age=5"),
        );
        assert_eq!(c.response_cc(&h).max_age, Some(5));
        h.remove("example-cdn-cache-control");
        assert_eq!(c.response_cc(&h).max_age, Some(60));
        let c = EdgeConfig::parse("targeted_cache_control = []\n", "e").unwrap();
        assert!(c.response_cc(&h).no_store);
        let e = EdgeConfig::parse("targeted_cache_control = [\"a b\"]\n", "edge.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("edge.toml:1:"), "{e}");
        assert!(e.contains("targeted_cache_control[0]"), "{e}");
    }

    #[test]
    fn origin_transport_settings_are_checked_once_the_origin_is_known() {
        let text = "origin = \"https://origin.test:8443\"\norigin_connect = \"127.0.0.1:8443\"\n";
        let c = EdgeConfig::parse(text, "e").unwrap();
        assert!(c.check_complete("e").is_ok());
        let c = EdgeConfig::parse(&text.replace("127.0.0.1:8443", "127.0.0.1:9"), "e").unwrap();
        let e = c.check_complete("e").unwrap_err().to_string();
        assert!(e.contains("origin_connect") && e.contains("port"), "{e}");
        let c = EdgeConfig::parse("origin_ca = \"ca.pem\"\n", "e").unwrap();
        let e = c.check_complete("e").unwrap_err().to_string();
        assert!(e.contains("origin_ca") && e.contains("https"), "{e}");
    }

    #[test]
    fn policy_names_in_files_and_flags() {
        for (name, policy) in [
            ("tiny-lfu", Policy::TinyLfu),
            ("lru", Policy::Lru),
            ("s3-fifo", Policy::S3Fifo),
            ("grouped-s3-fifo", Policy::GroupedS3Fifo),
            ("s3-fifo-rate", Policy::S3FifoRate),
        ] {
            let c = EdgeConfig::parse(&format!("policy = \"{name}\"\n"), "e").unwrap();
            assert_eq!(c.policy, policy);
            assert_eq!(
                <Policy as clap::ValueEnum>::from_str(name, false),
                Ok(policy)
            );
        }
    }
}
