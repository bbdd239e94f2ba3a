//! The load generator `cdn bench load` and `cdn bench compare` share: keep-alive HTTP/1.1
//! connections (hyper's connection-level client, optionally bound to a source address),
//! closed-loop workers for a fixed time, one-shot bursts, latency histograms (HdrHistogram,
//! microseconds) and verification of bodies against the origin's synthetic generator.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rand::SeedableRng;
use rand::rngs::StdRng;

pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One keep-alive HTTP/1.1 connection.
pub struct Conn {
    tx: http1::SendRequest<Empty<Bytes>>,
    host: String,
}

/// Connects to `addr`, from `local` when given (e.g. 127.3.0.9, so a router places the
/// client in a region).
pub async fn connect(addr: SocketAddr, local: Option<IpAddr>) -> anyhow::Result<Conn> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = local {
        sock.bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding the source address {ip}"))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {addr}: timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (tx, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn {
        tx,
        host: addr.to_string(),
    })
}

/// A response as the generator saw it.
pub struct Resp {
    pub status: u16,
    pub headers: http::HeaderMap,
    /// Request written → response head parsed (time to first byte).
    pub ttfb: Duration,
    /// Request written → last body byte.
    pub total: Duration,
    pub len: u64,
    /// The body, when asked for.
    pub body: Option<Bytes>,
}

impl Conn {
    /// Whether the connection can take another request.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }

    /// `GET path` (origin form, query included), with `Range: bytes=S-E` when given.
    pub async fn get(
        &mut self,
        path: &str,
        range: Option<(u64, u64)>,
        keep_body: bool,
        timeout: Duration,
    ) -> anyhow::Result<Resp> {
        let range = range.map(|(s, e)| format!("bytes={s}-{e}"));
        self.get_ranges(path, range.as_deref(), keep_body, timeout)
            .await
    }

    /// `GET path` with `range` as the Range field's whole value (e.g. `bytes=0-0,10-10`).
    pub async fn get_ranges(
        &mut self,
        path: &str,
        range: Option<&str>,
        keep_body: bool,
        timeout: Duration,
    ) -> anyhow::Result<Resp> {
        tokio::time::timeout(timeout, self.get_inner(path, range, keep_body))
            .await
            .map_err(|_| anyhow::anyhow!("GET {path}: no complete response in {timeout:?}"))?
    }

    async fn get_inner(
        &mut self,
        path: &str,
        range: Option<&str>,
        keep_body: bool,
    ) -> anyhow::Result<Resp> {
        self.tx.ready().await?;
        let mut b = http::Request::get(path).header(http::header::HOST, &self.host);
        if let Some(r) = range {
            b = b.header(http::header::RANGE, r);
        }
        let req = b.body(Empty::new())?;
        let t0 = Instant::now();
        let resp = self.tx.send_request(req).await?;
        let ttfb = t0.elapsed();
        let (parts, mut body) = resp.into_parts();
        let mut buf = keep_body.then(BytesMut::new);
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                len += data.len() as u64;
                if let Some(b) = buf.as_mut() {
                    b.extend_from_slice(&data);
                }
            }
        }
        Ok(Resp {
            status: parts.status.as_u16(),
            headers: parts.headers,
            ttfb,
            total: t0.elapsed(),
            len,
            body: buf.map(BytesMut::freeze),
        })
    }
}

/// A latency histogram in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, 600_000_000);
    h.saturating_record(us);
}

/// Quantile `q` of a histogram, milliseconds (0 when empty).
pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

/// What a request should return: synthetic bytes `start..start+len` of the object with
/// generator seed `seed` (status 206 when the request has a range, else 200).
#[derive(Debug, Clone)]
pub struct Job {
    pub path: String,
    pub range: Option<(u64, u64)>,
    pub seed: u64,
    pub start: u64,
    pub len: u64,
}

impl Job {
    /// A whole synthetic object.
    pub fn full(id: &str, size: u64) -> Job {
        Job {
            path: format!("/synthetic/{id}?size={size}"),
            range: None,
            seed: cdn_origin::synthetic::seed(id),
            start: 0,
            len: size,
        }
    }

    /// Bytes `start..=end` of a synthetic object.
    pub fn range(id: &str, size: u64, start: u64, end: u64) -> Job {
        Job {
            path: format!("/synthetic/{id}?size={size}"),
            range: Some((start, end)),
            seed: cdn_origin::synthetic::seed(id),
            start,
            len: end - start + 1,
        }
    }

