//! `cdn bench load`'s lab: the lab file of a mode (the given one with its run directory,
//! peering, link model and capacity set), the lab as a child process, what its `state.json`
//! ([`cdn_lab::state::LabState`]) says, and origin mode's relays, built with the lab's own
//! link model (`cdn_lab::netsim`).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use cdn_lab::config::LinkDefaults;
use cdn_lab::netsim::{self, TcpRelay};
use cdn_lab::procs;
use cdn_lab::state::LabState;

use super::*;

/// What a viewer needs to know about a region.
#[derive(Debug, Clone)]
pub(super) struct RegionInfo {
    pub(super) name: String,
    pub(super) network: Ipv4Addr,
    pub(super) latitude: f64,
    pub(super) longitude: f64,
}

/// The lab of one mode, as read from its state.json.
pub(super) struct LabRun {
    pub(super) child: tokio::process::Child,
    pub(super) dir: PathBuf,
    pub(super) router: SocketAddr,
    pub(super) origin: SocketAddr,
    pub(super) origin_url: String,
    pub(super) regions: Vec<RegionInfo>,
    /// (name, region, url)
    pub(super) edges: Vec<(String, String, String)>,
    pub(super) origin_point: (f64, f64),
    /// The lab's link model.
    pub(super) links: LinkDefaults,
}

pub(super) fn url_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let uri: http::Uri = url.parse().with_context(|| format!("bad URL {url}"))?;
    let auth = uri
        .authority()
        .with_context(|| format!("no authority in {url}"))?;
    auth.as_str()
        .parse()
        .with_context(|| format!("{url}: not an IP:port"))
}

/// The lab file of a mode: the given one with its run directory, peering, link model and
/// capacity set for the benchmark, HTTPS off, and paths made absolute.
pub(super) fn lab_file(args: &LoadArgs, mode: Mode, dir: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&args.lab)
        .with_context(|| format!("reading {}", args.lab.display()))?;
    let mut t: toml::Table = text
        .parse()
        .with_context(|| format!("parsing {}", args.lab.display()))?;
    use toml::Value as V;
    t.insert("run_dir".into(), V::from(dir.display().to_string()));
    let section = |t: &mut toml::Table, name: &str| -> anyhow::Result<toml::Table> {
        match t.remove(name) {
            Some(V::Table(s)) => Ok(s),
            None => Ok(toml::Table::new()),
            Some(_) => anyhow::bail!("[{name}] of the lab file is not a table"),
        }
    };
    let mut peering = section(&mut t, "peering")?;
    peering.insert("enabled".into(), V::from(crate::flash::peering(mode)));
    t.insert("peering".into(), V::Table(peering));
    // Its viewers speak plain HTTP: no HTTPS listeners and relays to start.
    let mut https = section(&mut t, "https")?;
    https.insert("enabled".into(), V::from(false));
    t.insert("https".into(), V::Table(https));
    let mut tiers = section(&mut t, "tiers")?;
    let tiered = if mode == Mode::CdnTiered {
        "shield"
    } else {
        "off"
    };
    tiers.insert("mode".into(), V::from(tiered));
    t.insert("tiers".into(), V::Table(tiers));
    let mut links = section(&mut t, "links")?;
    if args.no_distance {
        links.insert("base_rtt_ms".into(), V::from(0.0));
        links.insert("ms_per_100km".into(), V::from(0.0));
        if let Some(V::Array(over)) = t.get_mut("link") {
            for o in over.iter_mut().filter_map(V::as_table_mut) {
                o.remove("rtt_ms");
            }
        }
    }
    if let Some(m) = args.client_mbps {
        links.insert("client_mbps".into(), V::from(m));
    }
    if let Some(m) = args.origin_uplink_mbps {
        links.insert("origin_uplink_mbps".into(), V::from(m));
    }
    t.insert("links".into(), V::Table(links));
    if args.capacity.is_some() || args.policy.is_some() {
        let mut edges = section(&mut t, "edges")?;
        if let Some(c) = &args.capacity {
            edges.insert("capacity".into(), V::from(c.clone()));
        }
        if let Some(p) = args.policy {
            let name = clap::ValueEnum::to_possible_value(&p)
                .map(|v| v.get_name().to_string())
                .unwrap_or_default();
            edges.insert("policy".into(), V::from(name));
        }
        t.insert("edges".into(), V::Table(edges));
    }
    let mut origin = section(&mut t, "origin")?;
    for key in ["root", "config"] {
        if let Some(V::String(p)) = origin.get(key) {
            let abs = std::path::absolute(p)?;
            origin.insert(key.into(), V::from(abs.display().to_string()));
        }
    }
    if !origin.contains_key("root") {
        origin.insert(
            "root".into(),
            V::from(std::path::absolute("testdata")?.display().to_string()),
        );
    }
    t.insert("origin".into(), V::Table(origin));
    Ok(format!(
        "# Written by `cdn bench load` ({} mode) from {}.\n{}",
        mode.name(),
        args.lab.display(),
        toml::to_string(&t)?
    ))
}

