//! The router's live state and its life cycle: the current snapshot (config, geo database,
//! edges with their health) behind an `ArcSwap`, so a reload swaps it whole while in-flight
//! requests finish on the one they started with; reloading from files (SIGHUP, file-change
//! polling) or from a new config handed in by the lab; the routing decision that combines
//! client address, geo lookup and the chooser; and [`RouterHandle`], the running router.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use cdn_http::metrics::NodeMetrics;
use cdn_http::server::{NodeHandle, ServeOptions};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::client::ClientSource;
use crate::config::{EdgeConfig, RouterConfig};
use crate::error::RouterError;
use crate::geo::{GeoDb, GeoRecord};
use crate::health::{EdgeHealth, HealthReport, HealthTable};
use crate::select::{self, Candidate, Reason, Skipped, Target};

/// One edge with its live health.
pub(crate) struct EdgeRuntime {
    pub config: EdgeConfig,
    pub health: Arc<EdgeHealth>,
}

/// Everything a request needs, swapped whole on reload.
pub(crate) struct Snapshot {
    pub config: Arc<RouterConfig>,
    pub geo: Arc<GeoDb>,
    pub edges: Vec<EdgeRuntime>,
}

/// File identity used to notice changes: modification time and length.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

pub(crate) struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Arc<NodeMetrics>,
    pub health: HealthTable,
    /// Forwards the lab's web UI requests (`[lab] ui_url`).
    pub ui_client: reqwest::Client,
    health_config: watch::Sender<crate::config::HealthConfig>,
    config_path: Option<PathBuf>,
    geo_path: PathBuf,
    reload_lock: tokio::sync::Mutex<()>,
    stamps: Mutex<(Stamp, Stamp)>,
    /// The edges found in DNS (`crate::dns`), routed to besides the config's.
    discovered: Mutex<Vec<EdgeConfig>>,
}

/// Who a route is for.
#[derive(Debug, Clone)]
pub enum ClientSpec {
    /// A client address and where it came from.
    Ip(IpAddr, ClientSource),
    /// A region named in the config (the lab's override).
    Region(String),
}

/// Where the location used for the choice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LocationSource {
    /// The geo database's record of the client address.
    Geo,
    /// The configured geo-miss location (no usable record).
    GeoMiss,
    /// The centre of a region's edges (region override).
    Region,
}

/// The client as the router saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClientInfo {
    /// `None` for a region override.
    pub ip: Option<IpAddr>,
    pub source: ClientSource,
}

/// The point distances were measured from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocationInfo {
    pub latitude: f64,
    pub longitude: f64,
    pub source: LocationSource,
    /// The city, the geo-miss label or the region name.
    pub label: Option<String>,
}

/// A routing decision: what `/_route` answers and what a redirect is built from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteDecision {
    /// The chosen edge; `None` when routed to the origin.
    pub edge: Option<String>,
    pub region: Option<String>,
    /// The base URL redirected to (the edge's, a lab link's or the origin's).
    pub base_url: String,
    /// The HTTPS base URL redirected to when the viewer came over HTTPS (the edge's or lab
    /// link's `https_url`); `None` when it has none (`base_url` is then used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_base_url: Option<String>,
    /// The lab client region named by a `?region=` override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lab_region: Option<String>,
    /// Great-circle distance from the client location to the chosen edge.
    pub distance_km: Option<f64>,
    pub reason: Reason,
    /// Something was skipped on the way (also set when `reason` shows another cause).
    pub failover: bool,
    /// The client address had no usable geo record.
    pub geo_miss: bool,
    pub client: ClientInfo,
    pub location: LocationInfo,
    /// The geo record of the client address (null when none).
    pub lookup: Option<GeoRecord>,
    /// Edges passed over because down, overloaded or not checked yet.
    pub skipped: Vec<Skipped>,
    /// The path hashed (query excluded).
    pub path: String,
}

impl RouteDecision {
    /// The redirect target for `path` and a raw `query`.
    pub fn location(&self, path: &str, query: Option<&str>) -> String {
        self.location_for(path, query, false)
    }

