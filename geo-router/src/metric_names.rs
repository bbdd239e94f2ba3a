//! The names of the metrics the geo-router exports on `/metrics`, for the code that reads them (the
//! lab, the benchmarks, the tests: `cdn_lab::scrape`), so that a name is written once.

pub const DNS_LOOKUPS_TOTAL: &str = "cdn_router_dns_lookups_total";
pub const EDGE_LOAD: &str = "cdn_router_edge_load";
pub const EDGE_UP: &str = "cdn_router_edge_up";
pub const EDGES_TOTAL: &str = "cdn_router_edges_total";
pub const EDGES_UP: &str = "cdn_router_edges_up";
pub const GEO_LOOKUPS_TOTAL: &str = "cdn_router_geo_lookups_total";
pub const GEO_MISSES_TOTAL: &str = "cdn_router_geo_misses_total";
pub const HEALTH_CHECKS_TOTAL: &str = "cdn_router_health_checks_total";
pub const RELOADS_TOTAL: &str = "cdn_router_reloads_total";
pub const ROUTES_TOTAL: &str = "cdn_router_routes_total";