/// Starts the lab of a mode and waits for its state.json.
pub(super) async fn start_lab(args: &LoadArgs, mode: Mode, dir: &Path) -> anyhow::Result<LabRun> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let lab_toml = dir.join("lab.toml");
    std::fs::write(&lab_toml, lab_file(args, mode, dir)?)?;
    let bin = match &args.cdn_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let a = vec![
        "lab".to_string(),
        "--config".into(),
        lab_toml.display().to_string(),
        "--port-base".into(),
        "0".into(),
        "--run-dir".into(),
        dir.display().to_string(),
    ];
    let log = dir.join("lab.out");
    let mut child = crate::servers::spawn_child(&bin, &a, &[], &log)?;
    let state_path = dir.join("state.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    let state = loop {
        if let Ok(state) = LabState::read(&state_path) {
            break state;
        }
        if let Ok(Some(status)) = child.try_wait() {
            anyhow::bail!(
                "cdn lab exited ({status}) before it was up:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            anyhow::bail!("cdn lab was not up after 120 s (log: {})", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let regions: Vec<RegionInfo> = state
        .regions
        .iter()
        .map(|r| RegionInfo {
            name: r.name.clone(),
            network: r.network.network(),
            latitude: r.latitude,
            longitude: r.longitude,
        })
        .collect();
    let edges = state
        .edges()
        .map(|n| (n.name.clone(), n.region.clone(), n.url.clone()))
        .collect();
    let origin_point = regions
        .iter()
        .find(|r| r.name == state.origin_region)
        .map(|r| (r.latitude, r.longitude))
        .context("the origin's region is not a region")?;
    Ok(LabRun {
        child,
        dir: dir.to_path_buf(),
        router: url_addr(&state.router)?,
        origin: url_addr(&state.origin)?,
        origin_url: state.origin,
        regions,
        edges,
        origin_point,
        links: state.link_model,
    })
}

impl LabRun {
    /// SIGTERM (the lab stops its nodes), SIGKILL after 15 s.
    pub(super) async fn stop(mut self) {
        procs::stop(&mut self.child, Duration::from_secs(15), "cdn lab").await;
    }

    /// Relays from each region to the origin with the lab's link model (`cdn_lab::netsim`),
    /// for origin mode: RTT by distance, the viewer link's bandwidth, and one bucket for the
    /// origin's uplink.
    pub(super) fn origin_relays(
        &self,
        no_distance: bool,
    ) -> anyhow::Result<BTreeMap<String, TcpRelay>> {
        let mut model = self.links.clone();
        if no_distance {
            (model.base_rtt_ms, model.ms_per_100km) = (0.0, 0.0);
        }
        let client_bps = netsim::bytes_per_sec(model.client_mbps);
        let uplink = model.origin_uplink();
        let mut out = BTreeMap::new();
        for r in &self.regions {
            let rtt = model.rtt((r.latitude, r.longitude), self.origin_point);
            let shape = netsim::tcp_link(rtt, client_bps, Some(&uplink));
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            let relay = TcpRelay::spawn(tokio::net::TcpListener::from_std(l)?, shape, None)?;
            relay.target.send_replace(Some(self.origin));
            out.insert(r.name.clone(), relay);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tests::args;

    #[test]
    fn lab_file_sets_mode_and_links() {
        let lab = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/lab.toml");
        let a = args(&[
            "--lab",
            lab.to_str().unwrap(),
            "--no-distance",
            "--client-mbps",
            "500",
            "--capacity",
            "64MiB",
            "--policy",
            "s3-fifo-rate",
        ]);
        let text = lab_file(&a, Mode::Cdn, Path::new("/tmp/x")).unwrap();
        let f: cdn_lab::config::LabFile = cdn_http::config::parse_toml(&text, "gen").unwrap();
        assert!(!f.peering.enabled);
        assert_eq!(f.links.base_rtt_ms, 0.0);
        assert_eq!(f.links.client_mbps, 500.0);
        assert_eq!(f.edges.capacity, "64MiB");
        assert_eq!(f.edges.policy, cdn_edge::Policy::S3FifoRate);
        assert!(f.origin.root.is_absolute());
        let text = lab_file(&a, Mode::CdnPeers, Path::new("/tmp/x")).unwrap();
        let f: cdn_lab::config::LabFile = cdn_http::config::parse_toml(&text, "gen").unwrap();
        assert!(f.peering.enabled);
        assert!(!f.tiers.on());
        let text = lab_file(&a, Mode::CdnTiered, Path::new("/tmp/x")).unwrap();
        let f: cdn_lab::config::LabFile = cdn_http::config::parse_toml(&text, "gen").unwrap();
        assert!(f.peering.enabled && f.tiers.on());
    }
}
