//! The steps of starting a lab, in the order [`crate::run`] takes them: [`prepare`] (the
//! plan, the run directory, the geo database, the peers' certificates), [`bind_relays`]
//! (every simulated link, bound before any node starts, since their addresses go into the
//! configs), [`start_origin`], [`edge_slots`] and [`start_edges`], [`start_router`],
//! [`describe`] (the [`LabState`] the dashboard shows and `state.json` holds), and
//! [`wait_healthy`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{LabFile, LinkKind, LinkPlan, Plan, PortMode};
use crate::netsim::sniff::{Exchange, Observer};
use crate::netsim::{TcpRelay, UdpRelay, bytes_per_sec, tcp_link};
use crate::procs::NodeProc;
use crate::scrape::Scraper;
use crate::state::{HttpsState, LabState, LinkState, NodeInfo, NodeKind, RegionState};
use crate::{
    EXCHANGES_KEPT, ExchangeRecord, Lab, LabArgs, NODE_START_TIMEOUT, START_TIMEOUT, addr, fleet,
    web,
};

/// What [`prepare`] made ready: the plan and where everything goes.
pub(crate) struct Setup {
    pub plan: Plan,
    pub run_dir: PathBuf,
    pub logs: PathBuf,
    pub state_path: PathBuf,
    pub geo_db: PathBuf,
    pub pki: PathBuf,
    /// The origin's root directory.
    pub root: PathBuf,
    /// The viewer certificate every node serves over HTTPS, with `[https]`.
    pub tls: Option<ViewerTls>,
}

/// The lab's viewer TLS (`RUN_DIR/tls/`): its own CA and one certificate for `localhost`,
/// `127.0.0.1` and `::1` that every node serves. Made once and kept across runs, so a CA a
/// browser or a script was told to trust stays valid.
#[derive(Debug, Clone)]
pub(crate) struct ViewerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Base64 SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub spki: String,
}

impl ViewerTls {
    /// The files in `dir`, written (a new CA and certificate) unless all are there.
    fn ensure(dir: &Path) -> anyhow::Result<ViewerTls> {
        let tls = ViewerTls {
            ca: dir.join("ca.pem"),
            cert: dir.join("viewer.pem"),
            key: dir.join("viewer.key"),
            spki: String::new(),
        };
        if ![&tls.ca, &tls.cert, &tls.key].iter().all(|p| p.exists()) {
            let names = ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec();
            cdn_edge::peer::pki::write_ca_and_certs(
                dir,
                "cdn lab viewer CA",
                &[("viewer".to_owned(), names)],
            )?;
        }
        let spki = cdn_edge::http3::spki_sha256_of_pem(&tls.cert)
            .with_context(|| format!("{} is not a certificate", tls.cert.display()))?;
        Ok(ViewerTls { spki, ..tls })
    }

    /// The `[tls]` of a node listening on `listen` with the viewer certificate.
    pub(crate) fn settings(&self, listen: SocketAddr) -> cdn_http::tls::TlsSettings {
        cdn_http::tls::TlsSettings {
            listen: Some(listen),
            certificates: vec![cdn_http::tls::CertFiles {
                cert: self.cert.clone(),
                key: self.key.clone(),
            }],
            ..Default::default()
        }
    }

