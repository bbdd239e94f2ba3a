//! `cdn bench hit-ratio`: its arguments, and the run that loads or generates the workload,
//! replays it through the policies at each cache size and prints/writes the report.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;

use super::policies::PolicyKind;
use super::report::{self, Metric};
use super::sim::{self, Job, RunResult, SizeUnit};
use super::synth::{self, Churn, SizeDist, VideoSpec, ZipfSpec};
use super::trace::{self, Trace, TraceFormat, TraceStats};

/// Synthetic workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Independent requests, Zipf popularity over `--objects`.
    Zipf,
    /// Viewing sessions over `--videos`: sequential chunk reads with abandonment.
    Video,
}

/// Object size distributions of the Zipf workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObjectSize {
    /// Every object is `--size-bytes`.
    Fixed,
    /// Lognormal with median `--size-bytes` and `--size-sigma`.
    Lognormal,
    /// 80% chunks of `--size-bytes`, 10% partial chunks, 10% small objects (~8 KiB).
    VideoMix,
}

#[derive(Debug, clap::Args)]
pub struct HitRatioArgs {
    /// Trace to replay: libCacheSim oracleGeneral (`.oracleGeneral`, `.bin`) or CSV
    /// (`time, object, size[, next_access_vtime]`, `#` header), optionally zstd-compressed.
    /// Without it, a synthetic `--workload` is generated.
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// Trace format (auto: from the file name, else sniffed).
    #[arg(long, value_enum, default_value_t = TraceFormat::Auto)]
    pub format: TraceFormat,
    /// Replay only the first N requests of the trace.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Groups of a trace whose ids flatten (object, chunk): object = id / N, chunk index =
    /// id % N (for oracleGeneral traces of chunked CDN logs). CSV traces may carry the
    /// group (and index) as columns instead; synthetic video workloads always do.
    #[arg(long)]
    pub group_div: Option<u64>,
    /// Also write the workload (as replayed) to this CSV file: `time, id, size, next,
    /// group, index` (next access 1-based as libCacheSim writes it, -1 for none), plain or
    /// zstd-compressed by the `.zst` suffix.
    #[arg(long)]
    pub write_trace: Option<PathBuf>,

    /// Synthetic workload, used when no `--trace` is given.
    #[arg(long, value_enum, default_value_t = Workload::Zipf)]
    pub workload: Workload,
    /// Requests to generate.
    #[arg(long, default_value_t = 2_000_000)]
    pub requests: u64,
    /// Zipf popularity exponent (objects, or videos).
    #[arg(long, default_value_t = 0.8)]
    pub alpha: f64,
    /// Zipf workload: number of objects.
    #[arg(long, default_value_t = 200_000)]
    pub objects: u64,
    /// Zipf workload: object size distribution.
    #[arg(long, value_enum, default_value_t = ObjectSize::Fixed)]
    pub object_size: ObjectSize,
    /// Zipf workload: fixed size, lognormal median, or video-mix chunk size, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub size_bytes: u64,
    /// Zipf workload: sigma of the lognormal sizes.
    #[arg(long, default_value_t = 1.0)]
    pub size_sigma: f64,
    /// Popularity churn: a new object (video) enters the top `--churn-top` ranks every N
    /// requests (sessions); 0 = none.
    #[arg(long, default_value_t = 0)]
    pub churn_every: u64,
    /// Popularity churn: the new item takes a random rank among the top N.
    #[arg(long, default_value_t = 10)]
    pub churn_top: u64,
    /// Video workload: number of videos.
    #[arg(long, default_value_t = 2_000)]
    pub videos: u64,
    /// Video workload: chunk size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub chunk_bytes: u64,
    /// Video workload: median video length in chunks (lognormal, sigma 1).
    #[arg(long, default_value_t = 150.0)]
    pub median_chunks: f64,
    /// Video workload: probability of abandoning after each chunk.
    #[arg(long, default_value_t = 0.02)]
    pub abandon: f64,
    /// Video workload: concurrent sessions whose requests interleave.
    #[arg(long, default_value_t = 64)]
    pub sessions: usize,
    /// Seed of the synthetic workload (and of size-aware Belady's sampling).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// Cache sizes as shares of the objects (`--unit objects`) or of the working-set bytes
    /// (`--unit bytes`), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0.01,0.1")]
    pub sizes: Vec<f64>,
    /// Absolute cache capacities (objects or bytes, per `--unit`), comma-separated, instead
    /// of `--sizes` (e.g. 10% of a synthetic catalogue rather than of the objects requested).
    #[arg(long, value_delimiter = ',', conflicts_with = "sizes")]
    pub capacities: Vec<u64>,
    /// objects: every object counts 1; bytes: sizes count.
    #[arg(long, value_enum, default_value_t = SizeUnit::Bytes)]
    pub unit: SizeUnit,
    /// Policies to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub policies: Vec<PolicyKind>,
    /// Directory for hit_ratio.csv, miss_ratio.svg, byte_miss_ratio.svg and report.txt.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replays to run in parallel (ops/s are cleanest with 1).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
}

