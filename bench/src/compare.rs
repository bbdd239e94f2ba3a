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
//! wrk (a standard reference generator) with the same request mix. Results: a table with
//! ratios edge/nginx and edge/varnish, `compare.csv` and `report.md` in `--out`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;

use super::loadgen::{self, Job, JobGen, Stats};

const NGINX_CONF: &str = include_str!("../../bench/nginx.conf.in");
const VARNISH_VCL: &str = include_str!("../../bench/varnish.vcl.in");

const MIB: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    Edge,
    Nginx,
    Varnish,
}

impl Server {
    pub(super) fn name(self) -> &'static str {
        match self {
            Server::Edge => "edge",
            Server::Nginx => "nginx",
            Server::Varnish => "varnish",
        }
    }
}

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
    /// Install missing nginx, varnish and wrk with apt-get first.
    #[arg(long)]
    pub install: bool,
    /// The `cdn` binary whose `cdn edge` is measured (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
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

/// A server under test, as a child process (`cdn bench capacity` starts its origin and edge
/// with the same helpers).
pub(super) struct ServerProc {
    child: tokio::process::Child,
    pub(super) addr: SocketAddr,
    what: &'static str,
}

impl ServerProc {
    /// CPU seconds used so far by the process and its children.
    pub(super) fn cpu(&self) -> f64 {
        self.child.id().map_or(0.0, tree_cpu)
    }

    /// SIGTERM (nginx and varnishd then stop their workers), SIGKILL after 10 s.
    pub(super) async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is our child's.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            tracing::warn!(server = self.what, "did not stop after SIGTERM; killing it");
            let _ = self.child.kill().await;
        }
    }
}

/// A free port on 127.0.0.1 (bound, read, released: a tiny race, fine for a benchmark).
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts `program args` with output to `log`, dying with this process.
pub(super) fn spawn_child(
    program: &Path,
    args: &[String],
    envs: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let out = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    // SAFETY: prctl(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", program.display()))
}

/// Waits until `addr` answers `GET path` with a success (or, with no path, accepts TCP).
pub(super) async fn wait_ready(
    addr: SocketAddr,
    path: Option<&str>,
    child: &mut tokio::process::Child,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            anyhow::bail!("{what} exited ({status}) while starting; its log:\n{tail}");
        }
        let ok = match path {
            None => tokio::net::TcpStream::connect(addr).await.is_ok(),
            Some(p) => match loadgen::connect(addr, None).await {
                Ok(mut c) => c
                    .get(p, None, false, Duration::from_secs(2))
                    .await
                    .is_ok_and(|r| r.status < 300),
                Err(_) => false,
            },
        };
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{what} is not answering on {addr} after 30 s (log: {})",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    s
}

/// `cdn edge` (binary `bin`) on a free port in front of `origin`: 2 GiB, 1 MiB chunks,
/// `threads` runtime worker threads, logs at `warn` in `dir/edge.log`; returns once it
/// answers `/healthz`.
pub(super) async fn start_edge(
    bin: &Path,
    origin: SocketAddr,
    dir: &Path,
    threads: usize,
) -> anyhow::Result<ServerProc> {
    start_edge_with(bin, origin, dir, threads, None).await
}

/// [`start_edge`] with a config file (`dir/edge.toml`, written from `config`) under the flags.
pub(super) async fn start_edge_with(
    bin: &Path,
    origin: SocketAddr,
    dir: &Path,
    threads: usize,
    config: Option<&str>,
) -> anyhow::Result<ServerProc> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("edge.log");
    let mut a: Vec<String> = [
        "--log",
        "warn",
        "edge",
        "--listen",
        &addr.to_string(),
        "--origin",
        &format!("http://{origin}"),
        "--name",
        "bench-edge",
        "--capacity",
        "2GiB",
        "--chunk-size",
        "1MiB",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(text) = config {
        let file = dir.join("edge.toml");
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        a.extend(["--config".to_string(), file.display().to_string()]);
    }
    let mut child = spawn_child(
        bin,
        &a,
        &[("TOKIO_WORKER_THREADS", threads.to_string())],
        &log,
    )?;
    wait_ready(addr, Some("/healthz"), &mut child, "edge", &log).await?;
    Ok(ServerProc {
        child,
        addr,
        what: "edge",
    })
}

