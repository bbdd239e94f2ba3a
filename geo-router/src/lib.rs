//! The geo-router: sends each viewer to the nearest healthy edge with a `302 Found`.
//!
//! # The path of a request
//! 1. **Client address** ([`client`]): the socket peer, or, when the peer is in
//!    `trusted_proxies`, the rightmost untrusted address of the one header (`X-Forwarded-For`
//!    or `Forwarded`) each trusted hop's network is configured to set; never the other header.
//! 2. **Lookup** ([`geo`]): the address in a MaxMind DB (GeoIP2/GeoLite2 City layout, IPv4 and
//!    IPv6; MaxMind's databases or the lab's, built by `cdn geo build`), through a bounded cache.
//!    No record, or one without coordinates: the configured `geo_miss` location (not a country
//!    centroid, so unknown addresses do not pile onto one region).
//! 3. **Choice** ([`select`]): regions ordered by great-circle distance to their nearest edge;
//!    inside a region, weighted rendezvous hashing of the path (query excluded) picks the edge,
//!    so a video always lands on the same edge and the region's caches add up. Down, not yet
//!    checked, or overloaded edges are skipped (next edge of the hash order, then the next
//!    region); overloaded edges are used only when nothing else is up; with every edge down,
//!    the origin. Reasons: `nearest`, `hashed`, `failover`, `geo-miss`, `origin-fallback`
//!    (definitions in [`select`]).
//! 4. **Answer** ([`server`]): `302` to `{edge url}{path}?{query}` with `Cache-Control:
//!    no-store`, `X-CDN-Edge` and `X-CDN-Route-Reason`. `GET /_route?ip=IP&path=P` explains a
//!    decision as JSON (edge, region, distance, lookup record, reason, skipped edges).
//!
//! # Health ([`health`])
//! One task per edge probes `GET /healthz` every `health.interval_ms` (default 1 s) with a
//! timeout; down after `down_after` failures in a row (3), up after `up_after` successes (2).
//! A `load` field in the JSON body at or above `overload_threshold` (0.9) marks the edge
//! overloaded.
//!
//! # Reload ([`state`])
//! SIGHUP (in `cdn router`) or a changed file (polled every `watch_interval_ms`) re-reads the
//! config and the geo database; the new snapshot is swapped in atomically, requests in flight
//! finish on the old one, and a bad file is logged and ignored (the old state stays).
//!
//! # Lab switch
//! `[lab] allow_client_override = true` lets any request choose its client with
//! `?client_ip=IP` or `?region=NAME` (both removed from the redirect). **Unsafe outside a lab**:
//! it lets anyone pick any edge. Off by default. `cdn lab` also sets `[lab] ui_url` (`/` and
//! `/_lab/` are forwarded to the lab's player and dashboard) and `[[lab.link]]` entries: per
//! client region (networks, or the `?region=` name) and edge, the relay URL that simulates that
//! link, used in the redirect instead of the edge's own URL.
//!
//! # Operations
//! `/healthz` (JSON with each edge's state), `/metrics` (Prometheus:
//! `cdn_router_routes_total{edge,reason}`, `cdn_router_geo_lookups_total{result}`,
//! `cdn_router_geo_misses_total`, `cdn_router_edges_up`, `cdn_router_edge_up{edge}`,
//! `cdn_router_edge_load{edge}`, `cdn_router_health_checks_total{edge,result}`,
//! `cdn_router_reloads_total{file,result}`), logs through `tracing`.
//!
//! # Library use
//! [`spawn`] (config in memory) or [`spawn_from_files`] start a router on a listener and return
//! a [`RouterHandle`] (address, [`RouterHandle::set_config`] to add or remove edges,
//! [`RouterHandle::route`], [`RouterHandle::reload`], [`RouterHandle::stop`]).

pub mod client;
pub mod config;
mod dns;
pub mod error;
pub mod geo;
pub mod geosrc;
pub mod health;
pub mod metric_names;
pub mod select;
pub mod server;
pub mod state;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context;

pub use client::ClientSource;
pub use config::{
    EdgeConfig, ForwardingHeader, GeoMissConfig, HealthConfig, LabConfig, LabLink, RouterConfig,
    TrustedProxy,
};
pub use error::RouterError;
pub use geo::{GeoDb, GeoRecord};
pub use geosrc::GeoSource;
pub use select::{EdgeState, Reason};
pub use server::{EDGE_HEADER, REASON_HEADER};
pub use state::{
    ClientSpec, EdgeStatus, RouteDecision, RouterHandle, UnknownRegion, spawn, spawn_from_files,
};