    /// `--tls-listen ADDR --tls-cert PEM --tls-key PEM`.
    fn flags(&self, listen: SocketAddr) -> Vec<String> {
        vec![
            "--tls-listen".into(),
            listen.to_string(),
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// Reads the lab file and plans the lab; checks its fixed ports are free; makes the run
/// directory (an old `state.json` removed), the geo database and the peers' certificates.
pub(crate) fn prepare(args: &LabArgs) -> anyhow::Result<Setup> {
    // `cargo run` from a subdirectory: the default lab file is found at the repository root.
    let default = LabArgs::default_config();
    if args.config == default && !default.exists() {
        let repo = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
        if repo.join(&default).exists() {
            std::env::set_current_dir(repo)
                .with_context(|| format!("cannot change to {}", repo.display()))?;
            tracing::info!(dir = %repo.display(), "running the lab from the repository root");
        }
    }
    let file = LabFile::load(&args.config).map_err(|e| {
        anyhow::anyhow!(
            "{e}\n(cdn lab runs from the repository root, where testdata/ is, or give the lab \
             file with --config)"
        )
    })?;
    let mode = match args.port_base {
        None => PortMode::Offset(0),
        Some(0) => PortMode::Auto,
        Some(b) => PortMode::Offset(b as i32 - file.ports.router as i32),
    };
    let run_dir = absolute(args.run_dir.as_deref().unwrap_or(&file.run_dir));
    let plan = file.plan(mode)?;
    check_free(&plan)?;
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let state_path = run_dir.join("state.json");
    let _ = std::fs::remove_file(&state_path);
    let geo_db = run_dir.join("lab-geo.mmdb");
    write_geo_db(&plan, &geo_db)?;
    let names: Vec<String> = plan.edges.iter().map(|e| e.name.clone()).collect();
    let pki = run_dir.join("pki");
    if plan.file.peering.enabled {
        ensure_pki(&pki, &names)?;
    }
    let tls = match plan.file.https.enabled {
        true => Some(ViewerTls::ensure(&run_dir.join("tls"))?),
        false => None,
    };
    let root = absolute(&plan.file.origin.root);
    if !root.join("media").is_dir() {
        anyhow::bail!(
            "the origin root {} has no media/ directory (run from the repository root)",
            root.display()
        );
    }
    Ok(Setup {
        plan,
        run_dir,
        logs,
        state_path,
        geo_db,
        pki,
        root,
        tls,
    })
}

/// A relay on every link of the plan (the lab's network simulation, `crate::netsim`): each
/// link's RTT and bandwidth, the origin's uplink shared by every edge → origin link, and an
/// observer on viewers' links for the dashboard. With `[https]`, each viewers' link also gets
/// a [`SecureRelay`] with the same shape (and the same bandwidth buckets).
pub(crate) async fn bind_relays(plan: &Plan, lab: &Arc<Lab>) -> anyhow::Result<Relays> {
    let uplink = plan.file.links.origin_uplink();
    let mut relays: Vec<(LinkPlan, AnyRelay)> = Vec::new();
    let mut secure: Vec<(LinkPlan, SecureRelay)> = Vec::new();
    for link in &plan.links {
        let what = || format!("relay {} → {}", link.from, link.to);
        let relay = match link.kind {
            LinkKind::Peer => {
                let bps = Some(link.bytes_per_sec());
                let shape = crate::netsim::LinkShape::new(link.rtt(), bps, bps);
                let s = tokio::net::UdpSocket::bind(addr(link.port))
                    .await
                    .map_err(|_| taken(link.port, &what(), true))?;
                AnyRelay::Udp(UdpRelay::spawn(s, shape)?)
            }
            kind => {
                let l = tokio::net::TcpListener::bind(addr(link.port))
                    .await
                    .map_err(|_| taken(link.port, &what(), false))?;
                let observer: Option<Arc<dyn Observer>> = if kind == LinkKind::Client {
                    Some(Arc::new(LinkObserver {
                        lab: Arc::downgrade(lab),
                        region: link.from.clone(),
                        edge: link.to.clone(),
                        back_ms: link.rtt_ms / 2.0,
                    }))
                } else {
                    None
                };
                let up = (kind == LinkKind::Origin).then_some(&uplink);
                let shape = tcp_link(link.rtt(), bytes_per_sec(link.mbps), up);
                if let Some(port) = link.https_port {
                    let what = format!("HTTPS relay {} → {}", link.from, link.to);
                    let h3 = plan.file.https.http3;
                    let r = SecureRelay::bind(port, h3, &what, shape.clone()).await?;
                    secure.push((link.clone(), r));
                }
                AnyRelay::Tcp(TcpRelay::spawn(l, shape, observer)?)
            }
        };
        relays.push((link.clone(), relay));
    }
    Ok(Relays { relays, secure })
}

/// The relays [`bind_relays`] made.
pub(crate) struct Relays {
    pub relays: Vec<(LinkPlan, AnyRelay)>,
    /// The viewers' links' HTTPS (and HTTP/3) relays.
    pub secure: Vec<(LinkPlan, SecureRelay)>,
}

/// A viewers' link over TLS: a TCP relay to the edge's HTTPS listener (it carries TLS as
/// bytes, unchanged) and, with HTTP/3, a UDP relay on the same port number to the edge's
/// HTTP/3 endpoint, so an `Alt-Svc: h3=":PORT"` naming the port a browser came to (the edges'
/// `alt_svc_request_port`) keeps its QUIC traffic on the simulated link. Both directions of
/// both relays share the link's bandwidth buckets. Its HTTPS exchanges are not observed (the
/// dashboard's "last requests" lists the plain HTTP ones).
pub(crate) struct SecureRelay {
    pub tcp: TcpRelay,
    pub udp: Option<UdpRelay>,
}

/// Tries at an OS-chosen port before giving up on finding a UDP port free beside a TCP one.
const SAME_PORT_TRIES: usize = 32;

impl SecureRelay {
    async fn bind(
        port: u16,
        http3: bool,
        what: &str,
        shape: crate::netsim::LinkShape,
    ) -> anyhow::Result<SecureRelay> {
        for _ in 0..SAME_PORT_TRIES {
            let l = tokio::net::TcpListener::bind(addr(port))
                .await
                .map_err(|_| taken(port, what, false))?;
            if !http3 {
                return Ok(SecureRelay {
                    tcp: TcpRelay::spawn(l, shape, None)?,
                    udp: None,
                });
            }
            let p = l.local_addr()?.port();
            match tokio::net::UdpSocket::bind(addr(p)).await {
                Ok(u) => {
                    return Ok(SecureRelay {
                        tcp: TcpRelay::spawn(l, shape.clone(), None)?,
                        udp: Some(UdpRelay::spawn(u, shape)?),
                    });
                }
                // The OS chose a TCP port whose UDP twin is taken: choose again.
                Err(_) if port == 0 => continue,
                Err(_) => return Err(taken(port, what, true)),
            }
        }
        anyhow::bail!("{what}: no port free over both TCP and UDP after {SAME_PORT_TRIES} tries")
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.tcp.addr
    }

    /// Points the relay at an edge's HTTPS listener and HTTP/3 endpoint.
    pub(crate) fn set_target(&self, to: EdgeTls) {
        self.tcp.target.send_replace(Some(to.https));
        if let (Some(u), Some(h3)) = (&self.udp, to.http3) {
            u.target.send_replace(Some(h3));
        }
    }
}

/// Where an edge listens for HTTPS and HTTP/3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EdgeTls {
    pub https: SocketAddr,
    pub http3: Option<SocketAddr>,
}

/// Starts the origin; returns it and where its log of this run begins.
pub(crate) fn start_origin(setup: &Setup) -> anyhow::Result<(NodeProc, u64)> {
    let plan = &setup.plan;
    let mut origin_args = vec![
        "origin".to_owned(),
        "--listen".into(),
        addr(plan.origin_port).to_string(),
        "--root".into(),
        setup.root.display().to_string(),
    ];
    if let Some(c) = &plan.file.origin.config {
        origin_args.extend(["--config".into(), absolute(c).display().to_string()]);
    }
    if let (Some(tls), Some(port)) = (&setup.tls, plan.origin_https_port) {
        origin_args.extend(tls.flags(addr(port)));
    }
    let mut origin = NodeProc::new("origin", origin_args, setup.logs.join("origin.log"));
    let offset = origin.start()?;
    Ok((origin, offset))
}

/// A process handle for every edge of the plan (the spares start later, if ever).
pub(crate) fn edge_slots(setup: &Setup) -> Vec<fleet::EdgeSlot> {
    setup
        .plan
        .edges
        .iter()
        .map(|e| {
            let cfg_path = setup.run_dir.join(format!("{}.toml", e.name));
            let args = vec![
                "edge".to_owned(),
                "--listen".into(),
                addr(e.port).to_string(),
                "--config".into(),
                cfg_path.display().to_string(),
            ];
            fleet::EdgeSlot {
                proc: NodeProc::new(&e.name, args, setup.logs.join(format!("{}.log", e.name))),
                url: None,
                peer_addr: None,
                tls: None,
                routed: !e.spare,
                peered: !e.spare,
            }
        })
        .collect()
}

/// Lists every edge for the dashboard, then starts the always-on ones; returns their URLs.
pub(crate) async fn start_edges(
    edges: &fleet::Edges,
    slots: &mut [fleet::EdgeSlot],
) -> anyhow::Result<Vec<String>> {
    let plan = &edges.wiring.plan;
    // What the dashboard and state.json show (URLs filled in as nodes start).
    let nodes: Vec<NodeInfo> = plan
        .edges
        .iter()
        .zip(slots.iter())
        .map(|(e, s)| NodeInfo {
            name: e.name.clone(),
            kind: NodeKind::Edge,
            region: e.region.clone(),
            url: String::new(),
            pid: None,
            running: false,
            log: s.proc.log.clone(),
            peer_addr: None,
            spare: e.spare,
            https_url: None,
        })
        .collect();
    if let Ok(mut n) = edges.wiring.lab.nodes.lock() {
        *n = nodes;
    }
    for (i, _) in plan.edges.iter().enumerate().filter(|(_, e)| !e.spare) {
        edges.start_slot(slots, i).await?;
    }
    Ok(slots.iter().filter_map(|s| s.url.clone()).collect())
}

/// The router as [`start_router`] started it.
pub(crate) struct RouterRun {
    pub proc: NodeProc,
    /// `http://ADDR`
    pub url: String,
    /// `https://ADDR`, with `[https]`.
    pub https_url: Option<String>,
}

/// Writes the router's config and starts it; returns it and its URLs.
pub(crate) async fn start_router(
    edges: &fleet::Edges,
    slots: &[fleet::EdgeSlot],
    setup: &Setup,
) -> anyhow::Result<RouterRun> {
    let router_toml = edges.wiring.router_toml.clone();
    edges.write_router_config(slots)?;
    let plan = &edges.wiring.plan;
    let mut args = vec![
        "router".into(),
        "--listen".into(),
        addr(plan.router_port).to_string(),
        "--geo-db".into(),
        setup.geo_db.display().to_string(),
        "--config".into(),
        router_toml.display().to_string(),
    ];
    if let (Some(tls), Some(port)) = (&setup.tls, plan.router_https_port) {
        args.extend(tls.flags(addr(port)));
    }
    let mut router = NodeProc::new("router", args, setup.logs.join("router.log"));
    let offset = router.start()?;
    let router_addr = router
        .learn_addr(offset, "addr", NODE_START_TIMEOUT)
        .await?;
    let https_url = match setup.tls {
        Some(_) => Some(format!(
            "https://{}",
            router
                .learn_addr(offset, "tls_addr", NODE_START_TIMEOUT)
                .await?
        )),
        None => None,
    };
    *edges.router_pid.lock().unwrap_or_else(|p| p.into_inner()) = router.pid();
    Ok(RouterRun {
        proc: router,
        url: format!("http://{router_addr}"),
        https_url,
    })
}

/// What the dashboard and `state.json` show of the lab: its URLs, regions, links and link
/// model; the router and the origin join the node list.
pub(crate) fn describe(
    edges: &fleet::Edges,
    router: &RouterRun,
    origin: &NodeProc,
    tls: Option<&ViewerTls>,
) -> LabState {
    let w = &edges.wiring;
    let plan = &w.plan;
    let lab = &w.lab;
    let mut nodes = lab.nodes.lock().map(|n| n.clone()).unwrap_or_default();
    nodes.splice(
        0..0,
        [
            NodeInfo {
                name: "router".into(),
                kind: NodeKind::Router,
                region: "-".into(),
                url: router.url.clone(),
                pid: router.proc.pid(),
                running: true,
                log: router.proc.log.clone(),
                peer_addr: None,
                spare: false,
                https_url: router.https_url.clone(),
            },
            NodeInfo {
                name: "origin".into(),
                kind: NodeKind::Origin,
                region: plan.file.origin.region.clone(),
                url: w.origin_url.clone(),
                pid: origin.pid(),
                running: true,
                log: origin.log.clone(),
                peer_addr: None,
                spare: false,
                https_url: w.origin_https_url.clone(),
            },
        ],
    );
    if let Ok(mut n) = lab.nodes.lock() {
        *n = nodes;
    }
    let https = match (tls, &router.https_url, &w.origin_https_url) {
        (Some(t), Some(r), Some(o)) => Some(HttpsState {
            router: r.clone(),
            player: format!("{r}/"),
            origin: o.clone(),
            http3: plan.file.https.http3,
            ca: t.ca.clone(),
            cert: t.cert.clone(),
            key: t.key.clone(),
            spki_sha256: t.spki.clone(),
        }),
        _ => None,
    };
    LabState {
        router: router.url.clone(),
        player: format!("{}/", router.url),
        control: w.control_url.clone(),
        origin: w.origin_url.clone(),
        origin_region: plan.file.origin.region.clone(),
        run_dir: w.run_dir.clone(),
        regions: plan
            .file
            .regions
            .iter()
            .map(|r| RegionState {
                name: r.name.clone(),
                city: r.city.clone(),
                network: r.network,
                client_ip: Plan::client_ip(r),
                edges: r.edges.clone(),
                spare_edges: r.spare_edges.clone(),
                latitude: r.latitude,
                longitude: r.longitude,
            })
            .collect(),
        links: w
            .relays
            .iter()
            .map(|(l, r)| LinkState {
                link: l.clone(),
                addr: r.addr(),
                https_addr: w.secure_relay(l.kind, &l.from, &l.to).map(|s| s.addr()),
            })
            .collect(),
        link_model: plan.file.links.clone(),
        renditions: web::RENDITIONS
            .iter()
            .map(|&(a, b, c, d)| (a.into(), b.into(), c.into(), d.into()))
            .collect(),
        tiers: crate::tiers::roles(plan),
        https,
        pid: None,
        nodes: Vec::new(),
        started_in_secs: None,
    }
}

struct LinkObserver {
    lab: std::sync::Weak<Lab>,
    region: String,
    edge: String,
    back_ms: f64,
}

impl Observer for LinkObserver {
    fn exchange(&self, e: Exchange) {
        let Some(lab) = self.lab.upgrade() else {
            return;
        };
        let rec = ExchangeRecord {
            t: lab.started.elapsed().as_secs_f64(),
            region: self.region.clone(),
            edge: self.edge.clone(),
            method: e.method,
            path: e.path,
            status: e.status,
            cache_status: e.cache_status,
            bytes: e.bytes,
            ms: e.ms + self.back_ms,
        };
        if let Ok(mut q) = lab.exchanges.lock() {
            if q.len() >= EXCHANGES_KEPT {
                q.pop_front();
            }
            q.push_back(rec);
        }
    }
}

/// A relay of the lab, TCP or UDP.
pub(crate) enum AnyRelay {
    Tcp(TcpRelay),
    Udp(UdpRelay),
}

impl AnyRelay {
    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            AnyRelay::Tcp(r) => r.addr,
            AnyRelay::Udp(r) => r.addr,
        }
    }
    pub(crate) fn set_target(&self, to: SocketAddr) {
        let t = match self {
            AnyRelay::Tcp(r) => &r.target,
            AnyRelay::Udp(r) => &r.target,
        };
        t.send_replace(Some(to));
    }
}

