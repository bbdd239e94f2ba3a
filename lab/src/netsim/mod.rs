//! The lab's network simulation, used by the lab (every link between two simulated places)
//! and by `cdn bench load` (its origin mode's links): the link model (RTT from great-circle
//! distance, bandwidth per kind of link, the origin's shared uplink), written once here;
//! the relays that apply a link's shape to real traffic ([`relay`]: half the RTT each way,
//! token buckets from `cdn_http::bucket`); and the passive HTTP observer on viewers' links
//! (`sniff`).

pub mod relay;
pub(crate) mod sniff;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use relay::{LinkShape, Shape, TcpRelay, TokenBucket, UdpRelay, link_bucket};

/// The link model's defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkDefaults {
    /// RTT of a link of length zero, milliseconds.
    pub base_rtt_ms: f64,
    /// RTT added per 100 km of great-circle distance, milliseconds.
    pub ms_per_100km: f64,
    /// Bandwidth of a viewer's link to an edge, each direction, Mbit/s.
    pub client_mbps: f64,
    /// Bandwidth of an edge's link to the origin, Mbit/s.
    pub edge_origin_mbps: f64,
    /// Bandwidth of a peer link, Mbit/s.
    pub peer_mbps: f64,
    /// The origin's uplink, shared by every edge's link to it, Mbit/s.
    pub origin_uplink_mbps: f64,
}

impl Default for LinkDefaults {
    fn default() -> Self {
        LinkDefaults {
            base_rtt_ms: 4.0,
            ms_per_100km: 1.0,
            client_mbps: 50.0,
            edge_origin_mbps: 200.0,
            peer_mbps: 200.0,
            origin_uplink_mbps: 40.0,
        }
    }
}

impl LinkDefaults {
    /// The RTT of a link `km` long, milliseconds: the model's base plus its cost per 100 km.
    pub fn rtt_ms(&self, km: f64) -> f64 {
        self.base_rtt_ms + km / 100.0 * self.ms_per_100km
    }

    /// The RTT of a link from `a` to `b` (latitude, longitude).
    pub fn rtt(&self, a: (f64, f64), b: (f64, f64)) -> Duration {
        Duration::from_secs_f64(self.rtt_ms(distance_km(a, b)) / 1e3)
    }

    /// The origin's uplink: one bucket that every link to the origin shares on the way down.
    pub fn origin_uplink(&self) -> Arc<TokenBucket> {
        link_bucket(bytes_per_sec(self.origin_uplink_mbps))
    }
}

/// Great-circle distance, km.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    cdn_geo_router::select::haversine_km(a, b)
}

/// Mbit/s in bytes per second.
pub fn bytes_per_sec(mbps: f64) -> f64 {
    mbps * 1e6 / 8.0
}

/// The shape of a TCP link of `rtt` and `bytes_per_sec` each way; a link to the origin also
/// passes the origin's shared `uplink` on the way down.
pub fn tcp_link(rtt: Duration, bytes_per_sec: f64, uplink: Option<&Arc<TokenBucket>>) -> LinkShape {
    let bps = Some(bytes_per_sec);
    let mut shape = LinkShape::new(rtt, bps, bps);
    if let Some(u) = uplink {
        shape.down.buckets.push(u.clone());
    }
    shape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_grows_with_distance_and_the_uplink_is_shared() {
        let m = LinkDefaults::default();
        assert_eq!(m.rtt_ms(0.0), 4.0);
        assert_eq!(m.rtt_ms(1000.0), 14.0);
        // Frankfurt to Singapore, about 10,260 km: about 106 ms.
        let rtt = m.rtt((50.11, 8.68), (1.35, 103.82));
        assert!(
            rtt > Duration::from_millis(100) && rtt < Duration::from_millis(112),
            "{rtt:?}"
        );
        let uplink = m.origin_uplink();
        assert_eq!(uplink.rate(), bytes_per_sec(40.0));
        let a = tcp_link(rtt, bytes_per_sec(50.0), Some(&uplink));
        let b = tcp_link(rtt, bytes_per_sec(50.0), Some(&uplink));
        assert_eq!((a.up.buckets.len(), a.down.buckets.len()), (1, 2));
        assert!(Arc::ptr_eq(&a.down.buckets[1], &b.down.buckets[1]));
        assert_eq!(a.up.delay, rtt / 2);
        assert_eq!(tcp_link(rtt, 1.0, None).down.buckets.len(), 1);
    }
}
