//! The lab's edges at runtime: which run, which the router sends viewers to, which are in
//! each other's peer lists; and [`LabFleet`], the autoscaler's hands on them.
//!
//! [`Edges`] owns every edge process of the plan, the always-on ones and the spares, behind
//! one async lock, so the supervisor (dashboard stop/start, reaping, shutdown) and the
//! autoscaler never race on a process or a config file. [`Wiring`] is what does not change
//! while the lab runs: the plan, the relays, the paths of the generated configs.
//!
//! - **Start** ([`LabFleet::start_edge`]): a free spare of the region gets a config whose peers
//!   are the edges running now (so its misses go to its region's siblings first), starts,
//!   and its relays learn its addresses. Then the other edges' configs list it as a peer and
//!   they are told to reload (SIGHUP; an edge serves only the peers it lists), and once they
//!   have, the router's config lists it and the router is told to reload (SIGHUP). It
//!   returns once the router's health checks call the edge up: only then does it get viewers.
//! - **Drain and stop** ([`LabFleet::drain_and_stop`]): the edge leaves the router's config
//!   first (no new viewers), keeps serving for a grace period (viewers redirected just
//!   before), its in-flight count is waited down to 0 (bounded), it leaves the other edges'
//!   peer lists, the viewers' links to it are pointed at a sibling of its region (a player
//!   that kept the edge's URL is answered there), and it stops with SIGTERM, which finishes
//!   whatever is still in flight.

use crate::scrape::Scraper;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::config::{LinkKind, LinkPlan, Plan};
use super::procs::NodeProc;
use crate::autoscale::driver::Fleet;
use crate::autoscale::steps::{self, FleetSteps, Timings};
use crate::start::{AnyRelay, EdgeTls, SecureRelay, ViewerTls, write_atomic};
use crate::{Lab, NODE_START_TIMEOUT, STOP_GRACE, addr};

/// What stays the same while the lab runs.
pub struct Wiring {
    pub plan: Plan,
    pub run_dir: PathBuf,
    pub pki: PathBuf,
    pub relays: Vec<(LinkPlan, AnyRelay)>,
    /// The viewers' links' HTTPS (and HTTP/3) relays, with `[https]`.
    pub secure: Vec<(LinkPlan, SecureRelay)>,
    /// The viewer certificate, with `[https]`.
    pub tls: Option<ViewerTls>,
    pub origin_url: String,
    pub origin_https_url: Option<String>,
    pub control_url: String,
    pub router_toml: PathBuf,
    pub lab: Arc<Lab>,
}

impl Wiring {
    pub fn relay_addr(&self, kind: LinkKind, from: &str, to: &str) -> Option<SocketAddr> {
        self.relays
            .iter()
            .find(|(l, _)| l.kind == kind && l.from == from && l.to == to)
            .map(|(_, r)| r.addr())
    }

    /// The HTTPS relay of a viewers' link, with `[https]`.
    pub(crate) fn secure_relay(
        &self,
        kind: LinkKind,
        from: &str,
        to: &str,
    ) -> Option<&SecureRelay> {
        self.secure
            .iter()
            .find(|(l, _)| l.kind == kind && l.from == from && l.to == to)
            .map(|(_, r)| r)
    }

    /// Points the HTTPS relays of viewers' links to edge `name` at `to`.
    fn set_secure_targets(&self, name: &str, to: EdgeTls) {
        for (_, r) in self.secure.iter().filter(|(l, _)| l.to == name) {
            r.set_target(to);
        }
    }

    /// Points the relays of links *to* edge `name` at its addresses.
    pub(crate) fn set_targets(
        &self,
        name: &str,
        http: SocketAddr,
        peer: Option<SocketAddr>,
        tls: Option<EdgeTls>,
    ) {
        if let Some(t) = tls {
            self.set_secure_targets(name, t);
        }
        for (l, r) in &self.relays {
            if l.to != name {
                continue;
            }
            match l.kind {
                LinkKind::Client => r.set_target(http),
                LinkKind::Peer => {
                    if let Some(p) = peer {
                        r.set_target(p);
                    }
                }
                LinkKind::Origin => {}
            }
        }
    }

