//! `cdn lab`: a multi-region CDN on this machine, the project's front door.
//!
//! It reads `testdata/lab.toml` ([`config`]), then starts the origin, every edge and the
//! router as separate processes of this same binary ([`procs`]), each with its own log under
//! the run directory; generates what they need there (edge and router configs built from the
//! nodes' own config types, the peers' certificates, a geo database of the lab's regions); and
//! puts a relay ([`netsim::relay`]) on every
//! link between two simulated places (viewers of a region → edge, edge → origin, edge →
//! peer), which delays each direction by half the link's RTT and limits its bandwidth. The
//! router sends a viewer to the relay of its region's link to the chosen edge.
//!
//! The lab process also serves the player page and the dashboard (`web`; the router
//! forwards `/` and `/_lab/` to it), polls the nodes' metrics for the charts ([`scrape`]),
//! records what the viewers' links carry (`netsim::sniff`), and can stop and start edges.
//! When every node is healthy it writes `state.json` in the run directory ([`state`], what
//! the benchmarks and the tests read) and prints the nodes, the player URL and commands to
//! try. Ctrl-C or SIGTERM stops every node. [`run`] takes these steps by name (`start`),
//! then hands the processes to the supervisor.
//!
//! The crate also holds capacity planning ([`plan`]: edges needed for a request rate) and the
//! per-region autoscaler built on it ([`autoscale`]), which the lab's fleet drives.

pub mod autoscale;
pub mod config;
mod fleet;
pub mod netsim;
mod nodeconf;
pub mod plan;
pub mod procs;
pub mod scrape;
mod start;
pub mod state;
mod supervisor;
pub mod tiers;
mod web;

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use config::{LinkKind, Plan};
pub use state::{LabState, NodeInfo, NodeKind};
use supervisor::Supervisor;

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
    pub info: Mutex<Option<LabState>>,
    pub nodes: Mutex<Vec<NodeInfo>>,
    pub history: Mutex<web::History>,
    pub exchanges: Mutex<VecDeque<ExchangeRecord>>,
    pub viewers: Mutex<VecDeque<serde_json::Value>>,
    pub control: mpsc::Sender<Control>,
    /// The autoscaler, when the lab scales edges.
    pub autoscale: std::sync::OnceLock<crate::autoscale::driver::AutoscaleHandle>,
}

impl Lab {
    fn new(started: Instant) -> (Arc<Lab>, mpsc::Receiver<Control>) {
        let (control, rx) = mpsc::channel(16);
        let lab = Arc::new(Lab {
            started,
            info: Mutex::new(None),
            nodes: Mutex::new(Vec::new()),
            history: Mutex::new(web::History::default()),
            exchanges: Mutex::new(VecDeque::new()),
            viewers: Mutex::new(VecDeque::new()),
            control,
            autoscale: std::sync::OnceLock::new(),
        });
        (lab, rx)
    }

    pub fn info(&self) -> Option<LabState> {
        self.info.lock().ok().and_then(|i| i.clone())
    }
}

/// Most exchanges kept.
const EXCHANGES_KEPT: usize = 300;

