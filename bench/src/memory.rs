//! `cdn bench memory`: the edge's resident memory against its `--capacity`, in two phases.
//!
//! 1. Churn: new objects of mixed sizes (log-uniform between `--min-size` and `--max-size`,
//!    16 KiB to 9 MiB by default, seeded) are fetched whole through one edge, `--rounds` times
//!    its capacity in all, so the store evicts its whole content several times over. The
//!    edge's memory (resident anonymous and file pages plus its chunk arena's memory files:
//!    [`rss`]) is read after each capacity's worth, and checked
//!    against the bound of issue 17: 1.1 × capacity + 64 MiB.
//! 2. Hot load: `--connections` closed-loop clients for `--hot-secs` on warmed objects (half
//!    the requests 16 KiB objects, half aligned 1 MiB ranges of 4 MiB objects), RSS sampled
//!    every `--sample-secs`: it should stay flat (the report gives first, peak and last, and
//!    the growth from the first sample to the last).
//!
//! Every body is checked (the churn's byte for byte, the hot load's by length and every
//! `--verify-every`-th byte for byte). The origin and the edge are child processes of this
//! binary (or `--cdn-bin`); results in `--out` (`report.md`, `rss.csv`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::host::load_average;
use crate::hot::{MIB, hot_1m_job, hot_1m_objects, hot_16k_job, hot_16k_objects};
use crate::loadgen::{self, Job, JobGen};
use crate::servers::{ServerProc, cdn_bin, free_port, spawn_child, start_origin, wait_ready};

/// `cdn bench memory` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// The edge's cache capacity (`--capacity`), e.g. 256MiB.
    #[arg(long, default_value = "256MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub capacity: u64,
    /// Chunk size of the edge.
    #[arg(long, default_value = "1MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub chunk_size: u64,
    /// New bytes fetched in the churn, in capacities.
    #[arg(long, default_value_t = 4)]
    pub rounds: u64,
    /// Smallest object of the churn.
    #[arg(long, default_value = "16KiB", value_parser = cdn_edge::config::parse_bytes)]
    pub min_size: u64,
    /// Largest object of the churn.
    #[arg(long, default_value = "9MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub max_size: u64,
    /// Parallel fetches of the churn.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    /// Seconds of hot load after the churn (issue 17 asks for 600).
    #[arg(long, default_value_t = 60.0)]
    pub hot_secs: f64,
    /// Keep-alive connections of the hot load.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Seconds between RSS samples of the hot load.
    #[arg(long, default_value_t = 5.0)]
    pub sample_secs: f64,
    /// Compare every N-th hot body of a connection byte for byte (the others by length).
    #[arg(long, default_value_t = 16)]
    pub verify_every: u64,
    /// Worker threads of the edge (TOKIO_WORKER_THREADS); default: the number of CPUs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// The `cdn` binary whose `cdn edge` is measured (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
    /// Where to write report.md and rss.csv (and the nodes' logs).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// The memory a process holds, bytes (0 when it cannot be read): its resident anonymous and
/// file-backed pages (`RssAnon` + `RssFile` of `/proc/PID/status`) plus every page of the
/// edge's chunk arena (its memory files, `/memfd:cdn-chunks`, counted whole whether or not
/// they are mapped; `RssShmem` would count only the pages the process has read through
/// its mapping, so it is left out rather than counted twice). The report calls it "RSS +
/// arena": without `sendfile` the arena is empty and this is the RSS less shared memory.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib.saturating_mul(1024))
    };
    field("RssAnon:") + field("RssFile:") + arena_bytes(pid)
}

