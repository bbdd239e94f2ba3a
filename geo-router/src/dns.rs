//! The edges found in DNS (`[[edges_dns]]`): each entry's SRV or A/AAAA records, followed by
//! [`cdn_http::dns::follow`] (re-resolved at the records' TTL within `[dns]`'s bounds; a
//! member missing from successful answers for the grace is dropped, a failed query keeps
//! every member). Each member becomes an edge of the entry's region named by its DNS name
//! ([`crate::config::EdgesDns::edge`]); the router's edges are the static `[[edge]]` list
//! plus these (a static name wins), handed to [`Shared::set_discovered`], which runs them
//! through the same health checks as static edges: a new edge is routed to once its first
//! check passed, a removed one's checks stop with it.

use std::sync::{Arc, Weak};

use cdn_http::dns::{self, Answer, Member, Query};

use crate::config::EdgeConfig;
use crate::state::Shared;

/// Starts following the config's `edges_dns` (the entries are read again each round, so a
/// reload's list applies); the task ends with the router.
pub(crate) fn start(shared: &Arc<Shared>) -> Result<(), dns::DnsError> {
    let config = shared.snapshot.load().config.clone();
    let resolver = match dns::Resolver::new(&config.dns) {
        Ok(r) => r,
        // Without entries a missing resolv.conf is no error; a reload adding entries then
        // needs a restart.
        Err(e) if config.edges_dns.is_empty() => {
            tracing::debug!(error = %e, "no DNS resolver: edges_dns needs a restart to apply");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !config.edges_dns.is_empty() {
        tracing::info!(
            entries = config.edges_dns.len(),
            nameserver = %config.dns.nameserver.map(|a| a.to_string()).unwrap_or_else(|| "system".into()),
            "following edges in DNS"
        );
    }
    let follower = Follower {
        shared: Arc::downgrade(shared),
    };
    tokio::spawn(dns::follow(resolver, config.dns.clone(), follower));
    Ok(())
}

struct Follower {
    shared: Weak<Shared>,
}

impl dns::Membership for Follower {
    fn queries(&mut self) -> Option<Vec<Query>> {
        let shared = self.shared.upgrade()?;
        let config = shared.snapshot.load().config.clone();
        Some(
            config
                .edges_dns
                .iter()
                .filter_map(|d| d.query().ok())
                .collect(),
        )
    }

    fn answered(&mut self, query: &Query, answer: &Answer) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let result = match answer {
            Answer::Found { members, .. } if members.is_empty() => "empty",
            Answer::Found { .. } => "found",
            Answer::Failed(_) => "failed",
        };
        shared.metrics.with(|| {
            metrics::counter!(crate::metric_names::DNS_LOOKUPS_TOTAL, "name" => query.name().to_owned(), "result" => result)
                .increment(1)
        });
    }

    fn apply(
        &mut self,
        members: Vec<(Query, Vec<Member>)>,
    ) -> impl std::future::Future<Output = ()> + Send {
        let shared = self.shared.clone();
        async move {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let config = shared.snapshot.load().config.clone();
            let mut edges: Vec<EdgeConfig> = Vec::new();
            for (query, list) in members {
                let Some(entry) = config
                    .edges_dns
                    .iter()
                    .find(|d| d.query().ok().as_ref() == Some(&query))
                else {
                    continue;
                };
                for m in &list {
                    if !edges.iter().any(|e| e.name == m.host) {
                        edges.push(entry.edge(m));
                    }
                }
            }
            shared.set_discovered(edges).await;
        }
    }
}
