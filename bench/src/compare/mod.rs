//! `cdn bench compare`: the edge against nginx (proxy_cache + slice + proxy_cache_lock) and
//! Varnish (malloc storage) in front of the same origin, under the same load, in one run.
//!
//! One origin runs in this process; the edge (`cdn edge` from this same binary), nginx and
//! varnishd run as child processes, one after the other, each with a cold cache and its own
//! run directory. For each server, scenarios:
//! - `hot-1m`: Range requests for whole 1 MiB chunks (aligned) of warmed multi-chunk objects;
//! - `hot-16k`: GETs of warmed 16 KiB objects;
//! - `cold`: `--cold-clients` connections ask for one never-seen object at the same moment,
//!   `--cold-rounds` times; the origin's request counter says how many fetches it took.
//!
//! The load generator is this process's ([`super::loadgen`]): `--connections` keep-alive
//! connections in a closed loop for `--duration`, every response checked by status and length
//! and every `--verify-every`-th byte for byte. With `--wrk`, the hot scenarios are also run by
//! wrk (a standard reference generator) twice: with the same request mix (tool `wrk`), and on
//! one hot object with wrk's fixed request (tool `wrk-one`, the method of issue 17's table),
//! each the best of `--wrk-rounds` runs. `--access-log off,on`
//! runs everything twice: with every access log off, then with each server's default access
//! log on (the edge at `--log info`, nginx's `access_log` in its `combined` format,
//! varnishncsa beside Varnish). Results: a table with ratios edge/nginx and edge/varnish per
//! scenario, access-log mode and generator, `compare.csv` and `report.md` in `--out`.

mod report;
mod wrk;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::host::{apt_install, load_average, missing_packages, self_cpu, version};
use crate::hot::{MIB, hot_1m_job, hot_1m_objects, hot_16k_job, hot_16k_objects};
use crate::loadgen::{self, Job, JobGen, Stats};
pub use crate::servers::Server;
use crate::servers::{
    Origin, ServerProc, Setup, cdn_bin, clean_run_dir, start_origin, start_server,
};
use report::{csv, ratios, table};
use wrk::{WrkLoad, run_wrk};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Range requests for aligned 1 MiB chunks of warmed objects.
    #[value(name = "hot-1m")]
    Hot1m,
    /// GETs of warmed 16 KiB objects.
    #[value(name = "hot-16k")]
    Hot16k,
    /// One cold object asked for by many clients at once.
    Cold,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Hot1m => "hot-1m",
            Scenario::Hot16k => "hot-16k",
            Scenario::Cold => "cold",
        }
    }
}

/// Whether the servers write their access logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccessLog {
    /// Every access log off (the edge at `--log warn`, nginx `access_log off`, no
    /// varnishncsa).
    Off,
    /// Each server's default access log on.
    On,
}

impl AccessLog {
    fn name(self) -> &'static str {
        match self {
            AccessLog::Off => "off",
            AccessLog::On => "on",
        }
    }
}

/// `cdn bench compare` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Servers, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "edge,nginx,varnish"
    )]
    pub servers: Vec<Server>,
    /// Scenarios, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "hot-1m,hot-16k,cold"
    )]
    pub scenarios: Vec<Scenario>,
    /// Access-log modes, in order (servers restarted cold for each).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off,on")]
    pub access_log: Vec<AccessLog>,
    /// Measured time of each hot scenario, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Keep-alive connections of the hot scenarios.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Worker threads of the edge (TOKIO_WORKER_THREADS) and nginx worker processes;
    /// default: the number of CPUs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Objects of the hot-1m set, each `--chunks-per-object` chunks of 1 MiB.
    #[arg(long, default_value_t = 16)]
    pub objects_1m: u64,
    #[arg(long, default_value_t = 4)]
    pub chunks_per_object: u64,
    /// Objects of the hot-16k set.
    #[arg(long, default_value_t = 1000)]
    pub objects_16k: u64,
    /// Measured runs of each hot scenario per server (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Clients of each cold round.
    #[arg(long, default_value_t = 200)]
    pub cold_clients: usize,
    /// Cold rounds (a new object each).
    #[arg(long, default_value_t = 5)]
    pub cold_rounds: usize,
    /// Size of the cold object, bytes (1 MiB: one chunk / slice).
    #[arg(long, default_value_t = MIB)]
    pub cold_size: u64,
    /// Compare every N-th body of a connection byte for byte (the others by length).
    #[arg(long, default_value_t = 16)]
    pub verify_every: u64,
    /// Also run the hot scenarios with wrk (`wrk -t2 -cCONNECTIONS -dDURATION --latency`).
    #[arg(long)]
    pub wrk: bool,
    /// wrk runs per server, scenario, load and access-log mode; the best is reported.
    #[arg(long, default_value_t = 2)]
    pub wrk_rounds: usize,
    /// Install missing nginx, varnish and wrk with apt-get first.
    #[arg(long)]
    pub install: bool,
    /// The `cdn` binary whose `cdn edge` is measured (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
    /// An edge config file (TOML) given to the measured edge under the bench's flags, to
    /// compare settings (e.g. `express = false`).
    #[arg(long)]
    pub edge_config: Option<PathBuf>,
    /// Where nginx keeps its cache (tmpfs, so no disk is involved).
    #[arg(long, default_value = "/dev/shm")]
    pub cache_base: PathBuf,
    /// Where to write compare.csv, report.md and the servers' run directories.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Seed of the request mix.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// One measured row.
