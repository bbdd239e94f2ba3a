//! The one token bucket of the workspace: a balance of bytes refilled at `rate` per second up
//! to `burst`, behind a mutex so that tasks share it.
//!
//! Users: the lab's simulated links pace bytes with [`TokenBucket::reserve`] (a debt becomes a
//! wait) and drop datagrams with [`TokenBucket::wait_for`]; the edge paces peer pushes with
//! [`TokenBucket::take`] ([`TokenBucket::per_second`]) and keeps one bucket per client of
//! amplified origin bytes
//! (`cdn_edge::budget`) with [`TokenBucket::try_take`], [`TokenBucket::charge`] and
//! [`TokenBucket::is_spent`]. The arithmetic (refill since the last update, capped at the
//! burst) is written once, in [`TokenBucket::update`].

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket of `rate` bytes per second holding at most `burst` bytes; it starts full.
/// The balance may go negative (a debt) through [`TokenBucket::reserve`] and
/// [`TokenBucket::charge`].
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    /// (balance, when it was last refilled).
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket of `burst` bytes refilled at `bytes_per_sec` (at least 1 byte/s).
    pub fn new(bytes_per_sec: f64, burst: f64) -> Self {
        TokenBucket {
            rate: bytes_per_sec.max(1.0),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// A full bucket of `bytes_per_sec` (at least 1) with one second of burst: the edge's
    /// pacing of pushes to a peer.
    pub fn per_second(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        TokenBucket::new(rate, rate)
    }

    /// Bytes per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The most the bucket holds.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Refills the balance for the time since the last update (up to the burst), runs `f` on
    /// it and stores the balance `f` returns; returns `f`'s verdict.
    pub fn update<T>(&self, f: impl FnOnce(f64) -> (T, f64)) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refilled = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.burst);
        let (verdict, balance) = f(refilled);
        *s = (balance, now);
        verdict
    }

    /// The time a balance of `balance` takes to come back to zero.
    fn debt_wait(&self, balance: f64) -> Duration {
        if balance >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-balance / self.rate)
        }
    }

    /// How long `n` bytes would wait now, without taking tokens.
    pub fn wait_for(&self, n: u64) -> Duration {
        self.update(|b| (self.debt_wait(b - n as f64), b))
    }

    /// Takes `n` bytes' worth of tokens, into debt if need be; returns how long the caller
    /// must wait before sending them.
    pub fn reserve(&self, n: u64) -> Duration {
        self.update(|b| {
            let left = b - n as f64;
            (self.debt_wait(left), left)
        })
    }

    /// Waits until `n` bytes may be sent ([`TokenBucket::reserve`], then sleeps its wait).
    pub async fn take(&self, n: u64) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Takes `n` bytes if the balance holds them; false (and nothing taken) otherwise.
    pub fn try_take(&self, n: u64) -> bool {
        self.update(|b| {
            if b >= n as f64 {
                (true, b - n as f64)
            } else {
                (false, b)
            }
        })
    }

    /// Charges `n` bytes already spent: the balance may go into debt, down to minus one
    /// burst, which later refills repay.
    pub fn charge(&self, n: u64) {
        self.update(|b| ((), (b - n as f64).max(-self.burst)));
    }

    /// Whether nothing is left to spend (the balance is zero or a debt).
    pub fn is_spent(&self) -> bool {
        self.update(|b| (b <= 0.0, b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_debt_becomes_a_wait() {
        let b = TokenBucket::new(100_000.0, 16_384.0);
        // The burst goes at once; the next 100 KB wait about a second.
        assert_eq!(b.reserve(16 * 1024), Duration::ZERO);
        let w = b.reserve(100_000);
        assert!(w >= Duration::from_millis(900), "{w:?}");
        // Peeking takes nothing: ten peeks later the debt is no larger.
        for _ in 0..10 {
            assert!(b.wait_for(100_000) >= Duration::from_millis(1500));
        }
        let after = b.reserve(0);
        assert!(after <= w, "{after:?} > {w:?}");
    }

    #[test]
    fn try_take_never_overdraws_and_charge_stops_at_one_burst_of_debt() {
        let b = TokenBucket::new(1.0, 1000.0);
        assert!(b.try_take(600));
        assert!(!b.try_take(600), "only 400 left");
        assert!(b.try_take(300));
        assert!(!b.is_spent());
        b.charge(5000);
        assert!(b.is_spent());
        // The debt stopped at minus one burst: 100 left - 5000 floored at -1000.
        let w = b.wait_for(0);
        assert!(
            w > Duration::from_secs(990) && w <= Duration::from_secs(1000),
            "{w:?}"
        );
        assert!(!b.try_take(1));
    }

    #[test]
    fn refills_stop_at_the_burst() {
        let b = TokenBucket::new(1_000_000.0, 1000.0);
        std::thread::sleep(Duration::from_millis(20));
        // 20 ms at 1 MB/s would be 20 KB; the bucket holds 1000 bytes.
        assert!(b.try_take(1000));
        assert!(!b.try_take(1000));
        assert_eq!(b.rate(), 1_000_000.0);
        assert_eq!(b.burst(), 1000.0);
    }

    #[tokio::test]
    async fn take_paces() {
        let b = TokenBucket::per_second(1_000_000);
        assert_eq!((b.rate(), b.burst()), (1e6, 1e6));
        let t = Instant::now();
        b.take(1_000_000).await; // the burst
        b.take(200_000).await; // 0.2 s more
        assert!(t.elapsed() >= Duration::from_millis(150));
    }
}
