//! End-to-end tests of peer replication over QUIC: three real edges in two regions in front
//! of one real origin, with mutual TLS from a cluster CA generated for the test. Origin
//! fetches are counted from the origin's own metrics. The last tests change the peer set at
//! runtime: `Peers::set_peers`, warm-up of a joining edge from the chunks' previous owners,
//! and `cdn edge --config FILE` following its file. The last ones check admission: a node
//! serves only the peers it lists now, by the name in their certificates.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cdn_edge::config::{PeerConfig, PeerTls};
use cdn_edge::peer::{PeerChange, Peers};
use cdn_edge::{Edge, EdgeConfig};
use cdn_http::server::NodeHandle;
use common::*;
use futures::StreamExt;

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
    // Keys name the origin (a port the OS chose), so ownership differs per run: take an
    // object of which a1 owns a chunk, else a2 would have filled every chunk itself as the
    // owner on a1's behalf and have nothing left to ask a1 for.
    let chunks = size.div_ceil(CHUNK);
    let id = (0..)
        .map(|i| format!("sib-{i}"))
        .find(|id| {
            let k = key(&nodes[1], &format!("/synthetic/{id}?size={size}"));
            (0..chunks).any(|i| peers_of(&nodes[1]).owner(&k, i).is_some())
        })
        .expect("some object");
    let path = format!("/synthetic/{id}?size={size}");
    let want = synthetic(&id, 0..=size - 1);
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
        if ok >= 3.0 && b1.store().object_count() + b1.store().objects_held().len() as u64 > 0 {
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
        |_, c| {
            // The test is about the digest, not about timing: a2 waits for a1's answer
            // however loaded the machine (a peer slower than its first-byte timeout would be
            // skipped for the origin, and no corruption seen).
            c.peer_first_byte_timeout_ms = 20_000;
        },
    )
    .await;
    // a1 corrupts every chunk it sends (the edge's `test-hooks` feature; no config reaches it).
    peers_of(&nodes[0]).corrupt_chunks_sent(true);
    let size = 8 * CHUNK;
    let path = format!("/synthetic/corrupt?size={size}");
    let want = synthetic("corrupt", 0..=size - 1);
    assert_eq!(get(&nodes[0], &path).await.1, want);
    // a2 asks a1 for what a1 owns; a1 flips a byte; a2 drops it and goes to the origin.
    // Peer answers stream (the digest comes last), so a viewer mid-chunk may have been sent
    // the flipped byte before the digest failed: its body is then aborted, never complete,
    // and the chunk a2 stores is the origin's. Each attempt stores the chunks it touched, so
    // within one attempt per chunk the body is whole and exact.
    let url = format!("{}{path}", nodes[1].handle.url());
    let mut whole = false;
    for _ in 0..=size / CHUNK {
        let r = client().get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        if let Ok(body) = r.bytes().await {
            assert_eq!(body, want, "no complete body holds a corrupted byte");
            whole = true;
            break;
        }
    }
    assert!(
        whole,
        "a2 served the object whole once the corrupt chunks were replaced"
    );
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

fn peer(name: &str, addr: SocketAddr) -> PeerConfig {
    PeerConfig {
        name: name.to_string(),
        region: "r1".into(),
        addr,
        push: None,
    }
}

/// One edge of region r1 on peer address `me`, knowing `peers`.
/// a and b, peers of each other, and c, which knows them both but is known by neither (it
/// has just joined); with their peer addresses.
async fn joining_trio(dir: &std::path::Path, origin: &str) -> ([Node; 3], [SocketAddr; 3]) {
    let (pa, pb, pc) = (udp_port(), udp_port(), udp_port());
    let a = member(dir, origin, "a", pa, vec![peer("b", pb)]).await;
    let b = member(dir, origin, "b", pb, vec![peer("a", pa)]).await;
    let c = member(dir, origin, "c", pc, vec![peer("a", pa), peer("b", pb)]).await;
    ([a, b, c], [pa, pb, pc])
}

