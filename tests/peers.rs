//! End-to-end tests of peer replication over QUIC: three real edges in two regions in front
//! of one real origin, with mutual TLS from a cluster CA generated for the test. Origin
//! fetches are counted from the origin's own metrics.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cdn_edge::config::{PeerConfig, PeerTls};
use cdn_edge::{Edge, EdgeConfig};
use cdn_http::server::NodeHandle;
use common::*;

const CHUNK: u64 = 64 * 1024;

fn pki(test: &str, names: &[&str]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cdn-peers-{test}-{}", std::process::id()));
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    cdn_edge::peer::pki::write_lab_pki(&dir, &names).expect("pki");
    dir
}

fn tls(dir: &std::path::Path, name: &str) -> PeerTls {
    PeerTls {
        ca: dir.join("ca.pem"),
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}.key")),
    }
}

/// A free UDP port on 127.0.0.1, assigned by the OS.
fn udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp bind");
    s.local_addr().expect("addr")
}

struct Node {
    handle: NodeHandle,
    edge: Arc<Edge>,
}

/// Nodes (name, region) all peering with each other.
async fn cluster(
    test: &str,
    origin: &str,
    nodes: &[(&str, &str)],
    tweak: impl Fn(&str, &mut EdgeConfig),
) -> Vec<Node> {
    let names: Vec<&str> = nodes.iter().map(|(n, _)| *n).collect();
    let dir = pki(test, &names);
    let addrs: Vec<SocketAddr> = nodes.iter().map(|_| udp_port()).collect();
    let mut out = Vec::new();
    for (i, (name, region)) in nodes.iter().enumerate() {
        let peers = nodes
            .iter()
            .zip(&addrs)
            .filter(|((n, _), _)| n != name)
            .map(|((n, r), a)| PeerConfig {
                name: n.to_string(),
                region: r.to_string(),
                addr: *a,
                push: None,
            })
            .collect();
        let (handle, edge) = start_edge(origin, |c| {
            c.name = name.to_string();
            c.region = region.to_string();
            c.chunk_size = CHUNK;
            c.peer_listen = Some(addrs[i]);
            c.peer_tls = Some(tls(&dir, name));
            c.peers = peers;
            tweak(name, c);
        })
        .await;
        out.push(Node { handle, edge });
    }
    out
}

