//! Every node's configuration file (TOML): the origin's, the edge's (with its `[limits]` and
//! peer tables), the router's and the geo source the lab's database is built from. No panic,
//! errors are errors, and an accepted router config survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = cdn_origin::OriginConfig::parse(text, "fuzz.toml") {
        let rules = c.rules();
        let _ = rules.for_path("/media/demo/seg_001.m4s");
        let _ = c.serve_options();
    }
    if let Ok(c) = cdn_edge::EdgeConfig::parse(text, "fuzz.toml") {
        let _ = c.serve_options();
        let _ = c.coalesce_wait();
    }
    if let Ok(c) = cdn_geo_router::RouterConfig::parse(text, "router.toml") {
        let _ = c.regions();
        for e in &c.edges {
            let _ = e.health_url();
        }
        let again = toml::to_string(&c).expect("an accepted config serialises");
        let back = cdn_geo_router::RouterConfig::parse(&again, "router.toml")
            .expect("and parses back");
        assert_eq!(back, c);
    }
    let _ = cdn_geo_router::GeoSource::parse(text);
    let _ = cdn_edge::config::parse_bytes(text);
});
