//! Geo-router (placeholder until the geo-router issue lands).

/// `cdn router` arguments.
#[derive(Debug, clap::Args)]
pub struct RouterArgs {}

/// `cdn geo ...`
#[derive(Debug, clap::Subcommand)]
pub enum GeoCommand {}

pub async fn run(_args: RouterArgs) -> anyhow::Result<()> {
    anyhow::bail!("the router is not implemented yet")
}

pub fn geo_command(cmd: GeoCommand) -> anyhow::Result<()> {
    match cmd {}
}
