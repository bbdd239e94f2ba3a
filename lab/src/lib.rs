//! `cdn lab`: a multi-region CDN on this machine, the project's front door.
//!
//! It reads `testdata/lab.toml` ([`config`]), then starts the origin, every edge and the
//! router as separate processes of this same binary ([`procs`]), each with its own log under
//! the run directory; generates what they need there (edge and router configs, the peers'
//! certificates, a geo database of the lab's regions); and puts a relay ([`relay`]) on every
//! link between two simulated places (viewers of a region → edge, edge → origin, edge →
//! peer), which delays each direction by half the link's RTT and limits its bandwidth. The
//! router sends a viewer to the relay of its region's link to the chosen edge.
//!
//! The lab process also serves the player page and the dashboard ([`web`]; the router
//! forwards `/` and `/_lab/` to it), polls the nodes' metrics for the charts, records what
//! the viewers' links carry ([`sniff`]), and can stop and start edges. When every node is
//! healthy it writes `state.json` in the run directory (what the tests read) and prints the
//! nodes, the player URL and commands to try. Ctrl-C or SIGTERM stops every node.
//!
//! The crate also holds capacity planning ([`plan`]: edges needed for a request rate) and the
//! per-region autoscaler built on it ([`autoscale`]), which the lab's fleet drives.

pub mod autoscale;
pub mod config;
mod fleet;
pub mod plan;
mod procs;
pub mod relay;
mod sniff;
pub mod tiers;
mod web;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use config::{LabFile, LinkKind, LinkPlan, Plan, PortMode};
use procs::NodeProc;
use relay::{LinkShape, TcpRelay, TokenBucket, UdpRelay};
use sniff::{Exchange, Observer};

/// `cdn lab` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// The lab file: regions, edges, ports, link model.
    #[arg(long, default_value = "testdata/lab.toml")]
    pub config: PathBuf,
    /// Moves every port: the router on BASE and the other ports by the same offset; 0 lets
    /// the OS choose every port (read them from state.json in the run directory).
    #[arg(long)]
    pub port_base: Option<u16>,
    /// Where generated files, logs and state.json go (default: `run_dir` of the lab file).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
}

impl LabArgs {
    fn default_config() -> PathBuf {
        PathBuf::from("testdata/lab.toml")
    }
}

impl Default for LabArgs {
    fn default() -> Self {
        LabArgs {
            config: Self::default_config(),
            port_base: None,
            run_dir: None,
        }
    }
}

/// How long the whole lab may take to become healthy.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a node has to report its address after it starts.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node has to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

const LOCALHOST: Ipv4Addr = Ipv4Addr::LOCALHOST;

fn addr(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(LOCALHOST, port))
}

/// What a node is, for the dashboard and state.json.
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub kind: &'static str,
    pub region: String,
    pub url: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub log: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<SocketAddr>,
    /// An edge the autoscaler starts when the load needs it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spare: bool,
}

/// One exchange seen on a viewer's link.
#[derive(Debug, Clone, Serialize)]
pub struct ExchangeRecord {
    /// Seconds since the lab started.
    pub t: f64,
    pub region: String,
    pub edge: String,
    pub method: String,
    pub path: String,
    pub status: u16,
    pub cache_status: Option<String>,
    pub bytes: u64,
    /// Request to last byte at the viewer (the relay's view plus the way back).
    pub ms: f64,
}

/// Requests from the dashboard to the supervisor.
pub enum Control {
    StopEdge(String, oneshot::Sender<Result<(), String>>),
    StartEdge(String, oneshot::Sender<Result<(), String>>),
}

/// The lab's live state, shared with the web UI.
pub struct Lab {
    pub started: Instant,
    /// Static facts: URLs, regions, links, renditions (set once the nodes are up).
    pub info: Mutex<serde_json::Value>,
    pub nodes: Mutex<Vec<NodeInfo>>,
    pub history: Mutex<web::History>,
    pub exchanges: Mutex<VecDeque<ExchangeRecord>>,
    pub viewers: Mutex<VecDeque<serde_json::Value>>,
    pub control: mpsc::Sender<Control>,
    /// The autoscaler, when the lab scales edges.
    pub autoscale: std::sync::OnceLock<crate::autoscale::driver::AutoscaleHandle>,
}

