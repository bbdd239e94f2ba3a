//! `cdn lab`: the whole CDN on one machine (placeholder: runs the origin until the lab issue
//! lands).

use std::path::PathBuf;

/// `cdn lab` arguments.
#[derive(Debug, clap::Args)]
pub struct LabArgs {
    /// Where the origin listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub origin_listen: std::net::SocketAddr,
    /// The media served by the origin.
    #[arg(long, default_value = "testdata/media")]
    pub root: PathBuf,
}

impl Default for LabArgs {
    fn default() -> Self {
        LabArgs {
            origin_listen: "127.0.0.1:8081".parse().expect("literal address"),
            root: PathBuf::from("testdata/media"),
        }
    }
}

pub async fn run(args: LabArgs) -> anyhow::Result<()> {
    tracing::info!(
        origin = %args.origin_listen,
        "the lab is not complete yet: running the origin only"
    );
    cdn_origin::run(cdn_origin::OriginArgs {
        listen: args.origin_listen,
        root: args.root,
        config: None,
    })
    .await
}