async fn member(
    dir: &std::path::Path,
    origin: &str,
    name: &str,
    me: SocketAddr,
    peers: Vec<PeerConfig>,
) -> Node {
    member_with(dir, origin, name, me, peers, |_| {}).await
}

async fn member_with(
    dir: &std::path::Path,
    origin: &str,
    name: &str,
    me: SocketAddr,
    peers: Vec<PeerConfig>,
    tweak: impl FnOnce(&mut cdn_edge::EdgeConfig),
) -> Node {
    let (handle, edge) = start_edge(origin, |c| {
        c.name = name.to_string();
        c.region = "r1".into();
        c.chunk_size = CHUNK;
        c.peer_listen = Some(me);
        c.peer_tls = Some(tls(dir, name));
        // About membership, not timeouts: generous under CI load.
        c.peer_first_byte_timeout_ms = 2000;
        c.peers = peers;
        tweak(c);
    })
    .await;
    Node { handle, edge }
}

fn peers_of(node: &Node) -> &Arc<Peers> {
    node.edge.peers.as_ref().expect("peering on")
}

fn names(node: &Node) -> Vec<String> {
    peers_of(node)
        .clients()
        .iter()
        .map(|c| c.cfg.name.clone())
        .collect()
}

/// The cache key of `path` at `node` (every node keys under the same origin).
fn key(node: &Node, path: &str) -> String {
    node.edge.cache.primary_key(&path.parse().expect("uri"))
}

/// One series of the node at `base` (0 when absent).
async fn metric_at(base: &str, series: &str) -> f64 {
    cdn_http::metrics::sample(&metrics_text(base).await, series).unwrap_or(0.0)
}

async fn metric(node: &Node, series: &str) -> f64 {
    metric_at(&node.handle.url(), series).await
}