    /// The redirect target for a viewer that came over HTTPS (`https`): the HTTPS base URL
    /// when the target has one, so a page served over HTTPS is not sent to cleartext.
    pub fn location_for(&self, path: &str, query: Option<&str>, https: bool) -> String {
        let base = match (&self.https_base_url, https) {
            (Some(u), true) => u,
            _ => &self.base_url,
        };
        let mut url = format!("{}{}", base.trim_end_matches('/'), path);
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            url.push('?');
            url.push_str(q);
        }
        url
    }
}

/// One edge's status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EdgeStatus {
    pub name: String,
    pub region: String,
    pub url: String,
    pub weight: f64,
    #[serde(flatten)]
    pub health: HealthReport,
}

/// An unknown region in an override.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown region `{0}`")]
pub struct UnknownRegion(pub String);

impl Snapshot {
    /// Where a client is sent to reach `edge` (the origin when `None`): the URL of the lab link
    /// that matches the client, else the edge's own URL.
    fn base_url(&self, edge: Option<&str>, client: &ClientSpec) -> (String, Option<String>) {
        let cfg = &self.config;
        let Some(name) = edge else {
            return (cfg.origin_url.clone(), cfg.origin_https_url.clone());
        };
        let link = cfg
            .lab
            .links
            .iter()
            .filter(|l| l.edge == name)
            .find(|l| match client {
                ClientSpec::Ip(ip, _) => l.networks.iter().any(|n| n.contains(ip)),
                ClientSpec::Region(r) => l.region.as_deref() == Some(r.as_str()),
            });
        match link {
            Some(l) => (l.url.clone(), l.https_url.clone()),
            None => self
                .edges
                .iter()
                .find(|e| e.config.name == name)
                .map_or_else(
                    || (cfg.origin_url.clone(), cfg.origin_https_url.clone()),
                    |e| (e.config.url.clone(), e.config.https_url.clone()),
                ),
        }
    }

    pub fn edge_statuses(&self) -> Vec<EdgeStatus> {
        let threshold = self.config.health.overload_threshold;
        self.edges
            .iter()
            .map(|e| EdgeStatus {
                name: e.config.name.clone(),
                region: e.config.region.clone(),
                url: e.config.url.clone(),
                weight: e.config.weight,
                health: e.health.report(threshold),
            })
            .collect()
    }

