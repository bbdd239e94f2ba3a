//! `cdn bench amplification`: how many origin bytes and requests one client request costs,
//! through the edge, nginx (proxy_cache + slice) and Varnish, on cold objects (RangeAmp, Li et
//! al., DSN 2020, and friends).
//!
//! Same setup as `cdn bench compare` (`servers` starts every process): one `cdn origin`
//! child process counted by its own metrics (`cdn_origin_bytes_sent_total`,
//! `cdn_origin_requests_total`), and each server in turn, cold, in front of it. Servers are
//! measured one after the other (never at once), so the origin's counters see one server's
//! requests only; after each case the counters are read again once they have stopped moving
//! (background fills, read-ahead and Varnish's whole-object fetches finish first). Every case
//! asks for a fresh synthetic object (`/synthetic/NAME?size=N`, NAME new per case and server)
//! from its own loopback source address (`127.0.0.2x`), so the edge's per-client budget of
//! one case does not leak into another. Cases:
//! - `sbr`: `Range: bytes=0-0` of a cold object, once;
//! - `sbr-repeat`: the same `--repeats` times, a new query string each time, one client
//!   (the edge runs with `amplification_burst = --edge-burst` to show its budget);
//! - `obr`: `--ranges` one-byte ranges, evenly spread, in one request (multipart);
//! - `no-store`: a whole-object GET of an object the origin marks `Cache-Control: no-store`;
//! - `whole`: a whole-object GET (baseline);
//! - `mid-range`: a `--mid-bytes` range starting half a range past the middle (unaligned:
//!   it straddles two chunks / slices).
//!
//! Results: a table (case × server: origin bytes, client bytes, factor, origin requests), the
//! ratios edge/nginx and edge/varnish, `amplification.csv` and `report.md` in `--out`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::loadgen::{self, Job};
use crate::servers::Server;

mod report;
use report::*;

const MIB: u64 = 1 << 20;
/// The edge's chunk size here (`crate::servers::start_edge` runs it with 1 MiB chunks), which is also
/// nginx's slice size in `bench/nginx.conf.in` as `compare` fills it.
pub const CHUNK: u64 = MIB;
/// Allowance per part for the origin's own multipart framing of a multi-range request
/// forwarded as asked (boundary, Content-Type and Content-Range lines: ~100 bytes).
const PART_FRAMING: u64 = 128;
/// Longest wait for one response.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Case {
    /// `Range: bytes=0-0` of a cold object, once.
    Sbr,
    /// `Range: bytes=0-0`, `--repeats` times, a new query string each time, one client.
    SbrRepeat,
    /// `--ranges` one-byte ranges, evenly spread over a cold object, in one request.
    Obr,
    /// A whole-object GET of a cold object the origin serves with `no-store`.
    NoStore,
    /// A whole-object GET of a cold object.
    Whole,
    /// A `--mid-bytes` range from the middle of a cold object (unaligned).
    MidRange,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Case::Sbr => "sbr",
            Case::SbrRepeat => "sbr-repeat",
            Case::Obr => "obr",
            Case::NoStore => "no-store",
            Case::Whole => "whole",
            Case::MidRange => "mid-range",
        }
    }

    /// Its loopback source address: one client per case.
    fn client(self) -> IpAddr {
        IpAddr::from([127, 0, 0, 20 + self as u8])
    }
}

