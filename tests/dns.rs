//! Membership from DNS end to end (issue 16): a real authoritative DNS server (hickory-server)
//! on 127.0.0.1 serves a zone shaped like a Kubernetes headless Service (SRV records naming
//! each edge by its stable DNS name, A records for those names), and the test changes the
//! zone while viewers keep watching:
//!
//! - three edges (`peers_dns` on `_peer._udp`) and the router (`edges_dns` on `_http._tcp`)
//!   find each other from DNS alone, and the edges fill from each other;
//! - a nameserver outage longer than the grace changes no member;
//! - an edge removed from DNS leaves the router's edges and its siblings' peer sets after the
//!   grace, then gets no viewer and no peer request (its counters stand still while the others
//!   serve new objects), and is stopped;
//! - an edge added to DNS joins: its siblings and the router list it, it warms from its region
//!   (its chunks' previous owners answer its runner-up requests: the router routes to it only
//!   once its siblings admit it, its `/healthz` saying "joining" until then) and then
//!   receives viewers and peer requests;
//! - through all of it a steady loop of viewers goes through the router, and every response
//!   is complete and byte-exact.
//!
//! Everything waits on state (peer sets, the router's edge list, counters), never on a sleep.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cdn_edge::Edge;
use cdn_edge::config::{PeerDns, PeerTls};
use cdn_edge::metric_names as em;
use cdn_http::server::NodeHandle;
use common::*;
use hickory_proto::rr::rdata::{A, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::Server;
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

const ZONE: &str = "cdn.test.";
const PEER_SRV: &str = "_peer._udp.eu.cdn.test";
const HTTP_SRV: &str = "_http._tcp.eu.cdn.test";
const SIZE: u64 = 200_000;
const CHUNK: u64 = 64 * 1024;

fn name(s: &str) -> Name {
    Name::from_str(s).expect("DNS name")
}

/// The stable DNS name of edge `n` (what its certificate names and peers hash).
fn host(n: u32) -> String {
    format!("e{n}.eu.cdn.test")
}

/// An authoritative server for `cdn.test.` on 127.0.0.1 (UDP and TCP on one port).
struct Dns {
    zone: Arc<InMemoryZoneHandler>,
    /// `2.0.192.in-addr.arpa.`: PTR records of TEST-NET-1 addresses (records only: nothing
    /// binds or connects to them; loopback's reverse names are answered by the resolver
    /// itself, as RFC 6761 has it).
    reverse: Arc<InMemoryZoneHandler>,
    addr: SocketAddr,
    server: Option<Server<Catalog>>,
    serial: AtomicU64,
}

/// An empty authoritative zone (its SOA only; 1 s TTLs).
fn empty_zone(origin: &str) -> Arc<InMemoryZoneHandler> {
    let origin = name(origin);
    let soa = Record::from_rdata(
        origin.clone(),
        1,
        RData::SOA(SOA::new(
            name("ns.cdn.test."),
            name("admin.cdn.test."),
            1,
            60,
            60,
            600,
            1,
        )),
    );
    let mut set = RecordSet::new(origin.clone(), RecordType::SOA, 1);
    set.insert(soa, 1);
    let mut records = BTreeMap::new();
    records.insert(RrKey::new(LowerName::new(&origin), RecordType::SOA), set);
    Arc::new(
        InMemoryZoneHandler::new(origin, records, ZoneType::Primary, AxfrPolicy::Deny)
            .expect("zone"),
    )
}

/// A server answering from `zones` on `udp` and `tcp`.
fn serve(
    zones: &[&Arc<InMemoryZoneHandler>],
    udp: tokio::net::UdpSocket,
    tcp: Option<tokio::net::TcpListener>,
) -> Server<Catalog> {
    let mut catalog = Catalog::new();
    for zone in zones {
        let handler: Arc<dyn ZoneHandler> = (*zone).clone();
        catalog.upsert(handler.origin().clone(), vec![handler]);
    }
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    if let Some(tcp) = tcp {
        server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
    }
    server
}

/// Replaces the records of `owner` and `kind` in `zone` (none: removes them).
async fn put(
    zone: &InMemoryZoneHandler,
    owner: &str,
    kind: RecordType,
    data: Vec<RData>,
    serial: u32,
) {
    let owner = name(owner);
    let key = RrKey::new(LowerName::new(&owner), kind);
    let mut records = zone.records_mut().await;
    if data.is_empty() {
        records.remove(&key);
        return;
    }
    let mut set = RecordSet::new(owner.clone(), kind, serial);
    for d in data {
        set.insert(Record::from_rdata(owner.clone(), 1, d), serial);
    }
    records.insert(key, Arc::new(set));
}

impl Dns {
    async fn start() -> Dns {
        let zone = empty_zone(ZONE);
        let reverse = empty_zone("2.0.192.in-addr.arpa.");
        // UDP on a port the OS picks, TCP on the same port (retried if that one is taken).
        let (udp, tcp) = loop {
            let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("udp");
            let port = udp.local_addr().expect("addr").port();
            if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let server = serve(&[&zone, &reverse], udp, Some(tcp));
        Dns {
            zone,
            reverse,
            addr,
            server: Some(server),
            serial: AtomicU64::new(2),
        }
    }

    fn serial(&self) -> u32 {
        self.serial.fetch_add(1, Ordering::Relaxed) as u32
    }

    /// The nameserver goes away (queries time out).
    async fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            s.shutdown_gracefully().await.expect("DNS server stops");
        }
    }

    /// It comes back on the same address with the same zone (over UDP, which the answers
    /// here fit in; TCP too when the old listener's port is free already).
    async fn restart(&mut self) {
        let udp = tokio::net::UdpSocket::bind(self.addr)
            .await
            .expect("udp again");
        let tcp = tokio::net::TcpListener::bind(self.addr).await.ok();
        self.server = Some(serve(&[&self.zone, &self.reverse], udp, tcp));
    }

    /// Sets the edges the zone lists: `n` → (HTTP port, peer port). Every name has an A
    /// record (127.0.0.1); the SRV records name only the listed edges.
    async fn set_edges(&self, edges: &BTreeMap<u32, (u16, u16)>) {
        let serial = self.serial();
        for (srv_name, http) in [(PEER_SRV, false), (HTTP_SRV, true)] {
            let data = edges
                .iter()
                .map(|(n, (http_port, peer_port))| {
                    let port = if http { *http_port } else { *peer_port };
                    RData::SRV(SRV::new(0, 0, port, name(&format!("{}.", host(*n)))))
                })
                .collect();
            put(
                &self.zone,
                &format!("{srv_name}."),
                RecordType::SRV,
                data,
                serial,
            )
            .await;
        }
        for n in edges.keys() {
            let a = vec![RData::A(A::new(127, 0, 0, 1))];
            put(
                &self.zone,
                &format!("{}.", host(*n)),
                RecordType::A,
                a,
                serial,
            )
            .await;
        }
    }
}