/// `cdn router` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// Where the router listens.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The MaxMind DB (GeoIP2/GeoLite2 City layout), e.g. testdata/geo/lab-geo.mmdb.
    #[arg(long, required_unless_present = "check_config")]
    pub geo_db: Option<PathBuf>,
    /// The router config (TOML), e.g. testdata/geo/router.example.toml.
    #[arg(long, required_unless_present = "check_config")]
    pub config: Option<PathBuf>,
    /// HTTPS listener (TCP); viewers that come over HTTPS are redirected to the edges'
    /// `https_url`.
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,
    /// Certificate chain (PEM) of the HTTPS listener (the default one when `[tls]` lists
    /// more for SNI).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Load and check FILE as `cdn router --config FILE` would, print one line and exit: 0
    /// when it is valid, 1 with the error (file, line, field) when not. Nothing is bound or
    /// started (the geo database is opened at start, not here).
    #[arg(long, value_name = "FILE", conflicts_with = "config")]
    pub check_config: Option<PathBuf>,
}

impl RouterArgs {
    /// `--check-config FILE`: the configuration `cdn router --config FILE` would run with
    /// (the same loader, the same errors), summarised in one line; binds nothing.
    pub fn check_config(&self, file: &std::path::Path) -> Result<String, RouterError> {
        let c = RouterConfig::load(file)?;
        let mut regions: Vec<&str> = c
            .edges
            .iter()
            .map(|e| e.region.as_str())
            .chain(c.edges_dns.iter().map(|d| d.region.as_str()))
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let dns = match c.edges_dns.len() {
            0 => String::new(),
            n => format!(" and {n} DNS names"),
        };
        Ok(format!(
            "{}: OK: router, {} edges{dns} in {} regions ({}), origin fallback {}",
            file.display(),
            c.edges.len(),
            regions.len(),
            regions.join(", "),
            c.origin_url,
        ))
    }
}

/// `cdn geo ...`
#[derive(Debug, Clone, clap::Subcommand)]
pub enum GeoCommand {
    /// Build an .mmdb (GeoIP2-City layout) from a TOML geo source.
    Build {
        /// The source, e.g. testdata/geo/lab-geo.toml.
        src: PathBuf,
        /// The .mmdb to write, e.g. testdata/geo/lab-geo.mmdb.
        out: PathBuf,
    },
    /// Check that an .mmdb is exactly what a source builds to.
    Check { src: PathBuf, mmdb: PathBuf },
    /// Look addresses up in an .mmdb and print the records as JSON.
    Lookup { db: PathBuf, ips: Vec<IpAddr> },
}

/// `cdn router`: runs until SIGTERM or Ctrl-C; SIGHUP reloads the config and the geo database.
pub async fn run(args: RouterArgs) -> anyhow::Result<()> {
    // Both are required by the command line unless `--check-config` is given.
    let (Some(config), Some(geo_db)) = (&args.config, &args.geo_db) else {
        anyhow::bail!("cdn router needs --config FILE and --geo-db FILE");
    };
    // Check both files before binding, so a bad file is the first thing reported.
    let file_tls = RouterConfig::load(config)?.tls;
    let tls = file_tls
        .with_flags(
            args.tls_listen,
            args.tls_cert.as_deref(),
            args.tls_key.as_deref(),
        )
        .map_err(anyhow::Error::msg)?;
    tls.check().map_err(anyhow::Error::msg)?;
    // Signal handlers first: once "router listening" is logged, SIGHUP and SIGTERM must
    // already be handled (their default action would kill the process).
    let shutdown = cdn_http::server::shutdown_signal();
    tokio::pin!(shutdown);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("cannot listen for SIGHUP")?;
    let listener = cdn_http::server::bind(args.listen).await?;
    let handle = state::spawn_from_files_with_tls(config, geo_db, listener, Some(tls))
        .await
        .context("router did not start")?;
    #[cfg(unix)]
    {
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the config and the geo database");
                    if let Err(e) = handle.reload().await {
                        tracing::error!(error = %e, "reload failed; the old state stays");
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    shutdown.await;
    tracing::info!("router stopping");
    handle.stop().await;
    Ok(())
}

/// `cdn geo build|check|lookup`.
pub fn geo_command(cmd: GeoCommand) -> anyhow::Result<()> {
    match cmd {
        GeoCommand::Build { src, out } => {
            let len = geosrc::build_file(&src, &out)?;
            println!(
                "wrote {} ({len} bytes) from {}",
                out.display(),
                src.display()
            );
        }
        GeoCommand::Check { src, mmdb } => {
            if geosrc::check_file(&src, &mmdb)? {
                println!("{} matches {}", mmdb.display(), src.display());
            } else {
                anyhow::bail!(
                    "{} does not match {}: run `cdn geo build {} {}`",
                    mmdb.display(),
                    src.display(),
                    src.display(),
                    mmdb.display()
                );
            }
        }
        GeoCommand::Lookup { db, ips } => {
            let db = GeoDb::open(&db, 16)?;
            for ip in ips {
                let record = db.lookup_uncached(ip);
                println!("{}", serde_json::json!({ "ip": ip, "record": record }));
            }
        }
    }
    Ok(())
}
