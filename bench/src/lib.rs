//! `cdn bench`: the benchmark commands. Owns the command line; each benchmark lives in its
//! own module (`hit_ratio` and the simulator pieces it uses: `trace`, `synth`, `policies`,
//! `moka_policy`, `edge_policy`, `sim`, `report`). `amplification` measures origin bytes per
//! client request; `h3` HTTP/3 hot hits against TCP; `memory` the edge's RSS against its capacity. Shared by the benchmarks that run servers: `servers` (origin, edge, nginx,
//! varnishd as child processes), `host` (packages, machine, CPU time), `hot` (the hot
//! workloads of `compare` and `capacity`); `loadgen` is the HTTP load generator of `load`,
//! `compare` and `capacity`.

mod amplification;
mod capacity;
mod compare;
mod edge_policy;
mod flash;
mod h3;
mod hit_ratio;
mod host;
mod hot;
pub mod load;
mod loadgen;
mod memory;
mod moka_policy;
mod policies;
mod queue;
mod report;
mod servers;
mod sim;
mod synth;
mod tls;
mod trace;

/// `cdn bench ...`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Replay a trace (or a synthetic workload) through cache policies and report object and
    /// byte miss ratios, origin bytes and speed per policy and cache size.
    HitRatio(hit_ratio::HitRatioArgs),
    /// Simulated viewers in every region of the lab, straight to the origin, through the CDN
    /// without peers and with peers: TTFB, throughput, hit ratio per region, origin egress.
    Load(load::LoadArgs),
    /// The edge against nginx (proxy_cache + slice) and Varnish in front of the same origin,
    /// under the same load: req/s, MB/s, p99, origin fetches and ratios, in one run.
    Compare(compare::CompareArgs),
    /// The requests/s one edge serves with its p99 under a target (closed-loop steps of
    /// doubling concurrency), written to bench/results/edge-capacity.json for `cdn plan
    /// --from-lab` and the lab's autoscaler.
    Capacity(capacity::CapacityArgs),
    /// Origin bytes and requests per client request on cold objects (RangeAmp: small and
    /// sparse ranges, per-client budget; uncacheable, whole and mid-object misses) through
    /// the edge, nginx and Varnish, with ratios, in one run.
    Amplification(amplification::AmplificationArgs),
    /// Hot hits over TLS (HTTP/1.1 and HTTP/2, 16 KiB and 1 MiB) through the edge and nginx
    /// on the same certificate, with h2load, and new TLS handshakes per second.
    Tls(tls::TlsArgs),
    /// The edge's RSS against its --capacity: new objects of mixed sizes churned through it
    /// several times over, then a hot load with RSS sampled (flat or growing).
    Memory(memory::MemoryArgs),
    /// Hot hits over HTTP/3 (N connections x M streams) against the same edge over TCP:
    /// req/s, MB/s, p50/p99 and ratios, bodies checked byte for byte.
    H3(h3::H3Args),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::HitRatio(args) => tokio::task::spawn_blocking(move || hit_ratio::run(&args))
            .await
            .map_err(|e| anyhow::anyhow!("hit-ratio benchmark panicked: {e}"))?,
        BenchCommand::Load(args) => load::run(args).await,
        BenchCommand::Compare(args) => compare::run(args).await,
        BenchCommand::Capacity(args) => capacity::run(args).await,
        BenchCommand::Amplification(args) => amplification::run(args).await,
        BenchCommand::Tls(args) => tls::run(args).await,
        BenchCommand::H3(args) => h3::run(args).await,
        BenchCommand::Memory(args) => memory::run(args).await,
    }
}
