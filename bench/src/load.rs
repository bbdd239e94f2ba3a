//! `cdn bench load`: simulated viewers in every region of the lab, in three modes in one run:
//! straight to the origin, the CDN without peers, the CDN with peers.
//!
//! Each mode runs the lab (`cdn lab --port-base 0`, from a lab file derived from
//! `testdata/lab.toml`: its regions, edges and link model, peering on or off) as a child
//! process and reads its `state.json`. Viewers are tasks of this process, each bound to its own
//! source address in its region's loopback network (127.R.1.x), so the router's geo lookup
//! places them by their real address. A viewer plays videos one after the other: it picks one
//! by Zipf popularity over a synthetic catalogue (`/synthetic/v{i}?size=N`), resolves it
//! through the router (a 302 to the relay of its region's link to the chosen edge, which
//! delays by the link's RTT and limits its bandwidth), then reads it as sequential 1-chunk
//! Range requests on one keep-alive connection, abandoning after each chunk with probability
//! `abandon`. In origin mode viewers skip the router and go to the origin through relays of
//! the same link model (RTT by distance, the region's client bandwidth, the origin's shared
//! uplink).
//!
//! Every body is compared with the origin's generator (`cdn_origin::synthetic::fill`); 5xx,
//! corrupt bodies and transport errors are counted. A mode ends when every viewer has played
//! its sessions, or at its duration, or after `max_requests`. Viewer `i` of a region draws
//! the same videos in every mode (same seed), so with a session bound the modes see the same
//! requests. Reports per region: TTFB p50/p95/p99, throughput, hit ratio; the origin's egress
//! bytes and requests; per edge, bytes served and fetched. [`run_load`] is the library entry
//! point (for soak tests); the command writes `report.json`, `report.md` and `load.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};
use serde::Serialize;
use serde_json::Value;

use super::loadgen::{self, Conn, Job};
use cdn_lab::relay::{LinkShape, TcpRelay, TokenBucket};

/// Who the viewers talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Straight to the origin, through a link of the lab's model.
    Origin,
    /// Through the router to the edges, without peering.
    Cdn,
    /// Through the router to the edges, with peering.
    CdnPeers,
    /// With peering and tiers: the origin's region shields it (`[tiers] mode = "shield"`).
    CdnTiered,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Origin => "origin",
            Mode::Cdn => "cdn",
            Mode::CdnPeers => "cdn-peers",
            Mode::CdnTiered => "cdn-tiered",
        }
    }
}

/// `cdn bench load` arguments (also the configuration of [`run_load`]).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// The lab file whose regions, edges and link model are used.
    #[arg(long, default_value = "testdata/lab.toml")]
    pub lab: PathBuf,
    /// Modes, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "origin,cdn,cdn-peers"
    )]
    pub modes: Vec<Mode>,
    /// Viewers in each region.
    #[arg(long, default_value_t = 3)]
    pub viewers: usize,
    /// Videos each viewer plays (then it stops); 0: until the duration ends.
    #[arg(long, default_value_t = 4)]
    pub sessions: u64,
    /// Longest time a mode runs, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Chunk requests after which a mode stops (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub max_requests: u64,
    /// Videos in the catalogue.
    #[arg(long, default_value_t = 40)]
    pub videos: u64,
    /// Zipf exponent of video popularity.
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f64,
    /// Median video length, chunks (lognormal, sigma 1, at most 48 chunks).
    #[arg(long, default_value_t = 4.0)]
    pub median_chunks: f64,
    /// Chance to stop watching after each chunk.
    #[arg(long, default_value_t = 0.1)]
    pub abandon: f64,
    /// Compare every N-th body byte for byte (1: all); the others by length.
    #[arg(long, default_value_t = 1)]
    pub verify_every: u64,
    /// No simulated distance: every link's RTT is 0 (bandwidth limits stay).
    #[arg(long)]
    pub no_distance: bool,
    /// Override the lab's viewer-link bandwidth, Mbit/s.
    #[arg(long)]
    pub client_mbps: Option<f64>,
    /// Override the lab's origin uplink, Mbit/s.
    #[arg(long)]
    pub origin_uplink_mbps: Option<f64>,
    /// Override each edge's cache capacity, e.g. 64MiB.
    #[arg(long)]
    pub capacity: Option<String>,
    /// The `cdn` binary that runs the lab (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
    /// Where to write report.json, report.md, load.svg and the labs' run directories.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the catalogue and the viewers' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Flash crowd (`super::flash`): every viewer of every region starts the catalogue's
    /// first video at the same moment, every session.
    #[arg(long)]
    pub flash_crowd: bool,
    /// Failover run: this long after the start, SIGKILL the first edge of the shield region
    /// (the origin's), in the CDN modes.
    #[arg(long)]
    pub kill_shield_after_ms: Option<u64>,
}

