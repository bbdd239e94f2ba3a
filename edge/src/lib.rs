//! Edge cache node: an HTTP caching reverse proxy in front of one origin. Objects are cached
//! in fixed-size chunks (weighted by bytes; S3-FIFO by default, or moka TinyLFU/LRU), ranges
//! are served from chunks, concurrent misses are coalesced into one origin fetch, and RFC 9111
//! is followed as a shared cache.
//!
//! Layers, outermost first (a request goes down, never back up):
//! [`proxy`] (HTTP) → [`cache`] (RFC 9111 decisions, probes) → [`store`] (chunks and
//! metadata) and [`fill`] (chunk fills from [`fill::FillSource`]s such as [`origin`]).
//! [`freshness`] is the pure RFC 9111 arithmetic, [`coalesce`] the one-fill-per-key table,
//! [`admin`] health, metrics and purge, [`config`] the settings, [`peer`] replication
//! between edges over QUIC (another fill source, and hot-object push).

pub mod admin;
pub mod cache;
pub mod coalesce;
pub mod config;
pub mod fill;
pub mod freshness;
pub mod origin;
pub mod peer;
pub mod proxy;
pub mod s3fifo;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};

use cdn_http::metrics::NodeMetrics;
use cdn_http::server::{NodeHandle, bind, serve, shutdown_signal};

pub use cache::Edge;
pub use config::{EdgeConfig, Policy};

/// `cdn edge` arguments; flags override the config file.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Origin base URL, e.g. http://127.0.0.1:8081
    #[arg(long)]
    pub origin: Option<String>,
    /// Node name (Via, Cache-Status, metrics).
    #[arg(long)]
    pub name: Option<String>,
    /// Region of this node.
    #[arg(long)]
    pub region: Option<String>,
    /// Cache memory budget, e.g. 512MiB.
    #[arg(long, value_parser = config::parse_bytes)]
    pub capacity: Option<u64>,
    /// Chunk size, e.g. 1MiB.
    #[arg(long, value_parser = config::parse_bytes)]
    pub chunk_size: Option<u64>,
    /// Eviction policy.
    #[arg(long, value_enum)]
    pub policy: Option<Policy>,
    /// UDP address of the QUIC peer endpoint (peers and certificates come from the config).
    #[arg(long)]
    pub peer_listen: Option<SocketAddr>,
    /// Edge configuration file (TOML).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

impl EdgeArgs {
    /// The configuration: the file (or defaults) with the flags applied.
    pub fn resolve(&self) -> anyhow::Result<EdgeConfig> {
        let mut cfg = match &self.config {
            Some(p) => EdgeConfig::load(p)?,
            None => EdgeConfig::default(),
        };
        if let Some(v) = &self.origin {
            cfg.origin = v.clone();
        }
        if let Some(v) = &self.name {
            cfg.name = v.clone();
        }
        if let Some(v) = &self.region {
            cfg.region = v.clone();
        }
        if let Some(v) = self.capacity {
            cfg.capacity = v;
        }
        if let Some(v) = self.chunk_size {
            cfg.chunk_size = v;
        }
        if let Some(v) = self.policy {
            cfg.policy = v;
        }
        if let Some(v) = self.peer_listen {
            cfg.peer_listen = Some(v);
        }
        Ok(cfg.check("command line")?)
    }
}

/// Builds the edge's router and state.
pub fn app(cfg: EdgeConfig) -> anyhow::Result<(Router, Arc<Edge>)> {
    let edge = Edge::new(cfg, Arc::new(NodeMetrics::new()))?;
    let router = Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/metrics", get(admin::metrics))
        .route("/_admin/purge", post(admin::purge_admin))
        .fallback(proxy::handle)
        .with_state(edge.clone());
    Ok((router, edge))
}

/// Starts an edge on `listener` in the background; the [`Edge`] gives tests its store.
pub fn spawn(
    listener: tokio::net::TcpListener,
    cfg: EdgeConfig,
) -> anyhow::Result<(NodeHandle, Arc<Edge>)> {
    let opts = cfg.serve_options();
    let (router, edge) = app(cfg)?;
    Ok((NodeHandle::spawn(listener, router, opts)?, edge))
}

/// `cdn edge`: serves until SIGTERM or Ctrl-C, then drains.
pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    // Handlers first, so a signal right after the "serving" line still drains.
    let shutdown = shutdown_signal();
    let cfg = args.resolve()?;
    let opts = cfg.serve_options();
    let (name, origin) = (cfg.name.clone(), cfg.origin.clone());
    let (router, edge) = app(cfg)?;
    if let Some(p) = &edge.peers {
        tracing::info!(%name, peer_listen = %p.local_addr()?, peers = p.clients.len(), "peering");
    }
    let listener = bind(args.listen).await?;
    tracing::info!(%name, listen = %listener.local_addr()?, %origin, "edge serving");
    serve(listener, router, opts, shutdown).await?;
    edge.close_peers();
    tracing::info!(%name, "edge stopped");
    Ok(())
}
