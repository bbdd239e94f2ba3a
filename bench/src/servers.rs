//! The servers under test as child processes, for every benchmark that starts them
//! (`compare`, `capacity`, `amplification`): `cdn origin` and `cdn edge` from this binary (or
//! `--cdn-bin`), nginx (`bench/nginx.conf.in`) and varnishd (`bench/varnish.vcl.in`), each on a
//! free port with its own log and run directory, started through the lab's child-process
//! toolkit (`cdn_lab::procs`: PDEATHSIG, SIGTERM then SIGKILL, wait until ready).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cdn_lab::procs::{self, ChildSpec};

use crate::host::tree_cpu;
use crate::loadgen;

const NGINX_CONF: &str = include_str!("../../bench/nginx.conf.in");
const VARNISH_VCL: &str = include_str!("../../bench/varnish.vcl.in");

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    Edge,
    Nginx,
    Varnish,
}

impl Server {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Server::Edge => "edge",
            Server::Nginx => "nginx",
            Server::Varnish => "varnish",
        }
    }
}

/// A server under test, as a child process (`cdn bench capacity` starts its origin and edge
/// with the same helpers).
pub(crate) struct ServerProc {
    child: tokio::process::Child,
    pub(crate) addr: SocketAddr,
    what: &'static str,
    /// Processes that are part of the server without being its children (varnishncsa,
    /// Varnish's access log): their CPU time counts as the server's.
    helpers: Vec<tokio::process::Child>,
}

impl ServerProc {
    pub(crate) fn new(child: tokio::process::Child, addr: SocketAddr, what: &'static str) -> Self {
        ServerProc {
            child,
            addr,
            what,
            helpers: Vec::new(),
        }
    }

    /// The process id, while it runs.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// CPU seconds used so far by the process and its children (and its helpers).
    pub(crate) fn cpu(&self) -> f64 {
        std::iter::once(&self.child)
            .chain(&self.helpers)
            .map(|c| c.id().map_or(0.0, tree_cpu))
            .sum()
    }

    /// SIGTERM (nginx and varnishd then stop their workers), SIGKILL after 10 s; helpers
    /// last.
    pub(crate) async fn stop(mut self) {
        procs::stop(&mut self.child, Duration::from_secs(10), self.what).await;
        for mut h in self.helpers {
            procs::stop(&mut h, Duration::from_secs(10), "helper").await;
        }
    }
}

/// A free port on 127.0.0.1 (bound, read, released: a tiny race, fine for a benchmark).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Starts `program args` with output to `log` (truncated), dying with this process.
pub(crate) fn spawn_child(
    program: &Path,
    args: &[String],
    envs: &[(&str, String)],
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let (child, _) = procs::spawn(&ChildSpec {
        envs,
        ..ChildSpec::new(program, args, log)
    })?;
    Ok(child)
}

/// Waits (30 s at most) until `addr` answers `GET path` with a success (or, with no path,
/// accepts TCP).
pub(crate) async fn wait_ready(
    addr: SocketAddr,
    path: Option<&str>,
    child: &mut tokio::process::Child,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    procs::wait_ready(child, what, log, Duration::from_secs(30), || async move {
        match path {
            None => tokio::net::TcpStream::connect(addr).await.is_ok(),
            Some(p) => match loadgen::connect(addr, None).await {
                Ok(mut c) => c
                    .get(p, None, false, Duration::from_secs(2))
                    .await
                    .is_ok_and(|r| r.status < 300),
                Err(_) => false,
            },
        }
    })
    .await
    .with_context(|| format!("{what} on {addr}"))
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut s = template.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("@{k}@"), v);
    }
    s
}

/// `cdn edge` (binary `bin`) on a free port in front of `origin`: 2 GiB, 1 MiB chunks,
/// `threads` runtime worker threads, logs at `warn` (no access log) in `dir/edge.log`;
/// returns once it answers `/healthz`.
pub(crate) async fn start_edge(
    bin: &Path,
    origin: SocketAddr,
    dir: &Path,
    threads: usize,
) -> anyhow::Result<ServerProc> {
    start_edge_with(bin, origin, dir, threads, None).await
}

/// [`start_edge`] with a config file (`dir/edge.toml`, written from `config`) under the flags.
pub(crate) async fn start_edge_with(
    bin: &Path,
    origin: SocketAddr,
    dir: &Path,
    threads: usize,
    config: Option<&str>,
) -> anyhow::Result<ServerProc> {
    start_edge_logged(bin, origin, dir, threads, config, "warn").await
}

/// [`start_edge_with`] at log filter `log` (`info`, the default of `cdn edge`, writes the
/// access log; `warn` does not).
pub(crate) async fn start_edge_logged(
    bin: &Path,
    origin: SocketAddr,
    dir: &Path,
    threads: usize,
    config: Option<&str>,
    log_filter: &str,
) -> anyhow::Result<ServerProc> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log = dir.join("edge.log");
    let mut a: Vec<String> = [
        "--log",
        log_filter,
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
    Ok(ServerProc::new(child, addr, "edge"))
}

