//! `cdn bench h3`: hot hits over HTTP/3 against the same edge's HTTP/2 over TLS (and its
//! HTTP/1.1 in cleartext), in one run. Starts a `cdn origin` and a `cdn edge` with `[http3]`
//! and an HTTPS listener on the same certificate (made for the run, as the peers' are), warms
//! every object, then for each scenario (`hot-16k`: whole 16 KiB objects; `hot-1m`: 1 MiB
//! ranges) runs, for the same time and at the same concurrency: a closed loop of N
//! connections × M streams over HTTP/3 (the edge's own HTTP/3 client,
//! `cdn_edge::http3::client`; every body checked byte for byte against the origin's
//! generator); h2load (Debian's nghttp2-client) with N connections × M streams over HTTP/2 and
//! TLS (bodies counted, not checked; `hot-1m` asks each object's first MiB, h2load sending one
//! header set to every URL); and the shared HTTP/1.1 generator over N × M keep-alive cleartext
//! connections. req/s, MB/s and p50/p99 are reported with the ratios HTTP/3 / HTTP/2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;

use cdn_edge::http3::client::{Client, ClientConfig, config_trusting_pem};

use super::loadgen::{self, Job};
use crate::hot::{hot_1m_job, hot_1m_objects, hot_16k_job, hot_16k_objects};
use crate::servers as compare;

/// `cdn bench h3`
#[derive(Debug, Clone, clap::Args)]
pub struct H3Args {
    /// HTTP/3 connections (and, × streams, TCP connections).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Concurrent requests (streams) per HTTP/3 connection.
    #[arg(long, default_value_t = 8)]
    pub streams: usize,
    /// Measured seconds per scenario and protocol.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Worker threads of the edge (TOKIO_WORKER_THREADS).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Run directory (logs, certificates, configs).
    #[arg(long, default_value = "bench-out/h3")]
    pub dir: PathBuf,
    /// Threads of h2load (the HTTP/2 client).
    #[arg(long, default_value_t = 1)]
    pub h2load_threads: usize,
}

struct Row {
    scenario: &'static str,
    proto: &'static str,
    requests: u64,
    bytes: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    /// What h2load measured itself (its own clock and per-request log), for its rows.
    p99: Option<f64>,
    p50: Option<f64>,
    rps: Option<f64>,
}

impl Row {
    fn rps(&self) -> f64 {
        self.rps.unwrap_or(self.requests as f64 / self.secs)
    }
    fn p99_ms(&self) -> f64 {
        self.p99.unwrap_or_else(|| loadgen::ms(&self.hist, 0.99))
    }
    fn p50_ms(&self) -> Option<f64> {
        match self.p99 {
            Some(_) => self.p50,
            None => Some(loadgen::ms(&self.hist, 0.5)),
        }
    }
}

