//! Where the peer set comes from: the static `peers` of the config file (applied at start and
//! on each reload) and the peers found in DNS (`peers_dns`, followed by
//! [`cdn_http::dns::follow`]). Both feed the peer set through [`Sources`], which
//! merges them: static peers first (nearest first, as configured), then the DNS ones by name;
//! a name both list keeps its static entry, and this node's own name (a headless Service
//! lists every pod, this one too) is skipped.
//!
//! A DNS peer is named by its DNS name (the SRV target: a StatefulSet pod's stable name), so
//! its certificate must carry that name and rendezvous hashing scores it: a pod that restarts
//! with a new address keeps its keys. A peer that joins gets this node's owner requests for
//! its share of keys, and answers them through its warm-up (`peer_warmup_secs`: chunks it
//! owns are first asked of their previous owner). One that leaves DNS is dropped after
//! `[dns] grace_ms` of successful answers without it; failed queries keep it.
//!
//! **Joining.** Siblings learn of a new node at their next DNS refresh, the router at its
//! own: nothing orders them (the lab adds a node to its siblings' lists before the router's).
//! A node routed to before its siblings admit it would fill its first chunks from the origin
//! (its runner-up requests refused), not warm from its region. So a node with `peers_dns`
//! starts *joining*: its `/healthz` answers 503 (the router does not route to it, Kubernetes
//! keeps it out of the viewers' Service) until every sibling of its region answers a
//! cache-only request instead of refusing it, or until a bounded wait
//! ([`join_wait`]: two refreshes of every node plus a query timeout plus 5 s) has passed.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use cdn_http::dns::{self, Answer, Member, Query};
use cdn_http::metrics::NodeMetrics;

use super::wire::{GetRequest, WireError};
use super::{PeerChange, PeerSetError, Peers};
use crate::config::{EdgeConfig, PeerConfig, PeerDns};

/// The two lists the peer set is made of.
#[derive(Debug, Default)]
pub struct Sources {
    /// From the config file.
    pub configured: Vec<PeerConfig>,
    /// From DNS.
    pub discovered: Vec<PeerConfig>,
    /// DNS answered at least once (the siblings are known).
    pub resolved: bool,
    /// Not admitted by the region's siblings yet (`/healthz` answers 503).
    pub joining: bool,
}

impl Sources {
    /// The peer set they make for node `me`.
    pub fn merged(&self, me: &str) -> Vec<PeerConfig> {
        let mut all = self.configured.clone();
        for p in &self.discovered {
            let taken = p.name.eq_ignore_ascii_case(me)
                || all.iter().any(|q| q.name.eq_ignore_ascii_case(&p.name));
            if !taken {
                all.push(p.clone());
            }
        }
        all
    }
}

impl Peers {
    /// Whether this node is still joining its region (see the module's doc).
    pub fn joining(&self) -> bool {
        self.sources.lock().joining
    }

    /// Replaces the configured peers (at start, on reload, and when a test or the lab's
    /// in-process fleet sets them); the DNS ones stay. The set becomes both merged
    /// ([`Sources::merged`]); `Peers::replace_set` says what a change keeps.
    pub fn set_peers(&self, peers: Vec<PeerConfig>) -> Result<PeerChange, PeerSetError> {
        let mut sources = self.sources.lock();
        let before = std::mem::replace(&mut sources.configured, peers);
        let merged = sources.merged(&self.name);
        let r = self.replace_set(merged);
        if r.is_err() {
            sources.configured = before;
        }
        r
    }

    /// Replaces the peers found in DNS; the configured ones stay.
    pub fn set_discovered_peers(&self, peers: Vec<PeerConfig>) -> Result<PeerChange, PeerSetError> {
        let mut sources = self.sources.lock();
        let before = std::mem::replace(&mut sources.discovered, peers);
        let merged = sources.merged(&self.name);
        let r = self.replace_set(merged);
        if r.is_err() {
            sources.discovered = before;
        }
        r
    }
}

