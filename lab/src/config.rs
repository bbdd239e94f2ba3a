//! `testdata/lab.toml`: the lab's places, nodes, ports and link model, and the [`Plan`]
//! derived from it (every node with its ports, every simulated link with its RTT and
//! bandwidth). Errors name the file, the line and the field.

pub use crate::netsim::{LinkDefaults, distance_km};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cdn_http::config::{ConfigError, load_toml};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabFile {
    /// Where generated files go (configs, certificates, geo database, logs, state.json).
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    pub ports: Ports,
    #[serde(default)]
    pub links: LinkDefaults,
    pub origin: OriginSection,
    #[serde(default)]
    pub edges: EdgeDefaults,
    #[serde(default)]
    pub peering: Peering,
    /// HTTPS (and HTTP/3) beside HTTP on every node and viewer link.
    #[serde(default)]
    pub https: HttpsSection,
    /// Tiered caching: an upper tier of shield edges ([`crate::tiers`]).
    #[serde(default)]
    pub tiers: crate::tiers::Tiers,
    /// Auto-scaling of edges between each region's `edges` and `spare_edges`.
    #[serde(default)]
    pub autoscale: Option<AutoscaleSection>,
    /// The simulated places, as `[[region]]` tables.
    #[serde(rename = "region")]
    pub regions: Vec<Region>,
    /// Per-link overrides, as `[[link]]` tables.
    #[serde(default, rename = "link")]
    pub overrides: Vec<LinkOverride>,
}

fn default_run_dir() -> PathBuf {
    PathBuf::from("lab-run")
}

/// Fixed ports (all on 127.0.0.1). `--port-base` moves them together.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ports {
    /// The front door: player page, dashboard, redirects.
    pub router: u16,
    pub origin: u16,
    /// The lab's own API (the router forwards `/` and `/_lab/` to it).
    pub control: u16,
    /// First edge (HTTP); the next edges take the following ports.
    pub edges: u16,
    /// First edge's QUIC peer endpoint (UDP); the next edges take the following ports.
    pub peers: u16,
    /// First TCP relay (simulated link); the relays take consecutive ports.
    pub relays: u16,
    /// First UDP relay (peer links).
    pub peer_relays: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSection {
    /// The region the origin is in.
    pub region: String,
    /// The directory it serves (`/media/demo.mp4` is `ROOT/media/demo.mp4`).
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// An origin config file (optional).
    #[serde(default)]
    pub config: Option<PathBuf>,
}

