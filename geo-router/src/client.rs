//! Who the client is: the socket peer address, unless the peer is a trusted proxy, in which case
//! the `Forwarded` (RFC 7239) or else `X-Forwarded-For` chain is walked from the right, past
//! trusted proxies, to the first untrusted address.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;
use serde::Serialize;

/// Most hops of a forwarding chain looked at.
const MAX_HOPS: usize = 32;

/// Where the client address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientSource {
    /// The socket peer address.
    Peer,
    /// The `Forwarded` header, sent by a trusted proxy.
    Forwarded,
    /// The `X-Forwarded-For` header, sent by a trusted proxy.
    XForwardedFor,
    /// The `ip` parameter of `/_route`.
    Query,
    /// The lab's `?client_ip=` override.
    LabClientIp,
    /// The lab's `?region=` override.
    LabRegion,
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|n| n.contains(&ip))
}

/// The client's address for a request from `peer`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> (IpAddr, ClientSource) {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return (peer, ClientSource::Peer);
    }
    let (chain, source) = if headers.contains_key(http::header::FORWARDED) {
        (forwarded_chain(headers), ClientSource::Forwarded)
    } else if headers.contains_key("x-forwarded-for") {
        (x_forwarded_for_chain(headers), ClientSource::XForwardedFor)
    } else {
        return (peer, ClientSource::Peer);
    };
    // Walk from the proxy nearest to us towards the client.
    let mut current = (peer, ClientSource::Peer);
    for hop in chain.iter().rev().take(MAX_HOPS) {
        match hop {
            // An address we cannot read: the last trusted hop is the best we know.
            None => return current,
            Some(ip) => {
                let ip = ip.to_canonical();
                current = (ip, source);
                if !is_trusted(ip, trusted) {
                    return current;
                }
            }
        }
    }
    current
}

/// All header lines joined: lists may be split over several lines.
fn joined(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
}

fn x_forwarded_for_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    joined(headers, "x-forwarded-for")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_node)
        .collect()
}

fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    joined(headers, "forwarded")
        .split(',')
        .filter(|element| !element.trim().is_empty())
        .map(|element| {
            element
                .split(';')
                .filter_map(|pair| pair.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                .and_then(|(_, v)| parse_node(v.trim().trim_matches('"')))
        })
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]`, `[2001:db8::1]:80`; `unknown` and
/// obfuscated identifiers give `None`.
fn parse_node(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse().ok();
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    match s.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) && !host.contains(':') => {
            host.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().expect("net")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "81.2.69.142")]);
        let (c, src) = client_ip(ip("127.1.0.9"), &h, &nets(&["127.9.0.0/16"]));
        assert_eq!((c, src), (ip("127.1.0.9"), ClientSource::Peer));
        let (c, _) = client_ip(ip("127.1.0.9"), &h, &[]);
        assert_eq!(c, ip("127.1.0.9"));
    }

    #[test]
    fn trusted_peer_xff_rightmost_untrusted_wins() {
        let trusted = nets(&["127.9.0.0/16", "10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 81.2.69.142, 10.1.1.1")]);
        let (c, src) = client_ip(ip("127.9.0.1"), &h, &trusted);
        assert_eq!((c, src), (ip("81.2.69.142"), ClientSource::XForwardedFor));
        // Split over two lines.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "175.16.199.1:4711"),
        ]);
        let (c, _) = client_ip(ip("127.9.0.1"), &h, &trusted);
        assert_eq!(c, ip("175.16.199.1"));
        // Everything trusted: the leftmost.
        let h = headers(&[("x-forwarded-for", "10.0.0.1, 10.0.0.2")]);
        assert_eq!(client_ip(ip("127.9.0.1"), &h, &trusted).0, ip("10.0.0.1"));
        // Garbage: the last trusted hop.
        let h = headers(&[("x-forwarded-for", "81.2.69.142, nonsense")]);
        assert_eq!(
            client_ip(ip("127.9.0.1"), &h, &trusted),
            (ip("127.9.0.1"), ClientSource::Peer)
        );
    }

    #[test]
    fn forwarded_header_with_ipv6_and_ports() {
        let trusted = nets(&["::1/128"]);
        let h = headers(&[(
            "forwarded",
            "for=81.2.69.142;proto=https, For=\"[2001:218::1]:4711\";by=x",
        )]);
        let (c, src) = client_ip(ip("::1"), &h, &trusted);
        assert_eq!((c, src), (ip("2001:218::1"), ClientSource::Forwarded));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(ip("::1"), &h, &trusted).0, ip("::1"));
        // Forwarded wins over X-Forwarded-For.
        let h = headers(&[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(client_ip(ip("::1"), &h, &trusted).0, ip("1.1.1.1"));
    }

    #[test]
    fn ipv4_mapped_peer_is_canonical() {
        let trusted = nets(&["127.9.0.0/16"]);
        let h = headers(&[("x-forwarded-for", "81.2.69.142")]);
        let (c, _) = client_ip(ip("::ffff:127.9.0.1"), &h, &trusted);
        assert_eq!(c, ip("81.2.69.142"));
        assert_eq!(client_ip(ip("::ffff:1.2.3.4"), &h, &[]).0, ip("1.2.3.4"));
    }
}