#[derive(Debug, Clone)]
struct Row {
    scenario: &'static str,
    /// Access logs `on` or `off`.
    logs: &'static str,
    server: &'static str,
    tool: &'static str,
    requests: u64,
    seconds: f64,
    rps: f64,
    mbps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Origin requests during the measured part.
    origin_requests: f64,
    origin_bytes: f64,
    /// Origin requests while warming.
    warm_origin_requests: f64,
    errors: u64,
    bad_status: u64,
    corrupt: u64,
    verified: u64,
    /// CPU time of the server's processes (workers included) per request, µs.
    server_cpu_us: f64,
    /// CPU time of the load generator per request, µs (own generator only).
    gen_cpu_us: Option<f64>,
    note: String,
}

impl Row {
    fn from_stats(
        scenario: Scenario,
        server: Server,
        st: &Stats,
        origin: (f64, f64),
        warm: f64,
    ) -> Row {
        Row {
            scenario: scenario.name(),
            logs: "off",
            server: server.name(),
            tool: "cdn",
            requests: st.requests,
            seconds: st.elapsed.as_secs_f64(),
            rps: st.rps(),
            mbps: st.mbps(),
            p50_ms: loadgen::ms(&st.latency, 0.5),
            p99_ms: loadgen::ms(&st.latency, 0.99),
            origin_requests: origin.0,
            origin_bytes: origin.1,
            warm_origin_requests: warm,
            errors: st.errors,
            bad_status: st.bad_status,
            corrupt: st.corrupt,
            verified: st.verified,
            server_cpu_us: 0.0,
            gen_cpu_us: None,
            note: st.samples.first().cloned().unwrap_or_default(),
        }
    }
}

fn install_missing(args: &CompareArgs) -> anyhow::Result<()> {
    let want = missing_packages(&args.servers, args.wrk);
    if want.is_empty() {
        return Ok(());
    }
    if !args.install {
        anyhow::bail!(
            "missing: {} (install with `apt-get install -y {}`, or pass --install)",
            want.join(", "),
            want.join(" ")
        );
    }
    apt_install(&want)
}

fn hot_objects(args: &CompareArgs, scenario: Scenario) -> Vec<(String, u64)> {
    match scenario {
        Scenario::Hot1m => hot_1m_objects("", args.objects_1m, args.chunks_per_object),
        _ => hot_16k_objects("", args.objects_16k),
    }
}

fn hot_gen(args: &CompareArgs, scenario: Scenario) -> JobGen {
    let objs = Arc::new(hot_objects(args, scenario));
    match scenario {
        Scenario::Hot1m => Arc::new(move |rng| hot_1m_job(&objs, rng)),
        _ => Arc::new(move |rng| hot_16k_job(&objs, rng)),
    }
}

/// Which of a server's runs a row reports.
#[derive(Clone, Copy)]
enum Pick {
    /// The run with the median req/s (the project's generator).
    Median,
    /// The run with the most req/s (wrk, as issue 17 measured).
    Best,
}

/// The row of `runs` that `pick` chooses, its note giving how many runs and their req/s
/// range, with the failures of every run added in; `None` for no runs.
fn one_of(mut runs: Vec<Row>, pick: Pick) -> Option<Row> {
    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    let n = runs.len();
    let (lo, hi) = (runs.first()?.rps, runs.last()?.rps);
    let (i, word) = match pick {
        Pick::Median => (n / 2, "median"),
        Pick::Best => (n - 1, "best"),
    };
    let mut row = runs.swap_remove(i);
    if n > 1 {
        row.note = format!("{word} of {n} runs; req/s {lo:.0}..{hi:.0}");
    }
    for o in &runs {
        row.errors += o.errors;
        row.bad_status += o.bad_status;
        row.corrupt += o.corrupt;
    }
    Some(row)
}

/// A server being measured.
struct Running {
    server: Server,
    proc: ServerProc,
    dir: PathBuf,
}

