//! The router's client address (cdn_geo_router::client): `X-Forwarded-For` and `Forwarded`
//! chains from arbitrary bytes. No panic, headers from an untrusted peer never count, and a
//! trusted peer's request without the one header its network is configured with is the peer's.
#![no_main]

#[path = "common.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;

use cdn_geo_router::client::{ClientSource, client_ip};
use cdn_geo_router::{ForwardingHeader, TrustedProxy};

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
    use ForwardingHeader::{Forwarded, XForwardedFor};
    let trusted: Vec<TrustedProxy> = [
        ("127.0.0.0/8", XForwardedFor),
        ("10.0.0.0/8", Forwarded),
        ("::1/128", XForwardedFor),
        ("fd00::/8", Forwarded),
    ]
    .iter()
    .map(|(s, h)| TrustedProxy::new(s.parse().expect("net"), *h))
    .collect();
    let headers = common::headers(data);
    let (ip, source) = client_ip(peer, &headers, &trusted);
    let canonical = peer.to_canonical();
    match trusted.iter().find(|p| p.net.contains(&canonical)) {
        None => assert_eq!((ip, source), (canonical, ClientSource::Peer)),
        Some(p) if !headers.contains_key(p.header.name()) => {
            assert_eq!((ip, source), (canonical, ClientSource::Peer))
        }
        Some(_) => {}
    }
    if source == ClientSource::Peer {
        assert_eq!(ip, canonical);
    }
});
