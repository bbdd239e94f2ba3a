//! `cdn bench capacity`: the requests/s one edge serves with its p99 under a target, written
//! to the capacity file `cdn plan --from-lab` and the lab's autoscaler read
//! (`bench/results/edge-capacity.json`, see [`cdn_lab::plan::lab`]).
//!
//! By default the benchmark starts its own origin (`cdn origin`) and one edge (`cdn edge`,
//! 2 GiB, 1 MiB chunks), each a child process as in `cdn bench compare`, so the edge measured
//! is a real node; this process is only the load generator. `--edge URL --origin URL`
//! measure a running edge instead (the origin must be a `cdn origin`: its synthetic objects
//! and its request counter are used); `--origin URL` alone puts a new edge in front of it.
//!
//! 1. Warm-up: every object of the mix is fetched once through the edge (bodies compared byte
//!    for byte). Object ids carry a per-run prefix, so even a running edge starts cold; the
//!    origin's `cdn_origin_requests_total` must have grown by at least one fetch per object
//!    and, for an edge this benchmark started, by at most one per 1 MiB chunk.
//! 2. Steps: closed-loop load ([`super::loadgen::closed_loop`]) at concurrency 1, 2, 4, ...
//!    doubling up to `--max-concurrency`, `--step-secs` each; per step req/s, MB/s, p50/p99
//!    (request to last byte), failures (transport errors, wrong statuses, wrong bodies; every
//!    `--verify-every`-th body of a connection is compared byte for byte, the others by
//!    status and length), origin requests and CPU per request of the edge and the generator.
//!    Stepping stops once two steps in a row fail (p99 over the target, or any failure), or
//!    two steps in a row serve not more than 5 % above the best step before them (saturated;
//!    two, so one step slowed by a neighbour on a shared machine does not end the search).
//! 3. The capacity is the highest req/s of a step with p99 ≤ target and no failure.
//!
//! The mix (`--mix`) reuses the hot scenarios of `cdn bench compare`: `video` (the default)
//! is compare's `hot-1m` (Range requests for aligned 1 MiB chunks of `--objects-1m` objects of
//! `--chunks-per-object` MiB) for `100 - --small-pct` % of the requests and compare's
//! `hot-16k` (GETs of `--objects-16k` objects of 16 KiB: playlists, init segments, small
//! files) for the rest; `hot-1m` and `hot-16k` are those scenarios alone.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde::Serialize;

use super::loadgen::{self, Job, JobGen, Stats};

mod nodes;
mod output;
use nodes::*;
use output::*;

/// `cdn bench capacity` arguments.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Examples:\n  \
    cdn bench capacity\n  \
    cdn bench capacity --p99-ms 100 --mix hot-1m --step-secs 10\n  \
    cdn bench capacity --edge http://127.0.0.1:9001 --origin http://127.0.0.1:9000")]
pub struct CapacityArgs {
    /// p99 latency target (request to last byte), milliseconds.
    #[arg(long = "p99-ms", default_value_t = 50.0)]
    pub p99_ms: f64,
    /// The request mix.
    #[arg(long, value_enum, default_value = "video")]
    pub mix: Mix,
    /// Measured time of each concurrency step, seconds.
    #[arg(long, default_value_t = 5.0)]
    pub step_secs: f64,
    /// Highest concurrency (closed-loop connections) to try; steps double from 1.
    #[arg(long, default_value_t = 512)]
    pub max_concurrency: usize,
    /// Where to write the capacity (JSON; parent directories are created).
    #[arg(long, default_value = cdn_lab::plan::lab::DEFAULT_CAPACITY_FILE)]
    pub out: PathBuf,
    /// Measure this running edge (base URL) instead of starting one; needs --origin.
    #[arg(long, requires = "origin")]
    pub edge: Option<String>,
    /// The `cdn origin` behind the edge (base URL); without --edge, a new edge is started in
    /// front of it. Default: a new origin.
    #[arg(long)]
    pub origin: Option<String>,
    /// Worker threads of a started edge (TOKIO_WORKER_THREADS); default: the number of CPUs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Objects of the 1 MiB-chunk part of the mix, each --chunks-per-object MiB.
    #[arg(long, default_value_t = 16)]
    pub objects_1m: u64,
    #[arg(long, default_value_t = 4)]
    pub chunks_per_object: u64,
    /// Objects of the 16 KiB part of the mix.
    #[arg(long, default_value_t = 1000)]
    pub objects_16k: u64,
    /// Share of 16 KiB requests in the `video` mix, percent.
    #[arg(long, default_value_t = 10.0)]
    pub small_pct: f64,
    /// Compare every N-th body of a connection byte for byte (the others by length).
    #[arg(long, default_value_t = 16)]
    pub verify_every: u64,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The `cdn` binary whose origin and edge are started (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// compare's hot-1m (1 MiB chunk Range requests) plus --small-pct % of hot-16k.
    Video,
    /// compare's hot-1m alone: Range requests for aligned 1 MiB chunks.
    #[value(name = "hot-1m")]
    Hot1m,
    /// compare's hot-16k alone: GETs of 16 KiB objects.
    #[value(name = "hot-16k")]
    Hot16k,
}

impl Mix {
    fn name(self) -> &'static str {
        match self {
            Mix::Video => "video",
            Mix::Hot1m => "hot-1m",
            Mix::Hot16k => "hot-16k",
        }
    }
}

