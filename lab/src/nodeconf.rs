//! The config files the lab writes for its nodes, built from the nodes' own config types:
//! each edge's (`cdn_edge::config::EdgeConfig`, with its peers over their relays, nearest
//! first) and the router's (`cdn_geo_router::RouterConfig`, with a lab link per viewer region
//! and edge).

use std::net::SocketAddr;
use std::path::Path;

use crate::config::{LinkKind, Plan};

/// The origin's key for cached objects, the same on every edge whatever relay it goes through.
const CACHE_KEY_BASE: &str = "http://origin.lab";

/// One edge's config file.
pub(crate) fn edge_toml(
    plan: &Plan,
    i: usize,
    origin_relay: SocketAddr,
    peer_listen: SocketAddr,
    peer_relays: &[(String, String, SocketAddr)],
    pki: &Path,
) -> String {
    use toml::Value;
    let e = &plan.edges[i];
    let mut t = toml::Table::new();
    t.insert("name".into(), Value::from(e.name.clone()));
    t.insert("region".into(), Value::from(e.region.clone()));
    t.insert(
        "origin".into(),
        Value::from(format!("http://{origin_relay}")),
    );
    t.insert("cache_key_base".into(), Value::from(CACHE_KEY_BASE));
    t.insert("capacity".into(), Value::from(plan.capacity as i64));
    t.insert("chunk_size".into(), Value::from(plan.chunk_size as i64));
    t.insert("drain_secs".into(), Value::from(2));
    if plan.file.peering.enabled {
        t.insert("peer_listen".into(), Value::from(peer_listen.to_string()));
        let mut tls = toml::Table::new();
        let p = |f: &str| Value::from(pki.join(f).display().to_string());
        tls.insert("ca".into(), p("ca.pem"));
        tls.insert("cert".into(), p(&format!("{}.pem", e.name)));
        tls.insert("key".into(), p(&format!("{}.key", e.name)));
        t.insert("peer_tls".into(), Value::Table(tls));
        // Nearest first: the edge pushes to the first peer of each other region.
        let mut peers: Vec<_> = peer_relays
            .iter()
            .filter_map(|(name, region, addr)| {
                let rtt = plan.link(LinkKind::Peer, &e.name, name)?.rtt_ms;
                Some((rtt, name, region, addr))
            })
            .collect();
        peers.sort_by(|a, b| a.0.total_cmp(&b.0));
        let peers = peers
            .into_iter()
            .map(|(_, name, region, addr)| {
                let mut p = toml::Table::new();
                p.insert("name".into(), Value::from(name.clone()));
                p.insert("region".into(), Value::from(region.clone()));
                p.insert("addr".into(), Value::from(addr.to_string()));
                Value::Table(p)
            })
            .collect();
        t.insert("peers".into(), Value::Array(peers));
    }
    format!(
        "# Written by `cdn lab` for this run; edit testdata/lab.toml instead.\n{}",
        toml::to_string(&t).unwrap_or_default()
    )
}

/// The router's config: the edges at their own addresses (health checks go there directly)
/// and a lab link per (viewer region, edge) pointing at that link's relay.
pub(crate) fn router_config(
    plan: &Plan,
    origin_url: &str,
    edges: &[(usize, String)],
    control_url: &str,
    client_relays: &[(String, String, String)],
) -> cdn_geo_router::RouterConfig {
    use cdn_geo_router::{EdgeConfig, GeoMissConfig, HealthConfig, LabConfig, LabLink};
    let (olat, olon) = plan.origin_point;
    cdn_geo_router::RouterConfig {
        origin_url: origin_url.to_owned(),
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
                .map(|(region, edge, url)| LabLink {
                    edge: edge.clone(),
                    region: Some(region.clone()),
                    networks: plan
                        .file
                        .regions
                        .iter()
                        .filter(|r| &r.name == region)
                        .map(|r| ipnet::IpNet::V4(r.network))
                        .collect(),
                    url: url.clone(),
                })
                .collect(),
        },
        lookup_cache_entries: 10_000,
        watch_interval_ms: 1_000,
        limits: Default::default(),
        edges: edges
            .iter()
            .map(|(i, url)| (&plan.edges[*i], url))
            .map(|(e, url)| EdgeConfig {
                name: e.name.clone(),
                region: e.region.clone(),
                latitude: e.latitude,
                longitude: e.longitude,
                url: url.clone(),
                weight: 1.0,
                health_url: None,
            })
            .collect(),
    }
}