    fn want_status(&self) -> u16 {
        if self.range.is_some() { 206 } else { 200 }
    }

    /// Whether `body` is exactly the bytes this job asks for.
    pub fn body_ok(&self, body: &[u8]) -> bool {
        body.len() as u64 == self.len
            && (self.len == 0
                || body[..]
                    == cdn_origin::synthetic::fill(
                        self.seed,
                        self.start..=self.start + self.len - 1,
                    )[..])
    }
}

/// Counts and latencies of a run.
pub struct Stats {
    pub requests: u64,
    /// Body bytes received by complete, correct responses.
    pub bytes: u64,
    /// Connection errors, timeouts, bodies cut short by the connection.
    pub errors: u64,
    /// Responses with another status than expected (5xx included).
    pub bad_status: u64,
    pub status_5xx: u64,
    /// Responses of the expected status whose length or bytes are wrong.
    pub corrupt: u64,
    /// Of them, how many bodies were compared byte for byte.
    pub verified: u64,
    pub statuses: BTreeMap<u16, u64>,
    /// Request to last byte, µs (correct responses).
    pub latency: Histogram<u64>,
    /// Request to response head, µs (correct responses).
    pub ttfb: Histogram<u64>,
    pub elapsed: Duration,
    /// A few error messages, for the report.
    pub samples: Vec<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            requests: 0,
            bytes: 0,
            errors: 0,
            bad_status: 0,
            status_5xx: 0,
            corrupt: 0,
            verified: 0,
            statuses: BTreeMap::new(),
            latency: histogram(),
            ttfb: histogram(),
            elapsed: Duration::ZERO,
            samples: Vec::new(),
        }
    }
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.errors += o.errors;
        self.bad_status += o.bad_status;
        self.status_5xx += o.status_5xx;
        self.corrupt += o.corrupt;
        self.verified += o.verified;
        for (s, n) in &o.statuses {
            *self.statuses.entry(*s).or_default() += n;
        }
        let _ = self.latency.add(&o.latency);
        let _ = self.ttfb.add(&o.ttfb);
        self.elapsed = self.elapsed.max(o.elapsed);
        for s in &o.samples {
            if self.samples.len() < 5 {
                self.samples.push(s.clone());
            }
        }
    }

    fn note(&mut self, msg: String) {
        if self.samples.len() < 5 {
            self.samples.push(msg);
        }
    }

    /// Requests per second over the run.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Megabytes (10^6) per second of correct bodies.
    pub fn mbps(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Counts one response; `verify` compares the body byte for byte (it must have been kept).
    pub fn check(&mut self, job: &Job, r: &Resp) {
        self.requests += 1;
        *self.statuses.entry(r.status).or_default() += 1;
        if r.status >= 500 {
            self.status_5xx += 1;
        }
        if r.status != job.want_status() {
            self.bad_status += 1;
            self.note(format!("{}: status {}", job.path, r.status));
            return;
        }
        let ok = match &r.body {
            Some(b) => {
                self.verified += 1;
                job.body_ok(b)
            }
            None => r.len == job.len,
        };
        if !ok {
            self.corrupt += 1;
            self.note(format!("{}: wrong body ({} bytes)", job.path, r.len));
            return;
        }
        self.bytes += r.len;
        record(&mut self.latency, r.total);
        record(&mut self.ttfb, r.ttfb);
    }

    pub fn error(&mut self, job: &Job, e: &anyhow::Error) {
        self.requests += 1;
        self.errors += 1;
        self.note(format!("{}: {e:#}", job.path));
    }
}

/// Makes the next request of a worker.
pub type JobGen = Arc<dyn Fn(&mut StdRng) -> Job + Send + Sync>;

/// `conns` closed-loop workers, each on its own connection, send requests from `next` until
/// `duration` has passed. Every `verify_every`-th response of a worker (and its first) is
/// compared byte for byte; the others by status and length.
pub async fn closed_loop(
    addr: SocketAddr,
    conns: usize,
    duration: Duration,
    verify_every: u64,
    seed: u64,
    next: JobGen,
) -> Stats {
    let started = Instant::now();
    let deadline = started + duration;
    let workers: Vec<_> = (0..conns)
        .map(|w| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed ^ (w as u64).wrapping_mul(0x9E37));
                let mut st = Stats::default();
                let mut conn: Option<Conn> = None;
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let job = next(&mut rng);
                    if conn.as_ref().is_none_or(|c| !c.is_open()) {
                        match connect(addr, None).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                st.error(&job, &e);
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let keep = verify_every > 0 && n.is_multiple_of(verify_every);
                    n += 1;
                    match c
                        .get(&job.path, job.range, keep, Duration::from_secs(30))
                        .await
                    {
                        Ok(r) => st.check(&job, &r),
                        Err(e) => {
                            st.error(&job, &e);
                            conn = None;
                        }
                    }
                }
                st
            })
        })
        .collect();
    let mut total = merged(workers).await;
    total.elapsed = started.elapsed();
    total
}