impl CapacityArgs {
    fn validate(&self) -> anyhow::Result<()> {
        let p = self.p99_ms;
        anyhow::ensure!(
            p.is_finite() && p > 0.0,
            "--p99-ms must be a positive number of milliseconds, got {p}"
        );
        let s = self.step_secs;
        anyhow::ensure!(
            s.is_finite() && s > 0.0 && s <= 3600.0,
            "--step-secs must be in (0, 3600], got {s}"
        );
        anyhow::ensure!(
            (1..=65_536).contains(&self.max_concurrency),
            "--max-concurrency must be in 1..=65536, got {}",
            self.max_concurrency
        );
        let small = self.small_pct;
        anyhow::ensure!(
            small.is_finite() && (0.0..=100.0).contains(&small),
            "--small-pct must be a percentage in [0, 100], got {small}"
        );
        if self.mix != Mix::Hot16k {
            anyhow::ensure!(
                self.objects_1m > 0 && self.chunks_per_object > 0,
                "--objects-1m and --chunks-per-object must be at least 1 for the {} mix",
                self.mix.name()
            );
        }
        if self.mix != Mix::Hot1m {
            anyhow::ensure!(
                self.objects_16k > 0,
                "--objects-16k must be at least 1 for the {} mix",
                self.mix.name()
            );
        }
        anyhow::ensure!(
            self.threads != Some(0),
            "--threads must be at least 1 (or left out)"
        );
        Ok(())
    }
}

/// The objects of a run and how requests are drawn from them.
struct Workload {
    mix: Mix,
    big: Arc<Vec<(String, u64)>>,
    small: Arc<Vec<(String, u64)>>,
    /// Share of requests for `small` objects in [0, 1].
    small_share: f64,
}

impl Workload {
    fn new(args: &CapacityArgs, prefix: &str) -> Workload {
        let big = match args.mix {
            Mix::Hot16k => Vec::new(),
            _ => crate::hot::hot_1m_objects(prefix, args.objects_1m, args.chunks_per_object),
        };
        let small = match args.mix {
            Mix::Hot1m => Vec::new(),
            _ => crate::hot::hot_16k_objects(prefix, args.objects_16k),
        };
        let small_share = match args.mix {
            Mix::Video => args.small_pct / 100.0,
            Mix::Hot1m => 0.0,
            Mix::Hot16k => 1.0,
        };
        Workload {
            mix: args.mix,
            big: Arc::new(big),
            small: Arc::new(small),
            small_share,
        }
    }

    fn objects(&self) -> usize {
        self.big.len() + self.small.len()
    }

    /// Origin fetches a cold edge with 1 MiB chunks makes to fill every object: one per chunk.
    fn chunk_fetches(&self) -> u64 {
        let chunks = |objs: &[(String, u64)]| -> u64 {
            objs.iter()
                .map(|(_, size)| size.div_ceil(1 << 20).max(1))
                .sum()
        };
        chunks(&self.big) + chunks(&self.small)
    }