fn default_root() -> PathBuf {
    PathBuf::from("testdata")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeDefaults {
    /// Cache budget of each edge, e.g. `256MiB`.
    pub capacity: String,
    /// Chunk size, e.g. `1MiB`.
    pub chunk_size: String,
    /// Each edge's eviction policy (`s3-fifo`, `grouped-s3-fifo`, `s3-fifo-rate`,
    /// `tiny-lfu`, `lru`), as an edge's `policy`.
    pub policy: cdn_edge::Policy,
}

impl Default for EdgeDefaults {
    fn default() -> Self {
        EdgeDefaults {
            capacity: "256MiB".into(),
            chunk_size: "1MiB".into(),
            policy: cdn_edge::config::EdgeConfig::default().policy,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Peering {
    /// Whether the edges peer over QUIC (through UDP relays).
    pub enabled: bool,
}

impl Default for Peering {
    fn default() -> Self {
        Peering { enabled: true }
    }
}

/// `[https]`: the lab makes its own CA and a viewer certificate for `localhost`, `127.0.0.1`
/// and `::1` (in `RUN_DIR/tls/`), and every node gets an HTTPS listener beside its HTTP one:
/// the router (player and dashboard too), the origin, each edge (with HTTP/3 on the same port
/// number over UDP), and each viewers' link a relay for HTTPS (TCP) and, on the same port
/// number, for HTTP/3 (UDP). Ports as in `[ports]`, moved by `--port-base` alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpsSection {
    pub enabled: bool,
    /// HTTP/3 on the edges and the viewers' links (UDP).
    pub http3: bool,
    /// The router's HTTPS port (player, dashboard, redirects to `https://` links).
    pub router: u16,
    pub origin: u16,
    /// First edge's HTTPS (TCP) and HTTP/3 (UDP) port; the next edges take the following.
    pub edges: u16,
    /// First viewers' HTTPS link relay (TCP, and UDP on the same number with HTTP/3).
    pub relays: u16,
}

impl Default for HttpsSection {
    fn default() -> Self {
        HttpsSection {
            enabled: true,
            http3: true,
            router: 8443,
            origin: 8444,
            edges: 8451,
            relays: 8500,
        }
    }
}

/// `[autoscale]`: per region, an autoscaler keeps the region's `edges` running and starts
/// its `spare_edges` when the measured load needs them (see [`crate::autoscale`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoscaleSection {
    pub enabled: bool,
    /// How often the regions are measured and decided on, milliseconds.
    pub interval_ms: u64,
    /// Request rates are averaged over this window, seconds.
    pub window_secs: f64,
    /// Requests/s one edge serves with its p99 under target. Absent: read from
    /// `capacity_file` (what `cdn bench capacity` wrote).
    pub capacity_rps: Option<f64>,
    pub capacity_file: PathBuf,
    /// Average utilisation to stay under, percent of capacity.
    pub target_utilisation: f64,
    /// In-flight requests one edge holds at full load (a saturation signal); absent: the
    /// request rate alone decides.
    pub inflight_per_edge: Option<f64>,
    pub scale_out_cooldown_secs: f64,
    pub scale_in_cooldown_secs: f64,
    /// After leaving the router, how long a draining edge still takes viewers redirected to
    /// it just before, milliseconds.
    pub drain_grace_ms: u64,
    /// Longest wait for a draining edge's in-flight responses, seconds.
    pub drain_timeout_secs: f64,
}

impl Default for AutoscaleSection {
    fn default() -> Self {
        AutoscaleSection {
            enabled: true,
            interval_ms: 1000,
            window_secs: 5.0,
            capacity_rps: None,
            capacity_file: PathBuf::from(crate::plan::lab::DEFAULT_CAPACITY_FILE),
            target_utilisation: 70.0,
            inflight_per_edge: None,
            scale_out_cooldown_secs: 30.0,
            scale_in_cooldown_secs: 120.0,
            drain_grace_ms: 2000,
            drain_timeout_secs: 30.0,
        }
    }
}

impl AutoscaleSection {
    fn check(&self, bad: &impl Fn(String, String) -> ConfigError) -> Result<(), ConfigError> {
        let field = |f: &str| format!("autoscale.{f}");
        if self.interval_ms == 0 {
            return Err(bad(field("interval_ms"), "must be positive".into()));
        }
        let positive = [
            ("window_secs", Some(self.window_secs)),
            ("capacity_rps", self.capacity_rps),
            ("inflight_per_edge", self.inflight_per_edge),
        ];
        for (f, v) in positive {
            if v.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(bad(field(f), "must be positive".into()));
            }
        }
        for (f, v) in [
            ("scale_out_cooldown_secs", self.scale_out_cooldown_secs),
            ("scale_in_cooldown_secs", self.scale_in_cooldown_secs),
            ("drain_timeout_secs", self.drain_timeout_secs),
        ] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(bad(field(f), "must be between 0 and 86400 seconds".into()));
            }
        }
        let t = self.target_utilisation;
        if !(t.is_finite() && t > 0.0 && t <= 100.0) {
            return Err(bad(
                field("target_utilisation"),
                "must be a percentage in (0, 100]".into(),
            ));
        }
        Ok(())
    }
}

/// A simulated place: viewers from `network` are there, and its edges too.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    pub city: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// AF, AN, AS, EU, NA, OC or SA.
    pub continent: String,
    pub latitude: f64,
    pub longitude: f64,
    /// The region's loopback client network, 127.R.0.0/16.
    pub network: Ipv4Net,
    /// Names of the edges in this region (may be empty). They always run.
    #[serde(default)]
    pub edges: Vec<String>,
    /// Edges the autoscaler may start here when the load needs them (and stop again).
    #[serde(default)]
    pub spare_edges: Vec<String>,
}