pub async fn run(args: H3Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.connections > 0 && args.streams > 0,
        "--connections and --streams must be at least 1"
    );
    anyhow::ensure!(args.secs > 0.0, "--secs must be positive");
    if !crate::tls::on_path("h2load") {
        crate::host::apt_install(&["nghttp2-client"])?;
    }
    compare::clean_run_dir(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let bin = compare::cdn_bin(None)?;
    let root = args.dir.join("root");
    std::fs::create_dir_all(&root)?;
    let origin = compare::start_origin(&bin, &root, &args.dir).await?;
    let certs = args.dir.join("certs");
    cdn_edge::peer::pki::write_lab_pki(&certs, &["localhost".to_string()])?;
    let udp: SocketAddr = ([127, 0, 0, 1], compare::free_port()?).into();
    let https: SocketAddr = ([127, 0, 0, 1], compare::free_port()?).into();
    let (cert, key) = (certs.join("localhost.pem"), certs.join("localhost.key"));
    let config = format!(
        "[http3]\nlisten = \"{udp}\"\ncert = \"{c}\"\nkey = \"{k}\"\n\
         [tls]\nlisten = \"{https}\"\n[[tls.certificates]]\ncert = \"{c}\"\nkey = \"{k}\"\n",
        c = cert.display(),
        k = key.display()
    );
    let edge = compare::start_edge_with(
        &bin,
        origin.proc.addr,
        &args.dir.join("edge"),
        args.threads,
        Some(&config),
    )
    .await?;
    let tcp = edge.addr;
    let cfg = config_trusting_pem(&certs.join("ca.pem"))?;
    let objs_16k = hot_16k_objects("h3-", 256);
    let objs_1m = hot_1m_objects("h3-", 16, 4);
    // Warm: every object's every chunk stored before anything is measured.
    let mut warm: Vec<Job> = objs_16k.iter().map(|(id, s)| Job::full(id, *s)).collect();
    warm.extend(objs_1m.iter().map(|(id, s)| Job::full(id, *s)));
    let w = loadgen::warm(tcp, warm, 8).await;
    anyhow::ensure!(w.errors == 0, "warming failed: {} errors", w.errors);

    let dur = Duration::from_secs_f64(args.secs);
    let mut rows = Vec::new();
    for scenario in ["hot-16k", "hot-1m"] {
        let gen_job = {
            let (a, b) = (objs_16k.clone(), objs_1m.clone());
            move |rng: &mut StdRng| match scenario {
                "hot-16k" => hot_16k_job(&a, rng),
                _ => hot_1m_job(&b, rng),
            }
        };
        let h3 = h3_loop(
            udp,
            &cfg,
            args.connections,
            args.streams,
            dur,
            gen_job.clone(),
        )
        .await?;
        rows.push(Row {
            scenario,
            proto: "HTTP/3",
            ..h3
        });
        let objs = if scenario == "hot-16k" {
            &objs_16k
        } else {
            &objs_1m
        };
        let h2 = h2_loop(https, objs, scenario == "hot-1m", &args, &args.dir).await?;
        rows.push(Row {
            scenario,
            proto: "HTTP/2 (TLS, h2load)",
            ..h2
        });
        let tcp_row = tcp_loop(tcp, args.connections * args.streams, dur, gen_job).await;
        rows.push(Row {
            scenario,
            proto: "HTTP/1.1 (TCP, cleartext)",
            ..tcp_row
        });
    }
    edge.stop().await;
    origin.proc.stop().await;

    println!(
        "\ncdn bench h3: {} connections x {} streams, {} s per run, edge threads {}\n",
        args.connections, args.streams, args.secs, args.threads
    );
    println!("| scenario | protocol | req/s | MB/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.1} | {} | {:.2} | {} |",
            r.scenario,
            r.proto,
            r.rps(),
            r.bytes as f64 / r.secs / 1e6,
            r.p50_ms().map_or("-".into(), |p| format!("{p:.2}")),
            r.p99_ms(),
            r.errors
        );
    }
    println!();
    for triple in rows.chunks(3) {
        if let [h3, h2, h1] = triple {
            let ratio = |a: &Row, b: &Row| {
                (
                    a.rps() / b.rps().max(f64::MIN_POSITIVE),
                    a.p99_ms() / b.p99_ms().max(f64::MIN_POSITIVE),
                )
            };
            let (r2, p2) = ratio(h3, h2);
            let (r1, p1) = ratio(h3, h1);
            println!(
                "{}: HTTP/3 / HTTP/2 over TLS: req/s {r2:.2}, p99 {p2:.2}; \
                 HTTP/3 / HTTP/1.1 cleartext: req/s {r1:.2}, p99 {p1:.2}",
                h3.scenario
            );
        }
    }
    Ok(())
}

/// h2load over HTTP/2 and TLS: `connections` × `streams` for `secs`, cycling through the
/// objects' URLs (`first_mib`: each object's first MiB, as a Range).
async fn h2_loop(
    https: SocketAddr,
    objs: &[(String, u64)],
    first_mib: bool,
    args: &H3Args,
    dir: &std::path::Path,
) -> anyhow::Result<Row> {
    let mut a: Vec<String> = vec![
        "-c".into(),
        args.connections.to_string(),
        "-m".into(),
        args.streams.to_string(),
        "-t".into(),
        args.h2load_threads.min(args.connections).max(1).to_string(),
        "-D".into(),
        format!("{}", args.secs.ceil() as u64),
    ];
    if first_mib {
        a.extend(["-H".into(), "range: bytes=0-1048575".into()]);
    }
    a.extend(
        objs.iter()
            .map(|(id, size)| format!("https://{https}/synthetic/{id}?size={size}")),
    );
    let o = crate::tls::h2load(&a, &dir.join("h2load.log")).await?;
    anyhow::ensure!(
        o.succeeded > 0 && o.cipher.contains("TLS"),
        "h2load over HTTP/2 and TLS: {} succeeded ({})",
        o.succeeded,
        o.cipher
    );
    Ok(Row {
        scenario: "",
        proto: "",
        requests: o.succeeded,
        bytes: (o.mb_s * 1024.0 * 1024.0 * args.secs) as u64,
        errors: o.failed,
        secs: args.secs,
        hist: loadgen::histogram(),
        p99: Some(o.p99_ms),
        p50: None,
        rps: Some(o.req_s),
    })
}