/// Waits (at most 10 s) until `series` of the node at `base` reads `want`.
async fn wait_metric_at(base: &str, series: &str, want: f64) {
    for _ in 0..400 {
        if metric_at(base, series).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{series} never became {want}: {}", metrics_text(base).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_added_at_runtime_fills_what_it_owns_and_a_removed_one_is_left_alone() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("membership", &["a", "b", "c"]);
    // c knows a and b; a and b start without c.
    let ([a, b, c], [pa, pb, pc]) = joining_trio(&dir, &origin.url()).await;
    assert_eq!(metric(&a, "cdn_edge_peers").await, 1.0);
    // One-chunk objects whose chunk c owns among a, b and c.
    let path = |id: &str| format!("/synthetic/{id}?size={CHUNK}");
    let ids: Vec<String> = (0..)
        .map(|i| format!("join-{i}"))
        .filter(|id| peers_of(&c).owner(&key(&c, &path(id)), 0).is_none())
        .take(3)
        .collect();
    let origin_url = origin.url();
    let origin_fetches = || origin_requests(&origin_url);
    let c_fills = "cdn_edge_origin_fetches_total{kind=\"probe\"}";
    let c_out = "cdn_edge_peer_bytes_total{direction=\"out\"}";

    // Before: a does not know c, so c sees nothing.
    let before = origin_fetches().await;
    assert_eq!(
        get(&a, &path(&ids[0])).await.1,
        synthetic(&ids[0], 0..=CHUNK - 1)
    );
    assert_eq!(origin_fetches().await - before, 1.0);
    assert_eq!(metric(&c, c_fills).await, 0.0);
    assert_eq!(metric(&c, c_out).await, 0.0);

    // a learns of c. b keeps its client and connection (a asked b for ids[0], as owner or
    // as runner-up).
    let b_client = peers_of(&a).clients()[0].clone();
    let b_conn = b_client.current_connection().map(|c| c.stable_id());
    assert!(b_conn.is_some(), "a is connected to b");
    let change = peers_of(&a)
        .set_peers(vec![peer("b", pb), peer("c", pc)])
        .expect("valid peers");
    assert_eq!(
        change,
        PeerChange {
            added: vec!["c".into()],
            ..Default::default()
        }
    );
    assert_eq!(names(&a), ["b", "c"]);
    assert!(Arc::ptr_eq(&b_client, &peers_of(&a).clients()[0]));
    assert_eq!(
        peers_of(&a).clients()[0]
            .current_connection()
            .map(|c| c.stable_id()),
        b_conn,
        "the same connection to b"
    );
    assert_eq!(metric(&a, "cdn_edge_peers").await, 2.0);
    // A chunk c owns: a asks c, c fills it from the origin (one fetch, made by c).
    let a_fills = metric_sum(&a.handle.url(), "cdn_edge_origin_fetches_total").await;
    let before = origin_fetches().await;
    assert_eq!(
        get(&a, &path(&ids[1])).await.1,
        synthetic(&ids[1], 0..=CHUNK - 1)
    );
    assert_eq!(origin_fetches().await - before, 1.0);
    assert_eq!(metric(&c, c_fills).await, 1.0, "c filled it");
    assert_eq!(
        metric_sum(&a.handle.url(), "cdn_edge_origin_fetches_total").await,
        a_fills,
        "a did not go to the origin"
    );
    let c_sent = metric(&c, c_out).await;
    assert_eq!(c_sent, CHUNK as f64);

    // a forgets c: c is not asked again and a's connection to it is closed.
    let change = peers_of(&a).set_peers(vec![peer("b", pb)]).expect("valid");
    assert_eq!(change.removed, ["c"]);
    assert_eq!(names(&a), ["b"]);
    assert_eq!(metric(&a, "cdn_edge_peers").await, 1.0);
    wait_metric_at(&a.handle.url(), "cdn_edge_peer_connected{peer=\"c\"}", 0.0).await;
    let before = origin_fetches().await;
    assert_eq!(
        get(&a, &path(&ids[2])).await.1,
        synthetic(&ids[2], 0..=CHUNK - 1)
    );
    assert_eq!(origin_fetches().await - before, 1.0);
    assert_eq!(metric(&c, c_fills).await, 1.0, "c was not asked");
    assert_eq!(metric(&c, c_out).await, c_sent);
    // A peer list naming the node itself is refused and changes nothing.
    assert!(peers_of(&a).set_peers(vec![peer("a", pa)]).is_err());
    assert_eq!(names(&a), ["b"]);
    stop(vec![a, b, c]).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_joining_edge_warms_from_the_previous_owners_not_the_origin() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("warm", &["a", "b", "c", "d"]);
    // c joins, knowing a and b.
    let ([a, b, c], [pa, pb, pc]) = joining_trio(&dir, &origin.url()).await;
    // d, past its warm-up from the start, knows a, b and c; it asks nothing until the end, and
    // nobody lists it until then.
    let pd = udp_port();
    let d = member_with(
        &dir,
        &origin.url(),
        "d",
        pd,
        vec![peer("a", pa), peer("b", pb), peer("c", pc)],
        |cfg| cfg.peer_warmup_secs = 0,
    )
    .await;
    let chunks = 8;
    let size = chunks * CHUNK;
    let path = |id: &str| format!("/synthetic/{id}?size={size}");
    let owned_by_d = |id: &str| {
        let k = key(&d, &path(id));
        (0..chunks)
            .filter(|&i| peers_of(&d).owner(&k, i).is_none())
            .count() as f64
    };
    // An object where c owns chunks whose previous owner is a and chunks whose previous owner
    // is b (so both runner-ups are exercised), and d owns some chunk (keys hold the origin's
    // port, so the object differs from run to run).
    let runner_ups = |id: &str| -> Vec<String> {
        let k = key(&c, &path(id));
        (0..chunks)
            .filter_map(|i| peers_of(&c).runner_up(&k, i))
            .map(|p| p.cfg.name.clone())
            .collect()
    };
    let id = (0..)
        .map(|i| format!("warm-{i}"))
        .find(|id| {
            let r = runner_ups(id);
            r.iter().any(|n| n == "a") && r.iter().any(|n| n == "b") && owned_by_d(id) >= 1.0
        })
        .expect("some object");
    let owned_by_c = runner_ups(&id).len() as f64;
    let want = synthetic(&id, 0..=size - 1);

    // a and b warm with the object: a reads it all, b fills the chunks it owns.
    let before = origin_requests(&origin.url()).await;
    assert_eq!(get(&a, &path(&id)).await.1, want);
    assert_eq!(origin_requests(&origin.url()).await - before, chunks as f64);
    // The autoscaler tells a and b about c.
    for n in [&a, &b] {
        let others = [("a", pa), ("b", pb), ("c", pc)]
            .into_iter()
            .filter(|(name, _)| *name != n.edge.cfg.name)
            .map(|(name, addr)| peer(name, addr))
            .collect();
        let change = peers_of(n).set_peers(others).expect("valid");
        assert_eq!(change.added, ["c"]);
    }

    // Every chunk c asks for comes from a sibling: those c owns now from their previous
    // owner (cache only), the others from their owner.
    let before = origin_requests(&origin.url()).await;
    let (cs, body) = get(&c, &path(&id)).await;
    assert_eq!(body, want);
    assert_eq!(
        origin_requests(&origin.url()).await,
        before,
        "no origin fetch ({cs})"
    );
    assert_eq!(
        metric_sum(&c.handle.url(), "cdn_edge_origin_fetches_total").await,
        0.0
    );
    assert_eq!(
        metric(&c, "cdn_edge_peer_fetches_total{result=\"found\"}").await,
        chunks as f64
    );
    assert_eq!(
        metric(
            &c,
            "cdn_edge_peer_runner_up_fetches_total{result=\"found\"}"
        )
        .await,
        owned_by_c
    );
    assert_eq!(
        metric_sum(&c.handle.url(), "cdn_edge_peer_fetches_total").await,
        chunks as f64,
        "no miss, no error"
    );

    // After its warm-up a node no longer asks previous owners (that round trip would rarely
    // find anything): d, warm from the start, fills the chunks it owns from the origin. The
    // others list d now (a node serves only the peers it lists).
    for (n, others) in [
        (&a, [("b", pb), ("c", pc), ("d", pd)]),
        (&b, [("a", pa), ("c", pc), ("d", pd)]),
        (&c, [("a", pa), ("b", pb), ("d", pd)]),
    ] {
        let others = others
            .iter()
            .map(|(name, addr)| peer(name, *addr))
            .collect();
        assert_eq!(peers_of(n).set_peers(others).expect("valid").added, ["d"]);
    }
    let before = origin_requests(&origin.url()).await;
    assert_eq!(get(&d, &path(&id)).await.1, want);
    assert_eq!(
        origin_requests(&origin.url()).await - before,
        owned_by_d(&id)
    );
    assert_eq!(
        metric_sum(&d.handle.url(), "cdn_edge_peer_runner_up_fetches_total").await,
        0.0
    );
    stop(vec![a, b, c, d]).await;
    origin.stop().await;
}

/// Replaces `path` with `text` the way the lab does (write, then rename).
fn write_config(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cdn_edge_follows_the_peers_in_its_config_file() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("reload", &["a", "b", "c"]);
    let (pa, pb, pc) = (udp_port(), udp_port(), udp_port());
    let pem = |f: &str| dir.join(f).display().to_string();
    let config = |peers: &[(&str, SocketAddr)], extra: &str| {
        let mut t = format!(
            "name = \"a\"\nregion = \"r1\"\norigin = \"{}\"\nchunk_size = {CHUNK}\n\
             capacity = \"64MiB\"\npeer_listen = \"{pa}\"\n{extra}\n\
             [peer_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            origin.url(),
            pem("ca.pem"),
            pem("a.pem"),
            pem("a.key"),
        );
        for (name, addr) in peers {
            t.push_str(&format!(
                "\n[[peers]]\nname = \"{name}\"\nregion = \"r1\"\naddr = \"{addr}\"\n"
            ));
        }
        t
    };
    let file = dir.join("a.toml");
    write_config(&file, &config(&[("b", pb)], ""));
    let args = cdn_edge::EdgeArgs {
        // A flag wins over the file, at start and at every reload.
        capacity: Some(32 << 20),
        config: Some(file.clone()),
        ..cdn_edge::EdgeArgs::listening_at("127.0.0.1:0".parse().unwrap())
    };
    // What `cdn edge --config FILE` runs, in-process.
    let node = cdn_edge::start(&args).await.expect("edge starts");
    let (edge, url) = (node.edge.clone(), format!("http://{}", node.addr));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(node.serve(async move {
        let _ = stop_rx.await;
    }));
    let peers = edge.peers.clone().expect("peering on");
    let names = || -> Vec<String> { peers.clients().iter().map(|c| c.cfg.name.clone()).collect() };
    assert_eq!(metric_at(&url, "cdn_edge_peers").await, 1.0);
    let capacity = "cdn_edge_cache_capacity_bytes";
    assert_eq!(metric_at(&url, capacity).await, (32 << 20) as f64);

    // Another peer, and a field that only a restart applies.
    write_config(&file, &config(&[("b", pb), ("c", pc)], "hot_threshold = 5"));
    wait_metric_at(&url, "cdn_edge_peers", 2.0).await;
    assert_eq!(names(), ["b", "c"]);
    assert_eq!(metric_at(&url, capacity).await, (32 << 20) as f64);
    assert_eq!(
        metric_at(&url, "cdn_edge_config_reloads_total{result=\"ok\"}").await,
        1.0
    );

    // A broken file (a peer address that is not one) is refused: the peers stay.
    let broken = config(&[("c", pc)], "").replace(&pc.to_string(), "nowhere");
    write_config(&file, &broken);
    wait_metric_at(
        &url,
        "cdn_edge_config_reloads_total{result=\"invalid\"}",
        1.0,
    )
    .await;
    assert_eq!(names(), ["b", "c"]);
    assert_eq!(metric_at(&url, "cdn_edge_peers").await, 2.0);
    // So is a valid file whose peers name the node itself.
    write_config(&file, &config(&[("a", pb)], ""));
    wait_metric_at(
        &url,
        "cdn_edge_config_reloads_total{result=\"invalid\"}",
        2.0,
    )
    .await;
    assert_eq!(names(), ["b", "c"]);

    // Fixed: b leaves.
    write_config(&file, &config(&[("c", pc)], ""));
    wait_metric_at(&url, "cdn_edge_peers", 1.0).await;
    assert_eq!(names(), ["c"]);
    let health = client()
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(15), serving)
        .await
        .expect("stops in time")
        .expect("serve task")
        .expect("serve ends cleanly");
    origin.stop().await;
}