/// Overrides one link: `from` a region or node, `to` a node (`origin` or an edge).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkOverride {
    pub from: String,
    pub to: String,
    pub rtt_ms: Option<f64>,
    pub mbps: Option<f64>,
}

/// The kinds of simulated links.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkKind {
    /// Viewers of a region → an edge (TCP).
    Client,
    /// An edge → the origin (TCP).
    Origin,
    /// An edge → another edge's QUIC endpoint (UDP).
    Peer,
}

/// One simulated link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkPlan {
    pub kind: LinkKind,
    pub from: String,
    pub to: String,
    pub distance_km: f64,
    pub rtt_ms: f64,
    pub mbps: f64,
    /// The relay's port (0: OS-assigned).
    #[serde(skip)]
    pub port: u16,
    /// A viewers' link's HTTPS (and HTTP/3) relay port, with `[https]` (0: OS-assigned).
    #[serde(skip)]
    pub https_port: Option<u16>,
}

impl LinkKind {
    /// Its name in `state.json` and the router's view: `client`, `origin`, `peer`.
    pub fn name(self) -> &'static str {
        match self {
            LinkKind::Client => "client",
            LinkKind::Origin => "origin",
            LinkKind::Peer => "peer",
        }
    }
}

impl LinkPlan {
    pub fn rtt(&self) -> Duration {
        Duration::from_secs_f64(self.rtt_ms / 1e3)
    }
    pub fn bytes_per_sec(&self) -> f64 {
        crate::netsim::bytes_per_sec(self.mbps)
    }
}

/// One edge.
#[derive(Debug, Clone)]
pub struct EdgePlan {
    pub name: String,
    /// Started by the autoscaler only, not at launch.
    pub spare: bool,
    pub region: String,
    pub latitude: f64,
    pub longitude: f64,
    pub port: u16,
    pub peer_port: u16,
    /// HTTPS (TCP) and HTTP/3 (UDP) port, with `[https]`.
    pub https_port: Option<u16>,
}

/// Everything the lab starts, with ports resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    pub file: LabFile,
    pub router_port: u16,
    pub origin_port: u16,
    pub control_port: u16,
    /// The router's and the origin's HTTPS ports, with `[https]`.
    pub router_https_port: Option<u16>,
    pub origin_https_port: Option<u16>,
    pub origin_point: (f64, f64),
    pub edges: Vec<EdgePlan>,
    pub links: Vec<LinkPlan>,
    pub capacity: u64,
    pub chunk_size: u64,
}

fn invalid(file: &Path, text: &str, field: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: file.display().to_string(),
        line: line_of(text, field).unwrap_or(0),
        column: 1,
        field: field.into(),
        message,
    }
}

/// The 1-based line of a field such as `region[2].network` (or of its table).
fn line_of(text: &str, field: &str) -> Option<usize> {
    cdn_http::config::line_of_field(text, field)
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// How ports are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortMode {
    /// The file's ports moved by this offset.
    Offset(i32),
    /// Every port chosen by the OS.
    Auto,
}