/// What a server under test is started with, besides its origin and run directory.
pub(super) struct Setup<'a> {
    /// `--cdn-bin`: the binary whose `cdn edge` is measured (default: this one).
    pub(super) cdn_bin: Option<&'a Path>,
    /// Where nginx keeps its cache.
    pub(super) cache_base: &'a Path,
    /// Worker threads of the edge, worker processes of nginx.
    pub(super) threads: usize,
    /// The edge's config file (TOML), if any.
    pub(super) edge_config: Option<&'a str>,
}

impl Setup<'_> {
    /// nginx's cache directory of this process's runs.
    pub(super) fn nginx_cache(&self) -> PathBuf {
        self.cache_base
            .join(format!("cdn-bench-nginx-{}", std::process::id()))
    }
}

/// Starts `server` (edge, nginx with `bench/nginx.conf.in`, varnishd with
/// `bench/varnish.vcl.in`) with a cold cache on a free port in front of `origin`, its files
/// in `dir`; returns once it answers.
pub(super) async fn start_server(
    server: Server,
    setup: &Setup<'_>,
    origin: SocketAddr,
    dir: &Path,
) -> anyhow::Result<ServerProc> {
    let threads = setup.threads;
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    std::fs::create_dir_all(dir)?;
    let log = dir.join(format!("{}.log", server.name()));
    let (mut child, ready_path) = match server {
        Server::Edge => {
            let bin = cdn_bin(setup.cdn_bin)?;
            return start_edge_with(&bin, origin, dir, threads, setup.edge_config).await;
        }
        Server::Nginx => {
            let cache = setup.nginx_cache();
            let _ = std::fs::remove_dir_all(&cache);
            std::fs::create_dir_all(cache.join("tmp"))?;
            let conf = fill(
                NGINX_CONF,
                &[
                    ("WORKERS", threads.to_string()),
                    ("DIR", dir.display().to_string()),
                    ("CACHE_DIR", cache.display().to_string()),
                    ("CACHE_MAX", "2g".into()),
                    ("ORIGIN", origin.to_string()),
                    ("LISTEN", addr.to_string()),
                    ("SLICE", "1m".into()),
                ],
            );
            let conf_path = dir.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            let a = vec![
                "-p".into(),
                dir.display().to_string(),
                "-c".into(),
                conf_path.display().to_string(),
                "-e".into(),
                dir.join("error.log").display().to_string(),
            ];
            let child = spawn_child(Path::new("nginx"), &a, &[], &log)?;
            (child, None)
        }
        Server::Varnish => {
            let vcl = fill(
                VARNISH_VCL,
                &[
                    ("ORIGIN_HOST", origin.ip().to_string()),
                    ("ORIGIN_PORT", origin.port().to_string()),
                ],
            );
            let vcl_path = dir.join("bench.vcl");
            std::fs::write(&vcl_path, vcl)?;
            let work = dir.join("varnish");
            std::fs::create_dir_all(&work)?;
            use std::os::unix::fs::PermissionsExt;
            for d in [dir, work.as_path()] {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))?;
            }
            let a: Vec<String> = vec![
                "-F".into(),
                "-a".into(),
                addr.to_string(),
                "-f".into(),
                vcl_path.display().to_string(),
                "-s".into(),
                "malloc,2G".into(),
                "-n".into(),
                work.display().to_string(),
                "-p".into(),
                "default_ttl=3600".into(),
            ];
            let child = spawn_child(Path::new("varnishd"), &a, &[], &log)?;
            (child, None)
        }
    };
    wait_ready(addr, ready_path, &mut child, server.name(), &log).await?;
    Ok(ServerProc {
        child,
        addr,
        what: server.name(),
    })
}

