//! The config files the lab writes for its nodes, built from the nodes' own config types:
//! each edge's (`cdn_edge::config::EdgeConfig`, with its peers over their relays, nearest
//! first) and the router's (`cdn_geo_router::RouterConfig`, with a lab link per viewer region
//! and edge).

use std::net::SocketAddr;
use std::path::Path;

use cdn_edge::config::{EdgeConfig, PeerConfig, PeerTls};

use crate::config::{LinkKind, Plan};
use crate::fleet::ClientRelay;

/// The origin's key for cached objects, the same on every edge whatever relay it goes through.
const CACHE_KEY_BASE: &str = "http://origin.lab";

/// Where an edge's config points: its origin relay, its peer endpoint and its peers' relays,
/// the peers' certificates, and its viewer TLS (`[tls]`, with `[https]`).
pub(crate) struct EdgeWiring<'a> {
    pub origin_relay: SocketAddr,
    pub peer_listen: SocketAddr,
    pub peer_relays: &'a [(String, String, SocketAddr)],
    pub pki: &'a Path,
    pub tls: Option<cdn_http::tls::TlsSettings>,
}

/// One edge's config: the edge's own config type with the lab's settings (the origin
/// through this edge's relay, one cache key base, the plan's capacity and chunk size, a short
/// drain, CORS for the player's page) and, with peering, its QUIC endpoint, certificates and
/// peers over their relays; with `[https]`, an HTTPS listener with the viewer certificate,
/// HTTP/3 on its port number, advertised on the port each viewer came to (its link's relay
/// carries TCP and UDP on one number).
pub(crate) fn edge_config(plan: &Plan, i: usize, w: &EdgeWiring) -> EdgeConfig {
    let e = &plan.edges[i];
    let mut cfg = EdgeConfig {
        name: e.name.clone(),
        region: e.region.clone(),
        origin: format!("http://{}", w.origin_relay),
        cache_key_base: Some(CACHE_KEY_BASE.into()),
        capacity: plan.capacity,
        chunk_size: plan.chunk_size,
        policy: plan.file.edges.policy,
        drain_secs: 2,
        cors_any_origin: true,
        ..EdgeConfig::default()
    };
    if let Some(tls) = &w.tls {
        cfg.tls = tls.clone();
        cfg.http3_on_https = plan.file.https.http3;
        cfg.alt_svc_request_port = true;
    }
    if plan.file.peering.enabled {
        cfg.peer_listen = Some(w.peer_listen);
        cfg.peer_tls = Some(PeerTls {
            ca: w.pki.join("ca.pem"),
            cert: w.pki.join(format!("{}.pem", e.name)),
            key: w.pki.join(format!("{}.key", e.name)),
        });
        // Nearest first: the edge pushes to the first peer of each other region.
        let mut peers: Vec<_> = w
            .peer_relays
            .iter()
            .filter_map(|(name, region, addr)| {
                let rtt = plan.link(LinkKind::Peer, &e.name, name)?.rtt_ms;
                Some((rtt, name, region, addr))
            })
            .collect();
        peers.sort_by(|a, b| a.0.total_cmp(&b.0));
        cfg.peers = peers
            .into_iter()
            .map(|(_, name, region, addr)| PeerConfig {
                name: name.clone(),
                region: region.clone(),
                addr: *addr,
                push: None,
            })
            .collect();
        // Tiers: a lower-tier edge's parents are the shield edges among its peers.
        let names: Vec<&str> = w.peer_relays.iter().map(|(n, _, _)| n.as_str()).collect();
        cfg.parents = crate::tiers::parents(plan, i, &names);
    }
    cfg
}

/// One edge's config file: [`edge_config`] as TOML.
pub(crate) fn edge_toml(plan: &Plan, i: usize, w: &EdgeWiring) -> anyhow::Result<String> {
    let cfg = edge_config(plan, i, w);
    Ok(format!(
        "# Written by `cdn lab` for this run; edit testdata/lab.toml instead.\n{}",
        toml::to_string(&cfg)?
    ))
}

