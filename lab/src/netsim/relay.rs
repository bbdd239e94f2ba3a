//! The lab's simulated links: user-space relays that stand between two simulated places.
//!
//! A [`TcpRelay`] accepts on a loopback port and connects to the real node; a [`UdpRelay`]
//! does the same per datagram for QUIC peer links. Each direction is a [`Shape`]: a one-way
//! delay (half the link's RTT) and token buckets that limit its bandwidth. Buckets can be
//! shared, so one bucket can stand for the origin's uplink across every edge's link to it.
//! A new TCP connection also pays for the handshake: its first bytes leave one RTT after
//! it was accepted, as if SYN and SYN-ACK had crossed the link.
//!
//! The relay's target can be set after it starts (nodes on OS-assigned ports) and changed
//! (a restarted node); connections wait a bounded time for a target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

pub use cdn_http::bucket::TokenBucket;

use super::sniff::{Observer, Sniffer};

/// Bytes read per step; also the granularity of delays and pacing.
const CHUNK: usize = 16 * 1024;
/// Chunks queued per direction of one connection (bounds memory: 64 × 16 KiB).
const QUEUE: usize = 64;
/// How long a connection waits for the relay to learn its target.
const TARGET_WAIT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Datagrams whose pacing would queue them longer than this are dropped, as a full router
/// queue would.
const UDP_MAX_QUEUE: Duration = Duration::from_millis(200);
/// A UDP session with no traffic for this long is forgotten.
const UDP_IDLE: Duration = Duration::from_secs(120);

/// A link's bucket of `bytes_per_sec`, with a burst of 50 ms of traffic (at least 16 KiB).
pub fn link_bucket(bytes_per_sec: f64) -> Arc<TokenBucket> {
    let rate = bytes_per_sec.max(1.0);
    Arc::new(TokenBucket::new(rate, (rate * 0.05).max(CHUNK as f64)))
}

/// One direction of a link.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// One-way delay.
    pub delay: Duration,
    /// Every bucket the bytes must pass (the link's own, a shared uplink, ...).
    pub buckets: Vec<Arc<TokenBucket>>,
}

impl Shape {
    /// When bytes read at `now` may be delivered: after their tokens, then the delay.
    fn release(&self, n: usize, now: Instant) -> Instant {
        let wait = self
            .buckets
            .iter()
            .map(|b| b.reserve(n as u64))
            .max()
            .unwrap_or_default();
        now + wait + self.delay
    }

    /// Like [`Shape::release`]'s pacing, for a datagram: the wait for `n` bytes, or `None`
    /// (and no tokens taken) when some bucket would hold them longer than `max_wait`.
    fn try_reserve(&self, n: usize, max_wait: Duration) -> Option<Duration> {
        if self.buckets.iter().any(|b| b.wait_for(n as u64) > max_wait) {
            return None;
        }
        self.buckets
            .iter()
            .map(|b| b.reserve(n as u64))
            .max()
            .or(Some(Duration::ZERO))
    }
}

/// Both directions of a link, as seen from the side that connects.
#[derive(Debug, Clone, Default)]
pub struct LinkShape {
    pub rtt: Duration,
    /// Connecting side → listening node.
    pub up: Shape,
    /// Listening node → connecting side.
    pub down: Shape,
}

impl LinkShape {
    /// A link of `rtt` with `up_bps` / `down_bps` bytes per second (None: unlimited).
    pub fn new(rtt: Duration, up_bps: Option<f64>, down_bps: Option<f64>) -> Self {
        let shape = |bps: Option<f64>| Shape {
            delay: rtt / 2,
            buckets: bps.map(link_bucket).into_iter().collect(),
        };
        LinkShape {
            rtt,
            up: shape(up_bps),
            down: shape(down_bps),
        }
    }
}

/// Where a relay forwards to; `None` until known.
pub type Target = watch::Sender<Option<SocketAddr>>;

async fn wait_target(rx: &mut watch::Receiver<Option<SocketAddr>>) -> Option<SocketAddr> {
    let r = tokio::time::timeout(TARGET_WAIT, rx.wait_for(|t| t.is_some())).await;
    match r {
        Ok(Ok(t)) => *t,
        _ => None,
    }
}

/// A TCP relay: every accepted connection is forwarded to the target through the link.
pub struct TcpRelay {
    pub addr: SocketAddr,
    pub target: Arc<Target>,
    task: tokio::task::JoinHandle<()>,
}