fn load(args: &HitRatioArgs) -> anyhow::Result<Trace> {
    let churn = Churn {
        every: args.churn_every,
        top: args.churn_top,
    };
    match (&args.trace, args.workload) {
        (Some(path), _) => trace::read_trace(path, args.format),
        (None, Workload::Zipf) => synth::zipf(&ZipfSpec {
            objects: args.objects,
            requests: args.requests,
            alpha: args.alpha,
            sizes: match args.object_size {
                ObjectSize::Fixed => SizeDist::Fixed(args.size_bytes),
                ObjectSize::Lognormal => SizeDist::LogNormal {
                    median: args.size_bytes as f64,
                    sigma: args.size_sigma,
                },
                ObjectSize::VideoMix => SizeDist::VideoMix {
                    chunk: args.size_bytes,
                },
            },
            churn,
            seed: args.seed,
        }),
        (None, Workload::Video) => synth::video(&VideoSpec {
            videos: args.videos,
            requests: args.requests,
            alpha: args.alpha,
            chunk_bytes: args.chunk_bytes,
            median_chunks: args.median_chunks,
            abandon: args.abandon,
            concurrent: args.sessions,
            churn,
            seed: args.seed,
        }),
    }
}

fn summary(
    trace: &Trace,
    stats: &TraceStats,
    args: &HitRatioArgs,
    policies: &[PolicyKind],
) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "workload: {}", trace.name);
    if !trace.spec.is_empty() {
        let _ = writeln!(s, "spec: {}", trace.spec);
    }
    let _ = writeln!(
        s,
        "requests {}, objects {} ({:.1}% requested once), working set {} ({} B), requested {}, object sizes {}..{} B",
        stats.requests,
        stats.objects,
        100.0 * stats.one_hit_objects as f64 / stats.objects.max(1) as f64,
        report::human_bytes(stats.working_set_bytes),
        stats.working_set_bytes,
        report::human_bytes(stats.requested_bytes),
        stats.min_size,
        stats.max_size,
    );
    let _ = writeln!(s, "next access: {}", trace.next_access_source);
    let _ = writeln!(
        s,
        "groups: {} ({} groups)",
        trace.group_source,
        trace.groups()
    );
    let names: Vec<&str> = policies.iter().map(|p| p.label()).collect();
    let _ = writeln!(
        s,
        "unit: {:?}; policies: {}; jobs: {}; seed: {}",
        args.unit,
        names.join(", "),
        args.jobs,
        args.seed
    );
    s
}

/// The policies to run: `--policies` without repeats, or all (with unit sizing, all but the
/// edge's byte-weighted store).
fn policy_list(args: &HitRatioArgs) -> Vec<PolicyKind> {
    let all: Vec<PolicyKind> = PolicyKind::ALL
        .into_iter()
        .filter(|p| args.unit == SizeUnit::Bytes || !p.bytes_only())
        .collect();
    let asked = if args.policies.is_empty() {
        &all[..]
    } else {
        &args.policies[..]
    };
    let mut policies: Vec<PolicyKind> = Vec::new();
    for &p in asked {
        if !policies.contains(&p) {
            policies.push(p);
        }
    }
    policies
}

/// (share of the objects or working set, capacity) for each cache size, smallest first.
fn cache_sizes(args: &HitRatioArgs, stats: &TraceStats) -> Vec<(f64, u64)> {
    let mut sizes: Vec<(f64, u64)> = if args.capacities.is_empty() {
        let capacity = |ratio| sim::capacity_for(ratio, args.unit, stats);
        args.sizes.iter().map(|&r| (r, capacity(r))).collect()
    } else {
        let base = match args.unit {
            SizeUnit::Objects => stats.objects,
            SizeUnit::Bytes => stats.working_set_bytes,
        };
        let ratio = |c: u64| c as f64 / base.max(1) as f64;
        args.capacities
            .iter()
            .map(|&c| (ratio(c), c.max(1)))
            .collect()
    };
    sizes.sort_by(|a, b| a.0.total_cmp(&b.0));
    sizes.dedup();
    sizes
}