    /// One full GET per object, small objects first.
    fn warm_jobs(&self) -> Vec<Job> {
        self.small
            .iter()
            .chain(self.big.iter())
            .map(|(id, size)| Job::full(id, *size))
            .collect()
    }

    fn requests(&self) -> JobGen {
        let (big, small, share) = (self.big.clone(), self.small.clone(), self.small_share);
        Arc::new(move |rng| {
            let pick_small = big.is_empty() || (!small.is_empty() && rng.random_bool(share));
            if pick_small {
                crate::hot::hot_16k_job(&small, rng)
            } else {
                crate::hot::hot_1m_job(&big, rng)
            }
        })
    }

    fn describe(&self) -> String {
        let big = self.big.first().map_or(0, |o| o.1 >> 20);
        match self.mix {
            Mix::Video => format!(
                "{:.0} % Range requests for aligned 1 MiB chunks of {} objects of {big} MiB \
                 (compare's hot-1m), {:.0} % GETs of {} objects of 16 KiB (compare's hot-16k)",
                (1.0 - self.small_share) * 100.0,
                self.big.len(),
                self.small_share * 100.0,
                self.small.len()
            ),
            Mix::Hot1m => format!(
                "Range requests for aligned 1 MiB chunks of {} objects of {big} MiB \
                 (compare's hot-1m)",
                self.big.len()
            ),
            Mix::Hot16k => format!(
                "GETs of {} objects of 16 KiB (compare's hot-16k)",
                self.small.len()
            ),
        }
    }
}

/// One measured concurrency step.
#[derive(Debug, Clone, Serialize)]
struct Step {
    concurrency: usize,
    requests: u64,
    seconds: f64,
    requests_per_sec: f64,
    mb_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    bad_status: u64,
    corrupt: u64,
    verified: u64,
    /// Origin requests during the step (0 when every request was a hit).
    origin_requests: f64,
    /// CPU of the edge per request, µs (an edge this benchmark started).
    edge_cpu_us_per_req: Option<f64>,
    /// CPU of the load generator (this process) per request, µs.
    generator_cpu_us_per_req: f64,
    /// p99 ≤ target and no failure.
    within_target: bool,
    /// A few failure messages.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    samples: Vec<String>,
}

/// Concurrency of each step: 1, 2, 4, ... doubling, the last one `max`.
fn concurrencies(max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut c = 1usize;
    while c < max {
        out.push(c);
        c = c.saturating_mul(2);
    }
    out.push(max.max(1));
    out
}

/// Whether step `i` served more than 5 % above every step before it (the first one did).
fn grew(steps: &[Step], i: usize) -> bool {
    let best = steps[..i]
        .iter()
        .map(|s| s.requests_per_sec)
        .fold(f64::NAN, f64::max);
    !best.is_finite() || steps[i].requests_per_sec > best * 1.05
}

/// Why to stop after `steps` (the last one just measured), if so: in the last two steps in a
/// row, p99 over the target (or failures), or req/s not more than 5 % above the best step
/// before (saturated). Two in a row, so one step slowed by a neighbour on a shared machine
/// does not end the search.
fn stop_reason(steps: &[Step]) -> Option<String> {
    let n = steps.len();
    if n < 2 {
        return None;
    }
    let (prev, last) = (&steps[n - 2], &steps[n - 1]);
    if !prev.within_target && !last.within_target {
        return Some(format!(
            "p99 over the target (or failures) at concurrency {} and {}",
            prev.concurrency, last.concurrency
        ));
    }
    if !grew(steps, n - 2) && !grew(steps, n - 1) {
        let best = steps.iter().map(|s| s.requests_per_sec).fold(0.0, f64::max);
        return Some(format!(
            "req/s stopped growing: not more than 5 % above the best step before at \
             concurrency {} and {} (best {best:.0} req/s)",
            prev.concurrency, last.concurrency
        ));
    }
    None
}

/// The step with the highest req/s among those within the target.
fn best_step(steps: &[Step]) -> Option<&Step> {
    steps
        .iter()
        .filter(|s| s.within_target)
        .max_by(|a, b| a.requests_per_sec.total_cmp(&b.requests_per_sec))
}