/// Starts following `cfg.peers_dns` (nothing when empty); the task ends with `peers`.
pub fn start(
    cfg: &EdgeConfig,
    peers: &Arc<Peers>,
    metrics: Arc<NodeMetrics>,
) -> anyhow::Result<()> {
    if cfg.peers_dns.is_empty() {
        return Ok(());
    }
    let entries = cfg
        .peers_dns
        .iter()
        .map(|d| {
            d.query()
                .map(|q| (q, d.clone()))
                .map_err(|(f, m)| anyhow::anyhow!("peers_dns: {f}: {m}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let resolver = dns::Resolver::new(&cfg.dns)?;
    tracing::info!(
        names = ?entries.iter().map(|(q, _)| q.name().to_owned()).collect::<Vec<_>>(),
        nameserver = %cfg.dns.nameserver.map(|a| a.to_string()).unwrap_or_else(|| "system".into()),
        "following peers in DNS"
    );
    let follower = Follower {
        peers: Arc::downgrade(peers),
        entries,
        metrics,
    };
    peers.sources.lock().joining = true;
    tokio::spawn(dns::follow(resolver, cfg.dns.clone(), follower));
    let every = Duration::from_millis(cfg.dns.refresh_min_ms.clamp(1, 1_000));
    tokio::spawn(join(Arc::downgrade(peers), join_wait(&cfg.dns), every));
    Ok(())
}

/// The longest a node stays joining: every sibling has re-resolved twice by then.
pub fn join_wait(dns: &cdn_http::dns::DnsSettings) -> Duration {
    Duration::from_millis(
        dns.refresh_max_ms
            .saturating_mul(2)
            .saturating_add(dns.timeout_ms)
            .saturating_add(5_000),
    )
}

/// Asks each sibling, every `every`, a cache-only question until none refuses this node
/// (unreachable ones do not count: nothing can be warmed from them), then ends the joining;
/// after `wait`, ends it anyway.
async fn join(peers: Weak<Peers>, wait: Duration, every: Duration) {
    let deadline = Instant::now() + wait;
    let hello = GetRequest {
        key: "cdn-edge-join".into(),
        validator: None,
        index: 0,
        owner: false,
        tier: false,
        stream: false,
        meta: None,
        path_and_query: "/".into(),
        selecting: Vec::new(),
    };
    loop {
        let Some(p) = peers.upgrade() else { return };
        let siblings: Vec<_> = p
            .peer_set()
            .members()
            .iter()
            .filter(|m| m.cfg.region == p.region)
            .map(|m| m.client.clone())
            .collect();
        let mut refusing = Vec::new();
        if p.sources.lock().resolved {
            for c in &siblings {
                if let Err(WireError::Refused(_)) = c.get(&hello, false).await {
                    refusing.push(c.cfg.name.clone());
                }
            }
        } else {
            refusing.push("(DNS not answered yet)".to_owned());
        }
        if refusing.is_empty() {
            p.sources.lock().joining = false;
            tracing::info!(
                siblings = siblings.len(),
                "admitted by the region's peers: joined"
            );
            return;
        }
        if Instant::now() >= deadline {
            p.sources.lock().joining = false;
            tracing::warn!(
                ?refusing,
                ?wait,
                "not admitted by every sibling in time: joined anyway"
            );
            return;
        }
        drop(p);
        tokio::time::sleep(every).await;
    }
}

struct Follower {
    peers: Weak<Peers>,
    entries: Vec<(Query, PeerDns)>,
    metrics: Arc<NodeMetrics>,
}

impl dns::Membership for Follower {
    fn queries(&mut self) -> Option<Vec<Query>> {
        self.peers.upgrade()?;
        Some(self.entries.iter().map(|(q, _)| q.clone()).collect())
    }

    fn answered(&mut self, query: &Query, answer: &Answer) {
        let result = match answer {
            Answer::Found { members, .. } if members.is_empty() => "empty",
            Answer::Found { .. } => "found",
            Answer::Failed(_) => "failed",
        };
        self.metrics.with(|| {
            metrics::counter!(crate::metric_names::DNS_LOOKUPS_TOTAL, "name" => query.name().to_owned(), "result" => result)
                .increment(1)
        });
    }

    fn apply(
        &mut self,
        members: Vec<(Query, Vec<Member>)>,
    ) -> impl std::future::Future<Output = ()> + Send {
        self.apply_now(members);
        std::future::ready(())
    }
}

impl Follower {
    fn apply_now(&mut self, members: Vec<(Query, Vec<Member>)>) {
        let Some(peers) = self.peers.upgrade() else {
            return;
        };
        let mut found: Vec<PeerConfig> = Vec::new();
        for (query, list) in members {
            let Some((_, entry)) = self.entries.iter().find(|(q, _)| *q == query) else {
                continue;
            };
            self.metrics.with(|| {
                metrics::gauge!(crate::metric_names::DNS_MEMBERS, "name" => query.name().to_owned())
                    .set(list.len() as f64)
            });
            for m in list {
                if found.iter().any(|p| p.name == m.host) {
                    continue;
                }
                found.push(PeerConfig {
                    name: m.host,
                    region: entry.region.clone(),
                    addr: m.addr,
                    push: entry.push,
                });
            }
        }
        peers.sources.lock().resolved = true;
        match peers.set_discovered_peers(found) {
            Ok(change) if !change.is_empty() => tracing::info!(
                added = ?change.added,
                removed = ?change.removed,
                changed = ?change.changed,
                peers = peers.peer_set().len(),
                "peers from DNS applied"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "peers from DNS refused"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, port: u16) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            region: "eu".into(),
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            push: None,
        }
    }

    #[test]
    fn configured_peers_come_first_and_win_and_this_node_is_skipped() {
        let s = Sources {
            configured: vec![peer("b", 1), peer("x", 9)],
            discovered: vec![peer("a", 2), peer("B", 3), peer("me", 4), peer("c", 5)],
            ..Default::default()
        };
        let names: Vec<_> = s
            .merged("me")
            .into_iter()
            .map(|p| (p.name, p.addr.port()))
            .collect();
        assert_eq!(
            names,
            [
                ("b".into(), 1),
                ("x".into(), 9),
                ("a".into(), 2),
                ("c".into(), 5)
            ]
        );
    }
}