impl TcpRelay {
    /// Starts relaying connections accepted on `listener`. With an `observer`, HTTP/1.1
    /// exchanges are recorded (and CORS headers added to responses, see `netsim::sniff`).
    pub fn spawn(
        listener: TcpListener,
        shape: LinkShape,
        observer: Option<Arc<dyn Observer>>,
    ) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, _) = watch::channel(None);
        let target = Arc::new(tx);
        let t = target.clone();
        let shape = Arc::new(shape);
        let task = tokio::spawn(async move {
            loop {
                let (client, _) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "relay accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let rx = t.subscribe();
                let shape = shape.clone();
                let observer = observer.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay_connection(client, rx, &shape, observer).await {
                        tracing::debug!(%addr, error = %e, "relayed connection ended");
                    }
                });
            }
        });
        Ok(TcpRelay { addr, target, task })
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay_connection(
    client: TcpStream,
    mut target: watch::Receiver<Option<SocketAddr>>,
    shape: &LinkShape,
    observer: Option<Arc<dyn Observer>>,
) -> std::io::Result<()> {
    let accepted = Instant::now();
    let Some(to) = wait_target(&mut target).await else {
        return Err(std::io::Error::other("no target"));
    };
    let server = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to))
        .await
        .map_err(|_| std::io::Error::other("connect timed out"))??;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let sniffer = observer.map(Sniffer::new);
    let (req_sniff, resp_sniff) = match &sniffer {
        Some(s) => (Some(s.clone()), Some(s.clone())),
        None => (None, None),
    };
    // The handshake: the first request bytes leave one RTT after the accept.
    let up = pipe(
        cr,
        sw,
        shape.up.clone(),
        Some(accepted + shape.rtt),
        move |b: Bytes| {
            if let Some(s) = &req_sniff {
                s.request_bytes(&b);
            }
            b
        },
    );
    let down = pipe(
        sr,
        cw,
        shape.down.clone(),
        None,
        move |b: Bytes| match &resp_sniff {
            Some(s) => s.response_bytes(b),
            None => b,
        },
    );
    // Each direction ends on its own (half-close); an error on one ends both.
    let r = tokio::try_join!(up, down);
    if let Some(s) = &sniffer {
        s.closed();
    }
    r.map(|_| ())
}