impl Lab {
    pub fn info(&self) -> serde_json::Value {
        self.info.lock().map(|i| i.clone()).unwrap_or_default()
    }
}

/// Most exchanges kept.
const EXCHANGES_KEPT: usize = 300;

struct LinkObserver {
    lab: std::sync::Weak<Lab>,
    region: String,
    edge: String,
    back_ms: f64,
}

impl Observer for LinkObserver {
    fn exchange(&self, e: Exchange) {
        let Some(lab) = self.lab.upgrade() else {
            return;
        };
        let rec = ExchangeRecord {
            t: lab.started.elapsed().as_secs_f64(),
            region: self.region.clone(),
            edge: self.edge.clone(),
            method: e.method,
            path: e.path,
            status: e.status,
            cache_status: e.cache_status,
            bytes: e.bytes,
            ms: e.ms + self.back_ms,
        };
        if let Ok(mut q) = lab.exchanges.lock() {
            if q.len() >= EXCHANGES_KEPT {
                q.pop_front();
            }
            q.push_back(rec);
        }
    }
}

/// A relay of the lab, TCP or UDP.
enum AnyRelay {
    Tcp(TcpRelay),
    Udp(UdpRelay),
}

impl AnyRelay {
    fn addr(&self) -> SocketAddr {
        match self {
            AnyRelay::Tcp(r) => r.addr,
            AnyRelay::Udp(r) => r.addr,
        }
    }
    fn set_target(&self, to: SocketAddr) {
        let t = match self {
            AnyRelay::Tcp(r) => &r.target,
            AnyRelay::Udp(r) => &r.target,
        };
        t.send_replace(Some(to));
    }
}

fn taken(port: u16, what: &str, udp: bool) -> anyhow::Error {
    let proto = if udp { "UDP" } else { "TCP" };
    anyhow::anyhow!(
        "{proto} port {port} ({what}) is taken: is another lab running? Stop it, or move the \
         lab's ports with --port-base (e.g. --port-base 9080), or let the OS choose them with \
         --port-base 0"
    )
}

/// Fails early, naming the node, when a fixed port is taken.
fn check_free(plan: &Plan) -> anyhow::Result<()> {
    let mut tcp = vec![
        (plan.router_port, "router".to_owned()),
        (plan.origin_port, "origin".to_owned()),
        (plan.control_port, "lab API".to_owned()),
    ];
    tcp.extend(plan.edges.iter().map(|e| (e.port, e.name.clone())));
    for (port, what) in tcp.into_iter().filter(|(p, _)| *p != 0) {
        std::net::TcpListener::bind(addr(port)).map_err(|_| taken(port, &what, false))?;
    }
    if plan.file.peering.enabled {
        for e in plan.edges.iter().filter(|e| e.peer_port != 0) {
            std::net::UdpSocket::bind(addr(e.peer_port))
                .map_err(|_| taken(e.peer_port, &format!("{} peer endpoint", e.name), true))?;
        }
    }
    Ok(())
}