    /// Decides where `path` goes for `client`.
    pub fn decide(&self, client: ClientSpec, path: &str) -> Result<RouteDecision, UnknownRegion> {
        let cfg = &self.config;
        let key = path.split('?').next().unwrap_or(path);
        let (target_point, pinned, info, lookup, location) = match &client {
            ClientSpec::Ip(ip, source) => {
                let record = self.geo.lookup(*ip);
                let info = ClientInfo {
                    ip: Some(*ip),
                    source: *source,
                };
                match record
                    .as_deref()
                    .and_then(|r| r.coordinates().map(|c| (c, r)))
                {
                    Some(((lat, lon), r)) => (
                        (lat, lon),
                        None,
                        info,
                        record.as_deref().cloned(),
                        LocationInfo {
                            latitude: lat,
                            longitude: lon,
                            source: LocationSource::Geo,
                            label: r.city.clone().or_else(|| r.country.clone()),
                        },
                    ),
                    None => {
                        let m = &cfg.geo_miss;
                        (
                            (m.latitude, m.longitude),
                            None,
                            info,
                            record.as_deref().cloned(),
                            LocationInfo {
                                latitude: m.latitude,
                                longitude: m.longitude,
                                source: LocationSource::GeoMiss,
                                label: Some(m.label.clone()),
                            },
                        )
                    }
                }
            }
            ClientSpec::Region(region) => {
                let points: Vec<(f64, f64)> = self
                    .edges
                    .iter()
                    .filter(|e| &e.config.region == region)
                    .map(|e| (e.config.latitude, e.config.longitude))
                    .collect();
                if points.is_empty() {
                    // A lab client region without edges: a client at its first address.
                    let first = cfg
                        .lab
                        .links
                        .iter()
                        .filter(|l| l.region.as_deref() == Some(region.as_str()))
                        .find_map(|l| l.networks.first())
                        .and_then(|n| n.hosts().next());
                    return match first {
                        Some(ip) => {
                            let mut d =
                                self.decide(ClientSpec::Ip(ip, ClientSource::LabRegion), path)?;
                            d.lab_region = Some(region.clone());
                            (d.base_url, d.https_base_url) = self
                                .base_url(d.edge.as_deref(), &ClientSpec::Region(region.clone()));
                            Ok(d)
                        }
                        None => Err(UnknownRegion(region.clone())),
                    };
                }
                let n = points.len() as f64;
                let lat = points.iter().map(|p| p.0).sum::<f64>() / n;
                let lon = points.iter().map(|p| p.1).sum::<f64>() / n;
                (
                    (lat, lon),
                    Some(region.as_str()),
                    ClientInfo {
                        ip: None,
                        source: ClientSource::LabRegion,
                    },
                    None,
                    LocationInfo {
                        latitude: lat,
                        longitude: lon,
                        source: LocationSource::Region,
                        label: Some(region.clone()),
                    },
                )
            }
        };
        let geo_miss = location.source == LocationSource::GeoMiss;
        let threshold = cfg.health.overload_threshold;
        let candidates: Vec<Candidate<'_>> = self
            .edges
            .iter()
            .map(|e| Candidate {
                name: &e.config.name,
                region: &e.config.region,
                latitude: e.config.latitude,
                longitude: e.config.longitude,
                weight: e.config.weight,
                state: e.health.state(threshold),
            })
            .collect();
        let target = Target {
            latitude: target_point.0,
            longitude: target_point.1,
            pinned_region: pinned,
            geo_miss,
        };
        let choice = select::choose(&candidates, &target, key);
        let edge = choice.edge.and_then(|i| self.edges.get(i));
        let (base_url, https_base_url) =
            self.base_url(edge.map(|e| e.config.name.as_str()), &client);
        Ok(RouteDecision {
            edge: edge.map(|e| e.config.name.clone()),
            region: edge.map(|e| e.config.region.clone()),
            base_url,
            https_base_url,
            lab_region: match &client {
                ClientSpec::Region(r) => Some(r.clone()),
                ClientSpec::Ip(..) => None,
            },
            distance_km: choice.distance_km.map(|d| (d * 10.0).round() / 10.0),
            reason: choice.reason,
            failover: choice.failover,
            geo_miss,
            client: info,
            location,
            lookup,
            skipped: choice.skipped,
            path: key.to_owned(),
        })
    }
}