/// `cdn bench amplification` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct AmplificationArgs {
    /// Servers, in order. One that cannot be installed or started is reported and skipped.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "edge,nginx,varnish"
    )]
    pub servers: Vec<Server>,
    /// Cases, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sbr,sbr-repeat,obr,no-store,whole,mid-range"
    )]
    pub cases: Vec<Case>,
    /// Size of the cold objects of every case but `no-store`, bytes (accepts `64MiB`).
    #[arg(long, default_value = "64MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub size: u64,
    /// Requests of `sbr-repeat`.
    #[arg(long, default_value_t = 50)]
    pub repeats: u64,
    /// One-byte ranges of `obr` (one every `size / ranges` bytes).
    #[arg(long, default_value_t = 64)]
    pub ranges: u64,
    /// Size of the `no-store` object, bytes.
    #[arg(long, default_value = "3MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub no_store_size: u64,
    /// Length of the `mid-range` range, bytes.
    #[arg(long, default_value = "1MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub mid_bytes: u64,
    /// The edge's `amplification_burst` in this run (its default is 256 MiB: smaller here so
    /// that `sbr-repeat` reaches it).
    #[arg(long, default_value = "8MiB", value_parser = cdn_edge::config::parse_bytes)]
    pub edge_burst: u64,
    /// The edge's `amplification_bytes_per_sec` in this run (default: the edge's, 16 MiB/s).
    #[arg(long, value_parser = cdn_edge::config::parse_bytes)]
    pub edge_rate: Option<u64>,
    /// Worker threads of the edge and nginx worker processes; default: the number of CPUs.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Install missing nginx and varnish with apt-get first.
    #[arg(long)]
    pub install: bool,
    /// The `cdn` binary whose `cdn edge` is measured (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
    /// Where nginx keeps its cache (tmpfs, so no disk is involved).
    #[arg(long, default_value = "/dev/shm")]
    pub cache_base: PathBuf,
    /// Where to write amplification.csv, report.md and the servers' run directories.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// What one case cost one server.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub case: &'static str,
    pub server: &'static str,
    /// Client requests sent.
    pub requests: u64,
    /// Ranges per request (1 for a whole object).
    pub parts: u64,
    /// Bytes the requests ask for (the whole object for a plain GET).
    pub asked: u64,
    /// Body bytes the client received (multipart framing included).
    pub client_bytes: u64,
    /// Body bytes the origin sent, and its requests, during the case.
    pub origin_bytes: f64,
    pub origin_requests: f64,
    pub statuses: BTreeMap<u16, u64>,
    /// Failed requests (connection errors, timeouts).
    pub errors: u64,
    /// Responses whose bytes are not the object's (single ranges and whole objects are
    /// compared byte for byte).
    pub wrong: u64,
    /// Edge only: requests it forwarded as asked instead of filling chunks
    /// (`cdn_edge_amplification_refused_total`).
    pub forwarded: Option<f64>,
    /// Edge only: the most origin bytes its documented bounds allow for the case.
    pub bound: Option<u64>,
    pub seconds: f64,
    pub note: String,
}

impl Row {
    /// Origin bytes per byte delivered to the client.
    pub fn factor(&self) -> Option<f64> {
        factor(self.origin_bytes, self.client_bytes as f64)
    }

    /// Origin bytes per byte asked for.
    pub fn factor_asked(&self) -> Option<f64> {
        factor(self.origin_bytes, self.asked as f64)
    }

    /// Origin requests per client request.
    pub fn origin_requests_per_request(&self) -> Option<f64> {
        factor(self.origin_requests, self.requests as f64)
    }

    pub fn within_bound(&self) -> Option<bool> {
        self.bound.map(|b| self.origin_bytes <= b as f64)
    }
}