/// Builds the lab's geo database from its regions; writes it only when it changed.
fn write_geo_db(plan: &Plan, path: &Path) -> anyhow::Result<()> {
    use cdn_geo_router::geosrc::{GeoSource, GeoSourceNetwork};
    let src = GeoSource {
        database_type: "CDN-Lab-City".into(),
        description: "cdn lab: loopback client regions (generated from the lab file)".into(),
        build_epoch: 1_767_225_600,
        networks: plan
            .file
            .regions
            .iter()
            .map(|r| GeoSourceNetwork {
                network: ipnet::IpNet::V4(r.network),
                city: r.city.clone(),
                country: r.country.clone(),
                country_name: None,
                continent: r.continent.clone(),
                latitude: r.latitude,
                longitude: r.longitude,
                accuracy_radius: Some(50),
            })
            .collect(),
    };
    let bytes = src.build().context("building the lab's geo database")?;
    if std::fs::read(path).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Writes the peers' CA and node certificates unless they are all there.
fn ensure_pki(dir: &Path, names: &[String]) -> anyhow::Result<()> {
    let complete = dir.join("ca.pem").exists()
        && names.iter().all(|n| {
            dir.join(format!("{n}.pem")).exists() && dir.join(format!("{n}.key")).exists()
        });
    if !complete {
        cdn_edge::peer::pki::write_lab_pki(dir, names)?;
    }
    Ok(())
}

/// The origin's key for cached objects, the same on every edge whatever relay it goes through.
const CACHE_KEY_BASE: &str = "http://origin.lab";

/// One edge's config file.
fn edge_toml(
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
        // Tiers: a lower-tier edge's parents are the shield edges among its peers.
        let names: Vec<&str> = peer_relays.iter().map(|(n, _, _)| n.as_str()).collect();
        let parents = tiers::parents(plan, i, &names);
        if !parents.is_empty() {
            t.insert("parents".into(), Value::from(parents));
        }
    }
    format!(
        "# Written by `cdn lab` for this run; edit testdata/lab.toml instead.\n{}",
        toml::to_string(&t).unwrap_or_default()
    )
}