pub(crate) fn taken(port: u16, what: &str, udp: bool) -> anyhow::Error {
    let proto = if udp { "UDP" } else { "TCP" };
    anyhow::anyhow!(
        "{proto} port {port} ({what}) is taken: is another lab running? Stop it, or move the \
         lab's ports with --port-base (e.g. --port-base 9080), or let the OS choose them with \
         --port-base 0"
    )
}

/// Fails early, naming the node, when a fixed port is taken.
fn check_free(plan: &Plan) -> anyhow::Result<()> {
    let mut tcp = vec![
        (plan.router_port, "router".to_owned()),
        (plan.origin_port, "origin".to_owned()),
        (plan.control_port, "lab API".to_owned()),
    ];
    tcp.extend(plan.edges.iter().map(|e| (e.port, e.name.clone())));
    let mut udp = Vec::new();
    for (port, what) in [
        (plan.router_https_port, "router HTTPS"),
        (plan.origin_https_port, "origin HTTPS"),
    ] {
        tcp.extend(port.map(|p| (p, what.to_owned())));
    }
    for e in &plan.edges {
        if let Some(p) = e.https_port {
            tcp.push((p, format!("{} HTTPS", e.name)));
            if plan.file.https.http3 {
                udp.push((p, format!("{} HTTP/3", e.name)));
            }
        }
    }
    for (port, what) in tcp.into_iter().filter(|(p, _)| *p != 0) {
        std::net::TcpListener::bind(addr(port)).map_err(|_| taken(port, &what, false))?;
    }
    for (port, what) in udp.into_iter().filter(|(p, _)| *p != 0) {
        std::net::UdpSocket::bind(addr(port)).map_err(|_| taken(port, &what, true))?;
    }
    if plan.file.peering.enabled {
        for e in plan.edges.iter().filter(|e| e.peer_port != 0) {
            std::net::UdpSocket::bind(addr(e.peer_port))
                .map_err(|_| taken(e.peer_port, &format!("{} peer endpoint", e.name), true))?;
        }
    }
    Ok(())
}