impl Shared {
    /// Builds the state: checks the config, opens the geo database, starts the health checks
    /// and waits for their first round.
    async fn start(
        config: RouterConfig,
        config_path: Option<PathBuf>,
        geo_path: PathBuf,
    ) -> Result<Arc<Shared>, RouterError> {
        let shown = config_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("(router config)"));
        config.validate().map_err(|issue| RouterError::Config {
            path: shown,
            message: issue.to_string(),
        })?;
        let geo = open_geo(&geo_path, config.lookup_cache_entries).await?;
        let metrics = Arc::new(NodeMetrics::new());
        let (health_tx, health_rx) = watch::channel(config.health.clone());
        let health = HealthTable::new(metrics.clone(), health_rx);
        let healths = health.reconcile(&config.edges).await;
        let edges = runtime_edges(&config.edges, healths);
        let stamps = (config_path.as_deref().and_then(stamp), stamp(&geo_path));
        cdn_http::tls::install_crypto_provider();
        Ok(Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot {
                config: Arc::new(config),
                geo: Arc::new(geo),
                edges,
            }),
            metrics,
            health,
            ui_client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            health_config: health_tx,
            config_path,
            geo_path,
            reload_lock: tokio::sync::Mutex::new(()),
            stamps: Mutex::new(stamps),
            discovered: Mutex::new(Vec::new()),
        }))
    }

    /// Swaps in a new config: checks it, updates the health checkers (waiting for new edges'
    /// first probe), then swaps the snapshot. On error the running config stays.
    pub async fn apply_config(&self, config: RouterConfig) -> Result<(), RouterError> {
        let _guard = self.reload_lock.lock().await;
        self.apply_config_locked(config).await
    }

    async fn apply_config_locked(&self, config: RouterConfig) -> Result<(), RouterError> {
        let shown = self
            .config_path
            .clone()
            .unwrap_or_else(|| PathBuf::from("(router config)"));
        config.validate().map_err(|issue| RouterError::Config {
            path: shown,
            message: issue.to_string(),
        })?;
        self.health_config.send_replace(config.health.clone());
        let edges = self.all_edges(&config);
        let healths = self.health.reconcile(&edges).await;
        let current = self.snapshot.load_full();
        self.snapshot.store(Arc::new(Snapshot {
            edges: runtime_edges(&edges, healths),
            config: Arc::new(config),
            geo: current.geo.clone(),
        }));
        Ok(())
    }

    /// The config's edges, then the ones found in DNS whose names it does not use.
    fn all_edges(&self, config: &RouterConfig) -> Vec<EdgeConfig> {
        let mut edges = config.edges.clone();
        let discovered = self.discovered.lock().unwrap_or_else(|p| p.into_inner());
        for e in discovered.iter() {
            if !edges.iter().any(|s| s.name == e.name) {
                edges.push(e.clone());
            }
        }
        edges
    }

    /// Replaces the edges found in DNS and swaps in the snapshot they make with the running
    /// config (new edges' first health check awaited, as on a reload).
    pub(crate) async fn set_discovered(&self, edges: Vec<EdgeConfig>) {
        let _guard = self.reload_lock.lock().await;
        let names: Vec<String> = edges.iter().map(|e| e.name.clone()).collect();
        *self.discovered.lock().unwrap_or_else(|p| p.into_inner()) = edges;
        let config = (*self.snapshot.load().config).clone();
        match self.apply_config_locked(config).await {
            Ok(()) => tracing::info!(edges = ?names, "edges from DNS applied"),
            Err(e) => tracing::error!(error = %e, "edges from DNS not applied"),
        }
    }

    /// Re-reads the config file (when the router has one) and the geo database.
    pub async fn reload_files(&self, config: bool, geo: bool) -> Result<(), RouterError> {
        let _guard = self.reload_lock.lock().await;
        // Taken before reading: a change made while we read shows up at the next poll.
        let before = (
            self.config_path.as_deref().and_then(stamp),
            stamp(&self.geo_path),
        );
        let mut result = Ok(());
        if config && let Some(path) = self.config_path.clone() {
            let r = match RouterConfig::load(&path) {
                Ok(c) => self.apply_config_locked(c).await,
                Err(e) => Err(e),
            };
            self.count_reload("config", &r);
            match &r {
                Ok(()) => tracing::info!(path = %path.display(), "router config reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "router config not reloaded; keeping the old one")
                }
            }
            result = r;
        }
        if geo {
            let cache = self.snapshot.load().config.lookup_cache_entries;
            let r = open_geo(&self.geo_path, cache).await.map(|db| {
                let current = self.snapshot.load_full();
                tracing::info!(
                    path = %self.geo_path.display(),
                    database_type = db.database_type(),
                    build_epoch = db.build_epoch(),
                    "geo database reloaded"
                );
                self.snapshot.store(Arc::new(Snapshot {
                    config: current.config.clone(),
                    geo: Arc::new(db),
                    edges: current
                        .edges
                        .iter()
                        .map(|e| EdgeRuntime {
                            config: e.config.clone(),
                            health: e.health.clone(),
                        })
                        .collect(),
                }));
            });
            self.count_reload("geo", &r);
            if let Err(e) = &r {
                tracing::error!(error = %e, "geo database not reloaded; keeping the old one");
            }
            if result.is_ok() {
                result = r;
            }
        }
        if let Ok(mut seen) = self.stamps.lock() {
            if config {
                seen.0 = before.0;
            }
            if geo {
                seen.1 = before.1;
            }
        }
        result
    }

    fn count_reload(&self, what: &'static str, r: &Result<(), RouterError>) {
        let result = if r.is_ok() { "ok" } else { "error" };
        self.metrics.with(|| {
            metrics::counter!(crate::metric_names::RELOADS_TOTAL, "file" => what, "result" => result)
                .increment(1)
        });
    }

    /// Which files changed since the last look.
    fn changed_files(&self) -> (bool, bool) {
        let now = (
            self.config_path.as_deref().and_then(stamp),
            stamp(&self.geo_path),
        );
        let Ok(mut seen) = self.stamps.lock() else {
            return (false, false);
        };
        let changed = (now.0 != seen.0, now.1 != seen.1);
        *seen = now;
        changed
    }
}