/// The router's config: the edges at their own addresses (health checks go there directly)
/// and a lab link per (viewer region, edge) pointing at that link's relay.
fn router_config(
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

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Waits until every node answers its health check and the router sees every edge up.
async fn wait_healthy(urls: &[String], router: &str, edges: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let mut waiting = Vec::new();
        for u in urls {
            let ok = client
                .get(format!("{u}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                waiting.push(u.clone());
            }
        }
        let up = match client.get(format!("{router}/healthz")).send().await {
            Ok(r) => r
                .text()
                .await
                .ok()
                .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                .and_then(|v| v["edges_up"].as_u64())
                .unwrap_or(0),
            Err(_) => 0,
        };
        if waiting.is_empty() && up as usize == edges {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the lab is not healthy after {START_TIMEOUT:?}: waiting for {waiting:?}, the \
                 router sees {up} of {edges} edges up (see the logs in the run directory)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The running lab's processes and the supervisor's bookkeeping.
struct Supervisor {
    lab: Arc<Lab>,
    origin: NodeProc,
    edges: Arc<fleet::Edges>,
    router: NodeProc,
}

impl Supervisor {
    fn set_running(&self, name: &str, running: bool, pid: Option<u32>) {
        self.edges.wiring.set_node(name, |n| {
            n.running = running;
            n.pid = pid;
        });
    }

    /// The always-on edge `name` (spares belong to the autoscaler).
    fn static_edge(&self, name: &str) -> Result<usize, String> {
        let plan = &self.edges.wiring.plan;
        let i = plan
            .edges
            .iter()
            .position(|e| e.name == name)
            .ok_or_else(|| format!("no edge `{name}`"))?;
        if plan.edges[i].spare {
            return Err(format!(
                "{name} is a spare edge: the autoscaler starts and stops it"
            ));
        }
        Ok(i)
    }

    async fn stop_edge(&mut self, name: &str) -> Result<(), String> {
        let i = self.static_edge(name)?;
        let mut slots = self.edges.slots.lock().await;
        if !slots[i].proc.running() {
            return Err(format!("{name} is not running"));
        }
        self.edges.stop_slot(&mut slots, i).await;
        tracing::info!(edge = name, "edge stopped from the dashboard");
        Ok(())
    }

    async fn start_edge(&mut self, name: &str) -> Result<(), String> {
        let i = self.static_edge(name)?;
        let mut slots = self.edges.slots.lock().await;
        if slots[i].proc.running() {
            return Err(format!("{name} is already running"));
        }
        self.edges
            .start_slot(&mut slots, i)
            .await
            .map_err(|e| format!("{e:#}"))?;
        tracing::info!(edge = name, "edge started from the dashboard");
        Ok(())
    }

    /// Notices nodes that exited on their own.
    fn reap(&mut self) {
        let mut changes = Vec::new();
        for p in [&mut self.origin, &mut self.router] {
            changes.push((p.name.clone(), p.running(), p.pid()));
        }
        // The autoscaler may hold the edges (starting one): look again next time.
        if let Ok(mut slots) = self.edges.slots.try_lock() {
            for s in slots.iter_mut() {
                changes.push((s.proc.name.clone(), s.proc.running(), s.proc.pid()));
            }
        }
        for (name, running, pid) in changes {
            self.set_running(&name, running, pid);
        }
    }

    async fn shutdown(mut self) {
        if let Some(a) = self.lab.autoscale.get() {
            a.abort();
        }
        self.router.stop(STOP_GRACE).await;
        let mut slots = self.edges.slots.lock().await;
        let stops = slots.iter_mut().map(|s| s.proc.stop(STOP_GRACE));
        futures::future::join_all(stops).await;
        drop(slots);
        self.origin.stop(STOP_GRACE).await;
    }
}

/// `cdn lab`.
pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    // `cargo run` from a subdirectory: the default lab file is found at the repository root.
    let default = LabArgs::default_config();
    if args.config == default && !default.exists() {
        let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if repo.join(&default).exists() {
            std::env::set_current_dir(repo)
                .with_context(|| format!("cannot change to {}", repo.display()))?;
            tracing::info!(dir = %repo.display(), "running the lab from the repository root");
        }
    }
    let file = LabFile::load(&args.config).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(cdn lab runs from the repository root, where testdata/ is, or give the lab \
             file with --config)"
        )
    })?;
    let mode = match args.port_base {
        None => PortMode::Offset(0),
        Some(0) => PortMode::Auto,
        Some(b) => PortMode::Offset(b as i32 - file.ports.router as i32),
    };
    let run_dir = absolute(args.run_dir.as_deref().unwrap_or(&file.run_dir));
    let plan = file.plan(mode)?;
    check_free(&plan)?;
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let state_path = run_dir.join("state.json");
    let _ = std::fs::remove_file(&state_path);
    let geo_db = run_dir.join("lab-geo.mmdb");
    write_geo_db(&plan, &geo_db)?;
    let names: Vec<String> = plan.edges.iter().map(|e| e.name.clone()).collect();
    let pki = run_dir.join("pki");
    if plan.file.peering.enabled {
        ensure_pki(&pki, &names)?;
    }
    let root = absolute(&plan.file.origin.root);
    if !root.join("media").is_dir() {
        anyhow::bail!(
            "the origin root {} has no media/ directory (run from the repository root)",
            root.display()
        );
    }

    // The relays, bound before any node starts: their addresses go into the configs.
    let (control_tx, mut control_rx) = mpsc::channel(16);
    let lab = Arc::new(Lab {
        started: t0,
        info: Mutex::new(serde_json::Value::Null),
        nodes: Mutex::new(Vec::new()),
        history: Mutex::new(web::History::default()),
        exchanges: Mutex::new(VecDeque::new()),
        viewers: Mutex::new(VecDeque::new()),
        control: control_tx,
        autoscale: std::sync::OnceLock::new(),
    });
    let uplink = TokenBucket::new(plan.file.links.origin_uplink_mbps * 1e6 / 8.0);
    let mut relays: Vec<(LinkPlan, AnyRelay)> = Vec::new();
    for link in &plan.links {
        let bps = Some(link.bytes_per_sec());
        let mut shape = LinkShape::new(link.rtt(), bps, bps);
        let relay = match link.kind {
            LinkKind::Peer => {
                let s = tokio::net::UdpSocket::bind(addr(link.port))
                    .await
                    .map_err(|_| {
                        taken(
                            link.port,
                            &format!("relay {} → {}", link.from, link.to),
                            true,
                        )
                    })?;
                AnyRelay::Udp(UdpRelay::spawn(s, shape)?)
            }
            kind => {
                let l = tokio::net::TcpListener::bind(addr(link.port))
                    .await
                    .map_err(|_| {
                        taken(
                            link.port,
                            &format!("relay {} → {}", link.from, link.to),
                            false,
                        )
                    })?;
                let observer: Option<Arc<dyn Observer>> = if kind == LinkKind::Client {
                    Some(Arc::new(LinkObserver {
                        lab: Arc::downgrade(&lab),
                        region: link.from.clone(),
                        edge: link.to.clone(),
                        back_ms: link.rtt_ms / 2.0,
                    }))
                } else {
                    None
                };
                if kind == LinkKind::Origin {
                    shape.down.buckets.push(uplink.clone());
                }
                AnyRelay::Tcp(TcpRelay::spawn(l, shape, observer)?)
            }
        };
        relays.push((link.clone(), relay));
    }
    // The lab's API and pages.
    let control = tokio::net::TcpListener::bind(addr(plan.control_port))
        .await
        .map_err(|_| taken(plan.control_port, "lab API", false))?;
    let control_url = format!("http://{}", control.local_addr()?);

    // The origin.
    let mut origin_args = vec![
        "origin".to_owned(),
        "--listen".into(),
        addr(plan.origin_port).to_string(),
        "--root".into(),
        root.display().to_string(),
    ];
    if let Some(c) = &plan.file.origin.config {
        origin_args.extend(["--config".into(), absolute(c).display().to_string()]);
    }
    let mut origin = NodeProc::new("origin", origin_args, logs.join("origin.log"));
    let origin_offset = origin.start()?;

    // The edges: every one of the plan gets its process handle; the spares start later.
    let mut slots = Vec::new();
    for e in &plan.edges {
        let cfg_path = run_dir.join(format!("{}.toml", e.name));
        let args = vec![
            "edge".to_owned(),
            "--listen".into(),
            addr(e.port).to_string(),
            "--config".into(),
            cfg_path.display().to_string(),
        ];
        slots.push(fleet::EdgeSlot {
            proc: NodeProc::new(&e.name, args, logs.join(format!("{}.log", e.name))),
            url: None,
            peer_addr: None,
            routed: !e.spare,
            peered: !e.spare,
        });
    }
    let origin_addr = origin
        .learn_addr(origin_offset, "listen", NODE_START_TIMEOUT)
        .await?;
    let origin_url = format!("http://{origin_addr}");
    for (l, r) in &relays {
        if l.kind == LinkKind::Origin {
            r.set_target(origin_addr);
        }
    }
    let edges = Arc::new(fleet::Edges {
        wiring: fleet::Wiring {
            plan,
            run_dir: run_dir.clone(),
            pki: pki.clone(),
            relays,
            origin_url: origin_url.clone(),
            control_url: control_url.clone(),
            router_toml: run_dir.join("router.toml"),
            lab: lab.clone(),
        },
        slots: tokio::sync::Mutex::new(Vec::new()),
        router_pid: std::sync::Mutex::new(None),
    });
    let plan = &edges.wiring.plan;
    // What the dashboard and state.json show (URLs filled in as nodes start).
    let mut nodes: Vec<NodeInfo> = plan
        .edges
        .iter()
        .zip(&slots)
        .map(|(e, s)| NodeInfo {
            name: e.name.clone(),
            kind: "edge",
            region: e.region.clone(),
            url: String::new(),
            pid: None,
            running: false,
            log: s.proc.log.clone(),
            peer_addr: None,
            spare: e.spare,
        })
        .collect();
    if let Ok(mut n) = lab.nodes.lock() {
        *n = nodes.clone();
    }
    for (i, _) in plan.edges.iter().enumerate().filter(|(_, e)| !e.spare) {
        edges.start_slot(&mut slots, i).await?;
    }
    let edge_urls: Vec<String> = slots.iter().filter_map(|s| s.url.clone()).collect();

    // The router.
    let router_toml = edges.wiring.router_toml.clone();
    edges.write_router_config(&slots)?;
    *edges.slots.lock().await = slots;
    let mut router = NodeProc::new(
        "router",
        vec![
            "router".into(),
            "--listen".into(),
            addr(plan.router_port).to_string(),
            "--geo-db".into(),
            geo_db.display().to_string(),
            "--config".into(),
            router_toml.display().to_string(),
        ],
        logs.join("router.log"),
    );
    let router_offset = router.start()?;
    let router_addr = router
        .learn_addr(router_offset, "addr", NODE_START_TIMEOUT)
        .await?;
    *edges.router_pid.lock().unwrap_or_else(|p| p.into_inner()) = router.pid();
    let router_url = format!("http://{router_addr}");

    nodes = lab.nodes.lock().map(|n| n.clone()).unwrap_or_default();
    nodes.splice(
        0..0,
        [
            NodeInfo {
                name: "router".into(),
                kind: "router",
                region: "-".into(),
                url: router_url.clone(),
                pid: router.pid(),
                running: true,
                log: router.log.clone(),
                peer_addr: None,
                spare: false,
            },
            NodeInfo {
                name: "origin".into(),
                kind: "origin",
                region: plan.file.origin.region.clone(),
                url: origin_url.clone(),
                pid: origin.pid(),
                running: true,
                log: origin.log.clone(),
                peer_addr: None,
                spare: false,
            },
        ],
    );
    let links: Vec<serde_json::Value> = edges
        .wiring
        .relays
        .iter()
        .map(|(l, r)| {
            let mut v = serde_json::to_value(l).unwrap_or_default();
            v["addr"] = r.addr().to_string().into();
            v
        })
        .collect();
    let regions: Vec<serde_json::Value> = plan
        .file
        .regions
        .iter()
        .map(|r| {
            serde_json::json!({
                "name": r.name, "city": r.city, "network": r.network.to_string(),
                "client_ip": Plan::client_ip(r).to_string(), "edges": r.edges,
                "spare_edges": r.spare_edges,
                "latitude": r.latitude, "longitude": r.longitude,
            })
        })
        .collect();
    let info = serde_json::json!({
        "router": router_url,
        "player": format!("{router_url}/"),
        "control": control_url,
        "origin": origin_url,
        "origin_region": plan.file.origin.region,
        "run_dir": run_dir,
        "regions": regions,
        "links": links,
        "link_model": plan.file.links,
        "renditions": web::RENDITIONS,
        // Each edge's tier role (shield, lower, flat) for the dashboard.
        "tiers": tiers::roles(plan),
    });
    // The shared state gets its facts now that the nodes are known.
    if let Ok(mut i) = lab.info.lock() {
        *i = info;
    }
    if let Ok(mut n) = lab.nodes.lock() {
        *n = nodes;
    }
    let web_task = tokio::spawn(web::serve(control, lab.clone()));
    let poller = tokio::spawn(web::poll_metrics(lab.clone()));

    let mut sup = Supervisor {
        lab: lab.clone(),
        origin,
        edges: edges.clone(),
        router,
    };
    let mut health_urls = vec![origin_url.clone()];
    health_urls.extend(edge_urls.iter().cloned());
    let ready = tokio::select! {
        r = wait_healthy(&health_urls, &router_url, edge_urls.len()) => r,
        _ = cdn_http::server::shutdown_signal() => Err(anyhow::anyhow!("stopped while starting")),
    };
    if let Err(e) = ready {
        sup.shutdown().await;
        return Err(e);
    }
    match start_autoscale(&edges, &router_url) {
        Ok(Some(a)) => {
            let _ = lab.autoscale.set(a);
        }
        Ok(None) => {}
        Err(e) => {
            sup.shutdown().await;
            return Err(e);
        }
    }
    let mut state = lab.info();
    state["pid"] = std::process::id().into();
    state["nodes"] = serde_json::to_value(lab.nodes.lock().map(|n| n.clone()).unwrap_or_default())?;
    state["started_in_secs"] = t0.elapsed().as_secs_f64().into();
    write_atomic(&state_path, &serde_json::to_string_pretty(&state)?)?;
    print_banner(&lab, &edges.wiring.plan, &state_path, t0.elapsed());

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let shutdown = cdn_http::server::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(c) = control_rx.recv() => match c {
                Control::StopEdge(name, reply) => {
                    let _ = reply.send(sup.stop_edge(&name).await);
                }
                Control::StartEdge(name, reply) => {
                    let _ = reply.send(sup.start_edge(&name).await);
                }
            },
            _ = tick.tick() => sup.reap(),
        }
    }
    println!("\nstopping the lab ...");
    web_task.abort();
    poller.abort();
    sup.shutdown().await;
    let _ = std::fs::remove_file(&state_path);
    drop(edges);
    println!("the lab has stopped");
    Ok(())
}