/// Warm-up, then the steps; returns the steps and why stepping stopped.
async fn measure(
    args: &CapacityArgs,
    nodes: &Nodes,
    work: &Workload,
) -> anyhow::Result<(WarmUp, Vec<Step>, String)> {
    // 1. Warm-up.
    eprintln!(
        "warming the edge with {} objects ({} origin fetches expected) ...",
        work.objects(),
        work.chunk_fetches()
    );
    let t0 = Instant::now();
    let before = crate::servers::origin_counters(&nodes.origin_url).await;
    let w = loadgen::warm(nodes.edge_addr, work.warm_jobs(), 8).await;
    anyhow::ensure!(
        w.errors + w.bad_status + w.corrupt == 0,
        "warming {} failed: {} errors, {} wrong statuses, {} wrong bodies of {} requests; e.g. {:?}",
        nodes.edge_url,
        w.errors,
        w.bad_status,
        w.corrupt,
        w.requests,
        w.samples
    );
    // Let background fills (read-ahead) settle before reading the counters.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fetched = crate::servers::origin_counters(&nodes.origin_url).await.0 - before.0;
    let warm = WarmUp {
        objects: work.objects(),
        origin_requests: fetched,
        expected_origin_requests: work.chunk_fetches(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    anyhow::ensure!(
        fetched >= warm.objects as f64,
        "the warm-up of {} new objects made {fetched} requests to the origin at {}: the edge \
         at {} does not fetch from that origin, or it is not a `cdn origin` (its \
         cdn_origin_requests_total did not grow)",
        warm.objects,
        nodes.origin_url,
        nodes.edge_url
    );
    anyhow::ensure!(
        nodes.edge.is_none() || fetched <= warm.expected_origin_requests as f64,
        "the warm-up made {fetched} origin requests for {} chunks of 1 MiB: the edge fetched \
         some chunks more than once",
        warm.expected_origin_requests
    );
    eprintln!(
        "warm-up: {} objects in {:.1} s, {fetched} origin requests (expected {})",
        warm.objects, warm.seconds, warm.expected_origin_requests
    );

    // 2. Steps.
    let step_time = Duration::from_secs_f64(args.step_secs);
    println!(
        "\nedge {}, mix {}, {} s per step, p99 target {} ms\n",
        nodes.edge_url,
        work.mix.name(),
        args.step_secs,
        args.p99_ms
    );
    println!("{TABLE_HEAD}");
    let mut steps: Vec<Step> = Vec::new();
    let mut stopped = format!("reached --max-concurrency {}", args.max_concurrency);
    for c in concurrencies(args.max_concurrency) {
        let o0 = crate::servers::origin_counters(&nodes.origin_url).await;
        let cpu0 = nodes.edge.as_ref().map(|e| e.cpu());
        let gen0 = crate::host::self_cpu();
        let st: Stats = loadgen::closed_loop(
            nodes.edge_addr,
            c,
            step_time,
            args.verify_every,
            args.seed ^ (c as u64).wrapping_mul(0x51_7C_C1_B7),
            work.requests(),
        )
        .await;
        let gen1 = crate::host::self_cpu();
        let cpu1 = nodes.edge.as_ref().map(|e| e.cpu());
        let o1 = crate::servers::origin_counters(&nodes.origin_url).await;
        let per_req = 1e6 / st.requests.max(1) as f64;
        let p99 = loadgen::ms(&st.latency, 0.99);
        let failures = st.errors + st.bad_status + st.corrupt;
        let step = Step {
            concurrency: c,
            requests: st.requests,
            seconds: st.elapsed.as_secs_f64(),
            requests_per_sec: st.rps(),
            mb_per_sec: st.mbps(),
            p50_ms: loadgen::ms(&st.latency, 0.5),
            p99_ms: p99,
            errors: st.errors,
            bad_status: st.bad_status,
            corrupt: st.corrupt,
            verified: st.verified,
            origin_requests: o1.0 - o0.0,
            edge_cpu_us_per_req: cpu0.zip(cpu1).map(|(a, b)| (b - a) * per_req),
            generator_cpu_us_per_req: (gen1 - gen0) * per_req,
            within_target: failures == 0 && st.requests > 0 && p99 <= args.p99_ms,
            samples: st.samples.clone(),
        };
        println!("{}", table_row(&step));
        for s in &step.samples {
            eprintln!("  failure: {s}");
        }
        steps.push(step);
        if let Some(why) = stop_reason(&steps) {
            stopped = why;
            break;
        }
    }
    Ok((warm, steps, stopped))
}

pub async fn run(args: CapacityArgs) -> anyhow::Result<()> {
    args.validate()?;
    let command = command_line();
    let load_before = crate::host::load_average();
    let started = Instant::now();
    let work_dir = std::path::absolute(
        std::env::temp_dir().join(format!("cdn-bench-capacity-{}", std::process::id())),
    )?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workload = Workload::new(&args, &format!("cap{nonce}-"));

    let nodes = Nodes::start(&args, &work_dir).await?;
    eprintln!(
        "cdn bench capacity: edge {}{}, origin {}{}; mix: {}",
        nodes.edge_url,
        nodes
            .threads
            .map_or(" (running)".into(), |t| format!(" ({t} worker threads)")),
        nodes.origin_url,
        if nodes.origin.is_some() {
            ""
        } else {
            " (running)"
        },
        workload.describe()
    );
    let measured = measure(&args, &nodes, &workload).await;
    let edge = EdgeInfo {
        url: nodes.edge_url.clone(),
        origin_url: nodes.origin_url.clone(),
        started: nodes.edge.is_some(),
        threads: nodes.threads,
    };
    let started_nodes = nodes.edge.is_some() || nodes.origin.is_some();
    nodes.stop().await;
    let (warm_up, steps, stopped) = measured.with_context(|| {
        if started_nodes {
            format!(
                "measuring {} (node logs in {})",
                edge.url,
                work_dir.display()
            )
        } else {
            format!("measuring {}", edge.url)
        }
    })?;
    println!(
        "\nstopped: {stopped}; took {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let Some(best) = best_step(&steps) else {
        let lowest = steps.iter().map(|s| s.p99_ms).fold(f64::INFINITY, f64::min);
        anyhow::bail!(
            "no step had p99 ≤ {} ms without failures (lowest p99 {lowest:.2} ms); \
             nothing written to {}",
            args.p99_ms,
            args.out.display()
        );
    };
    let file = CapacityFile {
        requests_per_sec: (best.requests_per_sec * 10.0).round() / 10.0,
        p99_ms_target: args.p99_ms,
        measured: now_rfc3339()?,
        concurrency: best.concurrency,
        p99_ms: best.p99_ms,
        mix: MixInfo {
            name: workload.mix.name(),
            description: workload.describe(),
            objects_1m: workload.big.len(),
            chunks_per_object: args.chunks_per_object,
            objects_16k: workload.small.len(),
            small_pct: workload.small_share * 100.0,
            verify_every: args.verify_every,
            seed: args.seed,
        },
        step_secs: args.step_secs,
        max_concurrency: args.max_concurrency,
        steps: steps.clone(),
        stopped,
        warm_up,
        edge,
        machine: Machine {
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            description: crate::host::machine(),
            load_average_before: load_before,
            load_average_after: crate::host::load_average(),
        },
        command,
    };
    let mut text = serde_json::to_string_pretty(&file)?;
    text.push('\n');
    write_file(&args.out, &text)?;
    // What `cdn plan` and the lab will read back.
    let check = cdn_lab::plan::lab::read_capacity(&args.out)?
        .with_context(|| format!("{} vanished after writing it", args.out.display()))?;
    let _ = std::fs::remove_dir_all(&work_dir);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "capacity: {:.1} req/s per edge (concurrency {}, p99 {:.2} ms ≤ {} ms, no failures)",
        check.requests_per_sec, file.concurrency, file.p99_ms, args.p99_ms
    );
    let _ = write!(s, "wrote {}", args.out.display());
    println!("{s}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(c: usize, rps: f64, ok: bool) -> Step {
        Step {
            concurrency: c,
            requests: 100,
            seconds: 1.0,
            requests_per_sec: rps,
            mb_per_sec: 0.0,
            p50_ms: 1.0,
            p99_ms: if ok { 1.0 } else { 100.0 },
            errors: 0,
            bad_status: 0,
            corrupt: 0,
            verified: 0,
            origin_requests: 0.0,
            edge_cpu_us_per_req: None,
            generator_cpu_us_per_req: 0.0,
            within_target: ok,
            samples: Vec::new(),
        }
    }

    #[test]
    fn steps_double_up_to_the_maximum() {
        assert_eq!(concurrencies(1), [1]);
        assert_eq!(concurrencies(4), [1, 2, 4]);
        assert_eq!(concurrencies(6), [1, 2, 4, 6]);
        assert_eq!(concurrencies(512).len(), 10);
    }

    #[test]
    fn stops_when_saturated_or_twice_over_the_target() {
        let mut s = vec![step(1, 100.0, true)];
        assert_eq!(stop_reason(&s), None);
        s.push(step(2, 190.0, true));
        assert_eq!(stop_reason(&s), None);
        // 5 % above the best is not enough growth; once is noise, twice in a row stops.
        s.push(step(4, 199.5, true));
        assert_eq!(stop_reason(&s), None);
        s.push(step(8, 150.0, true));
        assert!(stop_reason(&s).is_some_and(|w| w.contains("stopped growing")));
        s.truncate(2);
        // Growth again after one flat step goes on.
        s.push(step(4, 199.5, true));
        s.push(step(8, 260.0, true));
        assert_eq!(stop_reason(&s), None);
        s.truncate(2);
        // One step over the target goes on (if it grew), two stop.
        s.push(step(4, 300.0, false));
        assert_eq!(stop_reason(&s), None);
        s.push(step(8, 400.0, false));
        assert!(stop_reason(&s).is_some_and(|w| w.contains("over the target")));
        // The capacity is the best step within the target.
        assert_eq!(best_step(&s).map(|b| b.concurrency), Some(2));
        assert!(best_step(&[step(1, 10.0, false)]).is_none());
    }

    #[test]
    fn video_mix_is_mostly_chunks() {
        let args = CapacityArgs {
            p99_ms: 50.0,
            mix: Mix::Video,
            step_secs: 1.0,
            max_concurrency: 4,
            out: PathBuf::from("x.json"),
            edge: None,
            origin: None,
            threads: None,
            objects_1m: 2,
            chunks_per_object: 3,
            objects_16k: 5,
            small_pct: 10.0,
            verify_every: 1,
            seed: 1,
            cdn_bin: None,
        };
        args.validate().expect("valid");
        let w = Workload::new(&args, "t-");
        assert_eq!((w.objects(), w.chunk_fetches()), (7, 2 * 3 + 5));
        let next = w.requests();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        let jobs: Vec<Job> = (0..2000).map(|_| next(&mut rng)).collect();
        let chunks = jobs.iter().filter(|j| j.range.is_some()).count();
        assert!((1700..=1900).contains(&chunks), "{chunks} of 2000");
        assert!(
            jobs.iter()
                .filter(|j| j.range.is_some())
                .all(|j| j.len == 1 << 20)
        );
        assert!(jobs.iter().all(|j| j.path.starts_with("/synthetic/t-hot")));
        let bad = CapacityArgs {
            p99_ms: 0.0,
            ..args
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn rfc3339_and_quoting() {
        let t = now_rfc3339().expect("formats");
        // 2026-11-28T12:34:56Z
        let b = t.as_bytes();
        assert!(
            t.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z',
            "{t}"
        );
        let words = ["cdn", "bench", "capacity", "--out", "a b/it's.json", ""];
        assert_eq!(
            shell_words(words.iter().map(|w| w.to_string())),
            r"cdn bench capacity --out 'a b/it'\''s.json' ''"
        );
    }

    #[test]
    fn writes_the_file_with_its_directories() {
        let dir = std::env::temp_dir().join(format!("cdn-capacity-unit-{}", std::process::id()));
        let p = dir.join("a/b/edge-capacity.json");
        write_file(&p, "{\"requests_per_sec\": 5.5}").expect("writes");
        let c = cdn_lab::plan::lab::read_capacity(&p)
            .expect("reads")
            .expect("exists");
        assert_eq!(c.requests_per_sec, 5.5);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