/// Builds the lab's geo database from its regions; writes it only when it changed.
fn write_geo_db(plan: &Plan, path: &Path) -> anyhow::Result<()> {
    use cdn_geo_router::geosrc::{GeoSource, GeoSourceNetwork};
    let src = GeoSource {
        database_type: "CDN-Lab-City".into(),
        description: "cdn lab: loopback client regions (generated from the lab file)".into(),
        build_epoch: 1_767_225_600,
        networks: plan
            .file
            .regions
            .iter()
            .map(|r| GeoSourceNetwork {
                network: ipnet::IpNet::V4(r.network),
                city: r.city.clone(),
                country: r.country.clone(),
                country_name: None,
                continent: r.continent.clone(),
                latitude: r.latitude,
                longitude: r.longitude,
                accuracy_radius: Some(50),
            })
            .collect(),
    };
    let bytes = src.build().context("building the lab's geo database")?;
    if std::fs::read(path).ok().as_deref() != Some(&bytes[..]) {
        std::fs::write(path, &bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Writes the peers' CA and node certificates unless they are all there.
fn ensure_pki(dir: &Path, names: &[String]) -> anyhow::Result<()> {
    let complete = dir.join("ca.pem").exists()
        && names.iter().all(|n| {
            dir.join(format!("{n}.pem")).exists() && dir.join(format!("{n}.key")).exists()
        });
    if !complete {
        cdn_edge::peer::pki::write_lab_pki(dir, names)?;
    }
    Ok(())
}

pub(crate) fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Waits until every node answers its health check and the router sees every edge up.
pub(crate) async fn wait_healthy(
    urls: &[String],
    router: &str,
    edges: usize,
) -> anyhow::Result<()> {
    let scrape = Scraper::new(Duration::from_secs(2));
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        let mut waiting = Vec::new();
        for u in urls {
            if scrape.text(&format!("{u}/healthz")).await.is_err() {
                waiting.push(u.clone());
            }
        }
        let up = scrape
            .get(&format!("{router}/healthz"))
            .await
            .ok()
            .and_then(|(_, t)| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["edges_up"].as_u64())
            .unwrap_or(0);
        if waiting.is_empty() && up as usize == edges {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the lab is not healthy after {START_TIMEOUT:?}: waiting for {waiting:?}, the \
                 router sees {up} of {edges} edges up (see the logs in the run directory)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