/// Counts and latencies of one region (or of all).
#[derive(Debug, Clone, Serialize)]
pub struct RegionReport {
    pub region: String,
    pub viewers: usize,
    pub sessions: u64,
    /// Chunk requests sent (resolves through the router not included).
    pub requests: u64,
    /// Requests answered with the right status and exactly the right bytes.
    pub ok: u64,
    pub bytes: u64,
    /// Body megabytes (10^6) per second over the mode's time.
    pub throughput_mb_s: f64,
    pub ttfb_p50_ms: f64,
    pub ttfb_p95_ms: f64,
    pub ttfb_p99_ms: f64,
    /// TTFB of each session's first chunk (the wait when a video starts).
    pub first_ttfb_p50_ms: f64,
    pub first_ttfb_p99_ms: f64,
    /// Request to last byte of a chunk.
    pub chunk_p50_ms: f64,
    pub chunk_p99_ms: f64,
    /// Router resolves and their time (302 received).
    pub resolves: u64,
    pub resolve_p50_ms: f64,
    /// Responses whose Cache-Status (the nearest cache's entry) says `hit`: fresh metadata at
    /// the edge. A hit may still fill a chunk it does not hold, so this is an upper bound of
    /// the chunk hit ratio; the origin's bytes are the ground truth.
    pub hits: u64,
    pub hit_ratio: f64,
    pub status_5xx: u64,
    pub bad_status: u64,
    pub corrupt: u64,
    pub errors: u64,
    /// Bodies compared byte for byte.
    pub verified: u64,
    /// Sessions per edge the router chose (origin mode: "origin").
    pub routed_to: BTreeMap<String, u64>,
    /// A few error messages.
    pub samples: Vec<String>,
}

/// One edge's counters over a mode.
#[derive(Debug, Clone, Serialize)]
pub struct EdgeReport {
    pub name: String,
    pub region: String,
    pub bytes_served: f64,
    pub origin_bytes: f64,
    pub peer_bytes_in: f64,
    /// 1 − origin bytes / bytes served.
    pub byte_hit_ratio: f64,
    /// Responses the edge counted as hits (`cdn_edge_requests_total{cache="hit"}`) and as
    /// stale (`{cache="stale"}`: served stale, some of them without asking the origin, which
    /// Cache-Status also reports as a hit). The viewers' `hits` must agree with these.
    pub hits: f64,
    pub stale: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModeReport {
    pub mode: Mode,
    pub seconds: f64,
    pub regions: Vec<RegionReport>,
    pub total: RegionReport,
    /// Requests and body bytes the origin answered during the mode (its own counters).
    pub origin_requests: f64,
    pub origin_bytes: f64,
    /// 1 − origin bytes / bytes the viewers received.
    pub offload: f64,
    /// Bytes of the distinct chunks the viewers asked for (the ideal origin egress).
    pub unique_bytes: u64,
    /// The edge killed mid-run (`--kill-shield-after-ms`).
    pub killed: Option<String>,
    pub edges: Vec<EdgeReport>,
    /// The lab's run directory (logs).
    pub run_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub modes: Vec<ModeReport>,
    pub machine: String,
    pub distance: bool,
}

impl LoadReport {
    /// Failed requests of every mode: transport errors, wrong statuses, corrupt bodies.
    pub fn failures(&self) -> u64 {
        self.modes
            .iter()
            .map(|m| m.total.errors + m.total.bad_status + m.total.corrupt)
            .sum()
    }
}

/// A video of the catalogue.
#[derive(Debug, Clone)]
struct Video {
    id: String,
    size: u64,
}

const CHUNK: u64 = 1 << 20;
const MAX_CHUNKS: f64 = 48.0;

fn catalogue(args: &LoadArgs) -> Vec<Video> {
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0xCA7A_1065);
    let len = LogNormal::new(args.median_chunks.max(1.0).ln(), 1.0).expect("valid lognormal");
    (0..args.videos.max(1))
        .map(|i| {
            let chunks = len.sample(&mut rng).round().clamp(1.0, MAX_CHUNKS) as u64;
            let last = rng.random_range(CHUNK / 4..=CHUNK);
            Video {
                id: format!("v{i}-s{}", args.seed),
                size: (chunks - 1) * CHUNK + last,
            }
        })
        .collect()
}

/// What a viewer needs to know about a region.
#[derive(Debug, Clone)]
struct RegionInfo {
    name: String,
    network: Ipv4Addr,
    latitude: f64,
    longitude: f64,
}

/// The lab of one mode, as read from its state.json.
struct LabRun {
    child: tokio::process::Child,
    dir: PathBuf,
    router: SocketAddr,
    origin: SocketAddr,
    origin_url: String,
    regions: Vec<RegionInfo>,
    /// (name, region, url)
    edges: Vec<(String, String, String)>,
    origin_point: (f64, f64),
    links: Value,
}

fn url_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let auth = uri
        .authority()
        .with_context(|| format!("no authority in {url}"))?;
    auth.as_str()
        .parse()
        .with_context(|| format!("{url}: not an IP:port"))
}