// Admission: a node's peer endpoint serves only the nodes in its current peer set, named by
// their certificates, whatever the cluster CA signed.

const REFUSED: &str = "cdn_edge_peer_refused_total{reason=\"unknown-peer\"}";
const PEER_OUT: &str = "cdn_edge_peer_bytes_total{direction=\"out\"}";

/// `n` one-chunk objects (ids `{prefix}-i`) whose chunk `asker` would ask its owner for.
fn owned_elsewhere(asker: &Node, prefix: &str, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .filter(|id| {
            let path = format!("/synthetic/{id}?size={CHUNK}");
            peers_of(asker).owner(&key(asker, &path), 0).is_some()
        })
        .take(n)
        .collect()
}

async fn get_one_chunk(node: &Node, id: &str) {
    let path = format!("/synthetic/{id}?size={CHUNK}");
    assert_eq!(get(node, &path).await.1, synthetic(id, 0..=CHUNK - 1));
}

fn connection_id(node: &Node, peer: &str) -> Option<usize> {
    let set = peers_of(node).peer_set();
    let member = set.get(peer).expect("a listed peer");
    member.client.current_connection().map(|c| c.stable_id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_outside_the_peer_list_is_refused_until_it_is_listed() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("outsider", &["b", "s"]);
    let (pb, ps) = (udp_port(), udp_port());
    // s holds a valid cluster certificate and lists b; b does not list s.
    let b = member(&dir, &origin.url(), "b", pb, vec![]).await;
    let s = member(&dir, &origin.url(), "s", ps, vec![peer("b", pb)]).await;
    // Objects b owns in s's view: s asks b for each (as owner), once.
    let ids = owned_elsewhere(&s, "outsider", 3);
    let s_not_a_peer = "cdn_edge_peer_fetches_total{result=\"not-a-peer\"}";
    let s_found = "cdn_edge_peer_fetches_total{result=\"found\"}";
    let b_url = b.handle.url();
    let b_fills = || metric_sum(&b_url, "cdn_edge_origin_fetches_total");

    // Not listed: b refuses, serves nothing and fills nothing for s; s goes to the origin.
    let before = origin_requests(&origin.url()).await;
    get_one_chunk(&s, &ids[0]).await;
    assert_eq!(origin_requests(&origin.url()).await - before, 1.0);
    assert_eq!(metric(&b, REFUSED).await, 1.0);
    assert_eq!(
        metric_sum(&b.handle.url(), "cdn_edge_peer_refused_total").await,
        1.0
    );
    assert_eq!(metric(&b, PEER_OUT).await, 0.0);
    assert_eq!(b_fills().await, 0.0);
    assert_eq!(metric(&s, s_not_a_peer).await, 1.0);
    assert_eq!(metric(&s, s_found).await, 0.0);
    let conn = connection_id(&s, "b");
    assert!(conn.is_some(), "the refusal leaves the connection up");

    // b lists s: s is served at once, on the connection it has; b fills as the owner.
    peers_of(&b)
        .set_peers(vec![peer("s", ps)])
        .expect("valid peers");
    let s_fills = metric_sum(&s.handle.url(), "cdn_edge_origin_fetches_total").await;
    get_one_chunk(&s, &ids[1]).await;
    assert_eq!(metric(&s, s_found).await, 1.0, "served by b");
    assert_eq!(b_fills().await, 1.0, "b filled it as the owner");
    assert_eq!(metric(&b, PEER_OUT).await, CHUNK as f64);
    assert_eq!(
        metric_sum(&s.handle.url(), "cdn_edge_origin_fetches_total").await,
        s_fills
    );
    assert_eq!(metric(&b, REFUSED).await, 1.0);
    assert_eq!(connection_id(&s, "b"), conn, "no reconnect");

    // b forgets s: the same open connection is refused again.
    peers_of(&b).set_peers(vec![]).expect("valid peers");
    let before = origin_requests(&origin.url()).await;
    get_one_chunk(&s, &ids[2]).await;
    assert_eq!(origin_requests(&origin.url()).await - before, 1.0);
    assert_eq!(metric(&b, REFUSED).await, 2.0);
    assert_eq!(
        metric(&b, PEER_OUT).await,
        CHUNK as f64,
        "nothing more served"
    );
    assert_eq!(b_fills().await, 1.0);
    assert_eq!(metric(&s, s_not_a_peer).await, 2.0);
    assert_eq!(connection_id(&s, "b"), conn);
    stop(vec![b, s]).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_the_certificate_of_another_name_is_refused_both_ways() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("impostor", &["b", "c", "x"]);
    let (pb, pc) = (udp_port(), udp_port());
    // b lists c at pc, but the node at pc is x (x's certificate); x lists b.
    let b = member(&dir, &origin.url(), "b", pb, vec![peer("c", pc)]).await;
    let x = member(&dir, &origin.url(), "x", pc, vec![peer("b", pb)]).await;

    // x asks b, from the address b lists for c: its certificate says x, so b refuses.
    let ids = owned_elsewhere(&x, "impostor-in", 1);
    get_one_chunk(&x, &ids[0]).await;
    assert_eq!(metric(&b, REFUSED).await, 1.0);
    assert_eq!(metric(&b, PEER_OUT).await, 0.0);
    assert_eq!(
        metric_sum(&b.handle.url(), "cdn_edge_origin_fetches_total").await,
        0.0,
        "b filled nothing for x"
    );

    // b dials c at pc: the certificate there is x's, so b's handshake fails and b uses the
    // origin; x serves nothing.
    let ids = owned_elsewhere(&b, "impostor-out", 1);
    let x_fills = metric_sum(&x.handle.url(), "cdn_edge_origin_fetches_total").await;
    get_one_chunk(&b, &ids[0]).await;
    assert_eq!(
        metric(&b, "cdn_edge_peer_fetches_total{result=\"error\"}").await,
        1.0
    );
    assert_eq!(
        metric_sum(&b.handle.url(), "cdn_edge_peer_fetches_total").await,
        1.0
    );
    assert_eq!(metric(&b, "cdn_edge_peer_connected{peer=\"c\"}").await, 0.0);
    assert_eq!(metric(&x, PEER_OUT).await, 0.0);
    assert_eq!(
        metric_sum(&x.handle.url(), "cdn_edge_origin_fetches_total").await,
        x_fills,
        "x filled nothing for b"
    );
    assert_eq!(metric(&b, REFUSED).await, 1.0);
    stop(vec![b, x]).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_and_advertisements_are_taken_only_from_peers() {
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("push-outsider", &["b", "s"]);
    let (pb, ps) = (udp_port(), udp_port());
    // b, alone in region r2, lists nobody; s (r1) lists b, its push target, and turns objects
    // hot at the second request.
    let b = member_with(&dir, &origin.url(), "b", pb, vec![], |c| {
        c.region = "r2".into()
    })
    .await;
    let b_in_r2 = PeerConfig {
        region: "r2".into(),
        ..peer("b", pb)
    };
    let s = member_with(&dir, &origin.url(), "s", ps, vec![b_in_r2], |c| {
        c.hot_threshold = 2
    })
    .await;
    let size = 2 * CHUNK;
    let path = |id: &str| format!("/synthetic/{id}?size={size}");
    let pushes = |result: &str| format!("cdn_edge_pushes_total{{result=\"{result}\"}}");

    // s pushes a hot object to b, which does not list s: the advertisement and the first
    // chunk are refused, and s stops there.
    for _ in 0..2 {
        assert_eq!(
            get(&s, &path("pushed-0")).await.1,
            synthetic("pushed-0", 0..=size - 1)
        );
    }
    wait_metric_at(&s.handle.url(), &pushes("not-a-peer"), 1.0).await;
    wait_metric_at(&b.handle.url(), REFUSED, 2.0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        metric(&b, REFUSED).await,
        2.0,
        "one advertisement, one push"
    );
    assert_eq!(
        metric_sum(&s.handle.url(), "cdn_edge_pushes_total").await,
        1.0
    );
    assert!(
        b.edge
            .store()
            .lookup(&key(&b, &path("pushed-0")))
            .await
            .is_none(),
        "nothing admitted"
    );

    // b lists s: the next hot object is advertised and pushed, every chunk admitted.
    peers_of(&b)
        .set_peers(vec![peer("s", ps)])
        .expect("valid peers");
    for _ in 0..2 {
        assert_eq!(
            get(&s, &path("pushed-1")).await.1,
            synthetic("pushed-1", 0..=size - 1)
        );
    }
    wait_metric_at(&s.handle.url(), &pushes("ok"), 2.0).await;
    let before = origin_requests(&origin.url()).await;
    let (cs, body) = get(&b, &path("pushed-1")).await;
    assert_eq!(body, synthetic("pushed-1", 0..=size - 1));
    assert!(cs.contains("; hit"), "pushed, then a hit: {cs}");
    assert_eq!(origin_requests(&origin.url()).await, before);
    // The refused advertisement was not recorded: b does not ask s for the first object.
    assert_eq!(
        get(&b, &path("pushed-0")).await.1,
        synthetic("pushed-0", 0..=size - 1)
    );
    assert_eq!(
        metric_sum(&b.handle.url(), "cdn_edge_peer_fetches_total").await,
        0.0
    );
    assert_eq!(metric(&b, REFUSED).await, 2.0);

    // An advertisement counts for the node the certificate names, not the one it claims.
    let spoofed = cdn_edge::peer::client::Advertise {
        from: "someone-else".into(),
        keys: vec![key(&b, &path("advertised"))],
    };
    let to_b = peers_of(&s).peer_set().get("b").expect("b").client.clone();
    to_b.advertise(&spoofed).await.expect("advertised");
    assert_eq!(
        get(&b, &path("advertised")).await.1,
        synthetic("advertised", 0..=size - 1)
    );
    assert!(
        metric_sum(&b.handle.url(), "cdn_edge_peer_fetches_total").await >= 1.0,
        "b asked s, the advertiser its certificate proved"
    );
    stop(vec![b, s]).await;
    origin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_advertising_many_long_keys_cannot_grow_the_advert_table_past_its_budget() {
    const KEYS: usize = 10_000;
    const KEY_LEN: usize = 8 * 1024;
    let origin = start_origin(&media_root(), &Default::default()).await;
    let dir = pki("advert-flood", &["b", "s"]);
    let (pb, ps) = (udp_port(), udp_port());
    // b (region r2) and s (r1) list each other: s is an advertiser b may ask.
    let b = member_with(&dir, &origin.url(), "b", pb, vec![peer("s", ps)], |c| {
        c.region = "r2".into()
    })
    .await;
    let b_in_r2 = PeerConfig {
        region: "r2".into(),
        ..peer("b", pb)
    };
    let s = member(&dir, &origin.url(), "s", ps, vec![b_in_r2]).await;
    let budget = b.edge.cfg.peer_table_bytes;
    let path = format!("/synthetic/advert-flood?size={CHUNK}");
    get_one_chunk(&s, "advert-flood").await;

    // s advertises 10,000 distinct 8 KiB keys, 7 to a message (a frame holds 64 KiB), over
    // its real connection to b; the object it holds comes last.
    let long_key = |i: usize| {
        let mut k = key(&b, &format!("/flood/{i}/"));
        k.extend(std::iter::repeat_n('x', KEY_LEN - k.len()));
        k
    };
    let mut messages: Vec<Vec<String>> = (0..KEYS)
        .collect::<Vec<_>>()
        .chunks(7)
        .map(|c| c.iter().map(|&i| long_key(i)).collect())
        .collect();
    messages.last_mut().expect("messages").push(key(&b, &path));
    let to_b = peers_of(&s).peer_set().get("b").expect("b").client.clone();
    let sent = futures::stream::iter(messages)
        .map(|keys| {
            let to_b = to_b.clone();
            async move {
                let msg = cdn_edge::peer::client::Advertise {
                    from: "s".into(),
                    keys,
                };
                to_b.advertise(&msg).await
            }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    assert!(sent.iter().all(|r| r.is_ok()), "every advert answered");

    let bytes = metric(&b, "cdn_edge_peer_table_bytes{table=\"advertised\"}").await;
    let entries = metric(&b, "cdn_edge_peer_table_entries{table=\"advertised\"}").await;
    assert!(bytes > 0.0, "b reports the table it keeps");
    assert!(bytes <= budget as f64, "{bytes} bytes > budget {budget}");
    let fit = budget / KEY_LEN as u64;
    assert!(
        entries >= 1.0 && entries <= fit as f64,
        "{entries} adverts held; {fit} of {KEY_LEN} bytes fit in {budget}"
    );
    // The table still works: b takes the object the newest advert named from s.
    let before = origin_requests(&origin.url()).await;
    get_one_chunk(&b, "advert-flood").await;
    assert_eq!(origin_requests(&origin.url()).await, before, "from s");
    assert_eq!(
        metric(&b, "cdn_edge_peer_fetches_total{result=\"found\"}").await,
        1.0
    );
    stop(vec![b, s]).await;
    origin.stop().await;
}