/// What a server under test is started with, besides its origin and run directory.
pub(crate) struct Setup<'a> {
    /// `--cdn-bin`: the binary whose `cdn edge` is measured (default: this one).
    pub(crate) cdn_bin: Option<&'a Path>,
    /// Where nginx keeps its cache.
    pub(crate) cache_base: &'a Path,
    /// Worker threads of the edge, worker processes of nginx.
    pub(crate) threads: usize,
    /// The edge's config file (TOML), if any.
    pub(crate) edge_config: Option<&'a str>,
    /// Each server's default access log on (the edge at `--log info`, nginx's `access_log`
    /// in its default format, varnishncsa beside Varnish), or every access log off.
    pub(crate) access_log: bool,
}

impl Setup<'_> {
    /// nginx's cache directory of this process's runs.
    pub(crate) fn nginx_cache(&self) -> PathBuf {
        self.cache_base
            .join(format!("cdn-bench-nginx-{}", std::process::id()))
    }
}

/// Starts `server` (edge, nginx with `bench/nginx.conf.in`, varnishd with
/// `bench/varnish.vcl.in`) with a cold cache on a free port in front of `origin`, its files
/// in `dir`; returns once it answers.
pub(crate) async fn start_server(
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
            let log = if setup.access_log { "info" } else { "warn" };
            return start_edge_logged(&bin, origin, dir, threads, setup.edge_config, log).await;
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
                    (
                        "ACCESS_LOG",
                        if setup.access_log {
                            dir.join("access.log").display().to_string()
                        } else {
                            "off".into()
                        },
                    ),
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
    let mut proc = ServerProc::new(child, addr, server.name());
    if server == Server::Varnish && setup.access_log {
        // Varnish's access log is varnishncsa reading the shared-memory log (NCSA format).
        let work = dir.join("varnish");
        let a: Vec<String> = vec![
            "-n".into(),
            work.display().to_string(),
            "-w".into(),
            dir.join("access.log").display().to_string(),
        ];
        let ncsa = spawn_child(
            Path::new("varnishncsa"),
            &a,
            &[],
            &dir.join("varnishncsa.log"),
        )?;
        proc.helpers.push(ncsa);
        // It writes the file once it is attached to the log.
        let file = dir.join("access.log");
        let mut ok = false;
        for _ in 0..300 {
            if file.exists() {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !ok {
            proc.stop().await;
            anyhow::bail!("varnishncsa did not open {}", file.display());
        }
    }
    Ok(proc)
}

/// The `cdn` binary whose nodes are measured: `flag` (`--cdn-bin`), else this one.
pub(crate) fn cdn_bin(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    match flag {
        Some(b) => Ok(b.to_owned()),
        None => std::env::current_exe().context("finding this executable"),
    }
}

/// `cdn origin` (binary `bin`) on a free port, serving synthetic objects (and an empty
/// root), without access logs; its log is `out/origin.log`.
pub(crate) async fn start_origin(bin: &Path, root: &Path, out: &Path) -> anyhow::Result<Origin> {
    start_origin_with(bin, root, out, None).await
}

/// [`start_origin`] with a config file (`out/origin.toml`, written from `config`).
pub(crate) async fn start_origin_with(
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
        proc: ServerProc::new(child, addr, "origin"),
        url: format!("http://{addr}"),
    })
}

/// The origin, a `cdn origin` child process (so this process is only the load generator).
pub(crate) struct Origin {
    pub(crate) proc: ServerProc,
    pub(crate) url: String,
}

impl Origin {
    pub(crate) async fn counters(&self) -> (f64, f64) {
        origin_counters(&self.url).await
    }
}

/// `cdn_origin_requests_total` and `cdn_origin_bytes_sent_total` of the origin at `url`
/// (0 when unreachable).
pub(crate) async fn origin_counters(url: &str) -> (f64, f64) {
    (
        loadgen::metric(url, cdn_origin::metric_names::REQUESTS_TOTAL).await,
        loadgen::metric(url, cdn_origin::metric_names::BYTES_SENT_TOTAL).await,
    )
}

/// Keeps a stopped server's configs, logs and wrk output; drops Varnish's shared-memory files,
/// nginx's empty temp directories and the access logs (millions of lines; their last lines
/// are kept in `access.tail`, the edge's in `edge.log`'s last 64 KiB).
pub(crate) fn clean_run_dir(dir: &Path) {
    const KEEP: u64 = 64 << 10;
    for (log, tail) in [("access.log", "access.tail"), ("edge.log", "edge.log")] {
        let path = dir.join(log);
        let Ok(len) = std::fs::metadata(&path).map(|m| m.len()) else {
            continue;
        };
        if len <= KEEP && log == "edge.log" {
            continue;
        }
        let last = (|| -> std::io::Result<Vec<u8>> {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = std::fs::File::open(&path)?;
            f.seek(SeekFrom::Start(len.saturating_sub(KEEP)))?;
            let mut b = Vec::new();
            f.read_to_end(&mut b)?;
            Ok(b)
        })()
        .unwrap_or_default();
        // From the first whole line on.
        let start = if len > KEEP {
            last.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1)
        } else {
            0
        };
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::write(dir.join(tail), &last[start..]);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_fill() {
        let c = fill(NGINX_CONF, &[("SLICE", "1m".into())]);
        assert!(c.contains("slice 1m;"));
        assert!(c.contains("proxy_cache_lock on;"));
        assert!(VARNISH_VCL.contains("@ORIGIN_PORT@"));
    }
}
