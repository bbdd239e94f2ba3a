//! End-to-end tests of tiered caching (issue #14, `cdn_edge::peer::tier`): real edges in
//! several regions peering over QUIC with mutual TLS, in front of a real origin seen through
//! a counting, holdable HTTP proxy (the "origin" the edges know), so every test counts the
//! origin's requests per chunk and can hold its answers until the lower tier has asked.
//!
//! - a flash crowd in four regions makes exactly one origin request per chunk;
//! - the parent killed mid-object: the rest is served, and the origin sees at most one extra
//!   copy of each chunk;
//! - two nodes naming each other as parents: no deadlock, each answers the other cache-only;
//! - a chunk crosses the tiers in pipeline: the lower tier's viewer gets its first bytes
//!   while the origin still holds the rest of the parent's fill, byte-exact in the end;
//! - a parent that dies mid-stream: nothing of its answer is stored, the lower node fills
//!   the chunk again, and the viewer's body is exact or aborted, never complete with other
//!   bytes;
//! - a corrupt streamed answer (the `test-hooks` corrupting peer) is never stored nor served
//!   as complete.
//!
//! Timeouts are set long (coalesced waits, peer first byte, origin reads) so that a loaded
//! machine does not take a path the test is not about; the tests wait on events.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use cdn_edge::config::{PeerConfig, PeerTls};
use cdn_edge::{Edge, EdgeConfig};
use cdn_http::server::NodeHandle;
use common::*;
use futures::StreamExt;

const CHUNK: u64 = 64 * 1024;
/// Bound of every wait in these tests: far beyond what a loaded CI machine needs.
const SAFETY_NET: Duration = Duration::from_secs(90);

fn pki(test: &str, names: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cdn-tier-{test}-{}", std::process::id()));
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    cdn_edge::peer::pki::write_lab_pki(&dir, &names).expect("pki");
    dir
}

fn udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    s.local_addr().expect("addr")
}

struct Node {
    name: String,
    handle: NodeHandle,
    edge: Arc<Edge>,
}

/// Nodes (name, region, parents), all peering with each other, in front of `origin`.
async fn cluster(test: &str, origin: &str, nodes: &[(&str, &str, &[&str])]) -> Vec<Node> {
    let names: Vec<&str> = nodes.iter().map(|(n, _, _)| *n).collect();
    let dir = pki(test, &names);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|_| udp_port()).collect();
    let mut out = Vec::new();
    for (i, (name, region, parents)) in nodes.iter().enumerate() {
        let peers = nodes
            .iter()
            .zip(&addrs)
            .filter(|((n, _, _), _)| n != name)
            .map(|((n, r, _), a)| PeerConfig {
                name: n.to_string(),
                region: r.to_string(),
                addr: *a,
                push: None,
            })
            .collect();
        let (handle, edge) = start_edge(origin, |c: &mut EdgeConfig| {
            c.name = name.to_string();
            c.region = region.to_string();
            c.chunk_size = CHUNK;
            c.peer_listen = Some(addrs[i]);
            c.peer_tls = Some(PeerTls {
                ca: dir.join("ca.pem"),
                cert: dir.join(format!("{name}.pem")),
                key: dir.join(format!("{name}.key")),
            });
            c.peers = peers;
            c.parents = parents.iter().map(|p| p.to_string()).collect();
            // Long enough that no wait runs out on a loaded machine, so the origin counts
            // show the tier's coalescing and nothing else; a loop would hang past SAFETY_NET.
            c.coalesce_wait_ms = 300_000;
            c.origin_read_timeout_ms = 300_000;
            c.peer_first_byte_timeout_ms = 5_000;
            // No hot push in these tests: it moves bytes between peers, not from the origin,
            // but keeps the counts about the tier alone.
            c.hot_threshold = 1_000_000;
        })
        .await;
        out.push(Node {
            name: name.to_string(),
            handle,
            edge,
        });
    }
    out
}

async fn stop(nodes: Vec<Node>) {
    for n in nodes {
        n.edge.close_peers();
        n.handle.stop().await;
    }
}

