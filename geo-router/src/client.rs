//! Who the client is: the socket peer address, unless the peer is a trusted proxy, in which case
//! the chain of the one header that proxy is configured to set (`X-Forwarded-For` or RFC 7239
//! `Forwarded`) is walked from the right, each trusted hop read in its own header, to the first
//! untrusted address. There is no fallback from one header to the other: a header a trusted
//! proxy does not set is the viewer's to write.

use std::net::IpAddr;

use http::HeaderMap;
use serde::Serialize;

use crate::config::{ForwardingHeader, TrustedProxy};

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

impl From<ForwardingHeader> for ClientSource {
    fn from(h: ForwardingHeader) -> Self {
        match h {
            ForwardingHeader::XForwardedFor => ClientSource::XForwardedFor,
            ForwardingHeader::Forwarded => ClientSource::Forwarded,
        }
    }
}

/// The header `ip` sets when it is a trusted proxy: the most specific listed network that
/// contains it decides (the config refuses one network listed with two headers).
fn trusted_header(ip: IpAddr, trusted: &[TrustedProxy]) -> Option<ForwardingHeader> {
    trusted
        .iter()
        .filter(|p| p.net.contains(&ip))
        .max_by_key(|p| p.net.prefix_len())
        .map(|p| p.header)
}

/// One header's chain, consumed from the right.
struct Chain {
    hops: Vec<Option<IpAddr>>,
    /// Hops not yet consumed: `hops[..left]`.
    left: usize,
}

impl Chain {
    fn read(headers: &HeaderMap, header: ForwardingHeader) -> Self {
        let hops = match header {
            ForwardingHeader::XForwardedFor => x_forwarded_for_chain(headers),
            ForwardingHeader::Forwarded => forwarded_chain(headers),
        };
        Chain {
            left: hops.len(),
            hops,
        }
    }

    /// The rightmost hop not yet consumed; `None` when the chain is exhausted.
    fn pop(&mut self) -> Option<Option<IpAddr>> {
        self.left = self.left.checked_sub(1)?;
        self.hops.get(self.left).copied()
    }
}

/// The client's address for a request from `peer`.
///
/// Each trusted hop (first the peer) is asked only in the header its network is configured
/// with: the rightmost unread entry of that header is the address it reports. The walk stops at
/// the first untrusted address; at an unreadable entry, or when the hop's header has no entry
/// left, the last trusted hop is the best we know.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[TrustedProxy],
) -> (IpAddr, ClientSource) {
    let peer = peer.to_canonical();
    let mut current = (peer, ClientSource::Peer);
    let (mut xff, mut fwd) = (None, None);
    for _ in 0..MAX_HOPS {
        let Some(header) = trusted_header(current.0, trusted) else {
            return current;
        };
        let chain = match header {
            ForwardingHeader::XForwardedFor => &mut xff,
            ForwardingHeader::Forwarded => &mut fwd,
        }
        .get_or_insert_with(|| Chain::read(headers, header));
        match chain.pop() {
            // This hop reported nothing we can read: it is the best we know.
            None | Some(None) => return current,
            Some(Some(ip)) => current = (ip.to_canonical(), header.into()),
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
    use ForwardingHeader::{Forwarded, XForwardedFor};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, http::HeaderValue::from_static(v));
        }
        h
    }

    fn nets(list: &[&str], header: ForwardingHeader) -> Vec<TrustedProxy> {
        list.iter()
            .map(|s| TrustedProxy::new(s.parse().expect("net"), header))
            .collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let h = headers(&[("x-forwarded-for", "81.2.69.142")]);
        let (c, src) = client_ip(ip("127.1.0.9"), &h, &nets(&["127.9.0.0/16"], XForwardedFor));
        assert_eq!((c, src), (ip("127.1.0.9"), ClientSource::Peer));
        let (c, _) = client_ip(ip("127.1.0.9"), &h, &[]);
        assert_eq!(c, ip("127.1.0.9"));
    }

    #[test]
    fn trusted_peer_xff_rightmost_untrusted_wins() {
        let trusted = nets(&["127.9.0.0/16", "10.0.0.0/8"], XForwardedFor);
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
        let trusted = nets(&["::1/128"], Forwarded);
        let h = headers(&[(
            "forwarded",
            "for=81.2.69.142;proto=https, For=\"[2001:218::1]:4711\";by=x",
        )]);
        let (c, src) = client_ip(ip("::1"), &h, &trusted);
        assert_eq!((c, src), (ip("2001:218::1"), ClientSource::Forwarded));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(client_ip(ip("::1"), &h, &trusted).0, ip("::1"));
    }

    #[test]
    fn only_the_header_the_hop_sets_is_read() {
        // A proxy that appends X-Forwarded-For passes the viewer's own Forwarded through.
        let xff = nets(&["127.9.0.0/16"], XForwardedFor);
        let h = headers(&[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(
            client_ip(ip("127.9.0.1"), &h, &xff),
            (ip("2.2.2.2"), ClientSource::XForwardedFor)
        );
        // And the mirror case.
        let fwd = nets(&["127.9.0.0/16"], Forwarded);
        assert_eq!(
            client_ip(ip("127.9.0.1"), &h, &fwd),
            (ip("1.1.1.1"), ClientSource::Forwarded)
        );
        // No entry in the hop's own header: the other one is not a fallback.
        let h = headers(&[("forwarded", "for=1.1.1.1")]);
        assert_eq!(
            client_ip(ip("127.9.0.1"), &h, &xff),
            (ip("127.9.0.1"), ClientSource::Peer)
        );
        let h = headers(&[("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(
            client_ip(ip("127.9.0.1"), &h, &fwd),
            (ip("127.9.0.1"), ClientSource::Peer)
        );
    }

    #[test]
    fn each_trusted_hop_is_read_in_its_own_header() {
        // viewer -> front (10.0.0.0/8, sets Forwarded) -> balancer (127.9.0.0/16, sets XFF).
        let mut trusted = nets(&["10.0.0.0/8"], Forwarded);
        trusted.extend(nets(&["127.9.0.0/16"], XForwardedFor));
        // The viewer wrote both headers; the front appended the viewer's real address to
        // Forwarded, the balancer the front's to X-Forwarded-For.
        let h = headers(&[
            ("forwarded", "for=6.6.6.6, for=81.2.69.142"),
            ("x-forwarded-for", "7.7.7.7, 10.0.0.5"),
        ]);
        assert_eq!(
            client_ip(ip("127.9.0.1"), &h, &trusted),
            (ip("81.2.69.142"), ClientSource::Forwarded)
        );
        // The most specific network decides a hop's header.
        let mut trusted = nets(&["127.0.0.0/8"], Forwarded);
        trusted.extend(nets(&["127.9.0.1/32"], XForwardedFor));
        let h = headers(&[("forwarded", "for=1.1.1.1"), ("x-forwarded-for", "2.2.2.2")]);
        assert_eq!(client_ip(ip("127.9.0.1"), &h, &trusted).0, ip("2.2.2.2"));
        assert_eq!(client_ip(ip("127.9.0.2"), &h, &trusted).0, ip("1.1.1.1"));
    }

    #[test]
    fn ipv4_mapped_peer_is_canonical() {
        let trusted = nets(&["127.9.0.0/16"], XForwardedFor);
        let h = headers(&[("x-forwarded-for", "81.2.69.142")]);
        let (c, _) = client_ip(ip("::ffff:127.9.0.1"), &h, &trusted);
        assert_eq!(c, ip("81.2.69.142"));
        assert_eq!(client_ip(ip("::ffff:1.2.3.4"), &h, &[]).0, ip("1.2.3.4"));
    }
}