/// `clients` connections are opened first; then all send `job` at the same moment (a cold
/// miss from many clients). Every body is compared byte for byte.
pub async fn burst(addr: SocketAddr, clients: usize, job: Job) -> Stats {
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let job = Arc::new(job);
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (barrier, job) = (barrier.clone(), job.clone());
            tokio::spawn(async move {
                let mut st = Stats::default();
                let conn = connect(addr, None).await;
                barrier.wait().await;
                let t0 = Instant::now();
                match conn {
                    Ok(mut c) => match c
                        .get(&job.path, job.range, true, Duration::from_secs(30))
                        .await
                    {
                        Ok(r) => st.check(&job, &r),
                        Err(e) => st.error(&job, &e),
                    },
                    Err(e) => st.error(&job, &e),
                }
                st.elapsed = t0.elapsed();
                st
            })
        })
        .collect();
    merged(tasks).await
}

/// The workers' stats added up (a worker that panicked adds nothing).
async fn merged(workers: Vec<tokio::task::JoinHandle<Stats>>) -> Stats {
    let mut total = Stats::default();
    for w in workers {
        if let Ok(st) = w.await {
            total.merge(&st);
        }
    }
    total
}

/// Fetches every job once, `parallel` at a time, verifying every body (a cache warm-up).
pub async fn warm(addr: SocketAddr, jobs: Vec<Job>, parallel: usize) -> Stats {
    let jobs = Arc::new(std::sync::Mutex::new(jobs));
    let started = Instant::now();
    let tasks: Vec<_> = (0..parallel.max(1))
        .map(|_| {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                let mut st = Stats::default();
                let mut conn: Option<Conn> = None;
                // (The lock is taken and released inside `pop`, not held by the loop.)
                while let Some(job) = pop(&jobs) {
                    if conn.as_ref().is_none_or(|c| !c.is_open()) {
                        match connect(addr, None).await {
                            Ok(c) => conn = Some(c),
                            Err(e) => {
                                st.error(&job, &e);
                                continue;
                            }
                        }
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    match c
                        .get(&job.path, job.range, true, Duration::from_secs(60))
                        .await
                    {
                        Ok(r) => st.check(&job, &r),
                        Err(e) => {
                            st.error(&job, &e);
                            conn = None;
                        }
                    }
                }
                st
            })
        })
        .collect();
    let mut total = merged(tasks).await;
    total.elapsed = started.elapsed();
    total
}

fn pop(jobs: &std::sync::Mutex<Vec<Job>>) -> Option<Job> {
    jobs.lock().ok()?.pop()
}

/// `GET {base}/metrics` and the sum of one metric's series (0 when unreachable).
pub async fn metric(base: &str, name: &str) -> f64 {
    cdn_lab::scrape::Scraper::new(Duration::from_secs(5))
        .metrics(base)
        .await
        .map_or(0.0, |m| m.sum(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fetches_and_verifies_against_an_origin() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let root =
            std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("testdata/media");
        let origin =
            cdn_origin::spawn(l, root, &cdn_origin::OriginConfig::default()).expect("origin");
        let next: JobGen = Arc::new(|_| Job::range("lg", 100_000, 1000, 70_999));
        let st = closed_loop(origin.addr, 2, Duration::from_millis(200), 3, 1, next).await;
        assert!(st.requests > 0);
        assert_eq!(
            (st.errors, st.bad_status, st.corrupt),
            (0, 0, 0),
            "{:?}",
            st.samples
        );
        assert!(st.verified > 0);
        assert_eq!(st.bytes, st.requests * 70_000);
        let st = burst(origin.addr, 5, Job::full("lg2", 5000)).await;
        assert_eq!((st.requests, st.verified, st.corrupt), (5, 5, 0));
        // A wrong expectation is caught.
        let mut job = Job::full("lg3", 5000);
        job.seed ^= 1;
        let st = warm(origin.addr, vec![job], 1).await;
        assert_eq!(st.corrupt, 1);
        origin.stop().await;
    }
}
