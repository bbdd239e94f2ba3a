//! The router's client address (cdn_geo_router::client): `X-Forwarded-For` and `Forwarded`
//! chains from arbitrary bytes. No panic, and headers from an untrusted peer never count.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;

use cdn_geo_router::client::{ClientSource, client_ip};

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let raw = common::take::<17>(&mut data);
    let peer = if raw[0] & 1 == 0 {
        IpAddr::V4(Ipv4Addr::new(raw[1], raw[2], raw[3], raw[4]))
    } else {
        let mut b = [0u8; 16];
        b.copy_from_slice(&raw[1..17]);
        IpAddr::V6(Ipv6Addr::from(b))
    };
    let trusted: Vec<ipnet::IpNet> = ["127.0.0.0/8", "10.0.0.0/8", "::1/128", "fd00::/8"]
        .iter()
        .map(|s| s.parse().expect("net"))
        .collect();
    let headers = common::headers(data);
    let (ip, source) = client_ip(peer, &headers, &trusted);
    let canonical = peer.to_canonical();
    if !trusted.iter().any(|n| n.contains(&canonical)) {
        assert_eq!((ip, source), (canonical, ClientSource::Peer));
    }
    if source == ClientSource::Peer {
        assert_eq!(ip, canonical);
    }
});
