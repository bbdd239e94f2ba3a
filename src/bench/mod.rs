//! `cdn bench`: benchmarks (placeholder until the benchmark issue lands).

/// `cdn bench ...`
#[derive(Debug, clap::Subcommand)]
pub enum BenchCommand {}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {}
}