/// The `cdn` binary whose nodes are measured: `flag` (`--cdn-bin`), else this one.
pub(super) fn cdn_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(b) => Ok(b.to_owned()),
        None => std::env::current_exe().context("finding this executable"),
    }
}

/// `cdn origin` (binary `bin`) on a free port, serving synthetic objects (and an empty
/// root), without access logs; its log is `out/origin.log`.
pub(super) async fn start_origin(bin: &Path, root: &Path, out: &Path) -> anyhow::Result<Origin> {
    start_origin_with(bin, root, out, None).await
}

/// [`start_origin`] with a config file (`out/origin.toml`, written from `config`).
pub(super) async fn start_origin_with(
    bin: &Path,
    root: &Path,
    out: &Path,
    config: Option<&str>,
) -> anyhow::Result<Origin> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let log = out.join("origin.log");
    let mut a: Vec<String> = vec![
        "--log".into(),
        "warn".into(),
        "origin".into(),
        "--listen".into(),
        addr.to_string(),
        "--root".into(),
        root.display().to_string(),
    ];
    if let Some(text) = config {
        let file = out.join("origin.toml");
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        a.extend(["--config".to_string(), file.display().to_string()]);
    }
    let mut child = spawn_child(bin, &a, &[], &log)?;
    wait_ready(addr, Some("/healthz"), &mut child, "origin", &log).await?;
    Ok(Origin {
        proc: ServerProc {
            child,
            addr,
            what: "origin",
        },
        url: format!("http://{addr}"),
    })
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join(program).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(program).is_file())
    })
}

/// The Debian packages `servers` (and wrk, with `wrk`) need that are not installed.
pub(super) fn missing_packages(servers: &[Server], wrk: bool) -> Vec<&'static str> {
    let mut want = Vec::new();
    if servers.contains(&Server::Nginx) && !which("nginx") {
        want.push("nginx");
    }
    if servers.contains(&Server::Varnish) && !which("varnishd") {
        want.push("varnish");
    }
    if wrk && !which("wrk") {
        want.push("wrk");
    }
    want
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

/// `apt-get install -y --no-install-recommends PACKAGES`.
pub(super) fn apt_install(want: &[&str]) -> anyhow::Result<()> {
    eprintln!("installing {} with apt-get ...", want.join(" "));
    let status = std::process::Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(want)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    anyhow::ensure!(
        status.success(),
        "apt-get install {} failed",
        want.join(" ")
    );
    Ok(())
}

pub(super) fn version(program: &str, arg: &str) -> String {
    std::process::Command::new(program)
        .arg(arg)
        .output()
        .map(|o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines().next().unwrap_or("").trim().to_owned()
        })
        .unwrap_or_else(|_| "not installed".into())
}

/// `nproc`, the CPU model and the load average, for the report.
pub(super) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map_or(String::new(), |kb| format!(", {} GiB", kb / 1024 / 1024));
    format!("{n} CPUs ({cpu}){mem}, load average {}", load_average())
}

pub(super) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU seconds (user + system) used so far by process `root` and its live descendants
/// (nginx's workers, Varnish's cache process), from /proc.
pub(super) fn tree_cpu(root: u32) -> f64 {
    // SAFETY: sysconf(3) has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut procs = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid ... utime(14) stime(15): fields after the last ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            procs.push((pid, num(1) as u32, num(11) + num(12)));
        }
    }
    let mut tree = vec![root];
    let mut total = 0u64;
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        for (pid, ppid, ticks) in &procs {
            if *pid == p {
                total += ticks;
            }
            if *ppid == p && !tree.contains(pid) {
                tree.push(*pid);
            }
        }
        i += 1;
    }
    total as f64 / tick
}

