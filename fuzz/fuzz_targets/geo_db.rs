//! The router's geo database reader (cdn_geo_router::GeoDb over maxminddb): an .mmdb file is
//! read at start and on every reload, so a corrupt or hostile file must be refused, not crash
//! the router or make lookups panic.
#![no_main]

use std::net::IpAddr;
use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(db) = cdn_geo_router::GeoDb::from_bytes(Path::new("fuzz.mmdb"), data.to_vec(), 4)
    else {
        return;
    };
    for ip in ["127.1.0.1", "81.2.69.142", "2001:218::1", "0.0.0.0", "::"] {
        let ip: IpAddr = ip.parse().expect("ip");
        if let Some(r) = db.lookup_uncached(ip) {
            let _ = r.coordinates();
        }
        let _ = db.lookup(ip);
    }
    let _ = db.database_type();
});