/// The router's config: the edges at their own addresses (health checks go there directly)
/// and a lab link per (viewer region, edge) pointing at that link's relay.
pub(crate) fn router_config(
    plan: &Plan,
    (origin_url, origin_https_url): (&str, Option<&str>),
    edges: &[(usize, String, Option<String>)],
    control_url: &str,
    client_relays: &[ClientRelay],
) -> cdn_geo_router::RouterConfig {
    use cdn_geo_router::{EdgeConfig, GeoMissConfig, HealthConfig, LabConfig, LabLink};
    let (olat, olon) = plan.origin_point;
    cdn_geo_router::RouterConfig {
        origin_url: origin_url.to_owned(),
        origin_https_url: origin_https_url.map(str::to_owned),
        tls: Default::default(),
        edges_dns: Vec::new(),
        dns: Default::default(),
        trusted_proxies: Vec::new(),
        geo_miss: GeoMissConfig {
            latitude: olat,
            longitude: olon,
            label: "lab default (the origin's region)".into(),
        },
        health: HealthConfig::default(),
        lab: LabConfig {
            allow_client_override: true,
            ui_url: Some(control_url.to_owned()),
            links: client_relays
                .iter()
                .map(|c| LabLink {
                    edge: c.edge.clone(),
                    region: Some(c.region.clone()),
                    networks: plan
                        .file
                        .regions
                        .iter()
                        .filter(|r| r.name == c.region)
                        .map(|r| ipnet::IpNet::V4(r.network))
                        .collect(),
                    url: c.url.clone(),
                    https_url: c.https_url.clone(),
                })
                .collect(),
        },
        lookup_cache_entries: 10_000,
        watch_interval_ms: 1_000,
        limits: Default::default(),
        edges: edges
            .iter()
            .map(|(i, url, https)| (&plan.edges[*i], url, https))
            .map(|(e, url, https)| EdgeConfig {
                name: e.name.clone(),
                region: e.region.clone(),
                latitude: e.latitude,
                longitude: e.longitude,
                url: url.clone(),
                weight: 1.0,
                health_url: None,
                https_url: https.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LabFile, PortMode};

    #[test]
    fn an_edges_file_reads_back_as_the_config_it_was_written_from() {
        let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        let mut file = LabFile::load(&root.join("testdata/lab.toml")).expect("lab file");
        file.edges.policy = cdn_edge::Policy::S3FifoRate;
        let plan = file.plan(PortMode::Auto).expect("plan");
        let origin: SocketAddr = "127.0.0.1:9001".parse().expect("addr");
        let listen: SocketAddr = "127.0.0.1:9002".parse().expect("addr");
        let peers: Vec<(String, String, SocketAddr)> = plan
            .edges
            .iter()
            .skip(1)
            .enumerate()
            .map(|(j, e)| {
                let addr = SocketAddr::from(([127, 0, 0, 1], 9100 + j as u16));
                (e.name.clone(), e.region.clone(), addr)
            })
            .collect();
        let pki = Path::new("/run/pki");
        let https: SocketAddr = "127.0.0.1:9443".parse().expect("addr");
        let tls = cdn_http::tls::TlsSettings {
            listen: Some(https),
            certificates: vec![cdn_http::tls::CertFiles {
                cert: "/run/tls/viewer.pem".into(),
                key: "/run/tls/viewer.key".into(),
            }],
            ..Default::default()
        };
        let w = EdgeWiring {
            origin_relay: origin,
            peer_listen: listen,
            peer_relays: &peers,
            pki,
            tls: Some(tls),
        };
        let want = edge_config(&plan, 0, &w);
        let text = edge_toml(&plan, 0, &w).expect("toml");
        let got = EdgeConfig::parse(&text, "edge.toml").expect("the edge reads it");
        assert_eq!(got, want);
        assert_eq!(got.origin, "http://127.0.0.1:9001");
        assert_eq!(got.cache_key_base.as_deref(), Some(CACHE_KEY_BASE));
        assert_eq!(got.tls.listen, Some(https));
        assert!(got.alt_svc_request_port && got.cors_any_origin && got.http3_on_https);
        assert_eq!(
            (got.capacity, got.chunk_size, got.policy),
            (plan.capacity, plan.chunk_size, cdn_edge::Policy::S3FifoRate)
        );
        if plan.file.peering.enabled {
            assert_eq!(got.peer_listen, Some(listen));
            assert_eq!(got.peers.len(), peers.len());
            assert_eq!(
                got.peer_tls.map(|t| t.cert),
                Some(pki.join(format!("{}.pem", plan.edges[0].name)))
            );
        }
    }
}
