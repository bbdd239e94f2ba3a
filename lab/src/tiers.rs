//! The lab's tiered caching (issue #14): `[tiers]` of lab.toml, and what it means for each
//! edge's config. With `mode = "shield"`, the always-on edges of `shield_region` (default: the
//! origin's region) are the upper tier: every edge of every other region gets them as its
//! `parents` (those of them in its peer list, which the edge's config check requires), and
//! the shield edges have none (top tier: they fill for the lower tier). The peer lists are
//! all-to-all already, so each shield edge admits the lower-tier edges as peers. Spare edges
//! of the shield region are never parents: they come and go with the autoscaler, and an
//! edge's `parents` are applied only when it starts.

use serde::Deserialize;

/// `[tiers]` of lab.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tiers {
    pub mode: TierMode,
    /// The region whose edges shield the origin; default: the origin's region.
    pub shield_region: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TierMode {
    /// No upper tier: each region's owner of a chunk fills from the origin.
    #[default]
    Off,
    /// The shield region's edges are the parents of every other region's edges.
    Shield,
}

/// An edge's role in the tiers, as the dashboard shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// No tiers in this lab.
    Flat,
    /// Upper tier: fills for the other regions.
    Shield,
    /// Lower tier: asks the shield before the origin.
    Lower,
}

impl Tiers {
    pub fn on(&self) -> bool {
        self.mode == TierMode::Shield
    }

    /// The shield region: `shield_region`, else the origin's.
    pub fn shield<'a>(&'a self, origin_region: &'a str) -> &'a str {
        self.shield_region.as_deref().unwrap_or(origin_region)
    }
}

/// The role of edge `i` of `plan`.
pub fn role(plan: &crate::config::Plan, i: usize) -> Role {
    let t = &plan.file.tiers;
    if !t.on() || !plan.file.peering.enabled {
        return Role::Flat;
    }
    match plan.edges.get(i) {
        Some(e) if e.region == t.shield(&plan.file.origin.region) => Role::Shield,
        Some(_) => Role::Lower,
        None => Role::Flat,
    }
}

/// The `parents` of edge `i`: the shield region's always-on edges among `peers` (names), or
/// none when it is a shield edge itself or tiers are off.
pub fn parents(plan: &crate::config::Plan, i: usize, peers: &[&str]) -> Vec<String> {
    if role(plan, i) != Role::Lower {
        return Vec::new();
    }
    let shield = plan.file.tiers.shield(&plan.file.origin.region);
    plan.edges
        .iter()
        .filter(|e| e.region == shield && !e.spare && peers.contains(&e.name.as_str()))
        .map(|e| e.name.clone())
        .collect()
}

/// Every edge's role by name (the dashboard's `info.tiers`).
pub fn roles(plan: &crate::config::Plan) -> serde_json::Map<String, serde_json::Value> {
    (0..plan.edges.len())
        .map(|i| {
            let role = serde_json::to_value(role(plan, i)).unwrap_or_default();
            (plan.edges[i].name.clone(), role)
        })
        .collect()
}
