//! `cdn bench tls`: hot hits over TLS through the edge and through nginx (TLS on the same
//! certificate, `proxy_cache` + `slice` as in `cdn bench compare`), with h2load (Debian's
//! nghttp2-client) as the client for both: HTTP/1.1 and HTTP/2, 16 KiB and 1 MiB objects,
//! then new TLS handshakes per second (one request per connection). Both servers get the
//! same worker count; p99 comes from h2load's per-request log. Writes `tls.csv` and
//! `report.md` (the table, with ratios edge/nginx) into `--out`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::host::{apt_install, machine, version};
use crate::servers::{
    ServerProc, cdn_bin, free_port, spawn_child, start_edge_with, start_origin, wait_ready,
};

/// `cdn bench tls` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct TlsArgs {
    /// Where results go.
    #[arg(long, default_value = "bench/results/tls")]
    pub out: PathBuf,
    /// Requests per hot-hit run.
    #[arg(long, default_value_t = 20_000)]
    pub requests: u64,
    /// Client connections of a hot-hit run.
    #[arg(long, default_value_t = 32)]
    pub connections: u64,
    /// Concurrent streams per connection with HTTP/2.
    #[arg(long, default_value_t = 8)]
    pub streams: u64,
    /// New connections (one request each) of the handshake run.
    #[arg(long, default_value_t = 2_000)]
    pub handshakes: u64,
    /// Worker threads of the edge, worker processes of nginx, threads of h2load.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// The `cdn` binary whose edge is measured (default: this one).
    #[arg(long)]
    pub cdn_bin: Option<PathBuf>,
}

const NGINX_TLS_CONF: &str = r#"# nginx with TLS in front of the benchmark's origin, written by `cdn bench tls`.
user root;
worker_processes @WORKERS@;
daemon off;
master_process on;
pid @DIR@/nginx.pid;
error_log @DIR@/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65s;
    keepalive_requests 1000000;
    client_body_temp_path @DIR@/client_body;
    proxy_temp_path @DIR@/cache/tmp;
    proxy_cache_path @DIR@/cache/c levels=1:2 keys_zone=bench:64m max_size=2g inactive=1h use_temp_path=off;
    upstream origin { server @ORIGIN@; keepalive 64; }
    server {
        listen @LISTEN@ ssl http2 backlog=4096;
        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;
        http2_max_concurrent_streams 100;
        location / {
            slice 1m;
            proxy_cache bench;
            proxy_cache_key $uri$is_args$args$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1h;
            proxy_cache_lock on;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass http://origin;
        }
    }
}
"#;

/// One h2load run's outcome.
#[derive(Debug, Clone, Default)]
pub(crate) struct H2loadOut {
    pub req_s: f64,
    pub mb_s: f64,
    pub p99_ms: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub cipher: String,
}

fn parse_h2load(out: &str, log: &Path) -> H2loadOut {
    let mut r = H2loadOut::default();
    for line in out.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("finished in ") {
            // "finished in 1.23s, 8130.08 req/s, 127.09MB/s"
            let parts: Vec<&str> = rest.split(", ").collect();
            if let Some(v) = parts.get(1).and_then(|p| p.split(' ').next()) {
                r.req_s = v.parse().unwrap_or(0.0);
            }
            if let Some(v) = parts.get(2) {
                let v = v.trim();
                let (num, mult) = if let Some(n) = v.strip_suffix("GB/s") {
                    (n, 1024.0)
                } else if let Some(n) = v.strip_suffix("MB/s") {
                    (n, 1.0)
                } else if let Some(n) = v.strip_suffix("KB/s") {
                    (n, 1.0 / 1024.0)
                } else {
                    (v.trim_end_matches("B/s"), 1.0 / (1024.0 * 1024.0))
                };
                r.mb_s = num.parse::<f64>().unwrap_or(0.0) * mult;
            }
        } else if let Some(rest) = l.strip_prefix("requests: ") {
            // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, ..."
            for part in rest.split(", ") {
                let mut it = part.split(' ');
                let (n, what) = (it.next(), it.next());
                let n = n.and_then(|n| n.parse().ok()).unwrap_or(0);
                match what {
                    Some("succeeded") => r.succeeded = n,
                    Some("failed") => r.failed = n,
                    _ => {}
                }
            }
        } else if l.starts_with("TLS Protocol:") || l.starts_with("Cipher:") {
            if !r.cipher.is_empty() {
                r.cipher.push(' ');
            }
            r.cipher.push_str(l);
        }
    }
    // Log lines: start time, status, duration (µs), tab-separated.
    let mut durations: Vec<u64> = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.trim().parse().ok())
        .collect();
    durations.sort_unstable();
    if !durations.is_empty() {
        let i = ((durations.len() as f64 * 0.99).ceil() as usize).clamp(1, durations.len()) - 1;
        r.p99_ms = durations[i] as f64 / 1000.0;
    }
    r
}