/// CPU seconds used so far by this process (the load generator) alone.
pub(super) fn self_cpu() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage(2) writes a `rusage` into the pointer it is given, which is valid.
    let ru = unsafe {
        if libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) != 0 {
            return 0.0;
        }
        ru.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// The origin, a `cdn origin` child process (so this process is only the load generator).
pub(super) struct Origin {
    pub(super) proc: ServerProc,
    pub(super) url: String,
}

impl Origin {
    async fn counters(&self) -> (f64, f64) {
        origin_counters(&self.url).await
    }
}

/// `cdn_origin_requests_total` and `cdn_origin_bytes_sent_total` of the origin at `url`
/// (0 when unreachable).
pub(super) async fn origin_counters(url: &str) -> (f64, f64) {
    (
        loadgen::metric(url, "cdn_origin_requests_total").await,
        loadgen::metric(url, "cdn_origin_bytes_sent_total").await,
    )
}

/// The objects of the `hot-1m` scenario: `n` objects of `chunks` × 1 MiB, ids
/// `{prefix}hot1m-{i}`.
pub(super) fn hot_1m_objects(prefix: &str, n: u64, chunks: u64) -> Vec<(String, u64)> {
    (0..n)
        .map(|i| (format!("{prefix}hot1m-{i}"), chunks * MIB))
        .collect()
}

/// The objects of the `hot-16k` scenario: `n` objects of 16 KiB, ids `{prefix}hot16k-{i}`.
pub(super) fn hot_16k_objects(prefix: &str, n: u64) -> Vec<(String, u64)> {
    (0..n)
        .map(|i| (format!("{prefix}hot16k-{i}"), 16 * 1024))
        .collect()
}

/// A request of `hot-1m`: a Range request for a random aligned 1 MiB chunk of a random object
/// of `objs` (sizes whole MiB).
pub(super) fn hot_1m_job(objs: &[(String, u64)], rng: &mut StdRng) -> Job {
    let (id, size) = &objs[rng.random_range(0..objs.len())];
    let c = rng.random_range(0..(*size / MIB).max(1));
    Job::range(id, *size, c * MIB, (c + 1) * MIB - 1)
}