/// `a / b`, none when `b` is 0.
pub fn factor(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// The edge's per-request bound on origin bytes (edge/src/proxy.rs, `within_bounds`): two
/// chunks plus twice the bytes asked, for each of `requests` requests of `asked` bytes in
/// `parts` ranges; a multi-range request forwarded as asked also carries the origin's
/// multipart framing (`PART_FRAMING` a part).
pub fn edge_bound(chunk: u64, requests: u64, asked_per_request: u64, parts: u64) -> u64 {
    let framing = if parts > 1 { parts * PART_FRAMING } else { 0 };
    requests * (2 * chunk + 2 * asked_per_request + framing)
}

/// The per-client budget's bound on what `requests` requests of `asked` bytes each cost the
/// origin within `seconds`: what they ask for, plus the burst, plus what the bucket refills
/// meanwhile, plus the chunk probed by the request that overdrew the budget (a probe is
/// charged once its answer tells what was asked of it, possibly into debt).
pub fn budget_bound(
    chunk: u64,
    burst: u64,
    rate: u64,
    seconds: f64,
    requests: u64,
    asked: u64,
) -> u64 {
    requests * asked + burst + chunk + (rate as f64 * seconds).ceil() as u64
}

/// The `obr` Range value: `n` one-byte ranges, one at the start of every `size / n` bytes.
pub fn sparse_ranges(size: u64, n: u64) -> String {
    let step = (size / n.max(1)).max(1);
    let spec: Vec<String> = (0..n.min(size))
        .map(|i| format!("{o}-{o}", o = i * step))
        .collect();
    format!("bytes={}", spec.join(","))
}

/// The `mid-range` range: `len` bytes starting `len / 2` past the middle (so that with
/// `len` = one chunk it covers the second half of one chunk and the first half of the next),
/// kept within the object.
pub fn mid_range(size: u64, len: u64) -> (u64, u64) {
    let len = len.clamp(1, size.max(1));
    let start = (size / 2 + len / 2).min(size - len);
    (start, start + len - 1)
}

/// Reads the origin's counters once they have stopped moving (the same values three reads
/// 200 ms apart), for at most 30 s.
async fn settled(origin_url: &str) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = crate::servers::origin_counters(origin_url).await;
    let mut same = 0;
    while same < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = crate::servers::origin_counters(origin_url).await;
        if now == last {
            same += 1;
        } else {
            (same, last) = (0, now);
        }
    }
    last
}

/// One request to send: its path, Range value, and what it must return.
struct Req {
    path: String,
    range: Option<String>,
    /// For single ranges and whole objects, the bytes to compare with.
    job: Option<Job>,
    asked: u64,
    parts: u64,
}

fn requests(case: Case, args: &AmplificationArgs, id: &str) -> Vec<Req> {
    let size = args.size;
    let single = |job: Job| {
        let range = job.range.map(|(s, e)| format!("bytes={s}-{e}"));
        Req {
            path: job.path.clone(),
            range,
            asked: job.len,
            parts: 1,
            job: Some(job),
        }
    };
    match case {
        Case::Sbr => vec![single(Job::range(id, size, 0, 0))],
        Case::SbrRepeat => (0..args.repeats)
            .map(|i| {
                let mut job = Job::range(id, size, 0, 0);
                job.path = format!("{}&n={i}", job.path);
                single(job)
            })
            .collect(),
        Case::Obr => {
            let spec = sparse_ranges(size, args.ranges);
            let parts = spec.matches(',').count() as u64 + 1;
            vec![Req {
                path: format!("/synthetic/{id}?size={size}"),
                range: Some(spec),
                job: None,
                asked: parts,
                parts,
            }]
        }
        Case::NoStore => vec![single(Job::full(id, args.no_store_size))],
        Case::Whole => vec![single(Job::full(id, size))],
        Case::MidRange => {
            let (s, e) = mid_range(size, args.mid_bytes);
            vec![single(Job::range(id, size, s, e))]
        }
    }
}

