//! A [`Fleet`] of real edges in this process behind a real router (for tests and an
//! a lab in one process). Its steps ([`FleetSteps`]) are ordered by the lab's own
//! `cdn_lab::autoscale::steps::{scale_out, drain}`, as the lab's process fleet's are.
//!
//! - **Start:** an edge (`cdn_edge::spawn`) on 127.0.0.1:0 named `{region}-{n}` (the lowest
//!   free `n`, 1 to the region's maximum). With peering on, it gets a QUIC endpoint and the
//!   region's running edges as peers, and they it (an edge serves only the peers it lists),
//!   so its misses go to the sibling that owns the chunk before the origin. It is then added
//!   to the router's config (`RouterHandle::set_config`); the router routes to it only once
//!   its health check passed, and `start_edge` returns then.
//! - **Drain and stop:** the edge leaves the router's config (no new viewers are sent), a
//!   grace period lets viewers already redirected to it arrive, then its in-flight count is
//!   waited down to 0 (bounded), then it leaves its siblings' peer lists, its peer endpoint
//!   closes and the server stops gracefully (anything still in flight finishes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cdn_edge::Edge;
use cdn_edge::config::{PeerConfig, PeerTls};
use cdn_geo_router::{EdgeState, RouterHandle};
use cdn_http::server::NodeHandle;

use cdn_lab::autoscale::driver::Fleet;
use cdn_lab::autoscale::steps::{self, FleetSteps, Timings};

/// Where a region's edges are (the router places viewers by distance).
#[derive(Debug, Clone)]
pub struct Site {
    pub region: String,
    pub latitude: f64,
    pub longitude: f64,
    /// Most edges the fleet names in this region.
    pub max_edges: u32,
}

/// Timings of a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Longest wait for a new edge to be routed to (health check passed).
    pub ready_timeout: Duration,
    /// After leaving the router, how long a drained edge keeps accepting viewers that were
    /// redirected to it just before.
    pub drain_grace: Duration,
    /// Longest wait for in-flight responses to finish before stopping anyway.
    pub drain_timeout: Duration,
    /// Directory for the peer PKI (cluster CA and one certificate per edge name); no peering
    /// when `None`.
    pub peer_dir: Option<PathBuf>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            ready_timeout: Duration::from_secs(10),
            drain_grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            peer_dir: None,
        }
    }
}

struct Node {
    region: String,
    /// Routed to and counted among the running edges (see `FleetSteps::admit`).
    ready: bool,
    handle: NodeHandle,
    edge: Arc<Edge>,
    peer_addr: Option<SocketAddr>,
}

/// Edges in this process, registered with a router in this process.
pub struct InProcessFleet {
    router: Arc<RouterHandle>,
    template: cdn_edge::EdgeConfig,
    sites: BTreeMap<String, Site>,
    options: FleetOptions,
    nodes: Mutex<BTreeMap<String, Node>>,
    /// Names being started (not in `nodes` yet).
    reserved: Mutex<BTreeSet<String>>,
    /// One router config change at a time.
    router_lock: tokio::sync::Mutex<()>,
}