/// One measured closed-loop run of a hot scenario against one server.
async fn measure_hot(
    args: &CompareArgs,
    scenario: Scenario,
    r: &Running,
    origin: &Origin,
    warm: f64,
) -> Row {
    let mid = origin.counters().await;
    let (cpu0, gen0) = (r.proc.cpu(), self_cpu());
    let st = loadgen::closed_loop(
        r.proc.addr,
        args.connections,
        Duration::from_secs_f64(args.duration),
        args.verify_every,
        args.seed,
        hot_gen(args, scenario),
    )
    .await;
    let (cpu1, gen1) = (r.proc.cpu(), self_cpu());
    let after = origin.counters().await;
    let mut row = Row::from_stats(
        scenario,
        r.server,
        &st,
        (after.0 - mid.0, after.1 - mid.1),
        warm,
    );
    let per = 1e6 / st.requests.max(1) as f64;
    row.server_cpu_us = (cpu1 - cpu0) * per;
    row.gen_cpu_us = Some((gen1 - gen0) * per);
    row
}

/// Every scenario against every server, once per access-log mode (servers started cold for
/// each). All servers run at once (idle unless measured); hot scenarios are measured
/// `--repeats` times, alternating servers, and the median run (by req/s) is kept, so
/// background load on a shared machine hits every server alike.
async fn run_all(
    args: &CompareArgs,
    origin: &Origin,
    out: &Path,
    threads: usize,
    nonce: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &logs in &args.access_log {
        eprintln!("access logs {}:", logs.name());
        let mut r = run_mode(args, origin, out, threads, nonce, logs).await?;
        for row in &mut r {
            row.logs = logs.name();
        }
        rows.append(&mut r);
    }
    Ok(rows)
}