/// Bytes held by the edge's arena files (`cdn_edge::arena`), from its descriptors.
fn arena_bytes(pid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter(|e| {
            std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:cdn-chunks"))
        })
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Sizes of the churn: log-uniform in `[min, max]`, until they add up to `total`.
fn churn_sizes(rng: &mut StdRng, min: u64, max: u64, total: u64) -> Vec<u64> {
    let (lo, hi) = ((min.max(1)) as f64, (max.max(min).max(1)) as f64);
    let mut sizes = Vec::new();
    let mut sum = 0u64;
    while sum < total {
        let s = (lo * (hi / lo).powf(rng.random::<f64>())).round() as u64;
        let s = s.clamp(min.max(1), max.max(min).max(1));
        sizes.push(s);
        sum = sum.saturating_add(s);
    }
    sizes
}

struct Sample {
    phase: String,
    at_s: f64,
    rss: u64,
    store: f64,
}

pub async fn run(args: MemoryArgs) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cdn-bench-memory-{}", std::process::id()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::path::absolute(&out)?;
    let bin = cdn_bin(args.cdn_bin.as_deref())?;
    let load_before = load_average();
    let root = out.join("origin-root");
    std::fs::create_dir_all(&root)?;
    let origin = start_origin(&bin, &root, &out).await?;

    let addr: std::net::SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let log = out.join("edge.log");
    let a: Vec<String> = vec![
        "--log".into(),
        "warn".into(),
        "edge".into(),
        "--listen".into(),
        addr.to_string(),
        "--origin".into(),
        origin.url.clone(),
        "--name".into(),
        "bench-edge".into(),
        "--capacity".into(),
        args.capacity.to_string(),
        "--chunk-size".into(),
        args.chunk_size.to_string(),
    ];
    let mut child = spawn_child(
        &bin,
        &a,
        &[("TOKIO_WORKER_THREADS", threads.to_string())],
        &log,
    )?;
    if let Err(e) = wait_ready(addr, Some("/healthz"), &mut child, "edge", &log).await {
        origin.proc.stop().await;
        return Err(e);
    }
    let edge = ServerProc::new(child, addr, "edge");
    let result = measure(&args, &edge).await;
    edge.stop().await;
    origin.proc.stop().await;
    let _ = std::fs::remove_dir_all(&root);
    let (samples, notes) = result?;

    let bound = args.capacity as f64 * 1.1 + 64.0 * MIB as f64;
    let mib = |b: f64| b / MIB as f64;
    let churn: Vec<&Sample> = samples.iter().filter(|s| s.phase == "churn").collect();
    let hot: Vec<&Sample> = samples.iter().filter(|s| s.phase == "hot").collect();
    let peak = |v: &[&Sample]| v.iter().map(|s| s.rss).max().unwrap_or(0) as f64;
    let mut report = crate::host::report_head("cdn bench memory", &load_before);
    let _ = writeln!(
        report,
        "Edge: --capacity {:.0} MiB, --chunk-size {:.0} KiB, {threads} worker threads. \
         Bound (issue 17): 1.1 x capacity + 64 MiB = {:.0} MiB.\n",
        mib(args.capacity as f64),
        args.chunk_size as f64 / 1024.0,
        mib(bound)
    );
    report.push_str(
        "| phase | after | RSS + arena MiB | store MiB (cdn_edge_cache_bytes) | within bound |\n",
    );
    report.push_str("|---|---|---|---|---|\n");
    for s in &samples {
        let _ = writeln!(
            report,
            "| {} | {:.1} s | {:.1} | {:.1} | {} |",
            s.phase,
            s.at_s,
            mib(s.rss as f64),
            mib(s.store),
            if (s.rss as f64) <= bound {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    let _ = writeln!(
        report,
        "\nChurn: peak RSS + arena {:.1} MiB ({:.2} x capacity), bound {:.0} MiB: {}.",
        mib(peak(&churn)),
        peak(&churn) / args.capacity as f64,
        mib(bound),
        if peak(&churn) <= bound {
            "within"
        } else {
            "**over**"
        }
    );
    if let (Some(first), Some(last)) = (hot.first(), hot.last()) {
        let _ = writeln!(
            report,
            "Hot load: RSS + arena first {:.1}, peak {:.1}, last {:.1} MiB (growth first to last {:+.1} MiB).",
            mib(first.rss as f64),
            mib(peak(&hot)),
            mib(last.rss as f64),
            mib(last.rss as f64 - first.rss as f64)
        );
    }
    for n in notes {
        let _ = writeln!(report, "{n}");
    }
    let mut csv = String::from("phase,seconds,rss_bytes,store_bytes\n");
    for s in &samples {
        let _ = writeln!(csv, "{},{:.1},{},{:.0}", s.phase, s.at_s, s.rss, s.store);
    }
    std::fs::write(out.join("rss.csv"), csv)?;
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    println!("wrote {}/report.md and rss.csv", out.display());
    Ok(())
}

async fn measure(
    args: &MemoryArgs,
    edge: &ServerProc,
) -> anyhow::Result<(Vec<Sample>, Vec<String>)> {
    let pid = edge.pid().context("the edge exited")?;
    let url = format!("http://{}", edge.addr);
    let store = || async { loadgen::metric(&url, cdn_edge::metric_names::CACHE_BYTES).await };
    let started = Instant::now();
    let mut samples = vec![Sample {
        phase: "start".into(),
        at_s: 0.0,
        rss: rss(pid),
        store: store().await,
    }];
    let mut notes = Vec::new();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut n = 0u64;
    let (mut objects, mut bytes) = (0u64, 0u64);
    for round in 0..args.rounds {
        let sizes = churn_sizes(&mut rng, args.min_size, args.max_size, args.capacity);
        let jobs: Vec<Job> = sizes
            .iter()
            .map(|&s| {
                n += 1;
                Job::full(&format!("mem-{nonce}-{n}"), s)
            })
            .collect();
        objects += jobs.len() as u64;
        bytes += sizes.iter().sum::<u64>();
        let st = loadgen::warm(edge.addr, jobs, args.parallel).await;
        anyhow::ensure!(
            st.errors + st.bad_status + st.corrupt == 0,
            "churn round {} failed: {} errors, {} wrong statuses, {} corrupt: {:?}",
            round + 1,
            st.errors,
            st.bad_status,
            st.corrupt,
            st.samples
        );
        samples.push(Sample {
            phase: "churn".into(),
            at_s: started.elapsed().as_secs_f64(),
            rss: rss(pid),
            store: store().await,
        });
        eprintln!(
            "  churn round {} of {}: RSS + arena {:.1} MiB",
            round + 1,
            args.rounds,
            samples.last().map_or(0, |s| s.rss) as f64 / MIB as f64
        );
    }
    notes.push(format!(
        "Churn: {objects} new objects, {:.0} MiB fetched whole (every byte checked).",
        bytes as f64 / MIB as f64
    ));

    // Hot load: 16 KiB objects and 1 MiB ranges of 4 MiB objects, warmed first.
    let small = Arc::new(hot_16k_objects(&format!("mem-{nonce}-"), 1000));
    let large = Arc::new(hot_1m_objects(&format!("mem-{nonce}-"), 16, 4));
    let warm: Vec<Job> = small
        .iter()
        .chain(large.iter())
        .map(|(id, size)| Job::full(id, *size))
        .collect();
    let st = loadgen::warm(edge.addr, warm, args.parallel).await;
    anyhow::ensure!(
        st.errors + st.bad_status + st.corrupt == 0,
        "warming the hot set failed: {:?}",
        st.samples
    );
    let next: JobGen = {
        let (small, large) = (small.clone(), large.clone());
        Arc::new(move |rng: &mut StdRng| {
            if rng.random::<bool>() {
                hot_16k_job(&small, rng)
            } else {
                hot_1m_job(&large, rng)
            }
        })
    };
    let duration = Duration::from_secs_f64(args.hot_secs);
    let load = tokio::spawn(loadgen::closed_loop(
        edge.addr,
        args.connections,
        duration,
        args.verify_every,
        args.seed,
        next,
    ));
    let hot_started = Instant::now();
    let every = Duration::from_secs_f64(args.sample_secs.max(0.5));
    while !load.is_finished() {
        tokio::time::sleep(
            every.min(duration.saturating_sub(hot_started.elapsed()) + Duration::from_millis(50)),
        )
        .await;
        if load.is_finished() {
            break;
        }
        samples.push(Sample {
            phase: "hot".into(),
            at_s: started.elapsed().as_secs_f64(),
            rss: rss(pid),
            store: store().await,
        });
    }
    let st = load.await.context("the hot load panicked")?;
    anyhow::ensure!(
        st.errors + st.bad_status + st.corrupt == 0,
        "hot load: {} errors, {} wrong statuses, {} corrupt: {:?}",
        st.errors,
        st.bad_status,
        st.corrupt,
        st.samples
    );
    samples.push(Sample {
        phase: "end".into(),
        at_s: started.elapsed().as_secs_f64(),
        rss: rss(pid),
        store: store().await,
    });
    notes.push(format!(
        "Hot load: {} requests in {:.0} s ({:.0} req/s, {:.0} MB/s), {} bodies compared byte for byte, 0 errors.",
        st.requests,
        st.elapsed.as_secs_f64(),
        st.rps(),
        st.mbps(),
        st.verified
    ));
    Ok((samples, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn churn_sizes_cover_the_range_and_the_total() {
        let mut rng = StdRng::seed_from_u64(7);
        let (min, max) = (16 * 1024, 9 * MIB);
        let sizes = churn_sizes(&mut rng, min, max, 512 * MIB);
        let sum: u64 = sizes.iter().sum();
        assert!(sum >= 512 * MIB && sum < 512 * MIB + max, "{sum}");
        assert!(sizes.iter().all(|&s| (min..=max).contains(&s)));
        // Log-uniform: about as many below 384 KiB (the geometric middle) as above.
        let below = sizes.iter().filter(|&&s| s < 384 * 1024).count();
        let frac = below as f64 / sizes.len() as f64;
        assert!((0.3..0.7).contains(&frac), "{frac}");
    }
}