/// The lab file of a mode: the given one with its run directory, peering, link model and
/// capacity set for the benchmark, and paths made absolute.
fn lab_file(args: &LoadArgs, mode: Mode, dir: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&args.lab)
        .with_context(|| format!("reading {}", args.lab.display()))?;
    let mut t: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", args.lab.display()))?;
    use toml::Value as V;
    t.insert("run_dir".into(), V::from(dir.display().to_string()));
    let section = |t: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        match t.remove(name) {
            Some(V::Table(s)) => Ok(s),
            None => Ok(toml::Table::new()),
            Some(_) => anyhow::bail!("[{name}] of the lab file is not a table"),
        }
    };
    let mut peering = section(&mut t, "peering")?;
    peering.insert("enabled".into(), V::from(super::flash::peering(mode)));
    t.insert("peering".into(), V::Table(peering));
    let mut tiers = section(&mut t, "tiers")?;
    let tiered = if mode == Mode::CdnTiered {
        "shield"
    } else {
        "off"
    };
    tiers.insert("mode".into(), V::from(tiered));
    t.insert("tiers".into(), V::Table(tiers));
    let mut links = section(&mut t, "links")?;
    if args.no_distance {
        links.insert("base_rtt_ms".into(), V::from(0.0));
        links.insert("ms_per_100km".into(), V::from(0.0));
        if let Some(V::Array(over)) = t.get_mut("link") {
            for o in over.iter_mut().filter_map(V::as_table_mut) {
                o.remove("rtt_ms");
            }
        }
    }
    if let Some(m) = args.client_mbps {
        links.insert("client_mbps".into(), V::from(m));
    }
    if let Some(m) = args.origin_uplink_mbps {
        links.insert("origin_uplink_mbps".into(), V::from(m));
    }
    t.insert("links".into(), V::Table(links));
    if let Some(c) = &args.capacity {
        let mut edges = section(&mut t, "edges")?;
        edges.insert("capacity".into(), V::from(c.clone()));
        t.insert("edges".into(), V::Table(edges));
    }
    let mut origin = section(&mut t, "origin")?;
    for key in ["root", "config"] {
        if let Some(V::String(p)) = origin.get(key) {
            let abs = std::path::absolute(p)?;
            origin.insert(key.into(), V::from(abs.display().to_string()));
        }
    }
    if !origin.contains_key("root") {
        origin.insert(
            "root".into(),
            V::from(std::path::absolute("testdata")?.display().to_string()),
        );
    }
    t.insert("origin".into(), V::Table(origin));
    Ok(format!(
        "# Written by `cdn bench load` ({} mode) from {}.\n{}",
        mode.name(),
        args.lab.display(),
        toml::to_string(&t)?
    ))
}