/// Writes hit_ratio.csv, the two SVG charts and report.txt into `dir`.
fn write_outputs(
    dir: &Path,
    unit: SizeUnit,
    trace: &Trace,
    results: &[RunResult],
    head: &str,
    table: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating output directory {}", dir.display()))?;
    report::write_csv(&dir.join("hit_ratio.csv"), &trace.name, unit, results)?;
    let what = match unit {
        SizeUnit::Objects => "unit-size objects",
        SizeUnit::Bytes => "byte-sized cache",
    };
    let title = format!("{} ({what})", trace.name);
    for (file, metric) in [
        ("miss_ratio.svg", Metric::Object),
        ("byte_miss_ratio.svg", Metric::Byte),
    ] {
        report::write_svg(&dir.join(file), &title, unit, results, metric)?;
    }
    let text = dir.join("report.txt");
    std::fs::write(&text, format!("{head}\n{table}\n"))
        .with_context(|| format!("writing {}", text.display()))
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

pub fn run(args: &HitRatioArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.sizes.iter().all(|&s| s > 0.0 && s.is_finite()),
        "--sizes must be positive shares, e.g. 0.01,0.1"
    );
    let started = Instant::now();
    let mut trace = load(args)?;
    if let Some(limit) = args.limit {
        trace.requests.truncate(limit);
    }
    anyhow::ensure!(!trace.requests.is_empty(), "the workload has no requests");
    if let Some(div) = args.group_div {
        trace.group_by_division(div)?;
    }
    if let Some(path) = &args.write_trace {
        trace::write_csv(&trace, path)?;
    }
    let stats = trace.stats();
    let policies = policy_list(args);
    let head = summary(&trace, &stats, args, &policies);
    print(&format!(
        "{head}loaded in {:.1} s\n",
        started.elapsed().as_secs_f64()
    ))?;

    let sizes = cache_sizes(args, &stats);
    let jobs: Vec<Job> = sizes
        .iter()
        .flat_map(|&(ratio, capacity)| {
            policies.iter().map(move |&kind| Job {
                ratio,
                capacity,
                kind,
            })
        })
        .collect();
    let replay_start = Instant::now();
    let results = sim::run_jobs(&trace, args.unit, &jobs, args.jobs, args.seed);
    let table = report::table(&results, args.unit, &stats);
    let timing = format!(
        "replays took {:.1} s ({:.1} s in all)",
        replay_start.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    print(&format!("\n{table}{timing}\n"))?;

    if let Some(dir) = &args.out {
        write_outputs(
            dir,
            args.unit,
            &trace,
            &results,
            &head,
            &format!("{table}{timing}"),
        )?;
        print(&format!("wrote {}\n", dir.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BenchCommand;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: BenchCommand,
    }

    #[test]
    fn cli_runs_a_small_synthetic_benchmark_and_writes_outputs() {
        let dir = std::env::temp_dir().join(format!("cdn-bench-hr-{}", std::process::id()));
        let dir_arg = dir.to_string_lossy().into_owned();
        let cli = Cli::try_parse_from([
            "cdn",
            "hit-ratio",
            "--workload",
            "video",
            "--videos",
            "20",
            "--requests",
            "3000",
            "--median-chunks",
            "10",
            "--sizes",
            "0.2,0.05",
            "--unit",
            "bytes",
            "--policies",
            "lru,belady,s3fifo,moka-tinylfu,moka-lru",
            "--out",
            &dir_arg,
        ])
        .expect("parse");
        let BenchCommand::HitRatio(args) = cli.cmd else {
            panic!("not hit-ratio");
        };
        assert_eq!(args.sizes, vec![0.2, 0.05]);
        run(&args).expect("run");
        let csv = std::fs::read_to_string(dir.join("hit_ratio.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 1 + 2 * 5);
        // Sorted by size, then in the order the policies were given.
        assert!(
            csv.lines()
                .nth(1)
                .is_some_and(|l| l.contains(",bytes,0.05,") && l.contains(",LRU,"))
        );
        for f in ["miss_ratio.svg", "byte_miss_ratio.svg", "report.txt"] {
            assert!(dir.join(f).exists(), "{f}");
        }
        // --sizes and --capacities exclude each other.
        assert!(
            Cli::try_parse_from(["cdn", "hit-ratio", "--sizes", "0.1", "--capacities", "5"])
                .is_err()
        );
    }
}