/// Starts the autoscaler when the lab file asks for it and the capacity of an edge is known.
fn start_autoscale(
    edges: &Arc<fleet::Edges>,
    router_url: &str,
) -> anyhow::Result<Option<crate::autoscale::driver::AutoscaleHandle>> {
    use crate::autoscale::driver::{self, HttpObserver, RegionSpec};
    let file = &edges.wiring.plan.file;
    let Some(a) = file.autoscale.as_ref().filter(|a| a.enabled) else {
        return Ok(None);
    };
    let capacity = match a.capacity_rps {
        Some(c) => c,
        None => match crate::plan::lab::read_capacity(&a.capacity_file)? {
            Some(c) => c.requests_per_sec,
            None => {
                tracing::warn!(
                    file = %a.capacity_file.display(),
                    "auto-scaling is off: no edge capacity (set [autoscale] capacity_rps in the \
                     lab file, or measure it with `cdn bench capacity`)"
                );
                return Ok(None);
            }
        },
    };
    let regions: Vec<RegionSpec> = file
        .regions
        .iter()
        .filter_map(|r| {
            Some(RegionSpec {
                region: r.name.clone(),
                config: file.autoscale_config(r, capacity)?,
                edges: r.edges.clone(),
            })
        })
        .collect();
    if regions.is_empty() {
        return Ok(None);
    }
    let fleet = Arc::new(fleet::LabFleet::new(
        edges.clone(),
        router_url.to_owned(),
        fleet::FleetOptions {
            ready_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_millis(a.drain_grace_ms),
            drain_timeout: Duration::from_secs_f64(a.drain_timeout_secs),
        },
    ));
    let observer = HttpObserver::new(router_url, Duration::from_secs_f64(a.window_secs));
    let interval = Duration::from_millis(a.interval_ms);
    tracing::info!(
        capacity_rps = capacity,
        regions = regions.len(),
        "auto-scaling edges"
    );
    Ok(Some(driver::spawn(fleet, observer, regions, interval)?))
}

