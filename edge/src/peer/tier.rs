//! Tiered caching (issue #14): an upper tier of *parents* between a region and the origin, so
//! that in a flash crowd the origin sends each byte once, whatever the number of regions.
//!
//! A node with `parents` (names of peers, any region; see `EdgeConfig::parents`) is *lower
//! tier*. When it would fill a chunk or probe an object from the origin (it owns the chunk in
//! its region, or its region's owner failed), it first asks one parent with `tier: true`,
//! chosen per chunk by rendezvous hashing over the parents with the region's own
//! [`super::score`]: when the parents are exactly the shield region's edges, the chosen parent
//! is also that region's owner of the chunk (no extra hop there). Every lower node, in every
//! region, picks the same parent for a chunk, and the parent coalesces their requests in its
//! `Filler` (chunks) and probe table (first chunk and metadata): one origin fetch.
//!
//! - **No loops, by construction.** A node answers a `tier: true` request by filling only if
//!   it has no parents itself ([`on_request`]); otherwise from its cache only. Only nodes with
//!   parents send `tier: true` ([`Peers::parents_for`]), so a tier request always ends at a
//!   node that never sends one: at most two tiers fill, and two nodes naming each other as
//!   parents answer each other cache-only (no wait on themselves).
//! - **Failover.** If the chosen parent fails (connect error, refusal, no first byte in time:
//!   the peer client's back-off then skips it at once), the next parent by rendezvous takes
//!   its role, for every lower node alike: the origin sees at most one more copy of a chunk,
//!   never one per region. A parent that *answered* (even a miss) is not replaced: its miss
//!   means its own fill failed, and a second parent would only ask the origin again.
//! - **Busy parents.** A top-tier parent sends the PENDING status before it fills (the same
//!   path as an owner fill), so the asker's first-byte timeout does not skip a parent that is
//!   merely waiting on the origin.
//!
//! Metrics: on the lower node `cdn_edge_tier_fetches_total{result}` and
//! `cdn_edge_tier_bytes_total`; on the parent `cdn_edge_tier_requests_total{region,answer}`
//! (`answer` = `fill` when it fills for the lower tier, `cache-only` otherwise).

use std::sync::Arc;

use http::HeaderMap;

use super::client::{PeerBody, PeerClient};
use super::wire::GetRequest;
use super::{PeerSet, Peers, Read, Role, probe_request, score};
use crate::store::ObjectMeta;

/// Lower node: fetches from the upper tier, by `result` (found, miss, error, ...).
pub const FETCHES: &str = "cdn_edge_tier_fetches_total";
/// Lower node: chunk bytes received from the upper tier.
pub const BYTES: &str = "cdn_edge_tier_bytes_total";
/// Parent: requests from the lower tier, by the asker's `region` and `answer`.
pub const REQUESTS: &str = "cdn_edge_tier_requests_total";

impl Peers {
    /// This node's parents as configured (empty: top tier).
    pub fn parents(&self) -> &[String] {
        &self.parents
    }

    /// Whether this node is top tier: it fills for a lower tier's request.
    pub fn is_top_tier(&self) -> bool {
        self.parents.is_empty()
    }

    /// The parents of the current peer set for chunk `index` of `key`, best rendezvous score
    /// first (the first is the chunk's parent, the next ones take its role if it fails).
    pub(super) fn parents_for(
        &self,
        set: &PeerSet,
        key: &str,
        index: u64,
    ) -> Vec<(Arc<PeerClient>, Role)> {
        let mut ranked: Vec<(u64, Arc<PeerClient>)> = set
            .members
            .iter()
            .filter(|m| self.parents.contains(&m.cfg.name))
            .map(|m| (score(&m.cfg.name, key, index), m.client.clone()))
            .collect();
        ranked.sort_by_key(|r| std::cmp::Reverse(r.0));
        ranked.into_iter().map(|(_, c)| (c, Role::Parent)).collect()
    }

    /// The name of the parent chunk `index` of `key` goes to first (`None`: top tier, or no
    /// parent is in the current peer set).
    pub fn parent_of(&self, key: &str, index: u64) -> Option<String> {
        self.parents_for(&self.peer_set(), key, index)
            .first()
            .map(|(c, _)| c.cfg.name.clone())
    }

    /// For a probe this node makes on a sibling's behalf (it owns the chunk in its region):
    /// metadata and the chunk at `index` from the upper tier only, never from a sibling or
    /// an advertiser, so the owner's probe cannot loop back into its region. `None` at once
    /// for a top-tier node.
    pub async fn fetch_from_parents(
        &self,
        key: &str,
        path_and_query: &str,
        req: &HeaderMap,
        index: u64,
    ) -> Option<(ObjectMeta, PeerBody)> {
        if self.parents.is_empty() {
            return None;
        }
        let candidates = self.parents_for(&self.peer_set(), key, index);
        let req = probe_request(key, path_and_query, req, index);
        let found = self.try_in_order(&req, candidates, Read::Head).await;
        self.object_from(found, index)
    }
}

/// The endpoint's view of a request from peer `from`: a `tier: true` request is answered as
/// an owner request (fill if needed) when this node is top tier, and cache-only otherwise.
/// This is the rule that keeps tier requests from looping (see the module documentation).
pub fn on_request(peers: &Peers, from: &str, mut req: GetRequest) -> GetRequest {
    if !req.tier {
        return req;
    }
    req.owner = peers.is_top_tier();
    let region = peers
        .peer_set()
        .get(from)
        .map(|m| m.cfg.region.clone())
        .unwrap_or_default();
    let answer = if req.owner { "fill" } else { "cache-only" };
    peers
        .metrics
        .with(|| metrics::counter!(REQUESTS, "region" => region, "answer" => answer).increment(1));
    req
}

/// Counts one fetch from the upper tier (inside the node's metrics scope).
pub(super) fn count_fetch(result: &'static str) {
    metrics::counter!(FETCHES, "result" => result).increment(1);
}

/// Counts chunk bytes received from the upper tier (inside the node's metrics scope).
pub(super) fn count_bytes(n: usize) {
    metrics::counter!(BYTES).increment(n as u64);
}
