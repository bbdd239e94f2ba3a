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
//!
//! Its parts: `lab` (the lab of a mode, its `state.json`, origin mode's links), `viewer`
//! (the catalogue and one viewer's sessions), `report` (counters, tables and the chart).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use cdn_origin::metric_names as origin_names;

use crate::loadgen;

mod lab;
mod report;
mod viewer;

use lab::*;
use report::*;
use viewer::*;

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
    /// Override each edge's eviction policy (s3-fifo, grouped-s3-fifo, s3-fifo-rate,
    /// tiny-lfu, lru).
    #[arg(long)]
    pub policy: Option<cdn_edge::Policy>,
    /// The `cdn` binary that runs the lab (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
    /// Where to write report.json, report.md, load.svg and the labs' run directories.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the catalogue and the viewers' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Flash crowd (`crate::flash`): every viewer of every region starts the catalogue's
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
            loadgen::metric(&lab.origin_url, origin_names::REQUESTS_TOTAL).await,
            loadgen::metric(&lab.origin_url, origin_names::BYTES_SENT_TOTAL).await,
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
                    crate::flash::kill_shield(&dir)
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
            loadgen::metric(&lab.origin_url, origin_names::REQUESTS_TOTAL).await,
            loadgen::metric(&lab.origin_url, origin_names::BYTES_SENT_TOTAL).await,
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
            unique_bytes: crate::flash::unique_bytes(
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
        machine: crate::host::machine(),
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

/// `cdn bench load`.
pub async fn run(args: LoadArgs) -> anyhow::Result<()> {
    let out = out_dir(&args)?;
    let load_before = crate::host::load_average();
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
    md.push_str(&crate::flash::markdown(&report));
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
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        a: LoadArgs,
    }

    pub(crate) fn args(extra: &[&str]) -> LoadArgs {
        let mut v = vec!["x"];
        v.extend_from_slice(extra);
        P::parse_from(v).a
    }
}