async fn get(node: &Node, path: &str) -> (String, bytes::Bytes) {
    let r = client()
        .get(format!("{}{path}", node.handle.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{path}");
    let cs = r
        .headers()
        .get("cache-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (cs, r.bytes().await.unwrap())
}

async fn stop(nodes: Vec<Node>) {
    for n in nodes {
        n.edge.close_peers();
        n.handle.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chunk_fetched_in_a_region_is_not_fetched_again_by_its_sibling() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let nodes = cluster(
        "sibling",
        &origin.url(),
        &[("a1", "r1"), ("a2", "r1"), ("b1", "r2")],
        |_, _| {},
    )
    .await;
    let size = 6 * CHUNK + 100;
    let path = format!("/synthetic/sib?size={size}");
    let want = synthetic("sib", 0..=size - 1);
    let (_, body) = get(&nodes[0], &path).await;
    assert_eq!(body, want);
    let after_a1 = origin_requests(&origin.url()).await;
    assert!(after_a1 >= 1.0);
    let (cs, body) = get(&nodes[1], &path).await;
    assert_eq!(body, want, "byte-exact through the sibling");
    assert_eq!(
        origin_requests(&origin.url()).await,
        after_a1,
        "a2 filled from its sibling, not the origin ({cs})"
    );
    let text = metrics_text(&nodes[1].handle.url()).await;
    let found = cdn_http::metrics::sample(&text, "cdn_edge_peer_fetches_total{result=\"found\"}");
    assert!(found >= Some(1.0), "{text}");
    stop(nodes).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_object_is_pushed_to_the_other_region() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let nodes = cluster(
        "push",
        &origin.url(),
        &[("a1", "r1"), ("b1", "r2")],
        |_, c| c.hot_threshold = 3,
    )
    .await;
    let size = 3 * CHUNK;
    let path = format!("/synthetic/hot?size={size}");
    let want = synthetic("hot", 0..=size - 1);
    for _ in 0..4 {
        assert_eq!(get(&nodes[0], &path).await.1, want);
    }
    // The push runs in the background: wait (bounded) until b1 admitted every chunk.
    let b1 = nodes[1].edge.clone();
    let mut pushed = false;
    for _ in 0..200 {
        let ok = metric_sum(&nodes[0].handle.url(), "cdn_edge_pushes_total").await;
        if ok >= 3.0 && b1.store.metas.entry_count() + b1.store.metas.iter().count() as u64 > 0 {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(pushed, "the hot object reached b1");
    let before = origin_requests(&origin.url()).await;
    let (cs, body) = get(&nodes[1], &path).await;
    assert_eq!(body, want);
    assert!(cs.contains("; hit"), "served as a hit in region 2: {cs}");
    assert_eq!(
        origin_requests(&origin.url()).await,
        before,
        "no origin fetch"
    );
    stop(nodes).await;
    origin.stop().await;
}

#[tokio::test]
async fn a_peer_with_a_certificate_from_another_ca_is_refused() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let nodes = cluster("ca", &origin.url(), &[("a1", "r1")], |_, _| {}).await;
    let a1_addr = nodes[0].edge.peers.as_ref().unwrap().local_addr().unwrap();
    let rogue_dir = pki("ca-rogue", &["a2"]);
    // Trusts a1's CA, but presents a certificate signed by another CA.
    let real_ca = std::env::temp_dir().join(format!("cdn-peers-ca-{}", std::process::id()));
    let rogue = PeerTls {
        ca: real_ca.join("ca.pem"),
        cert: rogue_dir.join("a2.pem"),
        key: rogue_dir.join("a2.key"),
    };
    let mut endpoint =
        cdn_edge::peer::quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(cdn_edge::peer::pki::client_config(&rogue, CHUNK).unwrap());
    let conn = endpoint.connect(a1_addr, "a1").unwrap().await;
    // TLS 1.3: the server checks the client certificate after the client's handshake ends,
    // so the refusal shows on the first stream.
    let refused = match conn {
        Err(_) => true,
        Ok(c) => {
            let r = async {
                let (mut s, mut r) = c.open_bi().await?;
                s.write_all(&[1, 0, 0, 0, 0]).await?;
                let mut b = [0u8; 1];
                r.read_exact(&mut b).await?;
                Ok::<_, Box<dyn std::error::Error>>(())
            };
            tokio::time::timeout(Duration::from_secs(5), r)
                .await
                .map_or(true, |r| r.is_err())
        }
    };
    assert!(refused, "a certificate from another CA must not get in");
    let failures = metric_sum(
        &nodes[0].handle.url(),
        "cdn_edge_peer_handshake_failures_total",
    )
    .await;
    assert!(failures >= 1.0);
    stop(nodes).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupted_chunk_is_rejected_and_fetched_elsewhere() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let nodes = cluster(
        "corrupt",
        &origin.url(),
        &[("a1", "r1"), ("a2", "r1")],
        |name, c| c.test_corrupt_peer_chunks = name == "a1",
    )
    .await;
    let size = 8 * CHUNK;
    let path = format!("/synthetic/corrupt?size={size}");
    let want = synthetic("corrupt", 0..=size - 1);
    assert_eq!(get(&nodes[0], &path).await.1, want);
    // a2 asks a1 for what a1 owns; a1 flips a byte; a2 drops it and goes to the origin.
    let (_, body) = get(&nodes[1], &path).await;
    assert_eq!(body, want, "no corrupted byte reaches the client");
    let mismatches = metric_sum(
        &nodes[1].handle.url(),
        "cdn_edge_peer_digest_mismatches_total",
    )
    .await;
    assert!(mismatches >= 1.0, "the corruption was detected");
    stop(nodes).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_peer_costs_only_a_fall_back_to_origin() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let mut nodes = cluster(
        "stopped",
        &origin.url(),
        &[("a1", "r1"), ("a2", "r1")],
        |_, _| {},
    )
    .await;
    let a2 = nodes.pop().unwrap();
    a2.edge.close_peers();
    a2.handle.stop().await;
    let size = 5 * CHUNK;
    for i in 0..3 {
        let path = format!("/synthetic/alone-{i}?size={size}");
        let started = std::time::Instant::now();
        let (_, body) = get(&nodes[0], &path).await;
        assert_eq!(body, synthetic(&format!("alone-{i}"), 0..=size - 1));
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    stop(nodes).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_reconnect_after_a_restart() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("restart", &["a1", "a2"]);
    let (p1, p2) = (udp_port(), udp_port());
    let make = |name: &str, me: SocketAddr, other: (&str, SocketAddr)| {
        let (dir, origin) = (dir.clone(), origin.url());
        let name = name.to_string();
        let other = (other.0.to_string(), other.1);
        async move {
            start_edge(&origin, |c| {
                c.name = name.clone();
                c.region = "r1".into();
                c.chunk_size = CHUNK;
                c.peer_listen = Some(me);
                c.peer_tls = Some(tls(&dir, &name));
                // This test is about reconnecting, not timeouts: generous under CI load.
                c.peer_first_byte_timeout_ms = 2000;
                c.peers = vec![PeerConfig {
                    name: other.0.clone(),
                    region: "r1".into(),
                    addr: other.1,
                    push: None,
                }];
            })
            .await
        }
    };
    let (h1, e1) = make("a1", p1, ("a2", p2)).await;
    let (h2, e2) = make("a2", p2, ("a1", p1)).await;
    let a1 = Node {
        handle: h1,
        edge: e1,
    };
    let size = 6 * CHUNK;
    let path = |id: &str| format!("/synthetic/{id}?size={size}");
    assert_eq!(
        get(&a1, &path("before")).await.1,
        synthetic("before", 0..=size - 1)
    );
    // a2 goes away and comes back on the same address.
    e2.close_peers();
    h2.stop().await;
    drop(e2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (h2, e2) = make("a2", p2, ("a1", p1)).await;
    let a2 = Node {
        handle: h2,
        edge: e2,
    };
    // Within the back-off a1 may still skip a2; afterwards it reconnects and a2 serves a1's
    // chunks as a sibling again (no new origin fetch for an object a1 holds).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = origin_requests(&origin.url()).await;
    let (_, body) = get(&a2, &path("before")).await;
    assert_eq!(body, synthetic("before", 0..=size - 1));
    let text = metrics_text(&a2.handle.url()).await;
    let found = cdn_http::metrics::sample(&text, "cdn_edge_peer_fetches_total{result=\"found\"}");
    assert!(found >= Some(1.0), "{text}");
    let fetched = origin_requests(&origin.url()).await - before;
    assert!(
        fetched < 6.0,
        "a2 used its sibling for a1's chunks ({fetched} origin fetches)"
    );
    // And a1 reaches the restarted a2.
    assert_eq!(
        get(&a1, &path("after")).await.1,
        synthetic("after", 0..=size - 1)
    );
    stop(vec![a1, a2]).await;
    origin.stop().await;
}