/// Runs `case` against `server` at `addr`, its origin at `origin_url`.
async fn measure(
    case: Case,
    server: Server,
    addr: SocketAddr,
    args: &AmplificationArgs,
    origin_url: &str,
    nonce: u64,
) -> anyhow::Result<Row> {
    let prefix = if case == Case::NoStore {
        "nostore-"
    } else {
        ""
    };
    let id = format!("{prefix}amp-{}-{}-{nonce}", case.name(), server.name());
    let reqs = requests(case, args, &id);
    let edge_url = (server == Server::Edge).then(|| format!("http://{addr}"));
    let refused = cdn_edge::metric_names::AMPLIFICATION_REFUSED_TOTAL;
    let refused0 = match &edge_url {
        Some(u) => loadgen::metric(u, refused).await,
        None => 0.0,
    };
    let before = settled(origin_url).await;
    let mut row = Row {
        case: case.name(),
        server: server.name(),
        parts: reqs.first().map_or(1, |r| r.parts),
        ..Row::default()
    };
    let started = Instant::now();
    let mut conn = loadgen::connect(addr, Some(case.client()))
        .await
        .with_context(|| format!("connecting to {} from {}", server.name(), case.client()))?;
    let mut first_status = None;
    for req in &reqs {
        if !conn.is_open() {
            conn = loadgen::connect(addr, Some(case.client())).await?;
        }
        row.requests += 1;
        row.asked += req.asked;
        let keep = req.job.is_some();
        match conn
            .get_ranges(&req.path, req.range.as_deref(), keep, RESPONSE_TIMEOUT)
            .await
        {
            Ok(r) => {
                *row.statuses.entry(r.status).or_default() += 1;
                row.client_bytes += r.len;
                if first_status.is_none() {
                    first_status = r
                        .headers
                        .get("cache-status")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                }
                if let (Some(job), Some(body)) = (&req.job, &r.body) {
                    // A peer may answer a range with the whole object (200): that is its
                    // answer, counted as delivered; only a wrong 206 or 200 body is wrong.
                    let whole = Job {
                        start: 0,
                        len: if r.status == 200 && job.range.is_some() {
                            r.len
                        } else {
                            job.len
                        },
                        ..job.clone()
                    };
                    let want = if r.status == 200 && job.range.is_some() {
                        &whole
                    } else {
                        job
                    };
                    if !(r.status == 200 || r.status == 206) || !want.body_ok(body) {
                        row.wrong += 1;
                    }
                }
            }
            Err(e) => {
                row.errors += 1;
                if row.note.is_empty() {
                    row.note = format!("{e:#}");
                }
            }
        }
    }
    row.seconds = started.elapsed().as_secs_f64();
    let after = settled(origin_url).await;
    row.origin_requests = after.0 - before.0;
    row.origin_bytes = after.1 - before.1;
    if let Some(u) = &edge_url {
        row.forwarded = Some(loadgen::metric(u, refused).await - refused0);
        let per_request = row.asked / row.requests.max(1);
        let mut bound = edge_bound(CHUNK, row.requests, per_request, row.parts);
        if case == Case::SbrRepeat {
            let rate = args.edge_rate.unwrap_or_else(|| {
                cdn_edge::config::EdgeConfig::default().amplification_bytes_per_sec
            });
            bound = bound.min(budget_bound(
                CHUNK,
                args.edge_burst,
                rate,
                row.seconds,
                row.requests,
                per_request,
            ));
        }
        row.bound = Some(bound);
        if let Some(cs) = first_status
            && row.note.is_empty()
        {
            row.note = format!("first Cache-Status: `{cs}`");
        }
    }
    Ok(row)
}