    /// Points the viewers' links to edge `name` at another edge's addresses (a sibling's).
    fn set_client_targets(&self, name: &str, to: SocketAddr, tls: Option<EdgeTls>) {
        for (l, r) in &self.relays {
            if l.kind == LinkKind::Client && l.to == name {
                r.set_target(to);
            }
        }
        if let Some(t) = tls {
            self.set_secure_targets(name, t);
        }
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.run_dir
            .join(format!("{}.toml", self.plan.edges[i].name))
    }

    /// The client relays the router may send viewers to: (region, edge, URL, HTTPS URL).
    pub fn client_relays(&self) -> Vec<ClientRelay> {
        self.relays
            .iter()
            .filter(|(l, _)| l.kind == LinkKind::Client)
            .map(|(l, r)| ClientRelay {
                region: l.from.clone(),
                edge: l.to.clone(),
                url: format!("http://{}", r.addr()),
                https_url: self
                    .secure_relay(l.kind, &l.from, &l.to)
                    .map(|s| format!("https://{}", s.addr())),
            })
            .collect()
    }

    /// Updates what the dashboard and state.json show of node `name`.
    pub fn set_node(&self, name: &str, f: impl FnOnce(&mut super::NodeInfo)) {
        if let Ok(mut nodes) = self.lab.nodes.lock()
            && let Some(n) = nodes.iter_mut().find(|n| n.name == name)
        {
            f(n);
        }
    }
}

/// A viewers' link the router may send viewers to.
pub struct ClientRelay {
    pub region: String,
    pub edge: String,
    /// `http://RELAY`
    pub url: String,
    /// `https://RELAY`, with `[https]`.
    pub https_url: Option<String>,
}

/// One planned edge.
pub struct EdgeSlot {
    pub proc: NodeProc,
    /// `http://ADDR` once it has run.
    pub url: Option<String>,
    pub peer_addr: Option<SocketAddr>,
    /// Its HTTPS and HTTP/3 addresses once it has run, with `[https]`.
    pub(crate) tls: Option<EdgeTls>,
    /// Listed in the router's config.
    pub routed: bool,
    /// Listed in the other edges' peer lists.
    pub peered: bool,
}

/// Every edge of the plan (same order as `plan.edges`).
pub struct Edges {
    pub wiring: Wiring,
    pub slots: tokio::sync::Mutex<Vec<EdgeSlot>>,
    pub router_pid: std::sync::Mutex<Option<u32>>,
}

impl Edges {
    /// Writes edge `i`'s config: its peers are the other edges that are `peered`.
    pub fn write_edge_config(&self, slots: &[EdgeSlot], i: usize) -> anyhow::Result<()> {
        let w = &self.wiring;
        let e = &w.plan.edges[i];
        let origin_relay = w
            .relay_addr(LinkKind::Origin, &e.name, "origin")
            .context("an edge without an origin link")?;
        let peers: Vec<(String, String, SocketAddr)> = w
            .plan
            .edges
            .iter()
            .enumerate()
            .filter(|(j, f)| *j != i && slots[*j].peered && f.name != e.name)
            .filter_map(|(_, f)| {
                let a = w.relay_addr(LinkKind::Peer, &e.name, &f.name)?;
                Some((f.name.clone(), f.region.clone(), a))
            })
            .collect();
        let listen = slots[i].peer_addr.unwrap_or(addr(e.peer_port));
        // A restart keeps the HTTPS address, even when the OS chose it.
        let tls = w.tls.as_ref().zip(e.https_port).map(|(t, port)| {
            let at = slots[i].tls.map_or(addr(port), |t| t.https);
            t.settings(at)
        });
        let wiring = crate::nodeconf::EdgeWiring {
            origin_relay,
            peer_listen: listen,
            peer_relays: &peers,
            pki: &w.pki,
            tls,
        };
        let text = crate::nodeconf::edge_toml(&w.plan, i, &wiring)?;
        write_atomic(&w.config_path(i), &text)
    }