fn print_banner(lab: &Lab, plan: &Plan, state: &Path, took: Duration) {
    let info = &lab.info();
    let s = |k: &str| info[k].as_str().unwrap_or("").to_owned();
    let router = s("router");
    println!();
    println!("cdn lab is up ({:.1} s)", took.as_secs_f64());
    println!();
    println!("  {:<8} {:<15} {:<24} log", "node", "region", "url");
    if let Ok(nodes) = lab.nodes.lock() {
        for n in nodes.iter() {
            println!(
                "  {:<8} {:<15} {:<24} {}",
                n.name,
                n.region,
                n.url,
                n.log.display()
            );
        }
    }
    println!();
    println!("  player and dashboard:  {router}/");
    println!("  lab API:               {}/_lab/api/status", s("control"));
    println!("  state:                 {}", state.display());
    println!();
    println!("  viewers and their nearest edges (RTT of the simulated link):");
    for r in &plan.file.regions {
        let best = plan
            .links
            .iter()
            .filter(|l| l.kind == LinkKind::Client && l.from == r.name)
            .min_by(|a, b| a.rtt_ms.total_cmp(&b.rtt_ms));
        if let Some(l) = best {
            println!(
                "    {:<15} {:<18} -> {:<7} {:>5.0} ms",
                r.name, r.city, l.to, l.rtt_ms
            );
        }
    }
    println!();
    println!("Try:");
    println!("  ffplay \"{router}/media/demo/index.m3u8?region=asia\"");
    println!("  ffprobe -hide_banner \"{router}/media/demo.mp4?region=oceania\"");
    println!("  curl -sIL \"{router}/media/demo.webm?region=europe\"");
    println!("  curl -s \"{router}/_route?region=south-america&path=/media/demo.mp4\"");
    println!();
    println!("Ctrl-C stops the lab.");
}