/// Starts the lab of a mode and waits for its state.json.
async fn start_lab(args: &LoadArgs, mode: Mode, dir: &Path) -> anyhow::Result<LabRun> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let lab_toml = dir.join("lab.toml");
    std::fs::write(&lab_toml, lab_file(args, mode, dir)?)?;
    let bin = match &args.cdn_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let a = vec![
        "lab".to_string(),
        "--config".into(),
        lab_toml.display().to_string(),
        "--port-base".into(),
        "0".into(),
        "--run-dir".into(),
        dir.display().to_string(),
    ];
    let log = dir.join("lab.out");
    let mut child = super::compare::spawn_child(&bin, &a, &[], &log)?;
    let state_path = dir.join("state.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    let state: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&state_path)
            && let Ok(v) = serde_json::from_str::<Value>(&text)
        {
            break v;
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "cdn lab exited ({status}) before it was up:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!("cdn lab was not up after 120 s (log: {})", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let s = |k: &str| -> anyhow::Result<String> {
        state[k]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("state.json has no {k}"))
    };
    let regions = state["regions"]
        .as_array()
        .context("state.json has no regions")?
        .iter()
        .map(|r| {
            let net: ipnet::Ipv4Net = r["network"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .context("region network")?;
            Ok(RegionInfo {
                name: r["name"].as_str().unwrap_or_default().to_owned(),
                network: net.network(),
                latitude: r["latitude"].as_f64().unwrap_or_default(),
                longitude: r["longitude"].as_f64().unwrap_or_default(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let edges = state["nodes"]
        .as_array()
        .context("state.json has no nodes")?
        .iter()
        .filter(|n| n["kind"] == "edge")
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_owned(),
                n["region"].as_str().unwrap_or_default().to_owned(),
                n["url"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let origin_region = s("origin_region")?;
    let origin_point = regions
        .iter()
        .find(|r| r.name == origin_region)
        .map(|r| (r.latitude, r.longitude))
        .context("the origin's region is not a region")?;
    let origin_url = s("origin")?;
    Ok(LabRun {
        child,
        dir: dir.to_path_buf(),
        router: url_addr(&s("router")?)?,
        origin: url_addr(&origin_url)?,
        origin_url,
        regions,
        edges,
        origin_point,
        links: state["link_model"].clone(),
    })
}

impl LabRun {
    /// SIGTERM (the lab stops its nodes), SIGKILL after 15 s.
    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Relays from each region to the origin with the lab's link model, for origin mode:
    /// RTT by distance, the viewer link's bandwidth, and one bucket for the origin's uplink.
    fn origin_relays(&self, no_distance: bool) -> anyhow::Result<BTreeMap<String, TcpRelay>> {
        let f = |k: &str, d: f64| self.links[k].as_f64().unwrap_or(d);
        let (base, per100) = if no_distance {
            (0.0, 0.0)
        } else {
            (f("base_rtt_ms", 4.0), f("ms_per_100km", 1.0))
        };
        let client_bps = f("client_mbps", 50.0) * 1e6 / 8.0;
        let uplink = TokenBucket::new(f("origin_uplink_mbps", 40.0) * 1e6 / 8.0);
        let mut out = BTreeMap::new();
        for r in &self.regions {
            let km = cdn_lab::config::distance_km((r.latitude, r.longitude), self.origin_point);
            let rtt = Duration::from_secs_f64((base + km / 100.0 * per100) / 1e3);
            let mut shape = LinkShape::new(rtt, Some(client_bps), Some(client_bps));
            shape.down.buckets.push(uplink.clone());
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            let relay = TcpRelay::spawn(tokio::net::TcpListener::from_std(l)?, shape, None)?;
            relay.target.send_replace(Some(self.origin));
            out.insert(r.name.clone(), relay);
        }
        Ok(out)
    }
}

/// What one viewer counted.
struct ViewerStats {
    region: usize,
    sessions: u64,
    st: loadgen::Stats,
    hits: u64,
    resolves: Histogram<u64>,
    routed_to: BTreeMap<String, u64>,
    /// Chunks asked for and first-chunk TTFBs (the flash-crowd report).
    first: super::flash::FirstChunks,
}

struct Shared {
    args: LoadArgs,
    videos: Vec<Video>,
    mode: Mode,
    router: SocketAddr,
    /// Origin mode: each region's relay to the origin.
    origin_relays: BTreeMap<String, SocketAddr>,
    deadline: Instant,
    requests: AtomicU64,
    /// Flash crowd: every viewer waits here before its first session.
    start: Option<tokio::sync::Barrier>,
}

impl Shared {
    fn more(&self) -> bool {
        Instant::now() < self.deadline
            && (self.args.max_requests == 0
                || self.requests.load(Ordering::Relaxed) < self.args.max_requests)
    }
}

/// Asks the router where `path` is for a viewer at `local`: (target, path, edge name).
async fn resolve(
    router: SocketAddr,
    local: IpAddr,
    path: &str,
) -> anyhow::Result<(SocketAddr, String, String)> {
    let mut c = loadgen::connect(router, Some(local)).await?;
    let r = c.get(path, None, false, Duration::from_secs(10)).await?;
    anyhow::ensure!(r.status == 302, "router answered {} for {path}", r.status);
    let loc = r
        .headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("302 without Location")?;
    let uri: http::Uri = loc.parse().context("bad Location")?;
    let addr = url_addr(loc)?;
    let edge = r
        .headers
        .get(cdn_geo_router::EDGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((addr, pq, edge))
}

async fn viewer(
    sh: Arc<Shared>,
    region: usize,
    region_name: String,
    ip: IpAddr,
    seed: u64,
) -> ViewerStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf = Zipf::new(sh.videos.len() as f64, sh.args.alpha.max(0.0)).expect("valid zipf");
    let mut vs = ViewerStats {
        region,
        sessions: 0,
        st: loadgen::Stats::default(),
        hits: 0,
        resolves: loadgen::histogram(),
        routed_to: BTreeMap::new(),
        first: Default::default(),
    };
    if let Some(start) = &sh.start {
        start.wait().await;
    }
    let mut conn: Option<(SocketAddr, Conn)> = None;
    let mut n = 0u64;
    while sh.more() && (sh.args.sessions == 0 || vs.sessions < sh.args.sessions) {
        let rank = zipf.sample(&mut rng) as usize;
        // A flash crowd: everyone plays the same (first) video.
        let rank = if sh.args.flash_crowd { 1 } else { rank };
        let video = &sh.videos[rank.clamp(1, sh.videos.len()) - 1];
        // The whole session's choices are drawn first, so every mode sees the same ones.
        let chunks = video.size.div_ceil(CHUNK);
        let mut watch = 1;
        while watch < chunks && !rng.random_bool(sh.args.abandon.clamp(0.0, 1.0)) {
            watch += 1;
        }
        vs.sessions += 1;
        let path = format!("/synthetic/{}?size={}", video.id, video.size);
        let (target, path, edge) = if sh.mode == Mode::Origin {
            let Some(a) = sh.origin_relays.get(&region_name) else {
                break;
            };
            (*a, path, "origin".to_owned())
        } else {
            let t0 = Instant::now();
            match resolve(sh.router, ip, &path).await {
                Ok(r) => {
                    loadgen::record(&mut vs.resolves, t0.elapsed());
                    r
                }
                Err(e) => {
                    let job = Job::full(&video.id, video.size);
                    vs.st.error(&job, &e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        *vs.routed_to.entry(edge).or_default() += 1;
        for c in 0..watch {
            if !sh.more() {
                break;
            }
            sh.requests.fetch_add(1, Ordering::Relaxed);
            let end = ((c + 1) * CHUNK).min(video.size) - 1;
            let mut job = Job::range(&video.id, video.size, c * CHUNK, end);
            job.path = path.clone();
            if conn
                .as_ref()
                .is_none_or(|(a, c)| *a != target || !c.is_open())
            {
                match loadgen::connect(target, Some(ip)).await {
                    Ok(c) => conn = Some((target, c)),
                    Err(e) => {
                        vs.st.error(&job, &e);
                        conn = None;
                        break;
                    }
                }
            }
            let Some((_, cn)) = conn.as_mut() else { break };
            let keep = sh.args.verify_every <= 1 || n.is_multiple_of(sh.args.verify_every);
            n += 1;
            match cn
                .get(&job.path, job.range, keep, Duration::from_secs(60))
                .await
            {
                Ok(r) => {
                    vs.first.record(&video.id, c, (c == 0).then_some(r.ttfb));
                    // The nearest cache's member is the last one (RFC 9211 §2).
                    let hit = r
                        .headers
                        .get_all("cache-status")
                        .iter()
                        .next_back()
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit(',').next())
                        .is_some_and(|last| last.split(';').any(|p| p.trim() == "hit"));
                    let before = vs.st.corrupt + vs.st.bad_status;
                    vs.st.check(&job, &r);
                    if vs.st.corrupt + vs.st.bad_status == before && hit {
                        vs.hits += 1;
                    }
                }
                Err(e) => {
                    vs.st.error(&job, &e);
                    conn = None;
                    break;
                }
            }
        }
    }
    vs
}

fn region_report(name: &str, viewers: usize, parts: &[&ViewerStats], seconds: f64) -> RegionReport {
    let mut st = loadgen::Stats::default();
    let mut resolves = loadgen::histogram();
    let mut routed_to = BTreeMap::new();
    let (mut hits, mut sessions) = (0, 0);
    for v in parts {
        st.merge(&v.st);
        let _ = resolves.add(&v.resolves);
        hits += v.hits;
        sessions += v.sessions;
        for (k, n) in &v.routed_to {
            *routed_to.entry(k.clone()).or_default() += n;
        }
    }
    let ok = st.requests - st.errors - st.bad_status - st.corrupt;
    let first = super::flash::first_ttfb_ms(parts.iter().map(|v| &v.first));
    RegionReport {
        region: name.to_owned(),
        viewers,
        sessions,
        requests: st.requests,
        ok,
        bytes: st.bytes,
        throughput_mb_s: st.bytes as f64 / 1e6 / seconds.max(1e-9),
        ttfb_p50_ms: loadgen::ms(&st.ttfb, 0.5),
        ttfb_p95_ms: loadgen::ms(&st.ttfb, 0.95),
        ttfb_p99_ms: loadgen::ms(&st.ttfb, 0.99),
        first_ttfb_p50_ms: first.0,
        first_ttfb_p99_ms: first.1,
        chunk_p50_ms: loadgen::ms(&st.latency, 0.5),
        chunk_p99_ms: loadgen::ms(&st.latency, 0.99),
        resolves: resolves.len(),
        resolve_p50_ms: loadgen::ms(&resolves, 0.5),
        hits,
        hit_ratio: if ok > 0 { hits as f64 / ok as f64 } else { 0.0 },
        status_5xx: st.status_5xx,
        bad_status: st.bad_status,
        corrupt: st.corrupt,
        errors: st.errors,
        verified: st.verified,
        routed_to,
        samples: st.samples.clone(),
    }
}

/// One edge's counters at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct EdgeCounters {
    served: f64,
    from_origin: f64,
    peer_in: f64,
    hits: f64,
    stale: f64,
}

async fn edge_counters(edges: &[(String, String, String)]) -> Vec<EdgeCounters> {
    let mut out = Vec::new();
    for (_, _, url) in edges {
        out.push(counters_of(url).await);
    }
    out
}

/// The counters of the edge at `url` (zeros when it does not answer).
async fn counters_of(url: &str) -> EdgeCounters {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return EdgeCounters::default();
    };
    let Ok(r) = client.get(format!("{url}/metrics")).send().await else {
        return EdgeCounters::default();
    };
    let text = r.text().await.unwrap_or_default();
    let requests = |cache: &str| {
        let series = format!("cdn_edge_requests_total{{cache=\"{cache}\"}}");
        cdn_http::metrics::sample(&text, &series).unwrap_or(0.0)
    };
    EdgeCounters {
        served: cdn_http::metrics::sum(&text, "cdn_edge_bytes_served_total"),
        from_origin: cdn_http::metrics::sum(&text, "cdn_edge_origin_bytes_total"),
        // Bytes the edge received from peers.
        peer_in: text
            .lines()
            .filter(|l| {
                l.starts_with("cdn_edge_peer_bytes_total") && l.contains("direction=\"in\"")
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum(),
        hits: requests("hit"),
        stale: requests("stale"),
    }
}

async fn run_mode(
    args: &LoadArgs,
    mode: Mode,
    dir: &Path,
    videos: &[Video],
) -> anyhow::Result<ModeReport> {
    let lab = start_lab(args, mode, dir).await?;
    let result = async {
        let relays = if mode == Mode::Origin {
            lab.origin_relays(args.no_distance)?
        } else {
            BTreeMap::new()
        };
        let origin_before = (
            loadgen::metric(&lab.origin_url, "cdn_origin_requests_total").await,
            loadgen::metric(&lab.origin_url, "cdn_origin_bytes_sent_total").await,
        );
        let edges_before = edge_counters(&lab.edges).await;
        let started = Instant::now();
        let sh = Arc::new(Shared {
            args: args.clone(),
            videos: videos.to_vec(),
            mode,
            router: lab.router,
            origin_relays: relays.iter().map(|(k, r)| (k.clone(), r.addr)).collect(),
            deadline: started + Duration::from_secs_f64(args.duration),
            requests: AtomicU64::new(0),
            start: args
                .flash_crowd
                .then(|| tokio::sync::Barrier::new(lab.regions.len() * args.viewers)),
        });
        // Failover run: kill the shield edge mid-crowd.
        let killer = args
            .kill_shield_after_ms
            .filter(|_| mode != Mode::Origin)
            .map(|ms| {
                let dir = lab.dir.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    super::flash::kill_shield(&dir)
                })
            });
        let mut tasks = Vec::new();
        for (ri, r) in lab.regions.iter().enumerate() {
            for v in 0..args.viewers {
                // 127.R.1.10 and up: clear of the lab's own 127.R.0.x addresses.
                let ip = Ipv4Addr::from(u32::from(r.network) + 256 + 10 + v as u32);
                let seed = args.seed ^ ((ri as u64 + 1) << 32) ^ (v as u64 + 1);
                tasks.push(tokio::spawn(viewer(
                    sh.clone(),
                    ri,
                    r.name.clone(),
                    IpAddr::V4(ip),
                    seed,
                )));
            }
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.context("a viewer panicked")?);
        }
        let seconds = started.elapsed().as_secs_f64();
        let killed = match killer {
            Some(k) => Some(k.await.context("the killer panicked")??),
            None => None,
        };
        // Read-ahead and pushes finish after the viewers; give them a moment.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let origin_after = (
            loadgen::metric(&lab.origin_url, "cdn_origin_requests_total").await,
            loadgen::metric(&lab.origin_url, "cdn_origin_bytes_sent_total").await,
        );
        let edges_after = edge_counters(&lab.edges).await;
        let regions: Vec<RegionReport> = lab
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let parts: Vec<&ViewerStats> = all.iter().filter(|v| v.region == i).collect();
                region_report(&r.name, args.viewers, &parts, seconds)
            })
            .collect();
        let every: Vec<&ViewerStats> = all.iter().collect();
        let total = region_report("all", args.viewers * lab.regions.len(), &every, seconds);
        let origin_bytes = origin_after.1 - origin_before.1;
        let edges = if mode == Mode::Origin {
            Vec::new()
        } else {
            lab.edges
                .iter()
                .zip(edges_before.iter().zip(&edges_after))
                .map(|((name, region, _), (b, a))| {
                    let served = a.served - b.served;
                    let from_origin = a.from_origin - b.from_origin;
                    EdgeReport {
                        name: name.clone(),
                        region: region.clone(),
                        bytes_served: served,
                        origin_bytes: from_origin,
                        peer_bytes_in: a.peer_in - b.peer_in,
                        hits: a.hits - b.hits,
                        stale: a.stale - b.stale,
                        byte_hit_ratio: if served > 0.0 {
                            1.0 - from_origin / served
                        } else {
                            0.0
                        },
                    }
                })
                .collect()
        };
        Ok::<_, anyhow::Error>(ModeReport {
            mode,
            seconds,
            offload: if total.bytes > 0 {
                1.0 - origin_bytes / total.bytes as f64
            } else {
                0.0
            },
            regions,
            total,
            origin_requests: origin_after.0 - origin_before.0,
            origin_bytes,
            unique_bytes: super::flash::unique_bytes(
                &videos.iter().map(|v| (v.id.clone(), v.size)).collect(),
                CHUNK,
                all.iter().map(|v| &v.first),
            ),
            killed,
            edges,
            run_dir: lab.dir.clone(),
        })
    }
    .await;
    lab.stop().await;
    // The run's certificates (private keys) and geo database are regenerated each run; keep
    // the configs and logs.
    let _ = std::fs::remove_dir_all(dir.join("pki"));
    let _ = std::fs::remove_file(dir.join("lab-geo.mmdb"));
    result
}

/// Runs every mode of `args` and reports. Fails only when a lab cannot start; request
/// failures are counted in the report ([`LoadReport::failures`]).
pub async fn run_load(args: &LoadArgs) -> anyhow::Result<LoadReport> {
    let out = out_dir(args)?;
    let videos = catalogue(args);
    let mut modes = Vec::new();
    for &mode in &args.modes {
        eprintln!("cdn bench load: {} mode ...", mode.name());
        let m = run_mode(
            args,
            mode,
            &out.join(format!("lab-{}", mode.name())),
            &videos,
        )
        .await
        .with_context(|| format!("{} mode", mode.name()))?;
        modes.push(m);
    }
    Ok(LoadReport {
        modes,
        machine: super::compare::machine(),
        distance: !args.no_distance,
    })
}

fn out_dir(args: &LoadArgs) -> anyhow::Result<PathBuf> {
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cdn-bench-load-{}", std::process::id()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    Ok(std::path::absolute(&out)?)
}

/// The markdown tables of a report.
pub fn markdown(r: &LoadReport) -> String {
    let mut s = String::new();
    s.push_str(
        "| mode | region | viewers | sessions | requests | TTFB p50 / p95 / p99 ms | chunk p50 / p99 ms | MB/s | hit ratio | 5xx / bad / corrupt / errors | routed to |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for m in &r.modes {
        for g in m.regions.iter().chain(std::iter::once(&m.total)) {
            let routed: Vec<String> = g
                .routed_to
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} | {:.2} | {} | {} / {} / {} / {} | {} |",
                m.mode.name(),
                if g.region == "all" {
                    "**all**"
                } else {
                    &g.region
                },
                g.viewers,
                g.sessions,
                g.requests,
                g.ttfb_p50_ms,
                g.ttfb_p95_ms,
                g.ttfb_p99_ms,
                g.chunk_p50_ms,
                g.chunk_p99_ms,
                g.throughput_mb_s,
                if m.mode == Mode::Origin {
                    "–".to_owned()
                } else {
                    format!("{:.3}", g.hit_ratio)
                },
                g.status_5xx,
                g.bad_status,
                g.corrupt,
                g.errors,
                if g.region == "all" {
                    String::new()
                } else {
                    routed.join(", ")
                },
            );
        }
    }
    s.push('\n');
    s.push_str("| mode | seconds | viewer MB | origin requests | origin MB | offload (1 − origin/viewer bytes) | per edge: served MB / from origin MB / from peers MB |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for m in &r.modes {
        let edges: Vec<String> = m
            .edges
            .iter()
            .map(|e| {
                format!(
                    "{} {:.0} / {:.0} / {:.0}",
                    e.name,
                    e.bytes_served / 1e6,
                    e.origin_bytes / 1e6,
                    e.peer_bytes_in / 1e6
                )
            })
            .collect();
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.3} | {} |",
            m.mode.name(),
            m.seconds,
            m.total.bytes as f64 / 1e6,
            m.origin_requests,
            m.origin_bytes / 1e6,
            m.offload,
            edges.join("; ")
        );
    }
    s
}