/// The origin the edges see: forwards to the real origin, logs every request (the edge
/// named in its Via, its Range), and holds every request from number `hold_from` on until
/// [`Gate::open`].
#[derive(Clone)]
struct Gate {
    upstream: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<(String, String)>>>,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    hold_from: usize,
    /// The first answer's body: this many bytes, then the rest once [`Gate::release`]d.
    split: Option<usize>,
    release: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Gate {
    async fn start(upstream: &str, hold_from: usize) -> (Gate, String) {
        Self::start_split(upstream, hold_from, None).await
    }

    /// A gate whose first answer sends `split` bytes of its body, then the rest only once
    /// released.
    async fn start_split(upstream: &str, hold_from: usize, split: Option<usize>) -> (Gate, String) {
        let gate = Gate {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: client(),
            log: Arc::default(),
            open: Arc::new(tokio::sync::watch::channel(false).0),
            hold_from,
            split,
            release: Arc::new(tokio::sync::watch::channel(false).0),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(gate.clone());
        let listener = listener().await;
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (gate, url)
    }

    fn open(&self) {
        self.open.send_replace(true);
    }

    fn release(&self) {
        self.release.send_replace(true);
    }

    fn log(&self) -> Vec<(String, String)> {
        self.log.lock().expect("log").clone()
    }

    /// Origin requests per chunk index (every request the edges make is a chunk's Range).
    fn per_chunk(&self) -> BTreeMap<u64, usize> {
        let mut m = BTreeMap::new();
        for (via, range) in self.log() {
            let start: u64 = range
                .strip_prefix("bytes=")
                .and_then(|r| r.split('-').next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("{via} asked without a chunk range: {range:?}"));
            assert_eq!(start % CHUNK, 0, "{via}: {range} is not a chunk");
            *m.entry(start / CHUNK).or_default() += 1;
        }
        m
    }
}

async fn forward(State(g): State<Gate>, req: Request) -> Response {
    let via = header(req.headers(), "via");
    let range = header(req.headers(), "range");
    let n = {
        let mut log = g.log.lock().expect("log");
        log.push((via, range));
        log.len() - 1
    };
    if n >= g.hold_from {
        let mut rx = g.open.subscribe();
        let _ = rx.wait_for(|open| *open).await;
    }
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut headers = req.headers().clone();
    headers.remove(http::header::HOST);
    let up = g
        .client
        .get(format!("{}{pq}", g.upstream))
        .headers(headers)
        .send()
        .await
        .expect("the real origin answers");
    let mut out = Response::builder().status(up.status());
    for (k, v) in up.headers() {
        if k != http::header::CONTENT_LENGTH && k != http::header::TRANSFER_ENCODING {
            out = out.header(k, v);
        }
    }
    let body = up.bytes().await.expect("origin body");
    if let (0, Some(split)) = (n, g.split) {
        let split = split.min(body.len());
        let (head, rest) = (body.slice(..split), body.slice(split..));
        let mut release = g.release.subscribe();
        let tail = async move {
            let _ = release.wait_for(|r| *r).await;
            Ok::<_, std::io::Error>(rest)
        };
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(head) })
            .chain(futures::stream::once(tail));
        return out.body(Body::from_stream(stream)).expect("response");
    }
    out.body(Body::from(body)).expect("response")
}