impl LabFile {
    /// Reads and checks the file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let lab: LabFile = load_toml(path)?;
        let text = std::fs::read_to_string(path).unwrap_or_default();
        lab.check(path, &text)?;
        Ok(lab)
    }

    fn check(&self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let bad = |field: String, message: String| invalid(path, text, &field, message);
        if self.regions.is_empty() {
            return Err(bad("region".into(), "at least one [[region]]".into()));
        }
        let mut regions = HashSet::new();
        let mut edges = HashSet::new();
        let mut nets: Vec<Ipv4Net> = Vec::new();
        for (i, r) in self.regions.iter().enumerate() {
            let f = |x: &str| format!("region[{i}].{x}");
            if !valid_name(&r.name) {
                return Err(bad(f("name"), "use letters, digits, `-`, `_`, `.`".into()));
            }
            if !regions.insert(r.name.as_str()) {
                return Err(bad(f("name"), format!("region `{}` twice", r.name)));
            }
            if !(-90.0..=90.0).contains(&r.latitude) {
                return Err(bad(f("latitude"), "must be between -90 and 90".into()));
            }
            if !(-180.0..=180.0).contains(&r.longitude) {
                return Err(bad(f("longitude"), "must be between -180 and 180".into()));
            }
            let loopback = Ipv4Net::new(std::net::Ipv4Addr::new(127, 0, 0, 0), 8).ok();
            let inside = loopback.is_some_and(|l| l.contains(&r.network));
            if !inside || r.network.contains(&std::net::Ipv4Addr::LOCALHOST) {
                return Err(bad(
                    f("network"),
                    format!(
                        "{} must be inside 127.0.0.0/8 and leave out 127.0.0.1",
                        r.network
                    ),
                ));
            }
            if nets
                .iter()
                .any(|n| n.contains(&r.network) || r.network.contains(n))
            {
                return Err(bad(
                    f("network"),
                    format!("{} overlaps another region", r.network),
                ));
            }
            nets.push(r.network);
            for (field, list) in [("edges", &r.edges), ("spare_edges", &r.spare_edges)] {
                for e in list {
                    if !valid_name(e) || e == "origin" || e == "router" {
                        return Err(bad(f(field), format!("`{e}` is not a usable edge name")));
                    }
                    if !edges.insert(e.as_str()) {
                        return Err(bad(f(field), format!("edge `{e}` twice")));
                    }
                }
            }
            if !r.spare_edges.is_empty() && self.autoscale.as_ref().is_none_or(|a| !a.enabled) {
                return Err(bad(
                    f("spare_edges"),
                    "spare edges need an enabled [autoscale] section".into(),
                ));
            }
        }
        if let Some(a) = &self.autoscale {
            a.check(&bad)?;
        }
        if edges.is_empty() {
            return Err(bad("region".into(), "no region has an edge".into()));
        }
        if !regions.contains(self.origin.region.as_str()) {
            return Err(bad(
                "origin.region".into(),
                format!("no region is named `{}`", self.origin.region),
            ));
        }
        if self.tiers.on() {
            let shield = self.tiers.shield(&self.origin.region);
            let has_edges = self
                .regions
                .iter()
                .any(|r| r.name == shield && !r.edges.is_empty());
            if !has_edges {
                let field = match self.tiers.shield_region {
                    Some(_) => "tiers.shield_region",
                    None => "tiers.mode",
                };
                return Err(bad(
                    field.into(),
                    format!("the shield region `{shield}` must be a region with edges"),
                ));
            }
            if !self.peering.enabled {
                return Err(bad(
                    "tiers.mode".into(),
                    "tiers run over the peer links: [peering] must be enabled".into(),
                ));
            }
        }
        for (field, v) in [
            ("base_rtt_ms", self.links.base_rtt_ms),
            ("ms_per_100km", self.links.ms_per_100km),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(format!("links.{field}"), "must be 0 or more".into()));
            }
        }
        for (field, v) in [
            ("client_mbps", self.links.client_mbps),
            ("edge_origin_mbps", self.links.edge_origin_mbps),
            ("peer_mbps", self.links.peer_mbps),
            ("origin_uplink_mbps", self.links.origin_uplink_mbps),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(bad(format!("links.{field}"), "must be positive".into()));
            }
        }
        for (i, o) in self.overrides.iter().enumerate() {
            let f = |x: &str| format!("link[{i}].{x}");
            if !regions.contains(o.from.as_str()) && !edges.contains(o.from.as_str()) {
                return Err(bad(f("from"), format!("no region or edge `{}`", o.from)));
            }
            if o.to != "origin" && !edges.contains(o.to.as_str()) {
                return Err(bad(
                    f("to"),
                    format!("`{}` is neither `origin` nor an edge", o.to),
                ));
            }
            if o.rtt_ms.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                return Err(bad(f("rtt_ms"), "must be 0 or more".into()));
            }
            if o.mbps.is_some_and(|v| !(v.is_finite() && v > 0.0)) {
                return Err(bad(f("mbps"), "must be positive".into()));
            }
        }
        for (field, v) in [
            ("edges.capacity", &self.edges.capacity),
            ("edges.chunk_size", &self.edges.chunk_size),
        ] {
            cdn_edge::config::parse_bytes(v).map_err(|m| bad(field.into(), m))?;
        }
        Ok(())
    }

    /// The autoscaler's settings for `region`, when the lab scales it: its `edges` are the
    /// minimum, `edges` + `spare_edges` the maximum. `capacity_rps` is the resolved capacity.
    pub fn autoscale_config(
        &self,
        region: &Region,
        capacity_rps: f64,
    ) -> Option<crate::autoscale::AutoscaleConfig> {
        let a = self.autoscale.as_ref().filter(|a| a.enabled)?;
        if region.spare_edges.is_empty() {
            return None;
        }
        Some(crate::autoscale::AutoscaleConfig {
            capacity_rps,
            target_utilisation_pct: a.target_utilisation,
            min_edges: region.edges.len() as u32,
            max_edges: (region.edges.len() + region.spare_edges.len()) as u32,
            scale_out_cooldown: Duration::from_secs_f64(a.scale_out_cooldown_secs),
            scale_in_cooldown: Duration::from_secs_f64(a.scale_in_cooldown_secs),
            inflight_per_edge: a.inflight_per_edge,
        })
    }

    fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// Resolves nodes, links and ports.
    pub fn plan(self, ports: PortMode) -> anyhow::Result<Plan> {
        let n_edges = self
            .regions
            .iter()
            .map(|r| r.edges.len() + r.spare_edges.len())
            .sum::<usize>();
        let port = |base: u16, i: usize| -> anyhow::Result<u16> {
            match ports {
                PortMode::Auto => Ok(0),
                PortMode::Offset(off) => {
                    let p = base as i64 + off as i64 + i as i64;
                    u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                        anyhow::anyhow!("port {p} is out of range: try another --port-base")
                    })
                }
            }
        };
        let p = &self.ports;
        let https = |base: u16, i: usize| -> anyhow::Result<Option<u16>> {
            match self.https.enabled {
                true => port(base, i).map(Some),
                false => Ok(None),
            }
        };
        let origin_region = self
            .region(&self.origin.region)
            .ok_or_else(|| anyhow::anyhow!("origin region missing"))?;
        let origin_point = (origin_region.latitude, origin_region.longitude);
        let mut edges = Vec::with_capacity(n_edges);
        for r in &self.regions {
            let spares = r.spare_edges.iter().map(|n| (n, true));
            for (name, spare) in r.edges.iter().map(|n| (n, false)).chain(spares) {
                let i = edges.len();
                edges.push(EdgePlan {
                    name: name.clone(),
                    spare,
                    region: r.name.clone(),
                    latitude: r.latitude,
                    longitude: r.longitude,
                    port: port(p.edges, i)?,
                    peer_port: port(p.peers, i)?,
                    https_port: https(self.https.edges, i)?,
                });
            }
        }
        let d = &self.links;
        let over =
            |from: &str, to: &str| self.overrides.iter().find(|o| o.from == from && o.to == to);
        let mut links = Vec::new();
        let mut tcp = 0;
        let mut udp = 0;
        let mut secure = 0;
        let mut push = |kind, from: &str, to: &str, a, b, mbps: f64| -> anyhow::Result<()> {
            let km = distance_km(a, b);
            let o = over(from, to);
            let (base, n) = match kind {
                LinkKind::Peer => (p.peer_relays, &mut udp),
                _ => (p.relays, &mut tcp),
            };
            let https_port = match kind {
                LinkKind::Client => https(self.https.relays, secure)?,
                _ => None,
            };
            secure += usize::from(https_port.is_some());
            links.push(LinkPlan {
                kind,
                from: from.into(),
                to: to.into(),
                distance_km: (km * 10.0).round() / 10.0,
                rtt_ms: o.and_then(|o| o.rtt_ms).unwrap_or(d.rtt_ms(km)),
                mbps: o.and_then(|o| o.mbps).unwrap_or(mbps),
                port: port(base, *n)?,
                https_port,
            });
            *n += 1;
            Ok(())
        };
        for r in &self.regions {
            for e in &edges {
                let (a, b) = ((r.latitude, r.longitude), (e.latitude, e.longitude));
                push(LinkKind::Client, &r.name, &e.name, a, b, d.client_mbps)?;
            }
        }
        for e in &edges {
            let a = (e.latitude, e.longitude);
            push(
                LinkKind::Origin,
                &e.name,
                "origin",
                a,
                origin_point,
                d.edge_origin_mbps,
            )?;
        }
        if self.peering.enabled {
            for e in &edges {
                for f in edges.iter().filter(|f| f.name != e.name) {
                    let (a, b) = ((e.latitude, e.longitude), (f.latitude, f.longitude));
                    push(LinkKind::Peer, &e.name, &f.name, a, b, d.peer_mbps)?;
                }
            }
        }
        let capacity =
            cdn_edge::config::parse_bytes(&self.edges.capacity).map_err(anyhow::Error::msg)?;
        let chunk_size =
            cdn_edge::config::parse_bytes(&self.edges.chunk_size).map_err(anyhow::Error::msg)?;
        Ok(Plan {
            router_port: port(p.router, 0)?,
            origin_port: port(p.origin, 0)?,
            control_port: port(p.control, 0)?,
            router_https_port: https(self.https.router, 0)?,
            origin_https_port: https(self.https.origin, 0)?,
            origin_point,
            edges,
            links,
            capacity,
            chunk_size,
            file: self,
        })
    }
}