/// Bar charts: TTFB p50/p99 per region and mode, throughput per region and mode, origin
/// egress per mode.
pub fn write_svg(r: &LoadReport, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((1, 3));
    let regions: Vec<String> = r
        .modes
        .first()
        .map(|m| m.regions.iter().map(|g| g.region.clone()).collect())
        .unwrap_or_default();
    let colors = [
        RGBColor(200, 80, 60),
        RGBColor(60, 120, 200),
        RGBColor(60, 160, 90),
    ];
    let nm = r.modes.len().max(1) as f64;
    let per_region = |panel: &DrawingArea<SVGBackend, plotters::coord::Shift>,
                      title: &str,
                      ylabel: &str,
                      value: &dyn Fn(&RegionReport) -> (f64, Option<f64>)|
     -> anyhow::Result<()> {
        let ymax = r
            .modes
            .iter()
            .flat_map(|m| m.regions.iter())
            .map(|g| {
                let (a, b) = value(g);
                a.max(b.unwrap_or(0.0))
            })
            .fold(0.0, f64::max)
            .max(1e-3)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..regions.len() as f64, 0f64..ymax)?;
        let names = regions.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(regions.len() * 2 + 1)
            .x_label_formatter(&move |x| {
                let i = (x - 0.5).round();
                if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                    names.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(ylabel)
            .draw()?;
        for (mi, m) in r.modes.iter().enumerate() {
            let color = colors[mi % colors.len()];
            let w = 0.8 / nm;
            let bars: Vec<_> = m
                .regions
                .iter()
                .enumerate()
                .flat_map(|(i, g)| {
                    let x0 = i as f64 + 0.1 + w * mi as f64;
                    let (a, b) = value(g);
                    let mut v = vec![Rectangle::new(
                        [(x0, 0.0), (x0 + w * 0.9, a)],
                        color.filled(),
                    )];
                    if let Some(b) = b {
                        v.push(Rectangle::new(
                            [(x0 + w * 0.3, a), (x0 + w * 0.6, b.max(a))],
                            color.mix(0.4).filled(),
                        ));
                    }
                    v
                })
                .collect();
            chart
                .draw_series(bars)?
                .label(m.mode.name())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()?;
        Ok(())
    };
    per_region(&panels[0], "TTFB p50 (bar) and p99 (whisker)", "ms", &|g| {
        (g.ttfb_p50_ms, Some(g.ttfb_p99_ms))
    })?;
    per_region(&panels[1], "Throughput per region", "MB/s", &|g| {
        (g.throughput_mb_s, None)
    })?;
    // Origin egress per mode.
    let ymax = r
        .modes
        .iter()
        .map(|m| m.origin_bytes / 1e6)
        .fold(0.0, f64::max)
        .max(1e-3)
        * 1.15;
    let mut chart = ChartBuilder::on(&panels[2])
        .caption("Origin egress", ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0f64..nm, 0f64..ymax)?;
    let names: Vec<String> = r.modes.iter().map(|m| m.mode.name().to_owned()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(r.modes.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("MB")
        .draw()?;
    chart.draw_series(r.modes.iter().enumerate().map(|(i, m)| {
        Rectangle::new(
            [
                (i as f64 + 0.2, 0.0),
                (i as f64 + 0.8, m.origin_bytes / 1e6),
            ],
            colors[i % colors.len()].filled(),
        )
    }))?;
    chart.draw_series(r.modes.iter().enumerate().map(|(i, m)| {
        Text::new(
            format!(
                "{:.0} req, offload {:.0}%",
                m.origin_requests,
                m.offload * 100.0
            ),
            (i as f64 + 0.12, m.origin_bytes / 1e6 + ymax * 0.02),
            ("sans-serif", 12),
        )
    }))?;
    root.present()?;
    Ok(())
}

/// `cdn bench load`.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let out = out_dir(&args)?;
    let load_before = super::compare::load_average();
    let report = run_load(&LoadArgs {
        out: Some(out.clone()),
        ..args.clone()
    })
    .await?;
    let cmd: Vec<String> = std::env::args().collect();
    let mut md = format!(
        "# cdn bench load\n\nCommand: `{}`\n\nMachine: {}; load average before: {load_before}\n\n\
         Simulated distance: {}\n\n",
        cmd.join(" "),
        report.machine,
        if report.distance {
            "yes (the lab's relays: RTT by great-circle distance, bandwidth limits)"
        } else {
            "no (RTT 0; bandwidth limits stay)"
        }
    );
    md.push_str(&markdown(&report));
    md.push_str("\nOrigin egress over unique bytes, first chunk per region:\n\n");
    md.push_str(&super::flash::markdown(&report));
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    write_svg(&report, &out.join("load.svg"))?;
    println!("{md}");
    println!(
        "wrote {}/report.md, report.json and load.svg",
        out.display()
    );
    let failures = report.failures();
    if failures > 0 {
        eprintln!("warning: {failures} failed requests (errors, wrong statuses, corrupt bodies)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        a: LoadArgs,
    }

    fn args(extra: &[&str]) -> LoadArgs {
        let mut v = vec!["x"];
        v.extend_from_slice(extra);
        P::parse_from(v).a
    }

    #[test]
    fn catalogue_is_seeded_and_bounded() {
        let a = args(&["--videos", "50"]);
        let c = catalogue(&a);
        assert_eq!(c.len(), 50);
        assert!(c.iter().all(|v| v.size > 0 && v.size <= 48 * CHUNK));
        assert_eq!(
            catalogue(&a).iter().map(|v| v.size).collect::<Vec<_>>(),
            c.iter().map(|v| v.size).collect::<Vec<_>>()
        );
    }

    #[test]
    fn lab_file_sets_mode_and_links() {
        let lab = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/lab.toml");
        let a = args(&[
            "--lab",
            lab.to_str().unwrap(),
            "--no-distance",
            "--client-mbps",
            "500",
            "--capacity",
            "64MiB",
        ]);
        let text = lab_file(&a, Mode::Cdn, Path::new("/tmp/x")).unwrap();
        let f: cdn_lab::config::LabFile = cdn_http::config::parse_toml(&text, "gen").unwrap();
        assert!(!f.peering.enabled);
        assert_eq!(f.links.base_rtt_ms, 0.0);
        assert_eq!(f.links.client_mbps, 500.0);
        assert_eq!(f.edges.capacity, "64MiB");
        assert!(f.origin.root.is_absolute());
        let text = lab_file(&a, Mode::CdnPeers, Path::new("/tmp/x")).unwrap();
        let f: cdn_lab::config::LabFile = cdn_http::config::parse_toml(&text, "gen").unwrap();
        assert!(f.peering.enabled);
        assert!(!f.tiers.on());
        let text = lab_file(&a, Mode::CdnTiered, Path::new("/tmp/x")).unwrap();
        let f: cdn_lab::config::LabFile = cdn_http::config::parse_toml(&text, "gen").unwrap();
        assert!(f.peering.enabled && f.tiers.on());
    }
}