/// Runs h2load with `args` (its per-request log to `log`) and reads its report.
pub(crate) async fn h2load(args: &[String], log: &Path) -> anyhow::Result<H2loadOut> {
    let _ = std::fs::remove_file(log);
    let out = tokio::process::Command::new("h2load")
        .args(args)
        .arg(format!("--log-file={}", log.display()))
        .output()
        .await
        .context("running h2load (apt-get install nghttp2-client)")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        anyhow::bail!(
            "h2load failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(parse_h2load(&text, log))
}

struct Row {
    scenario: String,
    server: &'static str,
    out: H2loadOut,
}

async fn start_nginx(
    dir: &Path,
    origin: SocketAddr,
    cert: &Path,
    key: &Path,
    workers: usize,
) -> anyhow::Result<ServerProc> {
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let _ = std::fs::remove_dir_all(dir.join("cache"));
    std::fs::create_dir_all(dir.join("cache/tmp"))?;
    let mut conf = NGINX_TLS_CONF.to_string();
    for (k, v) in [
        ("WORKERS", workers.to_string()),
        ("DIR", dir.display().to_string()),
        ("ORIGIN", origin.to_string()),
        ("LISTEN", addr.to_string()),
        ("CERT", cert.display().to_string()),
        ("KEY", key.display().to_string()),
    ] {
        conf = conf.replace(&format!("@{k}@"), &v);
    }
    let conf_path = dir.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let log = dir.join("nginx.log");
    let a = vec![
        "-p".into(),
        dir.display().to_string(),
        "-c".into(),
        conf_path.display().to_string(),
        "-e".into(),
        dir.join("error.log").display().to_string(),
    ];
    let mut child = spawn_child(Path::new("nginx"), &a, &[], &log)?;
    wait_ready(addr, None, &mut child, "nginx", &log).await?;
    Ok(ServerProc::new(child, addr, "nginx"))
}

pub async fn run(args: TlsArgs) -> anyhow::Result<()> {
    let missing: Vec<&str> = [("h2load", "nghttp2-client"), ("nginx", "nginx")]
        .into_iter()
        .filter(|(b, _)| !on_path(b))
        .map(|(_, p)| p)
        .collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
    }
    let out = std::path::absolute(&args.out).unwrap_or(args.out.clone());
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let bin = cdn_bin(args.cdn_bin.as_deref())?;
    // One certificate for both servers (IP SAN 127.0.0.1; h2load does not verify it).
    let pki = out.join("pki");
    cdn_edge::peer::pki::write_lab_pki(&pki, &["127.0.0.1".to_string()])?;
    let (cert, key) = (pki.join("127.0.0.1.pem"), pki.join("127.0.0.1.key"));
    let root = out.join("root");
    std::fs::create_dir_all(&root)?;
    let origin = start_origin(&bin, &root, &out).await?;
    let edge_tls: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let edge_cfg = format!(
        "http3_on_https = false\n[tls]\nlisten = \"{edge_tls}\"\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let edge_dir = out.join("edge");
    let edge = start_edge_with(
        &bin,
        origin.proc.addr,
        &edge_dir,
        args.threads,
        Some(&edge_cfg),
    )
    .await?;
    let nginx = start_nginx(
        &out.join("nginx"),
        origin.proc.addr,
        &cert,
        &key,
        args.threads,
    )
    .await?;
    let servers = [("edge", edge_tls), ("nginx", nginx.addr)];
    let objects = [("16KiB", 16 * 1024u64), ("1MiB", 1024 * 1024)];
    let t = args.threads.to_string();
    let mut rows = Vec::new();
    let log = out.join("h2load.log");
    for (name, size) in objects {
        for (server, addr) in servers {
            let url = format!("https://{addr}/synthetic/tls{name}?size={size}");
            // Warm: the object is then a hit for every measured request.
            h2load(&["--h1".into(), "-n".into(), "4".into(), url.clone()], &log).await?;
            for proto in ["h1", "h2"] {
                let mut a: Vec<String> = vec![
                    "-n".into(),
                    args.requests.to_string(),
                    "-c".into(),
                    args.connections.to_string(),
                    "-t".into(),
                    t.clone(),
                ];
                if proto == "h1" {
                    a.push("--h1".into());
                } else {
                    a.extend(["-m".into(), args.streams.to_string()]);
                }
                a.push(url.clone());
                let o = h2load(&a, &log).await?;
                println!(
                    "{server:5} {proto} {name:5}: {:>9.0} req/s {:>8.1} MB/s p99 {:>7.2} ms ({} ok, {} failed)",
                    o.req_s, o.mb_s, o.p99_ms, o.succeeded, o.failed
                );
                rows.push(Row {
                    scenario: format!("hot {name} {proto}"),
                    server,
                    out: o,
                });
            }
        }
    }
    // New TLS handshakes: every connection makes one request of a 1-byte object.
    for (server, addr) in servers {
        let url = format!("https://{addr}/synthetic/tlshs?size=1");
        h2load(&["--h1".into(), "-n".into(), "2".into(), url.clone()], &log).await?;
        let n = args.handshakes.to_string();
        let a = vec![
            "--h1".into(),
            "-n".into(),
            n.clone(),
            "-c".into(),
            n,
            "-t".into(),
            t.clone(),
            url,
        ];
        let o = h2load(&a, &log).await?;
        println!(
            "{server:5} handshakes: {:>9.0} conn/s p99 {:>7.2} ms ({} ok, {} failed)",
            o.req_s, o.p99_ms, o.succeeded, o.failed
        );
        rows.push(Row {
            scenario: "new TLS connections (1 request each)".into(),
            server,
            out: o,
        });
    }
    edge.stop().await;
    nginx.stop().await;
    origin.proc.stop().await;
    let report = report(&args, &rows);
    println!("\n{report}");
    std::fs::write(out.join("report.md"), &report)?;
    let mut csv = String::from("scenario,server,req_s,mb_s,p99_ms,succeeded,failed,tls\n");
    for r in &rows {
        csv.push_str(&format!(
            "{},{},{:.0},{:.1},{:.2},{},{},{}\n",
            r.scenario,
            r.server,
            r.out.req_s,
            r.out.mb_s,
            r.out.p99_ms,
            r.out.succeeded,
            r.out.failed,
            r.out.cipher
        ));
    }
    std::fs::write(out.join("tls.csv"), csv)?;
    Ok(())
}

fn report(args: &TlsArgs, rows: &[Row]) -> String {
    let mut s = format!(
        "`cdn bench tls --requests {} --connections {} --streams {} --handshakes {} --threads {}` \
         on {}; {}; {}\n\n",
        args.requests,
        args.connections,
        args.streams,
        args.handshakes,
        args.threads,
        machine(),
        version("nginx", "-v"),
        version("h2load", "--version"),
    );
    s.push_str("| scenario | edge req/s | nginx req/s | req/s edge/nginx | edge MB/s | nginx MB/s | edge p99 ms | nginx p99 ms | p99 edge/nginx |\n");
    s.push_str("|---|---|---|---|---|---|---|---|---|\n");
    let mut scenarios: Vec<&str> = Vec::new();
    for r in rows {
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
    }
    for sc in scenarios {
        let get = |server: &str| {
            rows.iter()
                .find(|r| r.scenario == sc && r.server == server)
                .map(|r| r.out.clone())
                .unwrap_or_default()
        };
        let (e, n) = (get("edge"), get("nginx"));
        let ratio = |a: f64, b: f64| {
            if b > 0.0 {
                format!("{:.2}", a / b)
            } else {
                "-".into()
            }
        };
        s.push_str(&format!(
            "| {sc} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {} |\n",
            e.req_s,
            n.req_s,
            ratio(e.req_s, n.req_s),
            e.mb_s,
            n.mb_s,
            e.p99_ms,
            n.p99_ms,
            ratio(e.p99_ms, n.p99_ms)
        ));
    }
    let cipher = |server: &str| {
        rows.iter()
            .find(|r| r.server == server)
            .map(|r| r.out.cipher.clone())
            .unwrap_or_default()
    };
    s.push_str(&format!(
        "\nNegotiated: edge {}; nginx {}.\n",
        cipher("edge"),
        cipher("nginx")
    ));
    s
}

/// Whether `program` is on the PATH.
pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}