async fn run_mode(
    args: &CompareArgs,
    origin: &Origin,
    out: &Path,
    threads: usize,
    nonce: u64,
    logs: AccessLog,
) -> anyhow::Result<Vec<Row>> {
    let mut running: Vec<Running> = Vec::new();
    let edge_config = match &args.edge_config {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    for &server in &args.servers {
        let dir = out.join(format!("{}-logs-{}", server.name(), logs.name()));
        let _ = std::fs::remove_dir_all(&dir);
        let setup = Setup {
            cdn_bin: args.cdn_bin.as_deref(),
            cache_base: &args.cache_base,
            threads,
            edge_config: edge_config.as_deref(),
            access_log: logs == AccessLog::On,
        };
        match start_server(server, &setup, origin.proc.addr, &dir).await {
            Ok(proc) => running.push(Running { server, proc, dir }),
            Err(e) => {
                for r in running {
                    r.proc.stop().await;
                }
                return Err(e.context(format!("starting {}", server.name())));
            }
        }
    }
    // Cold objects are new in every mode.
    let nonce = nonce * 10 + logs as u64;
    let result = scenarios(args, origin, &running, nonce).await;
    for r in running {
        r.proc.stop().await;
        clean_run_dir(&r.dir);
    }
    result
}

async fn scenarios(
    args: &CompareArgs,
    origin: &Origin,
    running: &[Running],
    nonce: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &scenario in &args.scenarios {
        match scenario {
            Scenario::Hot1m | Scenario::Hot16k => {
                let objs = hot_objects(args, scenario);
                let mut warm = Vec::new();
                for r in running {
                    eprintln!("  {} {}: warming ...", r.server.name(), scenario.name());
                    let jobs = objs.iter().map(|(id, size)| Job::full(id, *size)).collect();
                    let before = origin.counters().await;
                    let w = loadgen::warm(r.proc.addr, jobs, 8).await;
                    anyhow::ensure!(
                        w.errors + w.bad_status + w.corrupt == 0,
                        "{} warm-up of {} failed: {:?}",
                        r.server.name(),
                        scenario.name(),
                        w.samples
                    );
                    // Let background fills (read-ahead, slices) settle.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    warm.push(origin.counters().await.0 - before.0);
                }
                let mut runs: Vec<Vec<Row>> = vec![Vec::new(); running.len()];
                for rep in 0..args.repeats.max(1) {
                    for k in 0..running.len() {
                        // Rotate the order, so no server always runs first.
                        let i = (k + rep) % running.len();
                        eprintln!(
                            "  {} {}: run {} of {} ...",
                            running[i].server.name(),
                            scenario.name(),
                            rep + 1,
                            args.repeats.max(1)
                        );
                        let row = measure_hot(args, scenario, &running[i], origin, warm[i]).await;
                        runs[i].push(row);
                    }
                }
                rows.extend(runs.into_iter().filter_map(|r| one_of(r, Pick::Median)));
                if args.wrk {
                    for load in [WrkLoad::Mix, WrkLoad::One] {
                        // Best of `--wrk-rounds`, the servers taking turns within a round.
                        let mut per_server: Vec<Vec<Row>> =
                            running.iter().map(|_| Vec::new()).collect();
                        for round in 0..args.wrk_rounds.max(1) {
                            for (i, r) in running.iter().enumerate() {
                                eprintln!(
                                    "  {} {}: {} round {} ...",
                                    r.server.name(),
                                    scenario.name(),
                                    load.tool(),
                                    round + 1
                                );
                                let cpu0 = r.proc.cpu();
                                let mut row =
                                    run_wrk(args, scenario, load, round, r, origin).await?;
                                row.server_cpu_us =
                                    (r.proc.cpu() - cpu0) * 1e6 / row.requests.max(1) as f64;
                                per_server[i].push(row);
                            }
                        }
                        rows.extend(per_server.into_iter().filter_map(|r| one_of(r, Pick::Best)));
                    }
                }
            }
            Scenario::Cold => {
                for r in running {
                    eprintln!("  {} cold ...", r.server.name());
                    let mut total = Stats::default();
                    let (mut fetches, mut bytes) = (0.0, 0.0);
                    let mut elapsed = Duration::ZERO;
                    let cpu0 = r.proc.cpu();
                    for round in 0..args.cold_rounds {
                        let id = format!("cold-{}-{nonce}-{round}", r.server.name());
                        let before = origin.counters().await;
                        let st = loadgen::burst(
                            r.proc.addr,
                            args.cold_clients,
                            Job::full(&id, args.cold_size),
                        )
                        .await;
                        // Background work of the fill (read-ahead) shows in the counters too.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        let after = origin.counters().await;
                        fetches += after.0 - before.0;
                        bytes += after.1 - before.1;
                        elapsed += st.elapsed;
                        total.merge(&st);
                    }
                    total.elapsed = elapsed;
                    let rounds = args.cold_rounds.max(1) as f64;
                    let mut row = Row::from_stats(
                        Scenario::Cold,
                        r.server,
                        &total,
                        (fetches / rounds, bytes / rounds),
                        0.0,
                    );
                    row.server_cpu_us = (r.proc.cpu() - cpu0) * 1e6 / total.requests.max(1) as f64;
                    row.note = format!(
                        "{} rounds x {} clients; origin figures per round",
                        args.cold_rounds, args.cold_clients
                    );
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}

pub async fn run(args: CompareArgs) -> anyhow::Result<()> {
    install_missing(&args)?;
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cdn-bench-compare-{}", std::process::id()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::path::absolute(&out)?;
    let load_before = load_average();
    let started = Instant::now();

    let root = out.join("origin-root");
    std::fs::create_dir_all(&root)?;
    let origin = start_origin(&cdn_bin(args.cdn_bin.as_deref())?, &root, &out).await?;
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "cdn bench compare: origin {}, {} connections, {} s per hot scenario, \
         {threads} server threads; runs in {}",
        origin.url,
        args.connections,
        args.duration,
        out.display()
    );
    let rows = run_all(&args, &origin, &out, threads, nonce).await;
    origin.proc.stop().await;
    let mut rows = rows?;
    // Order: scenario, access logs, then tool, then server, as given.
    let pos = |r: &Row| {
        (
            args.scenarios.iter().position(|s| s.name() == r.scenario),
            args.access_log.iter().position(|l| l.name() == r.logs),
            r.tool != "cdn",
            args.servers.iter().position(|s| s.name() == r.server),
        )
    };
    rows.sort_by_key(pos);
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(
        args.cache_base
            .join(format!("cdn-bench-nginx-{}", std::process::id())),
    );

    let mut report = crate::host::report_head("cdn bench compare", &load_before);
    let _ = writeln!(
        report,
        "Servers: edge (`cdn edge`, {threads} worker threads), {}, {}; load: {}{}; took {:.0} s.\n",
        version("nginx", "-v"),
        version("varnishd", "-V"),
        format_args!(
            "own generator, {} connections, {} s",
            args.connections, args.duration
        ),
        if args.wrk {
            format!(", and {}", version("wrk", "-v"))
        } else {
            String::new()
        },
        started.elapsed().as_secs_f64()
    );
    report.push_str(&table(&rows));
    report.push('\n');
    report.push_str(&ratios(&rows));
    std::fs::write(out.join("compare.csv"), csv(&rows))?;
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    println!("wrote {}/compare.csv and report.md", out.display());
    let bad: u64 = rows
        .iter()
        .map(|r| r.errors + r.bad_status + r.corrupt)
        .sum();
    if bad > 0 {
        eprintln!("warning: {bad} failed or wrong responses (see the table)");
    }
    Ok(())
}