fn header(h: &http::HeaderMap, name: &str) -> String {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Sum of the series of `name` whose labels include every `label="value"` of `labels`.
async fn metric(node: &Node, name: &str, labels: &[&str]) -> f64 {
    metrics_text(&node.handle.url())
        .await
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// Polls `done` every 20 ms until it holds; panics with `what` after [`SAFETY_NET`].
async fn wait_until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < SAFETY_NET, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// GETs `path` from `node` whole; asserts 200 and returns the body.
async fn fetch(url: String) -> bytes::Bytes {
    let r = client().get(&url).send().await.expect("response");
    assert_eq!(r.status(), 200, "{url}");
    r.bytes().await.expect("whole body")
}

/// Viewers per region, each starting the same object at the same moment (a barrier).
const VIEWERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flash_crowd_in_every_region_makes_one_origin_request_per_chunk() {
    let real = start_origin(&media_root(), &Default::default()).await;
    // Hold the origin's very first answer until every lower region has asked the upper tier.
    let (gate, origin) = Gate::start(&real.url(), 0).await;
    const SHIELD: &[&str] = &["s1", "s2"];
    let nodes = cluster(
        "crowd",
        &origin,
        &[
            ("s1", "eu", &[]),
            ("s2", "eu", &[]),
            ("u1", "us", SHIELD),
            ("u2", "us", SHIELD),
            ("a1", "asia", SHIELD),
            ("b1", "sa", SHIELD),
        ],
    )
    .await;
    let size = 6 * CHUNK + 100;
    let chunks = size.div_ceil(CHUNK);
    let path = format!("/synthetic/crowd?size={size}");
    let want = synthetic("crowd", 0..=size - 1);

    let regions: [(&str, &[usize]); 4] = [
        ("eu", &[0, 1]),
        ("us", &[2, 3]),
        ("asia", &[4]),
        ("sa", &[5]),
    ];
    let barrier = Arc::new(tokio::sync::Barrier::new(regions.len() * VIEWERS));
    let mut viewers = Vec::new();
    for (_, edges) in regions {
        for v in 0..VIEWERS {
            let url = format!("{}{path}", nodes[edges[v % edges.len()]].handle.url());
            let barrier = barrier.clone();
            viewers.push(tokio::spawn(async move {
                barrier.wait().await;
                fetch(url).await
            }));
        }
    }
    let shield = &nodes[..2];
    wait_until("every lower region asked the upper tier", || async {
        let mut all = true;
        for region in ["us", "asia", "sa"] {
            let label = format!("region=\"{region}\"");
            let mut asked = 0.0;
            for s in shield {
                asked += metric(s, "cdn_edge_tier_requests_total", &[&label]).await;
            }
            all &= asked >= 1.0;
        }
        all
    })
    .await;
    assert_eq!(
        gate.log().len(),
        1,
        "one probe reached the origin: {:?}",
        gate.log()
    );
    gate.open();
    for v in viewers {
        let body = tokio::time::timeout(SAFETY_NET, v)
            .await
            .expect("viewer done in time")
            .expect("viewer task");
        assert!(body == want, "byte-exact body");
    }
    let per_chunk = gate.per_chunk();
    let want_counts: BTreeMap<u64, usize> = (0..chunks).map(|i| (i, 1)).collect();
    assert_eq!(
        per_chunk,
        want_counts,
        "one origin request per chunk: {:?}",
        gate.log()
    );
    // Every origin request came from the upper tier, and each lower region got its bytes
    // from it.
    for (via, _) in gate.log() {
        assert!(via.ends_with("s1") || via.ends_with("s2"), "{via}");
    }
    for lower in &nodes[2..] {
        let got = metric(lower, "cdn_edge_tier_bytes_total", &[]).await
            + metric(lower, "cdn_edge_peer_bytes_total", &["direction=\"in\""]).await;
        assert!(got > 0.0, "{} got bytes from peers", lower.name);
    }
    for region in ["us", "asia", "sa"] {
        let label = format!("region=\"{region}\"");
        let mut filled = 0.0;
        for s in shield {
            filled += metric(
                s,
                "cdn_edge_tier_requests_total",
                &[&label, "answer=\"fill\""],
            )
            .await;
        }
        assert!(filled >= 1.0, "{region} was served by the upper tier");
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_parent_mid_object_costs_at_most_one_extra_copy_per_chunk() {
    let real = start_origin(&media_root(), &Default::default()).await;
    // The first three origin answers go through (the probe and two chunks); the fourth is
    // held, the parent that asked for it is killed, then the gate opens.
    let (gate, origin) = Gate::start(&real.url(), 3).await;
    const SHIELD: &[&str] = &["s1", "s2"];
    let nodes = cluster(
        "failover",
        &origin,
        &[("s1", "eu", &[]), ("s2", "eu", &[]), ("l1", "us", SHIELD)],
    )
    .await;
    let size = 10 * CHUNK + 7;
    let chunks = size.div_ceil(CHUNK);
    let path = format!("/synthetic/failover?size={size}");
    let want = synthetic("failover", 0..=size - 1);
    let lower = &nodes[2];
    let url = format!("{}{path}", lower.handle.url());
    let viewer = tokio::spawn(fetch(url.clone()));

    wait_until("a fourth origin request (held)", || async {
        gate.log().len() >= 4
    })
    .await;
    let (via, _) = gate.log()[3].clone();
    let killed = nodes
        .iter()
        .position(|n| via.ends_with(&n.name))
        .unwrap_or_else(|| panic!("the held request came from a node: {via}"));
    assert!(killed < 2, "only the upper tier asks the origin: {via}");
    nodes[killed].edge.close_peers();
    gate.open();

    let body = tokio::time::timeout(SAFETY_NET, viewer)
        .await
        .expect("viewer done in time")
        .expect("viewer task");
    assert!(body == want, "byte-exact body after the parent died");
    // A second viewer after the failover: served whole, from the edge or the other parent.
    assert!(fetch(url).await == want, "byte-exact second body");

    let per_chunk = gate.per_chunk();
    assert_eq!(
        per_chunk.len() as u64,
        chunks,
        "every chunk came from the origin once"
    );
    for (index, n) in &per_chunk {
        assert!(
            *n <= 2,
            "chunk {index}: {n} origin requests: {:?}",
            gate.log()
        );
    }
    let survivor = &nodes[1 - killed];
    let taken_over = metric(
        survivor,
        "cdn_edge_tier_requests_total",
        &["region=\"us\"", "answer=\"fill\""],
    )
    .await;
    assert!(taken_over >= 1.0, "the other parent took the role");
    let failed = metric(lower, "cdn_edge_tier_fetches_total", &["result=\"error\""]).await;
    assert!(failed >= 1.0, "the lower node saw the parent fail");
    // Nothing came to the origin from the lower tier.
    for (via, _) in gate.log() {
        assert!(!via.ends_with("l1"), "{via} asked the origin");
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_naming_each_other_as_parents_do_not_loop() {
    let real = start_origin(&media_root(), &Default::default()).await;
    let (gate, origin) = Gate::start(&real.url(), usize::MAX).await;
    let nodes = cluster("loop", &origin, &[("a", "r1", &["b"]), ("b", "r2", &["a"])]).await;
    let size = 5 * CHUNK + 3;
    let chunks = size.div_ceil(CHUNK);
    let path = format!("/synthetic/loop?size={size}");
    let want = synthetic("loop", 0..=size - 1);
    let barrier = Arc::new(tokio::sync::Barrier::new(2 * VIEWERS));
    let mut viewers = Vec::new();
    for node in &nodes {
        for _ in 0..VIEWERS {
            let url = format!("{}{path}", node.handle.url());
            let barrier = barrier.clone();
            viewers.push(tokio::spawn(async move {
                barrier.wait().await;
                fetch(url).await
            }));
        }
    }
    // With fills answering each other's tier requests, each node's fill would wait on its
    // own (the waits here are five minutes long): the viewers would not finish.
    for v in viewers {
        let body = tokio::time::timeout(SAFETY_NET, v)
            .await
            .expect("no deadlock: viewer done in time")
            .expect("viewer task");
        assert!(body == want, "byte-exact body");
    }
    for (index, n) in gate.per_chunk() {
        assert!(index < chunks);
        assert!(
            n <= 2,
            "chunk {index}: at most one origin request per node, got {n}"
        );
    }
    for node in &nodes {
        let asked = metric(node, "cdn_edge_tier_requests_total", &[]).await;
        let filled = metric(node, "cdn_edge_tier_requests_total", &["answer=\"fill\""]).await;
        assert!(asked >= 1.0, "{} was asked as a parent", node.name);
        assert_eq!(
            filled, 0.0,
            "{} never fills for a tier request: it has parents",
            node.name
        );
    }
    stop(nodes).await;
}

/// Starts a GET of `url` and returns the response once its first body bytes came (how many),
/// or panics after [`SAFETY_NET`].
async fn first_bytes(url: &str) -> (reqwest::Response, Vec<u8>) {
    let mut r = tokio::time::timeout(SAFETY_NET, client().get(url).send())
        .await
        .expect("response head in time")
        .expect("response");
    assert_eq!(r.status(), 200, "{url}");
    let first = tokio::time::timeout(SAFETY_NET, r.chunk())
        .await
        .expect("first body bytes in time")
        .expect("body")
        .expect("some bytes");
    (r, first.to_vec())
}

/// The rest of `r`'s body after `got`: `Ok` with the whole body, or `Err` when it was
/// aborted.
async fn rest(mut r: reqwest::Response, mut got: Vec<u8>) -> Result<Vec<u8>, String> {
    loop {
        match tokio::time::timeout(SAFETY_NET, r.chunk())
            .await
            .expect("body ends in time")
        {
            Ok(Some(b)) => got.extend_from_slice(&b),
            Ok(None) => return Ok(got),
            Err(e) => return Err(format!("{e} after {} bytes", got.len())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_crosses_the_tiers_in_pipeline() {
    let real = start_origin(&media_root(), &Default::default()).await;
    // The origin sends the first half of the parent's probe, then holds the rest.
    let (gate, origin) = Gate::start_split(&real.url(), usize::MAX, Some(CHUNK as usize / 2)).await;
    let nodes = cluster(
        "pipeline",
        &origin,
        &[("s1", "eu", &[]), ("l1", "us", &["s1"])],
    )
    .await;
    let size = 2 * CHUNK + 5;
    let path = format!("/synthetic/pipeline?size={size}");
    let want = synthetic("pipeline", 0..=size - 1);
    let url = format!("{}{path}", nodes[1].handle.url());
    // Store and forward at any hop would hold the lower tier's viewer until the chunk is
    // whole at the parent, which the origin does not allow before the release.
    let (resp, first) = first_bytes(&url).await;
    assert!(
        !first.is_empty() && first.len() < CHUNK as usize,
        "{} bytes",
        first.len()
    );
    assert!(
        gate.log().iter().all(|(via, _)| via.ends_with("s1")),
        "{:?}",
        gate.log()
    );
    gate.release();
    let body = rest(resp, first).await.expect("whole body");
    assert!(body == want[..], "byte-exact body");
    // Stored whole on both tiers: a second viewer is a hit, no more origin requests.
    let before = gate.log().len();
    assert!(fetch(url).await == want, "byte-exact second body");
    assert_eq!(gate.log().len(), before, "{:?}", gate.log());
    assert!(
        metric(&nodes[1], "cdn_edge_tier_bytes_total", &[]).await >= CHUNK as f64,
        "the lower tier's bytes came from its parent"
    );
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_dying_mid_stream_stores_only_the_refilled_chunk() {
    let real = start_origin(&media_root(), &Default::default()).await;
    let (gate, origin) = Gate::start_split(&real.url(), usize::MAX, Some(CHUNK as usize / 2)).await;
    let nodes = cluster(
        "midstream",
        &origin,
        &[("s1", "eu", &[]), ("l1", "us", &["s1"])],
    )
    .await;
    let size = CHUNK;
    let path = format!("/synthetic/midstream?size={size}");
    let want = synthetic("midstream", 0..=size - 1);
    let url = format!("{}{path}", nodes[1].handle.url());
    let (resp, first) = first_bytes(&url).await;
    assert!(first.len() < CHUNK as usize);
    // The parent dies with half of the chunk sent.
    nodes[0].edge.close_peers();
    // The lower node fills the chunk again (from the origin: its only parent is gone); the
    // viewer's body goes on only with bytes that agree with what it was sent, else it is
    // aborted: never complete with other bytes.
    gate.release();
    if let Ok(body) = rest(resp, first).await {
        assert!(body == want[..], "a complete body is the exact one");
    }
    let from_lower = gate
        .log()
        .iter()
        .filter(|(via, _)| via.ends_with("l1"))
        .count();
    assert_eq!(
        from_lower,
        1,
        "the lower node filled the chunk again: {:?}",
        gate.log()
    );
    // What it stored is the exact chunk, not the broken stream.
    assert!(
        fetch(url).await == want,
        "byte-exact body after the failure"
    );
    assert_eq!(gate.log().len(), 2, "{:?}", gate.log());
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_streamed_answer_is_never_stored_nor_served_whole() {
    let real = start_origin(&media_root(), &Default::default()).await;
    let (_gate, origin) = Gate::start(&real.url(), usize::MAX).await;
    let nodes = cluster(
        "corrupt",
        &origin,
        &[("s1", "eu", &[]), ("l1", "us", &["s1"])],
    )
    .await;
    // One chunk: no read-ahead fill (which would go on to the origin after the parent).
    let size = CHUNK / 2 + 10;
    let path = format!("/synthetic/corrupt?size={size}");
    let want = synthetic("corrupt", 0..=size - 1);
    let url = format!("{}{path}", nodes[1].handle.url());
    let parent = nodes[0].edge.peers.as_ref().expect("peers");
    parent.corrupt_chunks_sent(true);
    // Chunk 0 from the parent, one byte flipped on the wire: the viewer's body is aborted,
    // or, when the edge's fill went on to the origin before the viewer took a byte, exact;
    // never complete with the flipped byte.
    if let Ok(r) = client().get(&url).send().await
        && let Ok(body) = r.bytes().await
    {
        assert!(body == want[..], "a complete body is the exact one");
    }
    assert!(
        metric(&nodes[1], "cdn_edge_peer_digest_mismatches_total", &[]).await >= 1.0,
        "the lower node saw the digest fail"
    );
    parent.corrupt_chunks_sent(false);
    // Nothing corrupt was kept: the next body is exact (a stored corrupt chunk would be
    // served as a hit).
    assert!(fetch(url.clone()).await == want, "byte-exact body");
    assert!(fetch(url).await == want, "byte-exact body, again");
    stop(nodes).await;
}
