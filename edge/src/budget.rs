//! Per-client budgets of amplified origin bytes (RangeAmp, Li et al., DSN 2020).
//!
//! A cache that fills whole chunks turns a request for a few bytes of a cold object into a
//! chunk from the origin; with a new query string per request that repeats at will. The
//! per-request bound (at most two chunks plus twice what the request asks for, kept in
//! `proxy`) caps one request; this caps a client: the origin bytes a client's requests cause
//! beyond the bytes they ask for ("amplified" bytes) are drawn from a token bucket per client
//! address (per /64 for IPv6), refilled at `amplification_bytes_per_sec` up to
//! `amplification_burst`. A request that would overdraw it is not refused: it is forwarded
//! to the origin as asked, uncached, so it costs the origin what it asks for and no more. A
//! miss's probe (the chunk holding the first byte asked for) is charged once its answer tells
//! what was asked of it, possibly into debt: a client in debt has its Range misses forwarded
//! as asked before any probe, until the refill repays it.
//!
//! Viewers that read what they ask for (whole objects, open-ended or chunk-sized ranges, as
//! players do) draw nothing. Buckets live in a bounded cache (idle ones expire), so the
//! table itself is bounded whatever the number of addresses.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use cdn_http::bucket::TokenBucket;

/// Most client addresses tracked at once.
const MAX_CLIENTS: u64 = 100_000;

pub struct Budgets {
    rate: f64,
    burst: f64,
    clients: moka::sync::Cache<IpAddr, Arc<TokenBucket>>,
}

impl Budgets {
    /// Budgets of `burst` bytes refilled at `rate` bytes per second; `rate` 0 disables them.
    pub fn new(rate: u64, burst: u64) -> Self {
        let idle = if rate == 0 {
            Duration::from_secs(1)
        } else {
            // A bucket idle long enough to be full again is the same as a new one.
            Duration::from_secs_f64((burst as f64 / rate as f64).clamp(1.0, 3600.0))
        };
        Budgets {
            rate: rate as f64,
            burst: burst as f64,
            clients: moka::sync::Cache::builder()
                .max_capacity(MAX_CLIENTS)
                .time_to_idle(idle)
                .build(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.rate > 0.0
    }

    /// Takes `n` amplified bytes from `client`'s budget; false (and nothing taken) when the
    /// budget does not hold them. Always true when budgets are disabled or `n` is 0.
    pub fn take(&self, client: Option<IpAddr>, n: u64) -> bool {
        self.bucket(client, n).is_none_or(|b| b.try_take(n))
    }

    /// Charges `n` bytes already spent (a probe's chunk): the budget may go into debt, down
    /// to minus one burst, which later refills repay.
    pub fn charge(&self, client: Option<IpAddr>, n: u64) {
        if let Some(b) = self.bucket(client, n) {
            b.charge(n);
        }
    }

    /// Whether `client` has nothing left to spend (its next Range miss goes as asked).
    pub fn exhausted(&self, client: Option<IpAddr>) -> bool {
        self.bucket(client, 1).is_some_and(|b| b.is_spent())
    }

    /// `client`'s bucket (per /64 for IPv6), or None when nothing is to be counted: budgets
    /// disabled, no address, or `n` 0.
    fn bucket(&self, client: Option<IpAddr>, n: u64) -> Option<Arc<TokenBucket>> {
        let ip = client.filter(|_| self.enabled() && n > 0)?;
        let key = match ip.to_canonical() {
            IpAddr::V6(v6) => {
                let mut o = v6.octets();
                o[8..].fill(0);
                IpAddr::from(o)
            }
            v4 => v4,
        };
        Some(
            self.clients
                .get_with(key, || Arc::new(TokenBucket::new(self.rate, self.burst))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_cannot_overdraw_and_others_are_unaffected() {
        let b = Budgets::new(1, 1000);
        let a: IpAddr = "127.0.0.5".parse().unwrap();
        let c: IpAddr = "127.0.0.6".parse().unwrap();
        assert!(b.take(Some(a), 600));
        assert!(!b.take(Some(a), 600), "only 400 left");
        assert!(b.take(Some(a), 300));
        assert!(b.take(Some(c), 1000), "another client has its own budget");
        assert!(b.take(None, 1 << 40), "no address: not limited");
        // One /64 is one client.
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::2".parse().unwrap();
        assert!(b.take(Some(x), 1000));
        assert!(!b.take(Some(y), 10));
        // Spent bytes are charged even past zero; the debt is repaid before anything else.
        let d: IpAddr = "127.0.0.9".parse().unwrap();
        assert!(!b.exhausted(Some(d)));
        b.charge(Some(d), 1500);
        assert!(b.exhausted(Some(d)));
        assert!(!b.take(Some(d), 1));
        let off = Budgets::new(0, 0);
        assert!(off.take(Some(a), u64::MAX));
        assert!(!off.exhausted(Some(a)));
    }
}
