//! The `cdn` binary: a thin command line over the node crates.
//!
//! `cdn lab` (the default) runs a whole multi-region CDN on this machine; `cdn origin`,
//! `cdn edge` and `cdn router` run one node each; `cdn geo` builds the lab's MaxMind database;
//! `cdn bench` runs the benchmarks; `cdn plan` plans capacity. Each command lives in a crate of
//! its own (`cdn-origin`, `cdn-edge`, `cdn-geo-router`, `cdn-lab` with the planner and the
//! autoscaler, `cdn-bench`); this file is only the command line and its dispatch.

use cdn_bench as bench;
use cdn_lab::{self as lab, plan};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cdn",
    version,
    about = "A video CDN: origin, geo-routed edge caches, geo-router"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info,cdn_edge=debug`.
    #[arg(long, global = true, env = "CDN_LOG", default_value = "info")]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run origin, edges in several simulated regions and the router on this machine (default).
    Lab(lab::LabArgs),
    /// Run an origin server.
    Origin(cdn_origin::OriginArgs),
    /// Run an edge cache node.
    Edge(cdn_edge::EdgeArgs),
    /// Run the geo-router.
    Router(cdn_geo_router::RouterArgs),
    /// Geo database tools.
    #[command(subcommand)]
    Geo(cdn_geo_router::GeoCommand),
    /// Benchmarks: cache hit ratio, load, comparison with nginx.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Capacity planning: edges needed for a request rate, or for the running lab's.
    Plan(plan::PlanArgs),
}

/// How often batched log lines (the access log) are written at the latest.
const LOG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Logging to stdout through [`cdn_http::logbuf::BufferedLog`]: no write per line on the
/// serving threads (access lines batched, every other line prompt, flushed when the guard
/// drops at the end of `main`); colours only on a terminal.
fn init_logging(filter: &str, json: bool) -> anyhow::Result<cdn_http::logbuf::LogGuard> {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::stdout().is_terminal();
    let (writer, guard) = cdn_http::logbuf::BufferedLog::new(std::io::stdout(), LOG_INTERVAL)?;
    let writer_for_access = writer.clone();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_ansi(ansi)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        // Access lines skip tracing's formatter (same text format, cdn_http::access).
        cdn_http::access::install(&writer_for_access);
        builder.init();
    }
    Ok(guard)
}

/// `cdn edge|origin|router --check-config FILE`: the node's own loader on FILE, one line out,
/// nothing bound. `None` for every other command line.
fn check_config(command: &Option<Command>) -> Option<Result<String, String>> {
    let text = |e: &dyn std::fmt::Display| e.to_string();
    Some(match command.as_ref()? {
        Command::Edge(a) => a
            .check_config(a.check_config.as_deref()?)
            .map_err(|e| text(&e)),
        Command::Origin(a) => a
            .check_config(a.check_config.as_deref()?)
            .map_err(|e| text(&e)),
        Command::Router(a) => a
            .check_config(a.check_config.as_deref()?)
            .map_err(|e| text(&e)),
        _ => return None,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before logging, limits and the runtime: a check prints one line and touches nothing.
    match check_config(&cli.command) {
        Some(Ok(line)) => {
            println!("{line}");
            return Ok(());
        }
        Some(Err(e)) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
        None => {}
    }
    // Held to the end: dropping it writes the lines still buffered.
    let _log = init_logging(&cli.log, cli.log_json)?;
    // Before any socket: every node fits its connection cap to this limit (and logs it).
    cdn_http::nofile::raise();
    // The one rustls provider (ring), for clients that do not name theirs.
    cdn_http::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Lab(lab::LabArgs::default())) {
            Command::Lab(args) => lab::run(args).await,
            Command::Origin(args) => cdn_origin::run(args).await,
            Command::Edge(args) => cdn_edge::run(args).await,
            Command::Router(args) => cdn_geo_router::run(args).await,
            Command::Geo(cmd) => cdn_geo_router::geo_command(cmd),
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Plan(args) => plan::run(args).await,
        }
    });
    // The command is done (drained, stopped): dropping the runtime would wait without bound
    // for blocking tasks still running (a lab stopped by SIGTERM once printed its last line and
    // then did not exit for 30 s in CI); give them a bounded moment, then exit.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// How long the runtime's leftover blocking tasks may delay the exit after the command ended.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);