fn dns_settings(addr: SocketAddr) -> cdn_http::dns::DnsSettings {
    cdn_http::dns::DnsSettings {
        nameserver: Some(addr),
        refresh_min_ms: 100,
        refresh_max_ms: 300,
        grace_ms: 1_000,
        timeout_ms: 1_000,
    }
}

struct Node {
    handle: NodeHandle,
    edge: Arc<Edge>,
    ports: (u16, u16),
}

async fn start_edge(n: u32, origin: &str, pki: &std::path::Path, dns: SocketAddr) -> Node {
    let me = host(n);
    let cfg = cdn_edge::EdgeConfig {
        name: me.clone(),
        region: "eu".into(),
        origin: origin.to_owned(),
        capacity: 64 << 20,
        chunk_size: CHUNK,
        peer_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        peer_tls: Some(PeerTls {
            ca: pki.join("ca.pem"),
            cert: pki.join(format!("{me}.pem")),
            key: pki.join(format!("{me}.key")),
        }),
        peers_dns: vec![PeerDns {
            srv: Some(PEER_SRV.into()),
            name: None,
            port: None,
            region: "eu".into(),
            push: None,
        }],
        dns: dns_settings(dns),
        // Long enough to cover the test: a new node asks its chunks' previous owners first.
        peer_warmup_secs: 600,
        ..Default::default()
    };
    let cfg = cfg.check_complete("test").expect("valid edge config");
    let (handle, edge) = cdn_edge::spawn(listener().await, cfg).expect("edge starts");
    let peer_port = edge
        .peers
        .as_ref()
        .expect("peering")
        .local_addr()
        .expect("peer addr")
        .port();
    Node {
        ports: (handle.addr.port(), peer_port),
        handle,
        edge,
    }
}