/// Copies `from` to `to` through `shape`: a reader task stamps each chunk with its release
/// time, the writer sends it then. EOF is passed on as a write shutdown.
async fn pipe<R, W>(
    mut from: R,
    mut to: W,
    shape: Shape,
    not_before: Option<Instant>,
    mut inspect: impl FnMut(Bytes) -> Bytes + Send + 'static,
) -> std::io::Result<()>
where
    R: AsyncReadExt + Unpin + Send + 'static,
    W: AsyncWriteExt + Unpin + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(QUEUE);
    let reader = tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(CHUNK);
        let mut last = Instant::now();
        loop {
            buf.reserve(CHUNK);
            let n = from.read_buf(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            let bytes = inspect(buf.split().freeze());
            if bytes.is_empty() {
                continue;
            }
            let mut at = shape.release(bytes.len(), Instant::now());
            if let Some(nb) = not_before {
                at = at.max(nb + shape.delay);
            }
            // Bytes of one direction never overtake each other.
            at = at.max(last);
            last = at;
            if tx.send((at, bytes)).await.is_err() {
                return Ok(());
            }
        }
    });
    let mut write_result = Ok(());
    while let Some((at, bytes)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if let Err(e) = to.write_all(&bytes).await {
            write_result = Err(e);
            break;
        }
    }
    if write_result.is_err() {
        reader.abort();
        return write_result;
    }
    let _ = to.shutdown().await;
    match reader.await {
        Ok(r) => r,
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// A UDP relay: datagrams from each source are forwarded from a socket of their own (so the
/// target's answers find their way back), each direction delayed and paced; datagrams that
/// would wait too long for tokens are dropped.
pub struct UdpRelay {
    pub addr: SocketAddr,
    pub target: Arc<Target>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    pub fn spawn(socket: UdpSocket, shape: LinkShape) -> std::io::Result<Self> {
        let addr = socket.local_addr()?;
        let (tx, _) = watch::channel(None);
        let target = Arc::new(tx);
        let t = target.clone();
        let task = tokio::spawn(udp_main(Arc::new(socket), t, Arc::new(shape)));
        Ok(UdpRelay { addr, target, task })
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A delayed sender: datagrams are sent in order at their release times.
fn delayed_sender(
    socket: Arc<UdpSocket>,
) -> (
    mpsc::Sender<(Instant, Bytes, SocketAddr)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes, SocketAddr)>(1024);
    let task = tokio::spawn(async move {
        while let Some((at, data, to)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            let _ = socket.send_to(&data, to).await;
        }
    });
    (tx, task)
}

struct UdpSession {
    up_tx: mpsc::Sender<(Instant, Bytes, SocketAddr)>,
    last: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for UdpSession {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn udp_main(socket: Arc<UdpSocket>, target: Arc<Target>, shape: Arc<LinkShape>) {
    let rx = target.subscribe();
    let (down_tx, _down_task) = delayed_sender(socket.clone());
    let mut sessions: std::collections::HashMap<SocketAddr, UdpSession> = Default::default();
    let mut buf = vec![0u8; 65_536];
    let mut last_sweep = Instant::now();
    loop {
        let (n, src) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP port unreachable and the like: keep going.
                tracing::debug!(error = %e, "udp relay receive failed");
                continue;
            }
        };
        let now = Instant::now();
        if now.duration_since(last_sweep) > Duration::from_secs(10) {
            sessions.retain(|_, s| now.duration_since(s.last) < UDP_IDLE);
            last_sweep = now;
        }
        let Some(to) = *rx.borrow() else {
            continue;
        };
        let session = match sessions.entry(src) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let upstream = Arc::new(up);
                let (up_tx, up_task) = delayed_sender(upstream.clone());
                let reader = {
                    let shape = shape.clone();
                    let down_tx = down_tx.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok((n, _)) = upstream.recv_from(&mut buf).await {
                            let Some(wait) = shape.down.try_reserve(n, UDP_MAX_QUEUE) else {
                                continue;
                            };
                            let at = Instant::now() + wait + shape.down.delay;
                            let data = Bytes::copy_from_slice(&buf[..n]);
                            let _ = down_tx.try_send((at, data, src));
                        }
                    })
                };
                v.insert(UdpSession {
                    up_tx,
                    last: now,
                    tasks: vec![up_task, reader],
                })
            }
        };
        session.last = now;
        let Some(wait) = shape.up.try_reserve(n, UDP_MAX_QUEUE) else {
            continue;
        };
        let at = now + wait + shape.up.delay;
        let _ = session
            .up_tx
            .try_send((at, Bytes::copy_from_slice(&buf[..n]), to));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn relay_to(target: SocketAddr, shape: LinkShape) -> TcpRelay {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let r = TcpRelay::spawn(l, shape, None).expect("relay");
        r.target.send_replace(Some(target));
        r
    }

    #[tokio::test]
    async fn rtt_is_added_to_each_round_trip() {
        let echo = echo_server().await;
        let relay = relay_to(echo, LinkShape::new(Duration::from_millis(100), None, None)).await;
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        let mut buf = [0u8; 4];
        // The first round trip also pays for the simulated handshake.
        let t = Instant::now();
        s.write_all(b"ping").await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(
            t.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t.elapsed()
        );
        let t = Instant::now();
        s.write_all(b"pong").await.expect("write");
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf, b"pong");
        assert!(
            t.elapsed() >= Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn bandwidth_is_capped() {
        // 1 MB/s down; 600 KB must take at least ~0.55 s (the burst lets 50 KB through early).
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let target = server.local_addr().expect("addr");
        let body = vec![7u8; 600_000];
        let b = body.clone();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = server.accept().await {
                let _ = s.write_all(&b).await;
                let _ = s.shutdown().await;
            }
        });
        let shape = LinkShape::new(Duration::from_millis(2), None, Some(1_000_000.0));
        let relay = relay_to(target, shape).await;
        let t = Instant::now();
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, body);
        assert!(
            t.elapsed() >= Duration::from_millis(540),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn connections_wait_for_a_late_target() {
        let echo = echo_server().await;
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let relay = TcpRelay::spawn(l, LinkShape::default(), None).expect("relay");
        let mut s = TcpStream::connect(relay.addr).await.expect("connect");
        s.write_all(b"late").await.expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        relay.target.send_replace(Some(echo));
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf, b"late");
    }

    #[tokio::test]
    async fn udp_datagrams_are_delayed_both_ways() {
        let server = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let target = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = server.recv_from(&mut buf).await {
                let _ = server.send_to(&buf[..n], from).await;
            }
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let shape = LinkShape::new(Duration::from_millis(80), Some(1e6), Some(1e6));
        let relay = UdpRelay::spawn(socket, shape).expect("relay");
        relay.target.send_replace(Some(target));
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let t = Instant::now();
        client.send_to(b"hello", relay.addr).await.expect("send");
        let mut buf = [0u8; 1500];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), client.recv_from(&mut buf))
            .await
            .expect("in time")
            .expect("recv");
        assert_eq!((&buf[..n], from), (&b"hello"[..], relay.addr));
        assert!(
            t.elapsed() >= Duration::from_millis(80),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn datagrams_over_the_queue_are_dropped_without_debt() {
        let shape = Shape {
            delay: Duration::ZERO,
            buckets: vec![link_bucket(10_000.0)],
        };
        let max = Duration::from_millis(200);
        let passed = (0..100)
            .filter(|_| shape.try_reserve(1000, max).is_some())
            .count();
        // The 16 KiB burst plus at most 200 ms of queue (2 KB), give or take a datagram.
        assert!((16..=20).contains(&passed), "{passed}");
        // Dropped datagrams left no debt: after a while, datagrams pass again.
        std::thread::sleep(Duration::from_millis(400));
        assert!(shape.try_reserve(1000, max).is_some());
    }
}
