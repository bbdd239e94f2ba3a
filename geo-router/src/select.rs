//! Choosing an edge, as a pure function of the edges, their health and the client's location:
//! great-circle (haversine) distance, regions ordered nearest first, weighted rendezvous
//! hashing of the request path inside a region, down or overloaded edges skipped, and the
//! origin when nothing is left.
//!
//! Reasons, in the order they win:
//! - `origin-fallback`: no edge is up.
//! - `failover`: something was skipped: the path's owner in the nearest region, or the whole
//!   nearest region, was down or overloaded (also when only overloaded edges were left).
//! - `geo-miss`: the client's address had no usable record; the configured geo-miss location
//!   was used, and nothing was skipped.
//! - `hashed`: the nearest region has several edges and the path's hash owner took it.
//! - `nearest`: the nearest region has a single edge and it took it.

use serde::Serialize;

/// Mean Earth radius, km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Why an edge (or the origin) was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    Nearest,
    Hashed,
    Failover,
    GeoMiss,
    OriginFallback,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Nearest => "nearest",
            Reason::Hashed => "hashed",
            Reason::Failover => "failover",
            Reason::GeoMiss => "geo-miss",
            Reason::OriginFallback => "origin-fallback",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An edge's routing state, from the health checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeState {
    /// Passing checks, load below the threshold.
    Up,
    /// Passing checks, but reporting load at or above the threshold.
    Overloaded,
    /// Failed `down_after` checks in a row (and not yet `up_after` successes).
    Down,
    /// Not checked yet.
    Unknown,
}

/// One edge as the chooser sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub name: &'a str,
    pub region: &'a str,
    pub latitude: f64,
    pub longitude: f64,
    pub weight: f64,
    pub state: EdgeState,
}

/// Where the client is taken to be.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub latitude: f64,
    pub longitude: f64,
    /// A region tried before all others (the lab's region override).
    pub pinned_region: Option<&'a str>,
    /// The location is the configured geo-miss location.
    pub geo_miss: bool,
}

/// An edge passed over on the way to the choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Skipped {
    pub edge: String,
    pub state: EdgeState,
}

/// The outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index into the candidates; `None` means the origin.
    pub edge: Option<usize>,
    /// Great-circle distance from the target to the chosen edge.
    pub distance_km: Option<f64>,
    pub reason: Reason,
    /// True when an edge or a region was skipped (even if the reason shown is another).
    pub failover: bool,
    pub skipped: Vec<Skipped>,
}

/// Great-circle distance in km between two (latitude, longitude) points in degrees.
pub fn haversine_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let dlat = lat2 - lat1;
    let dlon = lon2 - lon1;
    let h = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The splitmix64 finaliser: every input bit affects every output bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Weighted rendezvous (highest random weight) score of `edge` for `key`: `-weight / ln(u)`
/// with `u` a hash of (edge, key) in (0, 1). The edge with the highest score owns the key; an
/// edge's share of keys is proportional to its weight, and removing an edge moves only its own
/// keys. Stable across processes and versions (no random seed), so every router agrees.
pub fn rendezvous_score(edge: &str, weight: f64, key: &str) -> f64 {
    let h = mix64(fnv1a(key.as_bytes()) ^ mix64(fnv1a(edge.as_bytes()) ^ 0x5bd1_e995));
    let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    -weight / u.ln()
}