/// N HTTP/3 connections × M concurrent streams, closed loop for `dur`.
async fn h3_loop<F>(
    udp: SocketAddr,
    cfg: &ClientConfig,
    conns: usize,
    streams: usize,
    dur: Duration,
    gen_job: F,
) -> anyhow::Result<Row>
where
    F: Fn(&mut StdRng) -> Job + Clone + Send + 'static,
{
    let mut clients = Vec::new();
    for _ in 0..conns {
        let c = Client::connect(udp, "localhost", cfg.clone())
            .await
            .context("HTTP/3 connection to the edge")?;
        clients.push(Arc::new(c));
    }
    let start = Instant::now();
    let end = start + dur;
    let mut tasks = Vec::new();
    for (ci, c) in clients.iter().enumerate() {
        for s in 0..streams {
            let (c, g) = (c.clone(), gen_job.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64((ci * 1000 + s) as u64);
                let mut h = loadgen::histogram();
                let (mut n, mut bytes, mut errors) = (0u64, 0u64, 0u64);
                while Instant::now() < end {
                    let job = g(&mut rng);
                    let range = job.range.map(|(a, b)| format!("bytes={a}-{b}"));
                    let headers: Vec<(&str, &str)> = match &range {
                        Some(r) => vec![("range", r.as_str())],
                        None => vec![],
                    };
                    let t0 = Instant::now();
                    match c.get(&job.path, &headers).await {
                        Ok(r) if r.status().is_success() && job.body_ok(&r.body) => {
                            loadgen::record(&mut h, t0.elapsed());
                            n += 1;
                            bytes += r.body.len() as u64;
                        }
                        _ => errors += 1,
                    }
                }
                (n, bytes, errors, h)
            }));
        }
    }
    let mut row = Row {
        scenario: "",
        proto: "",
        requests: 0,
        bytes: 0,
        errors: 0,
        secs: 0.0,
        hist: loadgen::histogram(),
        p99: None,
        p50: None,
        rps: None,
    };
    for t in tasks {
        let (n, b, e, h) = t.await?;
        row.requests += n;
        row.bytes += b;
        row.errors += e;
        row.hist.add(&h).ok();
    }
    row.secs = start.elapsed().as_secs_f64();
    for c in clients {
        if let Ok(c) = Arc::try_unwrap(c) {
            c.close().await;
        }
    }
    Ok(row)
}

/// `n` keep-alive HTTP/1.1 connections, closed loop for `dur`.
async fn tcp_loop<F>(tcp: SocketAddr, n: usize, dur: Duration, gen_job: F) -> Row
where
    F: Fn(&mut StdRng) -> Job + Clone + Send + 'static,
{
    let start = Instant::now();
    let end = start + dur;
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let g = gen_job.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(i as u64);
                let mut h = loadgen::histogram();
                let (mut k, mut bytes, mut errors) = (0u64, 0u64, 0u64);
                let mut conn = None;
                while Instant::now() < end {
                    if conn.is_none() {
                        conn = loadgen::connect(tcp, None).await.ok();
                        if conn.is_none() {
                            errors += 1;
                            continue;
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let job = g(&mut rng);
                    let t0 = Instant::now();
                    match c
                        .get(&job.path, job.range, true, Duration::from_secs(30))
                        .await
                    {
                        Ok(r)
                            if r.status < 300
                                && r.body.as_deref().is_some_and(|b| job.body_ok(b)) =>
                        {
                            loadgen::record(&mut h, t0.elapsed());
                            k += 1;
                            bytes += r.len;
                        }
                        _ => {
                            errors += 1;
                            conn = None;
                        }
                    }
                }
                (k, bytes, errors, h)
            })
        })
        .collect();
    let mut row = Row {
        scenario: "",
        proto: "",
        requests: 0,
        bytes: 0,
        errors: 0,
        secs: 0.0,
        hist: loadgen::histogram(),
        p99: None,
        p50: None,
        rps: None,
    };
    for t in tasks {
        if let Ok((k, b, e, h)) = t.await {
            row.requests += k;
            row.bytes += b;
            row.errors += e;
            row.hist.add(&h).ok();
        }
    }
    row.secs = start.elapsed().as_secs_f64();
    row
}
