//! `cdn lab`: a small CDN on this machine. This first version runs, in this process, the
//! origin, one edge per simulated region and the geo-router with the lab's geo database and
//! the client override switched on, so that `?region=asia` picks a region from a browser or
//! ffplay. Separate processes, simulated distance (latency relays), the player page and the
//! dashboard are the lab issue's remaining work (see ARCHITECTURE.md).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;
use cdn_geo_router::{EdgeConfig, GeoMissConfig, HealthConfig, LabConfig, RouterConfig};

/// `cdn lab` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// First port: router on BASE, origin on BASE+1, edges on BASE+11, BASE+12, ...
    #[arg(long, default_value_t = 8080)]
    pub port_base: u16,
    /// The media the origin serves.
    #[arg(long, default_value = "testdata/media")]
    pub root: PathBuf,
    /// The lab's geo database.
    #[arg(long, default_value = "testdata/geo/lab-geo.mmdb")]
    pub geo_db: PathBuf,
    /// Cache budget of each edge.
    #[arg(long, default_value = "256MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub edge_capacity: u64,
}

impl Default for LabArgs {
    fn default() -> Self {
        LabArgs {
            port_base: 8080,
            root: PathBuf::from("testdata/media"),
            geo_db: PathBuf::from("testdata/geo/lab-geo.mmdb"),
            edge_capacity: 256 << 20,
        }
    }
}

/// The lab's regions: name, edge name, coordinates (the cities of testdata/geo/lab-geo.toml).
const REGIONS: &[(&str, &str, f64, f64)] = &[
    ("europe", "eu-1", 50.11, 8.68),
    ("north-america", "na-1", 39.04, -77.49),
    ("asia", "asia-1", 1.29, 103.85),
];

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

async fn listen(port: u16, what: &str) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr(port))
        .await
        .with_context(|| {
            format!(
                "{what} cannot listen on {}: port taken? try --port-base",
                addr(port)
            )
        })
}

pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    let base = args.port_base;
    let origin_cfg = cdn_origin::OriginConfig::default();
    let origin = cdn_origin::spawn(
        listen(base + 1, "origin").await?,
        args.root.clone(),
        &origin_cfg,
    )
    .with_context(|| format!("origin root {}", args.root.display()))?;
    let mut edges = Vec::new();
    let mut routes = Vec::new();
    for (i, (region, name, lat, lon)) in REGIONS.iter().enumerate() {
        let cfg = cdn_edge::EdgeConfig {
            name: name.to_string(),
            region: region.to_string(),
            origin: origin.url(),
            capacity: args.edge_capacity,
            ..Default::default()
        }
        .check("lab")?;
        let (handle, _) = cdn_edge::spawn(listen(base + 11 + i as u16, name).await?, cfg)?;
        routes.push(EdgeConfig {
            name: name.to_string(),
            region: region.to_string(),
            latitude: *lat,
            longitude: *lon,
            url: handle.url(),
            weight: 1.0,
            health_url: None,
        });
        edges.push(handle);
    }
    let router_cfg = RouterConfig {
        origin_url: origin.url(),
        trusted_proxies: Vec::new(),
        geo_miss: GeoMissConfig {
            latitude: 50.11,
            longitude: 8.68,
            label: "lab default (Frankfurt)".into(),
        },
        health: HealthConfig::default(),
        lab: LabConfig {
            allow_client_override: true,
        },
        lookup_cache_entries: 10_000,
        watch_interval_ms: 1_000,
        edges: routes,
    };
    let router = cdn_geo_router::spawn(router_cfg, &args.geo_db, listen(base, "router").await?)
        .await
        .with_context(|| format!("geo database {}", args.geo_db.display()))?;

    println!("\ncdn lab is up\n");
    println!("  {:<10} {:<15} url", "node", "region");
    println!("  {:<10} {:<15} {}", "router", "-", router.url());
    println!("  {:<10} {:<15} {}", "origin", "-", origin.url());
    for ((region, name, _, _), e) in REGIONS.iter().zip(&edges) {
        println!("  {:<10} {:<15} {}", name, region, e.url());
    }
    let r = router.url();
    println!("\nTry:");
    println!("  curl -sI -L \"{r}/demo.mp4?region=asia\"");
    println!("  ffplay \"{r}/demo/index.m3u8?region=europe\"");
    println!("  curl -s \"{r}/_route?ip=127.3.0.9&path=/demo.mp4\"");
    println!("\nCtrl-C stops the lab.");

    cdn_http::server::shutdown_signal().await;
    tracing::info!("stopping the lab");
    router.stop().await;
    for e in edges {
        e.stop().await;
    }
    origin.stop().await;
    Ok(())
}