/// Picks the edge for `key` (the request path without its query).
pub fn choose(edges: &[Candidate<'_>], target: &Target<'_>, key: &str) -> Choice {
    let here = (target.latitude, target.longitude);
    let dist: Vec<f64> = edges
        .iter()
        .map(|e| haversine_km(here, (e.latitude, e.longitude)))
        .collect();

    // Regions, nearest first (a region is as near as its nearest edge).
    let mut regions: Vec<(&str, f64)> = Vec::new();
    for (i, e) in edges.iter().enumerate() {
        match regions.iter_mut().find(|(r, _)| *r == e.region) {
            Some((_, d)) => *d = d.min(dist[i]),
            None => regions.push((e.region, dist[i])),
        }
    }
    regions.sort_by(|a, b| {
        let pinned = |r: &str| target.pinned_region != Some(r);
        pinned(a.0)
            .cmp(&pinned(b.0))
            .then(a.1.total_cmp(&b.1))
            .then(a.0.cmp(b.0))
    });

    // Each region's edges in the key's rendezvous order (health ignored: the first is the owner).
    let ranked: Vec<Vec<usize>> = regions
        .iter()
        .map(|(region, _)| {
            let mut idx: Vec<(usize, f64)> = edges
                .iter()
                .enumerate()
                .filter(|(_, e)| e.region == *region)
                .map(|(i, e)| (i, rendezvous_score(e.name, e.weight, key)))
                .collect();
            idx.sort_by(|a, b| {
                b.1.total_cmp(&a.1)
                    .then(edges[a.0].name.cmp(edges[b.0].name))
            });
            idx.into_iter().map(|(i, _)| i).collect()
        })
        .collect();

    let mut skipped = Vec::new();
    // First pass: up and not overloaded. Second: overloaded edges too, rather than the origin.
    for relaxed in [false, true] {
        for (ri, order) in ranked.iter().enumerate() {
            for (k, &i) in order.iter().enumerate() {
                let usable = match edges[i].state {
                    EdgeState::Up => true,
                    EdgeState::Overloaded => relaxed,
                    EdgeState::Down | EdgeState::Unknown => false,
                };
                if !usable {
                    if !relaxed {
                        skipped.push(Skipped {
                            edge: edges[i].name.to_owned(),
                            state: edges[i].state,
                        });
                    }
                    continue;
                }
                let failover = relaxed || ri > 0 || k > 0;
                let reason = if failover {
                    Reason::Failover
                } else if target.geo_miss {
                    Reason::GeoMiss
                } else if order.len() > 1 {
                    Reason::Hashed
                } else {
                    Reason::Nearest
                };
                return Choice {
                    edge: Some(i),
                    distance_km: Some(dist[i]),
                    reason,
                    failover,
                    skipped,
                };
            }
        }
    }
    Choice {
        edge: None,
        distance_km: None,
        reason: Reason::OriginFallback,
        failover: true,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge<'a>(name: &'a str, region: &'a str, lat: f64, lon: f64) -> Candidate<'a> {
        Candidate {
            name,
            region,
            latitude: lat,
            longitude: lon,
            weight: 1.0,
            state: EdgeState::Up,
        }
    }

    fn lab() -> Vec<Candidate<'static>> {
        vec![
            edge("eu-1", "europe", 50.11, 8.68),
            edge("eu-2", "europe", 50.11, 8.68),
            edge("eu-3", "europe", 50.11, 8.68),
            edge("na-1", "north-america", 39.04, -77.49),
            edge("asia-1", "asia", 1.29, 103.85),
        ]
    }

    fn at(lat: f64, lon: f64) -> Target<'static> {
        Target {
            latitude: lat,
            longitude: lon,
            pinned_region: None,
            geo_miss: false,
        }
    }

    #[test]
    fn haversine_matches_known_distances() {
        // London - Paris is about 344 km; Frankfurt - Singapore about 10,260 km.
        let lp = haversine_km((51.5074, -0.1278), (48.8566, 2.3522));
        assert!((lp - 343.5).abs() < 2.0, "{lp}");
        let fs = haversine_km((50.11, 8.68), (1.29, 103.85));
        assert!((fs - 10_260.0).abs() < 60.0, "{fs}");
        assert_eq!(haversine_km((10.0, 20.0), (10.0, 20.0)), 0.0);
        let antipodes = haversine_km((0.0, 0.0), (0.0, 180.0));
        assert!((antipodes - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-6);
    }

    #[test]
    fn nearest_region_then_hash_owner() {
        let edges = lab();
        let c = choose(&edges, &at(1.3, 103.8), "/v/a.ts");
        assert_eq!(edges[c.edge.expect("edge")].name, "asia-1");
        assert_eq!(c.reason, Reason::Nearest);
        let c = choose(&edges, &at(48.0, 2.0), "/v/a.ts");
        assert_eq!(edges[c.edge.expect("edge")].region, "europe");
        assert_eq!(c.reason, Reason::Hashed);
        assert!(c.skipped.is_empty());
    }

    #[test]
    fn rendezvous_spreads_evenly_and_is_stable() {
        let edges = lab();
        let mut counts = [0usize; 3];
        for i in 0..1000 {
            let key = format!("/videos/{i}/segment-{}.ts", i % 7);
            let c = choose(&edges, &at(50.0, 8.0), &key);
            let e = c.edge.expect("edge");
            assert_eq!(choose(&edges, &at(50.0, 8.0), &key).edge, Some(e));
            counts[e] += 1;
        }
        for n in counts {
            assert!((283..=383).contains(&n), "uneven spread {counts:?}");
        }
    }

    #[test]
    fn weights_shift_the_share() {
        let mut edges = lab();
        edges[0].weight = 2.0; // eu-1 should get about half of 4 shares = 50%
        let mut eu1 = 0;
        for i in 0..4000 {
            let c = choose(&edges, &at(50.0, 8.0), &format!("/w/{i}"));
            if c.edge == Some(0) {
                eu1 += 1;
            }
        }
        assert!((1800..=2200).contains(&eu1), "{eu1}");
    }

    #[test]
    fn removing_an_edge_moves_only_its_keys() {
        let edges = lab();
        let fewer: Vec<Candidate<'_>> =
            edges.iter().filter(|e| e.name != "eu-2").cloned().collect();
        for i in 0..500 {
            let key = format!("/m/{i}");
            let before = edges[choose(&edges, &at(50.0, 8.0), &key).edge.expect("edge")].name;
            let after = fewer[choose(&fewer, &at(50.0, 8.0), &key).edge.expect("edge")].name;
            if before != "eu-2" {
                assert_eq!(before, after, "{key}");
            }
        }
    }

    #[test]
    fn down_owner_fails_over_inside_the_region() {
        let mut edges = lab();
        let key = "/x/owner";
        let owner = choose(&edges, &at(50.0, 8.0), key).edge.expect("edge");
        edges[owner].state = EdgeState::Down;
        let c = choose(&edges, &at(50.0, 8.0), key);
        let e = c.edge.expect("edge");
        assert_ne!(e, owner);
        assert_eq!(edges[e].region, "europe");
        assert_eq!(c.reason, Reason::Failover);
        assert_eq!(c.skipped.len(), 1);
    }

    #[test]
    fn overloaded_region_fails_over_to_next_region_then_is_used_last() {
        let mut edges = lab();
        edges[4].state = EdgeState::Overloaded; // asia-1
        let c = choose(&edges, &at(1.3, 103.8), "/a");
        assert_ne!(c.edge, Some(4));
        assert_eq!(c.reason, Reason::Failover);
        for e in edges.iter_mut().take(4) {
            e.state = EdgeState::Down;
        }
        let c = choose(&edges, &at(1.3, 103.8), "/a");
        assert_eq!(c.edge, Some(4), "an overloaded edge beats the origin");
        assert_eq!(c.reason, Reason::Failover);
        edges[4].state = EdgeState::Down;
        let c = choose(&edges, &at(1.3, 103.8), "/a");
        assert_eq!(c.edge, None);
        assert_eq!(c.reason, Reason::OriginFallback);
        let c = choose(&[], &at(1.3, 103.8), "/a");
        assert_eq!(c.reason, Reason::OriginFallback);
    }

    #[test]
    fn geo_miss_and_pinned_region() {
        let edges = lab();
        let mut t = at(40.0, -70.0);
        t.geo_miss = true;
        let c = choose(&edges, &t, "/g");
        assert_eq!(edges[c.edge.expect("edge")].name, "na-1");
        assert_eq!(c.reason, Reason::GeoMiss);
        let mut t = at(40.0, -70.0);
        t.pinned_region = Some("asia");
        let c = choose(&edges, &t, "/g");
        assert_eq!(edges[c.edge.expect("edge")].name, "asia-1");
        assert_eq!(c.reason, Reason::Nearest);
    }
}