/// A request of `hot-16k`: a GET of a whole random object of `objs`.
pub(super) fn hot_16k_job(objs: &[(String, u64)], rng: &mut StdRng) -> Job {
    let (id, size) = &objs[rng.random_range(0..objs.len())];
    Job::full(id, *size)
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

/// A wrk Lua script asking for the same mix as [`hot_gen`].
fn wrk_script(args: &CompareArgs, scenario: Scenario) -> String {
    let mut s = format!("math.randomseed({})\nlocal paths = {{\n", args.seed);
    for (id, size) in &hot_objects(args, scenario) {
        let _ = writeln!(s, "  \"/synthetic/{id}?size={size}\",");
    }
    s.push_str("}\n");
    match scenario {
        Scenario::Hot1m => {
            let _ = write!(
                s,
                "local chunks = {}\nlocal cs = {MIB}\nrequest = function()\n  local p = \
                 paths[math.random(#paths)]\n  local c = math.random(chunks) - 1\n  return \
                 wrk.format(\"GET\", p, {{[\"Range\"] = \"bytes=\" .. (c * cs) .. \"-\" .. \
                 ((c + 1) * cs - 1)}})\nend\n",
                args.chunks_per_object
            );
        }
        _ => s.push_str(
            "request = function()\n  return wrk.format(\"GET\", paths[math.random(#paths)])\nend\n",
        ),
    }
    s
}

/// wrk's "1.23MB", "456.78KB" (binary units in wrk) → bytes.
fn wrk_bytes(s: &str) -> f64 {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().unwrap_or(0.0);
    n * match unit {
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024f64.powi(4),
        _ => 1.0,
    }
}

/// wrk's "1.50ms", "250.00us", "1.20s" → milliseconds.
fn wrk_ms(s: &str) -> f64 {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse().unwrap_or(0.0)
    } else if let Some(v) = s.strip_suffix('m') {
        v.parse::<f64>().unwrap_or(0.0) * 60_000.0
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

struct WrkOut {
    requests: u64,
    seconds: f64,
    rps: f64,
    mbps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    non_2xx: u64,
}

fn parse_wrk(out: &str) -> Option<WrkOut> {
    let mut w = WrkOut {
        requests: 0,
        seconds: 0.0,
        rps: 0.0,
        mbps: 0.0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        errors: 0,
        non_2xx: 0,
    };
    let mut found = false;
    for line in out.lines() {
        let l = line.trim();
        let f: Vec<&str> = l.split_whitespace().collect();
        if l.starts_with("Requests/sec:") {
            w.rps = f.get(1)?.parse().ok()?;
            found = true;
        } else if l.starts_with("Transfer/sec:") {
            w.mbps = wrk_bytes(f.get(1)?) / 1e6;
        } else if f.first() == Some(&"50%") {
            w.p50_ms = wrk_ms(f.get(1)?);
        } else if f.first() == Some(&"99%") {
            w.p99_ms = wrk_ms(f.get(1)?);
        } else if l.contains("requests in") {
            // "123456 requests in 10.00s, 1.21GB read"
            w.requests = f.first()?.parse().ok()?;
            w.seconds = wrk_ms(f.get(3)?.trim_end_matches(',')) / 1000.0;
        } else if l.starts_with("Socket errors:") {
            // "Socket errors: connect 0, read 0, write 0, timeout 0"
            w.errors = l
                .split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if l.starts_with("Non-2xx or 3xx responses:") {
            w.non_2xx = f.last()?.parse().ok()?;
        }
    }
    found.then_some(w)
}

async fn run_wrk(
    args: &CompareArgs,
    scenario: Scenario,
    server: Server,
    addr: SocketAddr,
    dir: &Path,
    origin: &Origin,
) -> anyhow::Result<Row> {
    // The script depends only on the scenario: one copy in the run directory serves every
    // server (`dir` is the server's own subdirectory).
    let script = dir
        .parent()
        .unwrap_or(dir)
        .join(format!("wrk-{}.lua", scenario.name()));
    std::fs::write(&script, wrk_script(args, scenario))?;
    let before = origin.counters().await;
    let out = tokio::process::Command::new("wrk")
        .args([
            "-t2".to_string(),
            format!("-c{}", args.connections),
            format!("-d{}s", args.duration.ceil() as u64),
            "--latency".into(),
            "-s".into(),
            script.display().to_string(),
            format!("http://{addr}"),
        ])
        .kill_on_drop(true)
        .output()
        .await
        .context("running wrk")?;
    let after = origin.counters().await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    std::fs::write(
        dir.join(format!("wrk-{}.txt", scenario.name())),
        format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
    )?;
    let w = parse_wrk(&text).with_context(|| format!("cannot read wrk's output:\n{text}"))?;
    Ok(Row {
        scenario: scenario.name(),
        server: server.name(),
        tool: "wrk",
        requests: w.requests,
        seconds: w.seconds,
        rps: w.rps,
        mbps: w.mbps,
        p50_ms: w.p50_ms,
        p99_ms: w.p99_ms,
        origin_requests: after.0 - before.0,
        origin_bytes: after.1 - before.1,
        warm_origin_requests: 0.0,
        errors: w.errors,
        bad_status: w.non_2xx,
        corrupt: 0,
        verified: 0,
        server_cpu_us: 0.0,
        gen_cpu_us: None,
        note: String::new(),
    })
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

/// Every scenario against every server. All servers run at once (idle unless measured);
/// hot scenarios are measured `--repeats` times, alternating servers, and the median run
/// (by req/s) is kept, so background load on a shared machine hits every server alike.
async fn run_all(
    args: &CompareArgs,
    origin: &Origin,
    out: &Path,
    threads: usize,
    nonce: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut running: Vec<Running> = Vec::new();
    for &server in &args.servers {
        let dir = out.join(server.name());
        let _ = std::fs::remove_dir_all(&dir);
        let setup = Setup {
            cdn_bin: args.cdn_bin.as_deref(),
            cache_base: &args.cache_base,
            threads,
            edge_config: None,
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
    let result = scenarios(args, origin, &running, nonce).await;
    for r in running {
        r.proc.stop().await;
        clean_run_dir(&r.dir);
    }
    result
}

/// Keeps a stopped server's configs, logs and wrk output; drops Varnish's shared-memory files
/// and nginx's empty temp directories.
pub(super) fn clean_run_dir(dir: &Path) {
    for junk in [
        "varnish",
        "client_body",
        "proxy_temp",
        "fastcgi_temp",
        "uwsgi_temp",
        "scgi_temp",
    ] {
        let _ = std::fs::remove_dir_all(dir.join(junk));
    }
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
                for mut runs in runs {
                    runs.sort_by(|a, b| a.rps.total_cmp(&b.rps));
                    let (lo, hi) = (runs[0].rps, runs[runs.len() - 1].rps);
                    let n = runs.len();
                    let mut row = runs.swap_remove(n / 2);
                    if n > 1 {
                        row.note = format!("median of {n} runs; req/s {lo:.0}..{hi:.0}");
                    }
                    // Failures of any run count.
                    for o in &runs {
                        row.errors += o.errors;
                        row.bad_status += o.bad_status;
                        row.corrupt += o.corrupt;
                    }
                    rows.push(row);
                }
                if args.wrk {
                    for r in running {
                        eprintln!("  {} {}: wrk ...", r.server.name(), scenario.name());
                        let cpu0 = r.proc.cpu();
                        let mut row =
                            run_wrk(args, scenario, r.server, r.proc.addr, &r.dir, origin).await?;
                        row.server_cpu_us =
                            (r.proc.cpu() - cpu0) * 1e6 / row.requests.max(1) as f64;
                        rows.push(row);
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

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "–".into()
    }
}

fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | server | tool | req/s | MB/s | p50 ms | p99 ms | origin req (run) | origin MB (run) | origin req (warm) | server CPU µs/req | generator CPU µs/req | errors / bad / corrupt (verified) | notes |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {:.1} | {:.2} | {:.2} | {} | {:.1} | {} | {:.0} | {} | {} / {} / {} ({}) | {} |",
            r.scenario,
            r.server,
            r.tool,
            r.rps,
            r.mbps,
            r.p50_ms,
            r.p99_ms,
            fmt_count(r.origin_requests),
            r.origin_bytes / 1e6,
            fmt_count(r.warm_origin_requests),
            r.server_cpu_us,
            r.gen_cpu_us.map_or("–".into(), |g| format!("{g:.0}")),
            r.errors,
            r.bad_status,
            r.corrupt,
            r.verified,
            r.note
        );
    }
    s
}

fn fmt_count(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn ratios(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| scenario | tool | req/s edge/nginx | req/s edge/varnish | MB/s edge/nginx | MB/s edge/varnish | p99 edge/nginx | p99 edge/varnish | origin req edge / nginx / varnish |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let mut keys: Vec<(&str, &str)> = rows.iter().map(|r| (r.scenario, r.tool)).collect();
    keys.dedup();
    let mut seen = std::collections::HashSet::new();
    for (sc, tool) in keys {
        if !seen.insert((sc, tool)) {
            continue;
        }
        let get = |srv: &str| {
            rows.iter()
                .find(|r| r.scenario == sc && r.tool == tool && r.server == srv)
        };
        let Some(e) = get("edge") else { continue };
        let (n, v) = (get("nginx"), get("varnish"));
        let r = |o: Option<&Row>, f: fn(&Row) -> f64| o.map_or("–".into(), |o| ratio(f(e), f(o)));
        let origin = |o: Option<&Row>| o.map_or("–".into(), |o| fmt_count(o.origin_requests));
        let orig = if sc == "cold" {
            format!(
                "{} / {} / {}",
                fmt_count(e.origin_requests),
                origin(n),
                origin(v)
            )
        } else {
            format!(
                "{} / {} / {} (warm: {} / {} / {})",
                fmt_count(e.origin_requests),
                origin(n),
                origin(v),
                fmt_count(e.warm_origin_requests),
                n.map_or("–".into(), |o| fmt_count(o.warm_origin_requests)),
                v.map_or("–".into(), |o| fmt_count(o.warm_origin_requests)),
            )
        };
        let _ = writeln!(
            s,
            "| {sc} | {tool} | {} | {} | {} | {} | {} | {} | {orig} |",
            r(n, |x| x.rps),
            r(v, |x| x.rps),
            r(n, |x| x.mbps),
            r(v, |x| x.mbps),
            r(n, |x| x.p99_ms),
            r(v, |x| x.p99_ms),
        );
    }
    s
}

fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "scenario,server,tool,requests,seconds,req_per_s,mb_per_s,p50_ms,p99_ms,origin_requests,origin_bytes,warm_origin_requests,errors,bad_status,corrupt,verified,server_cpu_us_per_req,gen_cpu_us_per_req\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{},{},{},{},{:.3},{:.1},{:.2},{:.3},{:.3},{},{:.0},{},{},{},{},{},{:.1},{}",
            r.scenario,
            r.server,
            r.tool,
            r.requests,
            r.seconds,
            r.rps,
            r.mbps,
            r.p50_ms,
            r.p99_ms,
            r.origin_requests,
            r.origin_bytes,
            r.warm_origin_requests,
            r.errors,
            r.bad_status,
            r.corrupt,
            r.verified,
            r.server_cpu_us,
            r.gen_cpu_us.map_or(String::new(), |g| format!("{g:.1}"))
        );
    }
    s
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
    // Order: scenario, then tool, then server, as given.
    let pos = |r: &Row| {
        (
            args.scenarios.iter().position(|s| s.name() == r.scenario),
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

    let cmd: Vec<String> = std::env::args().collect();
    let mut report = String::new();
    let _ = writeln!(report, "# cdn bench compare\n");
    let _ = writeln!(report, "Command: `{}`\n", cmd.join(" "));
    let _ = writeln!(
        report,
        "Machine: {}; load average before / after: {load_before} / {}\n",
        machine(),
        load_average()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 10s test @ http://127.0.0.1:1234
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.05ms  300.00us   10.00ms   90.00%
    Req/Sec    30.00k     1.00k   32.00k    70.00%
  Latency Distribution
     50%  812.00us
     75%    1.20ms
     90%    1.50ms
     99%    2.10ms
  600000 requests in 10.00s, 9.50GB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  60000.00
Transfer/sec:    0.95GB
";
        let w = parse_wrk(out).expect("parsed");
        assert_eq!(w.requests, 600_000);
        assert!((w.seconds - 10.0).abs() < 1e-9);
        assert!((w.rps - 60_000.0).abs() < 1e-9);
        assert!((w.p50_ms - 0.812).abs() < 1e-9);
        assert!((w.p99_ms - 2.1).abs() < 1e-9);
        assert_eq!((w.errors, w.non_2xx), (3, 4));
        assert!((w.mbps - 0.95 * 1024f64.powi(3) / 1e6).abs() < 1e-6);
    }

    #[test]
    fn templates_fill() {
        let c = fill(NGINX_CONF, &[("SLICE", "1m".into())]);
        assert!(c.contains("slice 1m;"));
        assert!(c.contains("proxy_cache_lock on;"));
        assert!(VARNISH_VCL.contains("@ORIGIN_PORT@"));
    }
}