fn runtime_edges(edges: &[EdgeConfig], healths: Vec<Arc<EdgeHealth>>) -> Vec<EdgeRuntime> {
    edges
        .iter()
        .cloned()
        .zip(healths)
        .map(|(config, health)| EdgeRuntime { config, health })
        .collect()
}

async fn open_geo(path: &Path, cache_entries: u64) -> Result<GeoDb, RouterError> {
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || GeoDb::open(&owned, cache_entries))
        .await
        .map_err(|e| RouterError::GeoDb {
            path: path.to_owned(),
            message: format!("loading stopped: {e}"),
        })?
}

/// Polls the files' modification times and reloads what changed.
async fn watch_files(shared: Weak<Shared>) {
    loop {
        let interval = match shared.upgrade() {
            Some(s) => s.snapshot.load().config.watch_interval_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(if interval == 0 {
            1000
        } else {
            interval
        }))
        .await;
        if interval == 0 {
            continue;
        }
        let Some(s) = shared.upgrade() else { return };
        let (config, geo) = s.changed_files();
        if config || geo {
            tracing::info!(config, geo, "file change seen; reloading");
            let _ = s.reload_files(config, geo).await;
        }
    }
}

/// A running router.
pub struct RouterHandle {
    node: NodeHandle,
    /// The HTTPS listener, when `[tls]` has one, and the task following its certificates.
    tls_node: Option<(NodeHandle, cdn_http::tls::TlsWatcher)>,
    shared: Arc<Shared>,
    watcher: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterHandle")
            .field("addr", &self.node.addr)
            .finish()
    }
}

impl RouterHandle {
    /// The address the router listens on.
    pub fn addr(&self) -> SocketAddr {
        self.node.addr
    }

    /// `http://ADDR`
    pub fn url(&self) -> String {
        self.node.url()
    }

    /// The HTTPS address, when the router has an HTTPS listener.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_node.as_ref().map(|(n, _)| n.addr)
    }

    /// `https://ADDR`, when the router has an HTTPS listener.
    pub fn https_url(&self) -> Option<String> {
        self.tls_node.as_ref().map(|(n, _)| n.url())
    }

    /// The config in force.
    pub fn config(&self) -> Arc<RouterConfig> {
        self.shared.snapshot.load().config.clone()
    }

    /// Every edge with its health.
    pub fn edges(&self) -> Vec<EdgeStatus> {
        self.shared.snapshot.load().edge_statuses()
    }

    /// Where a request for `path` from `client` would go now.
    pub fn route(&self, client: ClientSpec, path: &str) -> Result<RouteDecision, UnknownRegion> {
        self.shared.snapshot.load().decide(client, path)
    }

    /// Replaces the config (e.g. to add or remove edges). Checked first; on error nothing
    /// changes. A config file, if the router has one, is not written, and a later change of
    /// that file replaces this config again.
    pub async fn set_config(&self, config: RouterConfig) -> Result<(), RouterError> {
        self.shared.apply_config(config).await
    }

    /// Re-reads the config file (if any) and the geo database, as SIGHUP does.
    pub async fn reload(&self) -> Result<(), RouterError> {
        self.shared.reload_files(true, true).await
    }

    /// The Prometheus text of this router's metrics.
    pub fn metrics_text(&self) -> String {
        crate::server::render_metrics(&self.shared)
    }

    /// Stops the health checks and file polling, then the server (in-flight requests finish).
    pub async fn stop(self) {
        self.watcher.abort();
        self.shared.health.stop_all();
        match self.tls_node {
            Some((tls, watcher)) => {
                drop(watcher);
                tokio::join!(self.node.stop(), tls.stop());
            }
            None => self.node.stop().await,
        }
    }
}

/// Starts a router with a config held in memory (no config file is watched; the geo database
/// file is).
pub async fn spawn(
    config: RouterConfig,
    geo_db: impl AsRef<Path>,
    listener: TcpListener,
) -> Result<RouterHandle, RouterError> {
    spawn_inner(config, None, geo_db.as_ref().to_owned(), listener).await
}

/// Starts a router from a config file; both files are watched for changes.
pub async fn spawn_from_files(
    config_path: impl AsRef<Path>,
    geo_db: impl AsRef<Path>,
    listener: TcpListener,
) -> Result<RouterHandle, RouterError> {
    spawn_from_files_with_tls(config_path, geo_db, listener, None).await
}

