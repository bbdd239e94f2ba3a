//! Edge cache node (placeholder until the edge issue lands).

/// `cdn edge` arguments.
#[derive(Debug, clap::Args)]
pub struct EdgeArgs {}

pub async fn run(_args: EdgeArgs) -> anyhow::Result<()> {
    anyhow::bail!("the edge is not implemented yet")
}