    /// Rewrites the config of every running edge but `except` (their peer lists changed).
    fn rewrite_running(&self, slots: &mut [EdgeSlot], except: usize) -> anyhow::Result<()> {
        for j in 0..slots.len() {
            if j != except && slots[j].proc.running() {
                self.write_edge_config(slots, j)?;
            }
        }
        Ok(())
    }

    /// Writes the router's config (the `routed` edges) and tells the router to reload it.
    pub fn write_router_config(&self, slots: &[EdgeSlot]) -> anyhow::Result<()> {
        let w = &self.wiring;
        let routed: Vec<(usize, String, Option<String>)> = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.routed)
            .filter_map(|(i, s)| {
                let https = s.tls.map(|t| format!("https://{}", t.https));
                Some((i, s.url.clone()?, https))
            })
            .collect();
        let names: Vec<&str> = routed
            .iter()
            .map(|(i, _, _)| w.plan.edges[*i].name.as_str())
            .collect();
        let links: Vec<_> = w
            .client_relays()
            .into_iter()
            .filter(|c| names.contains(&c.edge.as_str()))
            .collect();
        let cfg = crate::nodeconf::router_config(
            &w.plan,
            (&w.origin_url, w.origin_https_url.as_deref()),
            &routed,
            &w.control_url,
            &links,
        );
        cfg.validate()
            .map_err(|e| anyhow::anyhow!("the generated router config is invalid: {e}"))?;
        write_atomic(
            &w.router_toml,
            &format!(
                "# Written by `cdn lab` for this run; edit testdata/lab.toml instead.\n{}",
                toml::to_string(&cfg).context("router config")?
            ),
        )?;
        let pid = *self.router_pid.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pid) = pid {
            super::procs::signal(pid, libc::SIGHUP);
        }
        Ok(())
    }

    /// Starts edge `i` (config written first) and points its relays at it.
    pub async fn start_slot(&self, slots: &mut [EdgeSlot], i: usize) -> anyhow::Result<()> {
        self.write_edge_config(slots, i)?;
        let e = self.wiring.plan.edges[i].clone();
        let slot = &mut slots[i];
        let offset = slot.proc.start()?;
        let http = slot
            .proc
            .learn_addr(offset, "listen", NODE_START_TIMEOUT)
            .await?;
        let peer = match (self.wiring.plan.file.peering.enabled, e.peer_port) {
            (false, _) => None,
            (true, 0) => Some(
                slot.proc
                    .learn_addr(offset, "peer_listen", NODE_START_TIMEOUT)
                    .await?,
            ),
            (true, port) => Some(addr(port)),
        };
        let tls = match (&self.wiring.tls, e.https_port) {
            (Some(_), Some(_)) => {
                let https = slot
                    .proc
                    .learn_addr(offset, "tls_listen", NODE_START_TIMEOUT)
                    .await?;
                let http3 = match self.wiring.plan.file.https.http3 {
                    true => Some(
                        slot.proc
                            .learn_addr(offset, "http3", NODE_START_TIMEOUT)
                            .await?,
                    ),
                    false => None,
                };
                Some(EdgeTls { https, http3 })
            }
            _ => None,
        };
        slot.url = Some(format!("http://{http}"));
        slot.peer_addr = peer;
        slot.tls = tls;
        // A restart keeps the addresses, even when the OS chose them (the config written
        // at the next start has the peer address learned now).
        if slot.proc.args.get(2).is_some_and(|a| a.ends_with(":0")) {
            slot.proc.args[2] = http.to_string();
        }
        self.wiring.set_targets(&e.name, http, peer, tls);
        let pid = slots[i].proc.pid();
        let url = slots[i].url.clone().unwrap_or_default();
        self.wiring.set_node(&e.name, |n| {
            n.running = true;
            n.pid = pid;
            n.url = url;
            n.peer_addr = peer;
            n.https_url = tls.map(|t| format!("https://{}", t.https));
        });
        Ok(())
    }

    /// Stops edge `i` (SIGTERM, then SIGKILL after the grace).
    pub async fn stop_slot(&self, slots: &mut [EdgeSlot], i: usize) {
        slots[i].proc.stop(STOP_GRACE).await;
        self.wiring.set_node(&self.wiring.plan.edges[i].name, |n| {
            n.running = false;
            n.pid = None;
        });
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.wiring.plan.edges.iter().position(|e| e.name == name)
    }
}