/// [`spawn_from_files`] with the HTTPS settings given (the command line's flags applied to
/// the file's `[tls]`) instead of the file's.
pub async fn spawn_from_files_with_tls(
    config_path: impl AsRef<Path>,
    geo_db: impl AsRef<Path>,
    listener: TcpListener,
    tls: Option<cdn_http::tls::TlsSettings>,
) -> Result<RouterHandle, RouterError> {
    let path = config_path.as_ref().to_owned();
    let mut config = RouterConfig::load(&path)?;
    if let Some(t) = tls {
        config.tls = t;
    }
    spawn_inner(config, Some(path), geo_db.as_ref().to_owned(), listener).await
}

async fn spawn_inner(
    config: RouterConfig,
    config_path: Option<PathBuf>,
    geo_path: PathBuf,
    listener: TcpListener,
) -> Result<RouterHandle, RouterError> {
    let opts = ServeOptions {
        limits: config.limits.clone(),
        ..ServeOptions::default()
    };
    let tls_settings = config.tls.clone();
    tls_settings
        .check()
        .map_err(cdn_http::tls::TlsError::Settings)?;
    let shared = Shared::start(config, config_path, geo_path).await?;
    let app = crate::server::app(shared.clone());
    let (node, tls_node) = match tls_settings.listen {
        Some(at) => {
            let tls = cdn_http::tls::Tls::load(&tls_settings)?;
            let l = cdn_http::server::bind(at).await?;
            let port = l.local_addr()?.port();
            let https = NodeHandle::spawn_tls(
                l,
                app.clone(),
                opts.clone(),
                cdn_http::server::TlsAccept::from_tls(&tls),
            )?;
            let plain = if tls_settings.redirect_http {
                cdn_http::tls::redirect_to_https(app, port)
            } else {
                app
            };
            let w = tls.watch();
            (NodeHandle::spawn(listener, plain, opts)?, Some((https, w)))
        }
        None => (NodeHandle::spawn(listener, app, opts)?, None),
    };
    crate::dns::start(&shared).map_err(|e| RouterError::Config {
        path: PathBuf::from("(router config)"),
        message: format!("edges_dns: {e}"),
    })?;
    let watcher = tokio::spawn(watch_files(Arc::downgrade(&shared)));
    {
        let snap = shared.snapshot.load();
        let tls_addr = tls_node
            .as_ref()
            .map(|(n, _)| n.addr.to_string())
            .unwrap_or_default();
        tracing::info!(
            addr = %node.addr,
            %tls_addr,
            edges = snap.edges.len(),
            edges_up = snap.edges.iter().filter(|e| e.health.is_up()).count(),
            geo_db = %snap.geo.path().display(),
            database_type = snap.geo.database_type(),
            lab_override = snap.config.lab.allow_client_override,
            "router listening"
        );
        if snap.config.lab.allow_client_override {
            tracing::warn!(
                "lab.allow_client_override is on: any client can choose its route; never use \
                 this outside a lab"
            );
        }
    }
    Ok(RouterHandle {
        node,
        tls_node,
        shared,
        watcher,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_keeps_path_and_query() {
        let d = RouteDecision {
            edge: None,
            region: None,
            base_url: "http://e.example/base/".into(),
            https_base_url: None,
            lab_region: None,
            distance_km: None,
            reason: Reason::OriginFallback,
            failover: true,
            geo_miss: false,
            client: ClientInfo {
                ip: None,
                source: ClientSource::Peer,
            },
            location: LocationInfo {
                latitude: 0.0,
                longitude: 0.0,
                source: LocationSource::GeoMiss,
                label: None,
            },
            lookup: None,
            skipped: vec![],
            path: "/v".into(),
        };
        assert_eq!(
            d.location("/v/a%20b.ts", Some("x=1&y")),
            "http://e.example/base/v/a%20b.ts?x=1&y"
        );
        assert_eq!(d.location("/v", Some("")), "http://e.example/base/v");
        assert_eq!(d.location("/v", None), "http://e.example/base/v");
    }

    #[test]
    fn edge_state_serialises_in_kebab_case() {
        use crate::select::EdgeState;
        // The chooser's state type is what EdgeStatus reports.
        let s = EdgeState::Up;
        assert_eq!(serde_json::to_string(&s).expect("json"), "\"up\"");
    }
}