impl InProcessFleet {
    /// A fleet whose edges copy `template` (origin, cache size, chunk size, ...; name, region
    /// and peering are set per edge). With `options.peer_dir`, writes the cluster PKI for
    /// every name the fleet may use there.
    pub fn new(
        router: Arc<RouterHandle>,
        template: cdn_edge::EdgeConfig,
        sites: Vec<Site>,
        options: FleetOptions,
    ) -> anyhow::Result<Self> {
        let sites: BTreeMap<String, Site> =
            sites.into_iter().map(|s| (s.region.clone(), s)).collect();
        if let Some(dir) = &options.peer_dir {
            let names: Vec<String> = sites
                .values()
                .flat_map(|s| (1..=s.max_edges).map(|n| edge_name(&s.region, n)))
                .collect();
            cdn_edge::peer::pki::write_lab_pki(dir, &names)
                .with_context(|| format!("peer PKI in {}", dir.display()))?;
        }
        Ok(InProcessFleet {
            router,
            template,
            sites,
            options,
            nodes: Mutex::new(BTreeMap::new()),
            reserved: Mutex::new(BTreeSet::new()),
            router_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Node>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The edges running in `region`, by name.
    pub fn edges(&self, region: &str) -> Vec<String> {
        self.nodes()
            .iter()
            .filter(|(_, n)| n.region == region && n.ready)
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// A running edge's state (metrics, in-flight count).
    pub fn edge(&self, name: &str) -> Option<Arc<Edge>> {
        self.nodes()
            .get(name)
            .filter(|n| n.ready)
            .map(|n| n.edge.clone())
    }

    /// A running edge's base URL.
    pub fn url(&self, name: &str) -> Option<String> {
        self.nodes()
            .get(name)
            .filter(|n| n.ready)
            .map(|n| n.handle.url())
    }

    /// Picks and reserves the lowest free name of `region`.
    fn reserve(&self, region: &str) -> anyhow::Result<String> {
        let site = self
            .sites
            .get(region)
            .with_context(|| format!("unknown region `{region}`"))?;
        let nodes = self.nodes();
        let mut reserved = self.reserved.lock().unwrap_or_else(|e| e.into_inner());
        let name = (1..=site.max_edges)
            .map(|n| edge_name(region, n))
            .find(|n| !nodes.contains_key(n) && !reserved.contains(n))
            .with_context(|| format!("region `{region}` has all its {} edges", site.max_edges))?;
        reserved.insert(name.clone());
        Ok(name)
    }

    fn unreserve(&self, name: &str) {
        self.reserved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
    }

    /// Starts edge `name` of `region` with the region's edges as its peers (not routed yet).
    async fn start_named(&self, region: &str, name: &str) -> anyhow::Result<()> {
        let mut cfg = self.template.clone();
        cfg.name = name.to_owned();
        cfg.region = region.to_owned();
        if let Some(dir) = &self.options.peer_dir {
            cfg.peer_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
            cfg.peer_tls = Some(tls(dir, name));
            cfg.peers = self
                .nodes()
                .iter()
                .filter(|(_, n)| n.region == region)
                .filter_map(|(peer, n)| {
                    Some(PeerConfig {
                        name: peer.clone(),
                        region: region.to_owned(),
                        addr: n.peer_addr?,
                        push: None,
                    })
                })
                .collect();
        }
        let cfg = cfg.check("autoscale").map_err(|e| anyhow::anyhow!("{e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding an edge port")?;
        let (handle, edge) = cdn_edge::spawn(listener, cfg)?;
        let peer_addr = match &edge.peers {
            Some(p) => Some(p.local_addr()?),
            None => None,
        };
        self.nodes().insert(
            name.to_owned(),
            Node {
                region: region.to_owned(),
                ready: false,
                handle,
                edge,
                peer_addr,
            },
        );
        Ok(())
    }

    /// Gives every running edge of `region` (and `extra`, one being started) the others as
    /// its peers.
    fn sync_peers(&self, region: &str, extra: Option<(&str, &Arc<Edge>, SocketAddr)>) {
        let mut members: Vec<(String, Arc<Edge>, SocketAddr)> = self
            .nodes()
            .iter()
            .filter(|(_, n)| n.region == region)
            .filter_map(|(name, n)| Some((name.clone(), n.edge.clone(), n.peer_addr?)))
            .collect();
        if let Some((name, edge, addr)) = extra {
            members.push((name.to_owned(), edge.clone(), addr));
        }
        for (name, edge, _) in &members {
            let Some(peers) = &edge.peers else {
                continue;
            };
            let list = members
                .iter()
                .filter(|(other, _, _)| other != name)
                .map(|(other, _, addr)| PeerConfig {
                    name: other.clone(),
                    region: region.to_owned(),
                    addr: *addr,
                    push: None,
                })
                .collect();
            if let Err(e) = peers.set_peers(list) {
                tracing::warn!(edge = %name, error = %e, "peer list refused");
            }
        }
    }

    /// Applies `f` to the router's edge list.
    async fn change_router(
        &self,
        f: impl FnOnce(&mut Vec<cdn_geo_router::EdgeConfig>),
    ) -> anyhow::Result<()> {
        let _guard = self.router_lock.lock().await;
        let mut config = (*self.router.config()).clone();
        f(&mut config.edges);
        self.router
            .set_config(config)
            .await
            .context("router refused the new edge list")
    }

    fn region_of(&self, name: &str) -> anyhow::Result<String> {
        self.nodes()
            .get(name)
            .map(|n| n.region.clone())
            .with_context(|| format!("edge `{name}` was stopped meanwhile"))
    }

    fn timings(&self) -> Timings {
        Timings {
            ready_timeout: self.options.ready_timeout,
            drain_grace: self.options.drain_grace,
            drain_timeout: self.options.drain_timeout,
            poll: Duration::from_millis(20),
        }
    }

    /// Drains and stops every edge (at the end of a test or lab).
    pub async fn stop_all(&self) {
        let names: Vec<String> = self.nodes().keys().cloned().collect();
        for name in names {
            let _ = self.drain_and_stop(&name).await;
        }
    }
}

impl FleetSteps for InProcessFleet {
    async fn launch(&self, region: &str) -> anyhow::Result<String> {
        let name = self.reserve(region)?;
        let r = self.start_named(region, &name).await;
        self.unreserve(&name);
        r.map(|()| name)
    }

    async fn peer(&self, name: &str) -> anyhow::Result<()> {
        let region = self.region_of(name)?;
        self.sync_peers(&region, None);
        Ok(())
    }

    async fn route(&self, name: &str) -> anyhow::Result<()> {
        let region = self.region_of(name)?;
        let site = self.sites.get(&region).context("unknown region")?.clone();
        let url = self
            .nodes()
            .get(name)
            .map(|n| n.handle.url())
            .with_context(|| format!("edge `{name}` was stopped meanwhile"))?;
        let route = cdn_geo_router::EdgeConfig {
            name: name.to_owned(),
            region,
            latitude: site.latitude,
            longitude: site.longitude,
            url,
            weight: 1.0,
            health_url: None,
            https_url: None,
        };
        self.change_router(|edges| edges.push(route)).await
    }

    async fn is_up(&self, name: &str) -> bool {
        let state = self
            .router
            .edges()
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.health.state);
        matches!(state, Some(EdgeState::Up | EdgeState::Overloaded))
    }

    async fn admit(&self, name: &str) {
        if let Some(n) = self.nodes().get_mut(name) {
            n.ready = true;
        }
    }

    async fn unroute(&self, name: &str) -> anyhow::Result<()> {
        if !self.nodes().contains_key(name) {
            anyhow::bail!("no edge `{name}` in this fleet");
        }
        self.change_router(|edges| edges.retain(|e| e.name != name))
            .await
    }

    async fn inflight(&self, name: &str) -> Option<u64> {
        let edge = self.nodes().get(name).map(|n| n.edge.clone())?;
        Some(edge.inflight.load(Ordering::Relaxed))
    }

    async fn hand_over(&self, _name: &str) {}

    async fn retire(&self, name: &str) {
        let _ = self
            .change_router(|edges| edges.retain(|e| e.name != name))
            .await;
        let Some(node) = self.nodes().remove(name) else {
            return;
        };
        self.sync_peers(&node.region, None);
        node.edge.close_peers();
        node.handle.stop().await;
    }
}

impl Fleet for InProcessFleet {
    async fn start_edge(&self, region: &str) -> anyhow::Result<String> {
        steps::scale_out(self, region, &self.timings()).await
    }

    async fn drain_and_stop(&self, name: &str) -> anyhow::Result<()> {
        steps::drain(self, name, &self.timings()).await
    }
}

/// `{region}-{n}`.
pub fn edge_name(region: &str, n: u32) -> String {
    format!("{region}-{n}")
}

fn tls(dir: &Path, name: &str) -> PeerTls {
    PeerTls {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}
