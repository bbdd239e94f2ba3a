//! `state.json`, the contract between a running lab and whoever drives it: the supervisor
//! (`crate::run`) writes it once every node is healthy, and the same types read it back in
//! `cdn plan --from-lab` (the router's URL), `cdn bench load` (router, origin, regions, edges,
//! link model) and the end-to-end tests (`tests/common/lab_run.rs`). The dashboard's
//! `/_lab/api/status` shows the same [`LabState`] (before `pid`, `nodes` and
//! `started_in_secs` are filled in).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{LinkDefaults, LinkPlan};

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    Origin,
    Edge,
    Router,
}

/// What a node is, for the dashboard and state.json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub kind: NodeKind,
    pub region: String,
    pub url: String,
    pub pid: Option<u32>,
    pub running: bool,
    pub log: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<SocketAddr>,
    /// An edge the autoscaler starts when the load needs it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spare: bool,
    /// `https://ADDR` of its HTTPS listener (HTTP/3 on the same port number of an edge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
}

/// One simulated region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionState {
    pub name: String,
    pub city: String,
    /// Its viewers' loopback network (127.R.0.0/16).
    pub network: ipnet::Ipv4Net,
    /// The address a viewer of the region sends from.
    pub client_ip: Ipv4Addr,
    pub edges: Vec<String>,
    pub spare_edges: Vec<String>,
    pub latitude: f64,
    pub longitude: f64,
}

/// One simulated link and the address of its relay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkState {
    #[serde(flatten)]
    pub link: LinkPlan,
    pub addr: SocketAddr,
    /// A viewers' link's HTTPS relay (TCP; HTTP/3 over UDP on the same port number when the
    /// lab's `https` says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_addr: Option<SocketAddr>,
}

/// The lab's HTTPS: its URLs and the certificate files (`[https]` of the lab file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpsState {
    /// The router over HTTPS (player, dashboard, redirects to `https://` links).
    pub router: String,
    pub player: String,
    pub origin: String,
    /// Whether the edges and the viewers' links carry HTTP/3.
    pub http3: bool,
    /// The lab's CA (PEM): trust it to verify every node.
    pub ca: PathBuf,
    /// The viewer certificate and key every node serves (`localhost`, `127.0.0.1`, `::1`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Base64 SHA-256 of the certificate's public key (Chromium's
    /// `--ignore-certificate-errors-spki-list`).
    pub spki_sha256: String,
}

/// The lab as `state.json` describes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// The router's base URL (also the player's and the dashboard's).
    pub router: String,
    pub player: String,
    /// The lab API's base URL.
    pub control: String,
    pub origin: String,
    pub origin_region: String,
    pub run_dir: PathBuf,
    pub regions: Vec<RegionState>,
    pub links: Vec<LinkState>,
    /// The link model's parameters (what `cdn bench load` rebuilds origin links with).
    pub link_model: LinkDefaults,
    /// (id, label, path, media type) of each rendition of the demo.
    pub renditions: Vec<(String, String, String, String)>,
    /// Each edge's tier role by name (shield, lower, flat), for the dashboard.
    #[serde(default)]
    pub tiers: serde_json::Map<String, serde_json::Value>,
    /// HTTPS and HTTP/3, when the lab serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<HttpsState>,
    /// The lab process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_in_secs: Option<f64>,
}

/// Why a state file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not the lab's state file: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl LabState {
    /// Reads a state file.
    pub fn read(path: &Path) -> Result<LabState, StateError> {
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// The state file's text.
    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string_pretty(self)
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The running lab's edges (spares included).
    pub fn edges(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter().filter(|n| n.kind == NodeKind::Edge)
    }

    /// The relay of the `kind` link (`client`, `origin`, `peer`) from `from` to `to`.
    pub fn link(&self, kind: &str, from: &str, to: &str) -> Option<&LinkState> {
        self.links
            .iter()
            .find(|l| l.link.kind.name() == kind && l.link.from == from && l.link.to == to)
    }
}

#[cfg(test)]
impl LabState {
    /// A small lab's state, for tests.
    pub(crate) fn example() -> LabState {
        use crate::config::LinkKind;
        LabState {
            router: "http://127.0.0.1:8080".into(),
            player: "http://127.0.0.1:8080/".into(),
            control: "http://127.0.0.1:8081".into(),
            origin: "http://127.0.0.1:9000".into(),
            origin_region: "europe".into(),
            run_dir: "lab-run".into(),
            regions: vec![RegionState {
                name: "europe".into(),
                city: "Frankfurt".into(),
                network: "127.1.0.0/16".parse().expect("net"),
                client_ip: Ipv4Addr::new(127, 1, 0, 1),
                edges: vec!["eu-1".into()],
                spare_edges: vec![],
                latitude: 50.1,
                longitude: 8.7,
            }],
            links: vec![LinkState {
                link: LinkPlan {
                    kind: LinkKind::Client,
                    from: "europe".into(),
                    to: "eu-1".into(),
                    distance_km: 0.0,
                    rtt_ms: 4.0,
                    mbps: 50.0,
                    port: 0,
                    https_port: None,
                },
                addr: "127.0.0.1:7000".parse().expect("addr"),
                https_addr: Some("127.0.0.1:7443".parse().expect("addr")),
            }],
            link_model: LinkDefaults::default(),
            tiers: Default::default(),
            https: None,
            renditions: vec![(
                "mp4".into(),
                "MP4".into(),
                "/m.mp4".into(),
                "video/mp4".into(),
            )],
            pid: Some(42),
            nodes: vec![NodeInfo {
                name: "eu-1".into(),
                kind: NodeKind::Edge,
                region: "europe".into(),
                url: "http://127.0.0.1:7001".into(),
                pid: Some(43),
                running: true,
                log: "lab-run/eu-1.log".into(),
                peer_addr: None,
                spare: false,
                https_url: Some("https://127.0.0.1:7444".into()),
            }],
            started_in_secs: Some(1.5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_reads_back_as_written() {
        let state = LabState::example();
        let text = state.to_json().expect("json");
        // The file's shape: what scripts and older readers look for.
        let v: serde_json::Value = serde_json::from_str(&text).expect("value");
        assert_eq!(v["nodes"][0]["kind"], "edge");
        assert_eq!(v["regions"][0]["network"], "127.1.0.0/16");
        assert_eq!(v["links"][0]["kind"], "client");
        assert_eq!(v["links"][0]["addr"], "127.0.0.1:7000");
        assert!(v["nodes"][0].get("spare").is_none());
        let path = std::env::temp_dir().join(format!("cdn-lab-state-{}.json", std::process::id()));
        std::fs::write(&path, &text).expect("write");
        let back = LabState::read(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert_eq!(back.node("eu-1"), state.node("eu-1"));
        assert_eq!(back.regions, state.regions);
        assert_eq!(
            back.link("client", "europe", "eu-1").map(|l| l.addr),
            Some("127.0.0.1:7000".parse().expect("addr"))
        );
        assert_eq!(back.edges().count(), 1);
        assert!(matches!(
            LabState::read(Path::new("/nonexistent/state.json")),
            Err(StateError::Read { .. })
        ));
    }
}