fn peer_names(edge: &Edge) -> Vec<String> {
    let mut v: Vec<String> = edge
        .peers
        .as_ref()
        .expect("peering")
        .peer_set()
        .members()
        .iter()
        .map(|m| m.cfg.name.clone())
        .collect();
    v.sort();
    v
}

fn routed(router: &cdn_geo_router::RouterHandle) -> Vec<String> {
    let mut v: Vec<String> = router
        .edges()
        .into_iter()
        .filter(|e| e.health.state == cdn_geo_router::EdgeState::Up)
        .map(|e| e.name)
        .collect();
    v.sort();
    v
}

fn counter(edge: &Edge, name: &str, label: Option<(&str, &str)>) -> f64 {
    let text = edge.metrics.render();
    cdn_http::metrics::samples(&text, name)
        .into_iter()
        .filter(|(labels, _)| {
            label.is_none_or(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
        })
        .map(|(_, value)| value)
        .sum()
}

/// Waits (bounded, generously) until `cond` holds; `what` names it on failure.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting until {what}");
}

/// The viewers: one loop through the router (following its 302), over the objects of the
/// current generation; every response must be 200 with the exact bytes.
struct Viewers {
    generation: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Viewers {
    fn start(router: String) -> Viewers {
        cdn_http::tls::install_crypto_provider();
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let generation = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (g, d, s, f) = (
            generation.clone(),
            done.clone(),
            stop.clone(),
            failures.clone(),
        );
        let task = tokio::spawn(async move {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                let id = format!("dns-g{}-{}", g.load(Ordering::Relaxed), i % 12);
                i += 1;
                let url = format!("{router}/synthetic/{id}?size={SIZE}");
                let outcome = match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => match r.bytes().await {
                        Ok(b) if b == synthetic(&id, 0..=SIZE - 1) => Ok(()),
                        Ok(b) => Err(format!("{id}: {} bytes, not the object's", b.len())),
                        Err(e) => Err(format!("{id}: body: {e}")),
                    },
                    Ok(r) => Err(format!("{id}: status {}", r.status())),
                    Err(e) => Err(format!("{id}: {e}")),
                };
                if let Err(e) = outcome {
                    f.lock().expect("failures").push(e);
                }
                d.fetch_add(1, Ordering::Relaxed);
            }
        });
        Viewers {
            generation,
            done,
            stop,
            failures,
            task,
        }
    }

    /// Waits until `n` more requests completed (whatever they were routed to).
    async fn pass(&self, n: u64) {
        let from = self.done.load(Ordering::Relaxed);
        until("the viewers made progress", async || {
            self.done.load(Ordering::Relaxed) >= from + n
        })
        .await;
    }

    fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn edges_and_the_router_follow_dns_as_edges_leave_and_join_and_no_viewer_notices() {
    let dir = std::env::temp_dir().join(format!("cdn-dns-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<String> = (1..=4).map(host).collect();
    cdn_edge::peer::pki::write_lab_pki(&dir, &names).expect("peer PKI");
    let origin = start_origin(&media_root(), &Default::default()).await;
    let mut dns = Dns::start().await;

    // Three edges, then the zone naming them: they find each other from DNS alone.
    let mut nodes: BTreeMap<u32, Node> = BTreeMap::new();
    for n in 1..=3 {
        nodes.insert(n, start_edge(n, &origin.url(), &dir, dns.addr).await);
    }
    let listed = |nodes: &BTreeMap<u32, Node>, which: &[u32]| -> BTreeMap<u32, (u16, u16)> {
        which.iter().map(|n| (*n, nodes[n].ports)).collect()
    };
    dns.set_edges(&listed(&nodes, &[1, 2, 3])).await;

    let router_toml = format!(
        r#"
origin_url = "{origin}"
[geo_miss]
latitude = 50.0
longitude = 8.0
[health]
interval_ms = 100
timeout_ms = 1000
[dns]
nameserver = "{dns}"
refresh_min_ms = 100
refresh_max_ms = 300
grace_ms = 1000
[[edges_dns]]
srv = "{HTTP_SRV}"
region = "eu"
latitude = 50.1
longitude = 8.7
"#,
        origin = origin.url(),
        dns = dns.addr,
    );
    let config = cdn_geo_router::RouterConfig::parse(&router_toml, "router.toml").expect("config");
    let db = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/geo/lab-geo.mmdb");
    let router = cdn_geo_router::spawn(config, &db, listener().await)
        .await
        .expect("router starts");

    let all = |which: &[u32]| -> Vec<String> { which.iter().map(|n| host(*n)).collect() };
    until("the router routes to e1..e3 from DNS", async || {
        routed(&router) == all(&[1, 2, 3])
    })
    .await;
    for n in 1..=3u32 {
        let others: Vec<u32> = (1..=3).filter(|m| *m != n).collect();
        until(&format!("e{n} peers with the other two"), async || {
            peer_names(&nodes[&n].edge) == all(&others)
        })
        .await;
    }

    // Viewers through the router; the edges fill from each other (each chunk from its owner).
    let viewers = Viewers::start(router.url());
    until("a sibling answered a chunk", async || {
        nodes
            .values()
            .map(|n| counter(&n.edge, em::PEER_FETCHES_TOTAL, Some(("result", "found"))))
            .sum::<f64>()
            > 0.0
    })
    .await;
    viewers.pass(24).await;

    // A resolver outage changes nothing: with every query failing for longer than the grace,
    // the router and the edges keep their members.
    dns.stop().await;
    let failed = |e: &Edge| counter(e, em::DNS_LOOKUPS_TOTAL, Some(("result", "failed")));
    let router_failed = || {
        cdn_http::metrics::samples(
            &router.metrics_text(),
            cdn_geo_router::metric_names::DNS_LOOKUPS_TOTAL,
        )
        .into_iter()
        .filter(|(l, _)| l.get("result").map(String::as_str) == Some("failed"))
        .map(|(_, v)| v)
        .sum::<f64>()
    };
    let (e1_failed, r_failed) = (failed(&nodes[&1].edge), router_failed());
    until(
        "e1 and the router saw 3 failed queries (more than the grace)",
        async || failed(&nodes[&1].edge) >= e1_failed + 3.0 && router_failed() >= r_failed + 3.0,
    )
    .await;
    assert_eq!(
        routed(&router),
        all(&[1, 2, 3]),
        "the router kept its edges"
    );
    assert_eq!(
        peer_names(&nodes[&1].edge),
        all(&[2, 3]),
        "e1 kept its peers"
    );
    dns.restart().await;
    viewers.pass(12).await;

    // e3 leaves DNS: after the grace, the router and its siblings drop it...
    dns.set_edges(&listed(&nodes, &[1, 2])).await;
    let left = std::time::Instant::now();
    until("the router stops routing to e3", async || {
        routed(&router) == all(&[1, 2])
    })
    .await;
    for n in [1u32, 2] {
        let other = if n == 1 { 2 } else { 1 };
        until(&format!("e{n} drops e3 from its peers"), async || {
            peer_names(&nodes[&n].edge) == all(&[other])
        })
        .await;
    }
    let dropped_after = left.elapsed();
    eprintln!(
        "e3 out of DNS: dropped by the router and its siblings after {dropped_after:?} (grace 1 s)"
    );
    // Not before the grace: the first answer without e3 came after the change.
    assert!(
        dropped_after >= Duration::from_millis(1000),
        "e3 dropped {dropped_after:?} after leaving DNS, before the grace"
    );
    // ...viewers redirected to it just before arrive (two more passes), then it gets nothing:
    // neither viewers nor peer requests, while the others serve new objects.
    viewers.pass(2).await;
    let e3 = &nodes[&3].edge;
    let still = |e: &Edge| {
        (
            counter(e, em::REQUESTS_TOTAL, None),
            counter(e, em::PEER_BYTES_TOTAL, Some(("direction", "out"))),
            counter(e, em::PEER_REFUSED_TOTAL, None),
        )
    };
    let e3_before = still(e3);
    viewers.generation.store(1, Ordering::Relaxed);
    let others_before: f64 = [1u32, 2]
        .iter()
        .map(|n| counter(&nodes[n].edge, em::REQUESTS_TOTAL, None))
        .sum();
    until("e1 and e2 served 24 more viewers", async || {
        let now: f64 = [1u32, 2]
            .iter()
            .map(|n| counter(&nodes[n].edge, em::REQUESTS_TOTAL, None))
            .sum();
        now >= others_before + 24.0
    })
    .await;
    let peer_found_12: f64 = [1u32, 2]
        .iter()
        .map(|n| {
            counter(
                &nodes[n].edge,
                em::PEER_FETCHES_TOTAL,
                Some(("result", "found")),
            )
        })
        .sum();
    assert!(peer_found_12 > 0.0, "e1 and e2 fill from each other");
    assert_eq!(
        still(e3),
        e3_before,
        "e3, out of DNS, got viewers or peer requests"
    );
    // Gone for good: nobody notices it stop.
    let e3 = nodes.remove(&3).expect("e3");
    e3.edge.close_peers();
    e3.handle.stop().await;
    viewers.pass(12).await;

    // e4 joins DNS: the router and its siblings list it, and it it them.
    nodes.insert(4, start_edge(4, &origin.url(), &dir, dns.addr).await);
    dns.set_edges(&listed(&nodes, &[1, 2, 4])).await;
    let joined = std::time::Instant::now();
    until("the router routes to e4", async || {
        routed(&router) == all(&[1, 2, 4])
    })
    .await;
    for (n, others) in [(1u32, [2u32, 4]), (2, [1, 4]), (4, [1, 2])] {
        until(&format!("e{n} peers with {others:?}"), async || {
            peer_names(&nodes[&n].edge) == all(&others)
        })
        .await;
    }
    eprintln!(
        "e4 in DNS: admitted by its siblings and routed to after {:?}",
        joined.elapsed()
    );
    // It warms from its region: the chunks it now owns of objects the region already holds
    // come from their previous owners (runner-up requests), not the origin...
    let e4 = nodes[&4].edge.clone();
    until("e4 warmed from its previous owners", async || {
        counter(
            &e4,
            em::PEER_RUNNER_UP_FETCHES_TOTAL,
            Some(("result", "found")),
        ) > 0.0
    })
    .await;
    // It was routed to only once its siblings admitted it (its /healthz said "joining"
    // until then): none of its requests was refused.
    assert_eq!(
        counter(&e4, em::PEER_FETCHES_TOTAL, Some(("result", "not-a-peer"))),
        0.0,
        "e4 asked siblings that did not know it yet"
    );
    // ...and receives viewers and, for new objects, its siblings' owner requests.
    viewers.generation.store(2, Ordering::Relaxed);
    until("e4 receives viewers and peer requests", async || {
        counter(&e4, em::REQUESTS_TOTAL, None) > 0.0
            && counter(&e4, em::PEER_BYTES_TOTAL, Some(("direction", "out"))) > 0.0
    })
    .await;
    viewers.pass(24).await;

    viewers.stop.store(true, Ordering::Relaxed);
    let done = viewers.done.load(Ordering::Relaxed);
    let failures = viewers.failures();
    viewers.task.await.expect("viewer loop");
    assert!(
        failures.is_empty(),
        "{} of {done} viewer requests failed: {failures:?}",
        failures.len()
    );
    eprintln!("{done} viewer requests, all complete and exact");
    router.stop().await;
    dns.stop().await;
    for (_, n) in nodes {
        n.edge.close_peers();
        n.handle.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The resolver on its own, against the same server: SRV members named by their targets,
/// A members named by their PTR records (or their address), a port override, NXDOMAIN as an
/// answer with no members, a dead nameserver as a failure (which keeps members).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resolver_reads_srv_and_a_records_and_tells_an_empty_answer_from_a_failure() {
    use cdn_http::dns::{Answer, Member, Query};
    let mut dns = Dns::start().await;
    let serial = dns.serial();
    let a = |last: u8| RData::A(A::new(192, 0, 2, last));
    put(
        &dns.zone,
        "edges.cdn.test.",
        RecordType::A,
        vec![a(1), a(2)],
        serial,
    )
    .await;
    let ptr = RData::PTR(hickory_proto::rr::rdata::PTR(name("E1.eu.cdn.test.")));
    put(
        &dns.reverse,
        "1.2.0.192.in-addr.arpa.",
        RecordType::PTR,
        vec![ptr],
        serial,
    )
    .await;
    dns.set_edges(&[(1, (8001, 9001)), (2, (8002, 9002))].into())
        .await;
    let resolver = cdn_http::dns::Resolver::new(&dns_settings(dns.addr)).expect("resolver");
    let member = |host: &str, ip: [u8; 4], port: u16| Member {
        host: host.into(),
        addr: SocketAddr::from((ip, port)),
    };
    let (lo, t1, t2) = ([127, 0, 0, 1], [192, 0, 2, 1], [192, 0, 2, 2]);
    let members = |answer: Answer| match answer {
        Answer::Found {
            mut members,
            kept,
            ttl,
        } => {
            assert!(kept.is_empty(), "{kept:?}");
            assert!(
                ttl <= Duration::from_millis(1500),
                "the zone's TTL (1 s): {ttl:?}"
            );
            members.sort_by(|a, b| a.host.cmp(&b.host));
            members
        }
        Answer::Failed(e) => panic!("failed: {e}"),
    };

    let host = Query::Host {
        name: "edges.cdn.test".into(),
        port: 7443,
    };
    assert_eq!(
        members(resolver.resolve(&host).await),
        [
            member("192.0.2.2", t2, 7443),
            member("e1.eu.cdn.test", t1, 7443)
        ]
    );
    let srv = |port| Query::Srv {
        name: PEER_SRV.into(),
        port,
    };
    assert_eq!(
        members(resolver.resolve(&srv(None)).await),
        [
            member("e1.eu.cdn.test", lo, 9001),
            member("e2.eu.cdn.test", lo, 9002)
        ]
    );
    assert_eq!(
        members(resolver.resolve(&srv(Some(4433))).await),
        [
            member("e1.eu.cdn.test", lo, 4433),
            member("e2.eu.cdn.test", lo, 4433)
        ]
    );
    let gone = Query::Srv {
        name: "_peer._udp.nowhere.cdn.test".into(),
        port: None,
    };
    assert_eq!(members(resolver.resolve(&gone).await), []);

    dns.stop().await;
    assert!(
        matches!(resolver.resolve(&srv(None)).await, Answer::Failed(_)),
        "no nameserver: a failure, not an empty answer"
    );
}