pub async fn run(args: AmplificationArgs) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let out = args.out.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("cdn-bench-amplification-{}", std::process::id()))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = std::path::absolute(&out)?;
    anyhow::ensure!(args.size >= 2, "--size must be at least 2 bytes");
    let load_before = crate::host::load_average();
    let started = Instant::now();

    // Servers that cannot run are reported, not fatal.
    let mut failed: Vec<(&'static str, String)> = Vec::new();
    let mut servers = args.servers.clone();
    let missing = crate::host::missing_packages(&servers, false);
    if !missing.is_empty() {
        let why = if args.install {
            crate::host::apt_install(&missing)
                .err()
                .map(|e| format!("{e:#}"))
        } else {
            Some(format!(
                "not installed (`apt-get install -y {}`, or pass --install)",
                missing.join(" ")
            ))
        };
        if let Some(why) = why {
            for (server, pkg) in [(Server::Nginx, "nginx"), (Server::Varnish, "varnish")] {
                if missing.contains(&pkg) && servers.contains(&server) {
                    failed.push((server.name(), why.clone()));
                    servers.retain(|s| *s != server);
                }
            }
        }
    }

    let root = out.join("origin-root");
    std::fs::create_dir_all(&root)?;
    let origin_cfg = format!(
        "synthetic_max_bytes = {}\n\n[[cache_control]]\npattern = \"/synthetic/nostore-*\"\nvalue = \"no-store\"\n",
        args.size.max(args.no_store_size)
    );
    let bin = crate::servers::cdn_bin(args.cdn_bin.as_deref())?;
    let origin = crate::servers::start_origin_with(&bin, &root, &out, Some(&origin_cfg)).await?;
    let mut edge_cfg = format!("amplification_burst = {}\n", args.edge_burst);
    if let Some(rate) = args.edge_rate {
        let _ = writeln!(edge_cfg, "amplification_bytes_per_sec = {rate}");
    }
    let setup = crate::servers::Setup {
        cdn_bin: args.cdn_bin.as_deref(),
        cache_base: &args.cache_base,
        threads,
        edge_config: Some(&edge_cfg),
        access_log: false,
    };
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "cdn bench amplification: origin {}, objects of {} B; runs in {}",
        origin.url,
        args.size,
        out.display()
    );
    let mut rows = Vec::new();
    for &server in &servers {
        let dir = out.join(server.name());
        let _ = std::fs::remove_dir_all(&dir);
        let proc = match crate::servers::start_server(server, &setup, origin.proc.addr, &dir).await
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("  {}: failed to start: {e:#}", server.name());
                failed.push((server.name(), format!("failed to start: {e:#}")));
                continue;
            }
        };
        for &case in &args.cases {
            eprintln!("  {} {} ...", server.name(), case.name());
            match measure(case, server, proc.addr, &args, &origin.url, nonce).await {
                Ok(row) => rows.push(row),
                Err(e) => {
                    eprintln!("  {} {}: {e:#}", server.name(), case.name());
                    failed.push((server.name(), format!("{}: {e:#}", case.name())));
                }
            }
        }
        proc.stop().await;
        crate::servers::clean_run_dir(&dir);
    }
    origin.proc.stop().await;
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(setup.nginx_cache());

    let mut report = crate::host::report_head("cdn bench amplification", &load_before);
    let _ = writeln!(
        report,
        "Servers: edge (`cdn edge`, 1 MiB chunks, `amplification_burst = {}`, \
         `amplification_bytes_per_sec = {}`), {} (slice 1m), {}; objects of {} B, \
         `no-store` object of {} B, {} repeats, {} ranges, mid range of {} B; took {:.0} s.\n",
        args.edge_burst,
        args.edge_rate.map_or_else(
            || format!(
                "{} (default)",
                cdn_edge::config::EdgeConfig::default().amplification_bytes_per_sec
            ),
            |r| r.to_string()
        ),
        crate::host::version("nginx", "-v"),
        crate::host::version("varnishd", "-V"),
        args.size,
        args.no_store_size,
        args.repeats,
        args.ranges,
        args.mid_bytes,
        started.elapsed().as_secs_f64()
    );
    for (server, why) in &failed {
        let _ = writeln!(report, "**{server} not measured**: {why}\n");
    }
    report.push_str(&table(&rows));
    report.push('\n');
    report.push_str(&ratios(&rows));
    std::fs::write(out.join("amplification.csv"), csv(&rows))?;
    std::fs::write(out.join("report.md"), &report)?;
    println!("{report}");
    println!("wrote {}/amplification.csv and report.md", out.display());
    let broken: Vec<_> = rows
        .iter()
        .filter(|r| r.within_bound() == Some(false))
        .map(|r| r.case)
        .collect();
    if !broken.is_empty() {
        eprintln!(
            "warning: the edge exceeded its documented bound in: {}",
            broken.join(", ")
        );
    }
    let bad: u64 = rows.iter().map(|r| r.errors + r.wrong).sum();
    if bad > 0 {
        eprintln!("warning: {bad} failed or wrong responses (see the table)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(case: &'static str, server: &'static str, origin: f64, client: u64, req: f64) -> Row {
        Row {
            case,
            server,
            requests: 1,
            parts: 1,
            asked: client,
            client_bytes: client,
            origin_bytes: origin,
            origin_requests: req,
            ..Row::default()
        }
    }

    #[test]
    fn factors_and_bounds() {
        let r = row("sbr", "edge", MIB as f64, 1, 1.0);
        assert_eq!(r.factor(), Some(MIB as f64));
        assert_eq!(r.origin_requests_per_request(), Some(1.0));
        let empty = row("x", "edge", 10.0, 0, 0.0);
        assert_eq!(empty.factor(), None);
        // One byte: two chunks plus two bytes.
        assert_eq!(edge_bound(MIB, 1, 1, 1), 2 * MIB + 2);
        // 64 one-byte ranges in one request, forwarded with the origin's framing.
        assert_eq!(edge_bound(MIB, 1, 64, 64), 2 * MIB + 128 + 64 * 128);
        assert_eq!(edge_bound(MIB, 50, 1, 1), 50 * (2 * MIB + 2));
        // 8 MiB burst, 1 MiB/s for 2 s, 50 one-byte requests.
        assert_eq!(budget_bound(MIB, 8 * MIB, MIB, 2.0, 50, 1), 50 + 11 * MIB);
        let mut b = r.clone();
        b.bound = Some(edge_bound(MIB, 1, 1, 1));
        assert_eq!(b.within_bound(), Some(true));
        b.origin_bytes = (3 * MIB) as f64;
        assert_eq!(b.within_bound(), Some(false));
    }

    #[test]
    fn ranges_of_the_cases() {
        assert_eq!(
            sparse_ranges(4 * MIB, 4),
            format!(
                "bytes=0-0,{MIB}-{MIB},{m2}-{m2},{m3}-{m3}",
                m2 = 2 * MIB,
                m3 = 3 * MIB
            )
        );
        assert_eq!(sparse_ranges(3, 8), "bytes=0-0,1-1,2-2");
        // 1 MiB from 32.5 MiB of 64 MiB: the second half of chunk 32, the first of chunk 33.
        assert_eq!(
            mid_range(64 * MIB, MIB),
            (32 * MIB + MIB / 2, 33 * MIB + MIB / 2 - 1)
        );
        assert_eq!(mid_range(10, 100), (0, 9));
        assert_eq!(mid_range(10, 4), (6, 9));
    }

    #[test]
    fn table_and_ratios() {
        let rows = vec![
            row("sbr", "edge", MIB as f64, 1, 1.0),
            row("sbr", "nginx", MIB as f64, 1, 1.0),
            row("sbr", "varnish", (64 * MIB) as f64, 1, 1.0),
            row("no-store", "edge", (3 * MIB) as f64, 3 * MIB, 2.0),
            row("no-store", "nginx", (3 * MIB) as f64, 3 * MIB, 3.0),
        ];
        let r = ratios(&rows);
        assert!(
            r.contains("| sbr | 1.00 | 0.02 | 1.00 | 0.02 | 1.00 | 1.00 |"),
            "{r}"
        );
        assert!(
            r.contains("| no-store | 1.00 | – | 1.00 | – | 0.67 | – |"),
            "{r}"
        );
        let t = table(&rows);
        assert!(
            t.contains("| sbr | varnish | 1 | 1 | 1 | 67,108,864 | 67,108,864 |"),
            "{t}"
        );
        assert_eq!(fmt_ratio(8_388_650.0, 3_355_443_200.0), "2.5e-3");
        assert_eq!(fmt_ratio(1.0, 0.0), "–");
        let c = csv(&rows);
        assert_eq!(c.lines().count(), 6);
        assert!(
            c.lines()
                .nth(1)
                .unwrap()
                .starts_with("sbr,edge,1,1,1,1,1048576,1,1048576.000000,")
        );
    }
}