/// Longest wait for the running edges to list a new edge as a peer.
const PEERED_TIMEOUT: Duration = Duration::from_secs(5);

/// Timings of the lab's fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Longest wait for the router to call a new edge up.
    pub ready_timeout: Duration,
    pub drain_grace: Duration,
    pub drain_timeout: Duration,
}

/// The autoscaler's [`Fleet`] over the lab's edge processes.
pub struct LabFleet {
    pub edges: Arc<Edges>,
    pub router_url: String,
    pub options: FleetOptions,
    scrape: Scraper,
}

impl LabFleet {
    pub fn new(edges: Arc<Edges>, router_url: String, options: FleetOptions) -> Self {
        cdn_http::tls::install_crypto_provider();
        LabFleet {
            edges,
            router_url,
            options,
            scrape: Scraper::new(Duration::from_secs(2)),
        }
    }

    /// A JSON document, or `None` when it cannot be had.
    async fn get_json(&self, url: &str) -> Option<serde_json::Value> {
        serde_json::from_str(&self.get_text(url).await?).ok()
    }

    /// A body, or `None` when it cannot be had.
    async fn get_text(&self, url: &str) -> Option<String> {
        self.scrape.get(url).await.ok().map(|(_, body)| body)
    }

    /// The router's state of edge `name` (`up`, `down`, ...), if it lists it.
    async fn router_state(&self, name: &str) -> Option<String> {
        let v = self
            .get_json(&format!("{}/healthz", self.router_url))
            .await?;
        v["edges"]
            .as_array()?
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["state"].as_str().map(str::to_owned))
    }

    /// Makes the running edges but `new` reload their rewritten configs now (SIGHUP) and
    /// waits, at most [`PEERED_TIMEOUT`] in all, until each has applied its peer list (its
    /// `cdn_edge_peers` counts the other peered edges).
    async fn wait_peered(&self, slots: &mut [EdgeSlot], new: usize) {
        if !self.edges.wiring.plan.file.peering.enabled {
            return;
        }
        let peered = slots.iter().filter(|s| s.peered).count();
        let mut waiting = Vec::new();
        for (j, slot) in slots.iter_mut().enumerate() {
            if j == new || !slot.proc.running() {
                continue;
            }
            if let Some(pid) = slot.proc.pid() {
                super::procs::signal(pid, libc::SIGHUP);
            }
            if let Some(url) = slot.url.clone() {
                waiting.push((url, peered - usize::from(slot.peered)));
            }
        }
        let deadline = tokio::time::Instant::now() + PEERED_TIMEOUT;
        for (url, want) in waiting {
            loop {
                let peers = self
                    .scrape
                    .metrics(&url)
                    .await
                    .ok()
                    .and_then(|m| m.sample(cdn_edge::metric_names::PEERS));
                if peers == Some(want as f64) {
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    tracing::warn!(edge = %url, want, ?peers, "an edge has not applied its new peer list");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The step timings of this fleet.
    fn timings(&self) -> Timings {
        Timings {
            ready_timeout: self.options.ready_timeout,
            drain_grace: self.options.drain_grace,
            drain_timeout: self.options.drain_timeout,
            poll: Duration::from_millis(100),
        }
    }

    /// The index of edge `name`.
    fn index(&self, name: &str) -> anyhow::Result<usize> {
        self.edges
            .index(name)
            .with_context(|| format!("no edge `{name}`"))
    }

    /// In-flight requests of the edge at `url`, from its `/healthz`.
    async fn inflight_at(&self, url: &str) -> Option<u64> {
        self.get_json(&format!("{url}/healthz")).await?["inflight"].as_u64()
    }

    /// Takes edge `i` out of the router and the peer lists and stops it.
    async fn retire(&self, slots: &mut [EdgeSlot], i: usize) {
        slots[i].routed = false;
        slots[i].peered = false;
        if let Err(e) = self.edges.write_router_config(slots) {
            tracing::warn!(error = %format!("{e:#}"), "router config");
        }
        if let Err(e) = self.edges.rewrite_running(slots, i) {
            tracing::warn!(error = %format!("{e:#}"), "edge configs");
        }
        self.edges.stop_slot(slots, i).await;
    }
}

impl FleetSteps for LabFleet {
    async fn launch(&self, region: &str) -> anyhow::Result<String> {
        let mut slots = self.edges.slots.lock().await;
        let plan = &self.edges.wiring.plan;
        let i = (0..slots.len())
            .find(|&i| {
                let e = &plan.edges[i];
                e.spare && e.region == region && !slots[i].proc.running()
            })
            .with_context(|| format!("no spare edge left in {region}"))?;
        let name = plan.edges[i].name.clone();
        if let Err(e) = self.edges.start_slot(&mut slots, i).await {
            self.retire(&mut slots, i).await;
            return Err(e.context(format!("starting {name}")));
        }
        Ok(name)
    }

    async fn peer(&self, name: &str) -> anyhow::Result<()> {
        let i = self.index(name)?;
        let mut slots = self.edges.slots.lock().await;
        slots[i].peered = true;
        self.edges.rewrite_running(&mut slots, i)?;
        self.wait_peered(&mut slots, i).await;
        Ok(())
    }

    async fn route(&self, name: &str) -> anyhow::Result<()> {
        let i = self.index(name)?;
        let mut slots = self.edges.slots.lock().await;
        slots[i].routed = true;
        self.edges.write_router_config(&slots)
    }

    async fn is_up(&self, name: &str) -> bool {
        self.router_state(name).await.as_deref() == Some("up")
    }

    async fn admit(&self, _name: &str) {}

    async fn unroute(&self, name: &str) -> anyhow::Result<()> {
        let i = self.index(name)?;
        let mut slots = self.edges.slots.lock().await;
        if !slots[i].proc.running() {
            anyhow::bail!("{name} is not running");
        }
        slots[i].routed = false;
        self.edges.write_router_config(&slots)
    }

    async fn inflight(&self, name: &str) -> Option<u64> {
        let i = self.index(name).ok()?;
        let url = self.edges.slots.lock().await[i].url.clone()?;
        self.inflight_at(&url).await
    }

    async fn hand_over(&self, name: &str) {
        let Ok(i) = self.index(name) else {
            return;
        };
        let slots = self.edges.slots.lock().await;
        let plan = &self.edges.wiring.plan;
        let region = &plan.edges[i].region;
        let sibling = (0..slots.len()).find(|&j| {
            j != i && plan.edges[j].region == *region && slots[j].routed && slots[j].url.is_some()
        });
        if let Some(j) = sibling
            && let Some(a) = slots[j]
                .url
                .as_deref()
                .and_then(|u| u.trim_start_matches("http://").parse().ok())
        {
            self.edges.wiring.set_client_targets(name, a, slots[j].tls);
        }
    }

    async fn retire(&self, name: &str) {
        if let Ok(i) = self.index(name) {
            let mut slots = self.edges.slots.lock().await;
            LabFleet::retire(self, &mut slots, i).await;
        }
    }
}

impl Fleet for LabFleet {
    async fn start_edge(&self, region: &str) -> anyhow::Result<String> {
        steps::scale_out(self, region, &self.timings()).await
    }

    async fn drain_and_stop(&self, name: &str) -> anyhow::Result<()> {
        steps::drain(self, name, &self.timings()).await
    }
}