/// `cdn lab`: plan, relays, nodes, health, state, then supervise until Ctrl-C or SIGTERM.
pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let setup = start::prepare(&args)?;
    let (lab, mut control_rx) = Lab::new(t0);

    // The relays and the lab API, bound before any node starts: their addresses go into the
    // configs.
    let start::Relays { relays, secure } = start::bind_relays(&setup.plan, &lab).await?;
    let control = tokio::net::TcpListener::bind(addr(setup.plan.control_port))
        .await
        .map_err(|_| start::taken(setup.plan.control_port, "lab API", false))?;
    let control_url = format!("http://{}", control.local_addr()?);

    // The nodes: the origin, the edges, then the router that lists them.
    let (mut origin, origin_offset) = start::start_origin(&setup)?;
    let mut slots = start::edge_slots(&setup);
    let origin_addr = origin
        .learn_addr(origin_offset, "listen", NODE_START_TIMEOUT)
        .await?;
    let origin_https_url = match setup.tls {
        Some(_) => Some(format!(
            "https://{}",
            origin
                .learn_addr(origin_offset, "tls_listen", NODE_START_TIMEOUT)
                .await?
        )),
        None => None,
    };
    for (l, r) in &relays {
        if l.kind == LinkKind::Origin {
            r.set_target(origin_addr);
        }
    }
    let state_path = setup.state_path.clone();
    let edges = Arc::new(fleet::Edges {
        wiring: fleet::Wiring {
            plan: setup.plan.clone(),
            run_dir: setup.run_dir.clone(),
            pki: setup.pki.clone(),
            relays,
            secure,
            tls: setup.tls.clone(),
            origin_url: format!("http://{origin_addr}"),
            origin_https_url,
            control_url,
            router_toml: setup.run_dir.join("router.toml"),
            lab: lab.clone(),
        },
        slots: tokio::sync::Mutex::new(Vec::new()),
        router_pid: std::sync::Mutex::new(None),
    });
    let edge_urls = start::start_edges(&edges, &mut slots).await?;
    let router = start::start_router(&edges, &slots, &setup).await?;
    let router_url = router.url.clone();
    *edges.slots.lock().await = slots;

    // What the dashboard shows, then its server and the metrics poller.
    let state = start::describe(&edges, &router, &origin, setup.tls.as_ref());
    if let Ok(mut i) = lab.info.lock() {
        *i = Some(state.clone());
    }
    let web_task = tokio::spawn(web::serve(control, lab.clone()));
    let poller = tokio::spawn(web::poll_metrics(lab.clone()));
    let mut sup = Supervisor {
        lab: lab.clone(),
        origin,
        edges: edges.clone(),
        router: router.proc,
    };

    // Health: every node answers and the router sees every edge up; then the autoscaler.
    let mut health_urls = vec![edges.wiring.origin_url.clone()];
    health_urls.extend(edge_urls.iter().cloned());
    let ready = tokio::select! {
        r = start::wait_healthy(&health_urls, &router_url, edge_urls.len()) => r,
        _ = cdn_http::server::shutdown_signal() => Err(anyhow::anyhow!("stopped while starting")),
    };
    if let Err(e) = ready {
        sup.shutdown().await;
        return Err(e);
    }
    match supervisor::start_autoscale(&edges, &router_url) {
        Ok(Some(a)) => {
            let _ = lab.autoscale.set(a);
        }
        Ok(None) => {}
        Err(e) => {
            sup.shutdown().await;
            return Err(e);
        }
    }

    // state.json: the lab is up.
    let state = LabState {
        pid: Some(std::process::id()),
        nodes: lab.nodes.lock().map(|n| n.clone()).unwrap_or_default(),
        started_in_secs: Some(t0.elapsed().as_secs_f64()),
        ..state
    };
    start::write_atomic(&state_path, &state.to_json()?)?;
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

/// The HTTPS part of the banner: the CA, and the commands that trust it.
fn print_https(h: &state::HttpsState) {
    let (router, ca) = (&h.router, h.ca.display());
    println!("HTTPS (every node, every viewer link; the lab's own CA):");
    println!("  player and dashboard:  {router}/");
    println!("  CA:                    {ca}");
    println!("  certificate SPKI hash: {}", h.spki_sha256);
    println!("  curl --cacert {ca} -sIL \"{router}/media/demo.webm?region=europe\"");
    println!("  ffplay -ca_file {ca} -tls_verify 1 \"{router}/media/demo/index.m3u8?region=asia\"");
    println!(
        "  chromium --user-data-dir=\"$(mktemp -d)\" --ignore-certificate-errors-spki-list={} \"{router}/?region=asia&rendition=hls&autoplay=1\"",
        h.spki_sha256
    );
    if h.http3 {
        println!(
            "  HTTP/3: the edges advertise it (Alt-Svc) on the port of each viewer's link, whose \
             relay carries UDP on the same number; Chromium ignores Alt-Svc for a local CA: add \
             --origin-to-force-quic-on=127.0.0.1:PORT (a link's https_addr in state.json)"
        );
    }
    println!();
}

fn print_banner(lab: &Lab, plan: &Plan, state: &Path, took: Duration) {
    let info = lab.info();
    let router = info.as_ref().map(|i| i.router.clone()).unwrap_or_default();
    let control = info.as_ref().map(|i| i.control.clone()).unwrap_or_default();
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
    println!("  lab API:               {control}/_lab/api/status");
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
    if let Some(h) = info.as_ref().and_then(|i| i.https.as_ref()) {
        print_https(h);
    }
    println!("Ctrl-C stops the lab.");
}
