//! The names of the metrics the edge exports on `/metrics`, for the code that reads them (the
//! lab, the benchmarks, the tests: `cdn_lab::scrape`), so that a name is written once.

pub const ADMIN_REFUSED_TOTAL: &str = "cdn_edge_admin_refused_total";
pub const AMPLIFICATION_REFUSED_TOTAL: &str = "cdn_edge_amplification_refused_total";
/// Memory held by chunks in the arena's memory files (`arena`: shared memory, which the
/// process's anonymous RSS does not count).
pub const ARENA_BYTES: &str = "cdn_edge_arena_bytes";
pub const BYTES_SERVED_TOTAL: &str = "cdn_edge_bytes_served_total";
pub const CACHE_BYTES: &str = "cdn_edge_cache_bytes";
pub const CACHE_CAPACITY_BYTES: &str = "cdn_edge_cache_capacity_bytes";
pub const CACHE_OBJECTS: &str = "cdn_edge_cache_objects";
/// With `policy = "s3-fifo-rate"`: how long the policy remembers an object's session starts
/// (the half-life of its rate estimate, in requests; 8 mean eviction ages of chunks).
pub const CACHE_RATE_HALF_LIFE_REQUESTS: &str = "cdn_edge_cache_rate_half_life_requests";
pub const COALESCED_WAITS_TOTAL: &str = "cdn_edge_coalesced_waits_total";
pub const CONFIG_RELOADS_TOTAL: &str = "cdn_edge_config_reloads_total";
pub const DNS_LOOKUPS_TOTAL: &str = "cdn_edge_dns_lookups_total";
pub const DNS_MEMBERS: &str = "cdn_edge_dns_members";
/// Requests answered on the express lane (`proxy::express`); they are counted in
/// `REQUESTS_TOTAL` too.
pub const EXPRESS_TOTAL: &str = "cdn_edge_express_total";
pub const FILL_ERRORS_TOTAL: &str = "cdn_edge_fill_errors_total";
pub const INFLIGHT_REQUESTS: &str = "cdn_edge_inflight_requests";
pub const LOG_LINES_DROPPED_TOTAL: &str = "cdn_edge_log_lines_dropped_total";
pub const ORIGIN_BYTES_TOTAL: &str = "cdn_edge_origin_bytes_total";
pub const ORIGIN_ERRORS_TOTAL: &str = "cdn_edge_origin_errors_total";
pub const ORIGIN_FETCHES_TOTAL: &str = "cdn_edge_origin_fetches_total";
pub const ORIGIN_RETRIES_TOTAL: &str = "cdn_edge_origin_retries_total";
pub const PEER_BYTES_TOTAL: &str = "cdn_edge_peer_bytes_total";
pub const PEER_CONNECTED: &str = "cdn_edge_peer_connected";
pub const PEER_DIGEST_MISMATCHES_TOTAL: &str = "cdn_edge_peer_digest_mismatches_total";
pub const PEER_FETCHES_TOTAL: &str = "cdn_edge_peer_fetches_total";
pub const PEER_HANDSHAKE_FAILURES_TOTAL: &str = "cdn_edge_peer_handshake_failures_total";
pub const PEER_REFUSED_TOTAL: &str = "cdn_edge_peer_refused_total";
pub const PEER_RUNNER_UP_FETCHES_TOTAL: &str = "cdn_edge_peer_runner_up_fetches_total";
pub const PEER_TABLE_BYTES: &str = "cdn_edge_peer_table_bytes";
pub const PEER_TABLE_ENTRIES: &str = "cdn_edge_peer_table_entries";
pub const PEERS: &str = "cdn_edge_peers";
pub const PURGES_TOTAL: &str = "cdn_edge_purges_total";
pub const PUSHES_TOTAL: &str = "cdn_edge_pushes_total";
pub const REQUESTS_TOTAL: &str = "cdn_edge_requests_total";
pub const RESPONSE_BODY_SECONDS: &str = "cdn_edge_response_body_seconds";
pub const RESPONSE_SECONDS: &str = "cdn_edge_response_seconds";
pub const TIER_BYTES_TOTAL: &str = "cdn_edge_tier_bytes_total";
pub const TIER_FETCHES_TOTAL: &str = "cdn_edge_tier_fetches_total";
pub const TIER_REQUESTS_TOTAL: &str = "cdn_edge_tier_requests_total";
pub const HTTP3_CONNECTIONS_TOTAL: &str = "cdn_edge_http3_connections_total";
pub const HTTP3_REQUESTS_TOTAL: &str = "cdn_edge_http3_requests_total";