impl Plan {
    pub fn link(&self, kind: LinkKind, from: &str, to: &str) -> Option<&LinkPlan> {
        self.links
            .iter()
            .find(|l| l.kind == kind && l.from == from && l.to == to)
    }

    /// The address a browser or ffplay "in" a region would use: the network's first host + 1
    /// (127.R.0.2; 127.R.0.1 stays free for relays one may bind there).
    pub fn client_ip(region: &Region) -> std::net::Ipv4Addr {
        let base = u32::from(region.network.network());
        std::net::Ipv4Addr::from(base + 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> LabFile {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/lab.toml");
        LabFile::load(&p).expect("testdata/lab.toml is valid")
    }

    #[test]
    fn shipped_lab_has_what_the_issue_asks() {
        let lab = shipped();
        assert!(lab.regions.len() >= 3);
        assert!(lab.regions.iter().any(|r| r.edges.len() >= 2));
        let plan = lab.plan(PortMode::Offset(0)).expect("plan");
        assert_eq!(plan.router_port, 8080);
        let n = plan.edges.len();
        let regions = plan.file.regions.len();
        let clients = plan
            .links
            .iter()
            .filter(|l| l.kind == LinkKind::Client)
            .count();
        assert_eq!(clients, n * regions);
        // Near links are short, far links long: Singapore → Sydney is ~6,300 km.
        let near = plan.link(LinkKind::Client, "asia", "asia-1").expect("link");
        let far = plan
            .link(LinkKind::Client, "oceania", "asia-1")
            .expect("link");
        assert!(near.rtt_ms < 10.0, "{near:?}");
        assert!((60.0..80.0).contains(&far.rtt_ms), "{far:?}");
        // HTTPS: the router, the origin, every edge and every viewers' link, on ports of
        // their own (none shared with another listener of the same protocol).
        assert_eq!(
            (plan.router_https_port, plan.origin_https_port),
            (Some(8443), Some(8444))
        );
        for l in &plan.links {
            assert_eq!(l.https_port.is_some(), l.kind == LinkKind::Client, "{l:?}");
        }
        let mut secure: Vec<u16> = plan.edges.iter().filter_map(|e| e.https_port).collect();
        secure.extend(plan.links.iter().filter_map(|l| l.https_port));
        assert_eq!(secure.len(), n + clients);
        let before = secure.len();
        secure.sort_unstable();
        secure.dedup();
        assert_eq!(secure.len(), before, "an HTTPS port twice");
        let auto = shipped().plan(PortMode::Auto).expect("plan");
        assert!(auto.links.iter().all(|l| l.port == 0));
        assert!(auto.edges.iter().all(|e| e.https_port == Some(0)));
        let mut off = shipped();
        off.https.enabled = false;
        let off = off.plan(PortMode::Offset(0)).expect("plan");
        assert!(
            off.router_https_port.is_none() && off.edges.iter().all(|e| e.https_port.is_none())
        );
        assert!(off.links.iter().all(|l| l.https_port.is_none()));
        assert!(shipped().plan(PortMode::Offset(60_000)).is_err());
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/lab.toml");
        let text = std::fs::read_to_string(&p).expect("read");
        let bad = text.replacen(
            "network = \"127.3.0.0/16\"",
            "network = \"127.1.0.0/24\"",
            1,
        );
        let lab: LabFile = cdn_http::config::parse_toml(&bad, "lab.toml").expect("parses");
        let e = lab
            .check(Path::new("lab.toml"), &bad)
            .expect_err("overlap")
            .to_string();
        let line = bad
            .lines()
            .position(|l| l.contains("127.1.0.0/24"))
            .expect("line")
            + 1;
        assert!(e.starts_with(&format!("lab.toml:{line}:")), "{e}");
        assert!(e.contains("region[2].network"), "{e}");
        let bad = text.replacen("region = \"europe\"", "region = \"mars\"", 1);
        let lab: LabFile = cdn_http::config::parse_toml(&bad, "lab.toml").expect("parses");
        let e = lab
            .check(Path::new("lab.toml"), &bad)
            .expect_err("region")
            .to_string();
        assert!(e.contains("origin.region"), "{e}");
    }

    #[test]
    fn spares_scale_between_edges_and_edges_plus_spares() {
        let lab = shipped();
        let europe = lab.region("europe").expect("europe").clone();
        let c = lab.autoscale_config(&europe, 100.0).expect("europe scales");
        assert_eq!((c.min_edges, c.max_edges), (2, 3));
        assert_eq!(c.capacity_rps, 100.0);
        assert!(c.validate().is_ok());
        let oceania = lab.region("oceania").expect("oceania").clone();
        assert!(lab.autoscale_config(&oceania, 100.0).is_none(), "no spares");
        // Spares are planned (ports, links) but marked.
        let plan = lab.plan(PortMode::Offset(0)).expect("plan");
        let eu3 = plan.edges.iter().find(|e| e.name == "eu-3").expect("eu-3");
        assert!(eu3.spare && eu3.region == "europe");
        assert!(plan.link(LinkKind::Client, "europe", "eu-3").is_some());
        assert!(plan.link(LinkKind::Peer, "eu-1", "eu-3").is_some());
        assert!(plan.edges.iter().all(|e| e.port < plan.links[0].port));
    }

    #[test]
    fn autoscale_errors_name_the_field() {
        let p = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/lab.toml");
        let text = std::fs::read_to_string(&p).expect("read");
        let check = |bad: &str| {
            let lab: LabFile = cdn_http::config::parse_toml(bad, "lab.toml").expect("parses");
            lab.check(Path::new("lab.toml"), bad)
                .expect_err("invalid")
                .to_string()
        };
        let bad = text.replacen("target_utilisation = 70.0", "target_utilisation = 120.0", 1);
        let line = bad
            .lines()
            .position(|l| l.starts_with("target_utilisation"))
            .expect("line")
            + 1;
        let e = check(&bad);
        assert!(e.starts_with(&format!("lab.toml:{line}:")), "{e}");
        assert!(e.contains("autoscale.target_utilisation"), "{e}");
        let bad = text.replacen(
            "[autoscale]\nenabled = true",
            "[autoscale]\nenabled = false",
            1,
        );
        assert!(
            check(&bad).contains("region[0].spare_edges"),
            "spares need the autoscaler"
        );
        let bad = text.replacen("spare_edges = [\"na-2\"]", "spare_edges = [\"eu-1\"]", 1);
        assert!(check(&bad).contains("edge `eu-1` twice"));
    }
}
