//! `cdn bench capacity`'s nodes: the origin and the edge it measures (started here through
//! `crate::servers`, or given by URL), and how they are reached.

use super::*;

/// The nodes under test: started here, or running elsewhere.
pub(super) struct Nodes {
    pub(super) edge_addr: SocketAddr,
    pub(super) edge_url: String,
    pub(super) origin_url: String,
    pub(super) edge: Option<crate::servers::ServerProc>,
    pub(super) origin: Option<crate::servers::Origin>,
    pub(super) threads: Option<usize>,
}

impl Nodes {
    /// Checks the running nodes given (`--edge`, `--origin`), then starts the others, their
    /// logs in `work`.
    pub(super) async fn start(args: &CapacityArgs, work: &Path) -> anyhow::Result<Nodes> {
        let threads = args
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
        let given_origin = match &args.origin {
            Some(url) => Some((base_url(url), reachable("origin", url).await?)),
            None => None,
        };
        let given_edge = match &args.edge {
            Some(url) => Some((base_url(url), reachable("edge", url).await?)),
            None => None,
        };
        if let (Some((origin_url, _)), Some((edge_url, edge_addr))) = (&given_origin, &given_edge) {
            return Ok(Nodes {
                edge_addr: *edge_addr,
                edge_url: edge_url.clone(),
                origin_url: origin_url.clone(),
                edge: None,
                origin: None,
                threads: None,
            });
        }
        let bin = crate::servers::cdn_bin(args.cdn_bin.as_deref())?;
        std::fs::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
        let (origin, origin_url, origin_addr) = match given_origin {
            Some((url, addr)) => (None, url, addr),
            None => {
                let root = work.join("origin-root");
                std::fs::create_dir_all(&root)
                    .with_context(|| format!("creating {}", root.display()))?;
                let o = crate::servers::start_origin(&bin, &root, work)
                    .await
                    .with_context(|| format!("starting the origin (log in {})", work.display()))?;
                let (url, addr) = (o.url.clone(), o.proc.addr);
                (Some(o), url, addr)
            }
        };
        // (--edge needs --origin: with --edge, the origin was given and we returned above.)
        let dir = work.join("edge");
        let edge = match crate::servers::start_edge(&bin, origin_addr, &dir, threads).await {
            Ok(e) => e,
            Err(e) => {
                if let Some(o) = origin {
                    o.proc.stop().await;
                }
                return Err(e.context(format!("starting the edge (log in {})", dir.display())));
            }
        };
        Ok(Nodes {
            edge_addr: edge.addr,
            edge_url: format!("http://{}", edge.addr),
            origin_url,
            edge: Some(edge),
            origin,
            threads: Some(threads),
        })
    }

    pub(super) async fn stop(self) {
        if let Some(e) = self.edge {
            e.stop().await;
        }
        if let Some(o) = self.origin {
            o.proc.stop().await;
        }
    }
}

/// The address of a running node given by URL, once it accepts a connection.
pub(super) async fn reachable(what: &str, url: &str) -> anyhow::Result<SocketAddr> {
    let addr = resolve(url).await?;
    loadgen::connect(addr, None)
        .await
        .with_context(|| format!("the {what} at {url} does not answer"))?;
    Ok(addr)
}

/// `http://host:port[/]` → the base URL without a trailing slash.
pub(super) fn base_url(url: &str) -> String {
    url.trim_end_matches('/').to_owned()
}

/// The socket address of an `http://host[:port]` base URL.
pub(super) async fn resolve(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{url}: not a URL (want http://HOST:PORT)"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "{url}: only http:// URLs can be measured"
    );
    anyhow::ensure!(
        uri.path_and_query().is_none_or(|p| p.as_str() == "/"),
        "{url}: give the base URL (http://HOST:PORT), without a path"
    );
    let host = uri
        .host()
        .with_context(|| format!("{url}: no host"))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("resolving {url}"))?
        .next()
        .with_context(|| format!("{url}: the host has no address"))
}
