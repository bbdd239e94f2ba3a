//! `cdn bench`: the benchmark commands. Owns the command line; each benchmark lives in its
//! own module (`hit_ratio` and the simulator pieces it uses: `trace`, `synth`, `policies`,
//! `moka_policy`, `sim`, `report`).

mod hit_ratio;
mod moka_policy;
mod policies;
mod queue;
mod report;
mod sim;
mod synth;
mod trace;

/// `cdn bench ...`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {
    /// Replay a trace (or a synthetic workload) through cache policies and report object and
    /// byte miss ratios, origin bytes and speed per policy and cache size.
    HitRatio(hit_ratio::HitRatioArgs),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::HitRatio(args) => tokio::task::spawn_blocking(move || hit_ratio::run(&args))
            .await
            .map_err(|e| anyhow::anyhow!("hit-ratio benchmark panicked: {e}"))?,
    }
}
