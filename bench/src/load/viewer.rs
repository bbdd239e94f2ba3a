//! `cdn bench load`'s viewers: the synthetic catalogue, and one viewer's sessions (resolve
//! through the router, then sequential one-chunk Range requests, abandoning at random), each
//! body checked against the origin's generator.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};

use crate::loadgen::{self, Conn, Job};

use super::*;

/// A video of the catalogue.
#[derive(Debug, Clone)]
pub(super) struct Video {
    pub(super) id: String,
    pub(super) size: u64,
}

pub(super) const CHUNK: u64 = 1 << 20;
pub(super) const MAX_CHUNKS: f64 = 48.0;

pub(super) fn catalogue(args: &LoadArgs) -> Vec<Video> {
    let mut rng = StdRng::seed_from_u64(args.seed ^ 0xCA7A_1065);
    let len = LogNormal::new(args.median_chunks.max(1.0).ln(), 1.0).expect("valid lognormal");
    (0..args.videos.max(1))
        .map(|i| {
            let chunks = len.sample(&mut rng).round().clamp(1.0, MAX_CHUNKS) as u64;
            let last = rng.random_range(CHUNK / 4..=CHUNK);
            Video {
                id: format!("v{i}-s{}", args.seed),
                size: (chunks - 1) * CHUNK + last,
            }
        })
        .collect()
}

/// What one viewer counted.
pub(super) struct ViewerStats {
    pub(super) region: usize,
    pub(super) sessions: u64,
    pub(super) st: loadgen::Stats,
    pub(super) hits: u64,
    pub(super) resolves: Histogram<u64>,
    pub(super) routed_to: BTreeMap<String, u64>,
    /// Chunks asked for and first-chunk TTFBs (the flash-crowd report).
    pub(super) first: crate::flash::FirstChunks,
}

pub(super) struct Shared {
    pub(super) args: LoadArgs,
    pub(super) videos: Vec<Video>,
    pub(super) mode: Mode,
    pub(super) router: SocketAddr,
    /// Origin mode: each region's relay to the origin.
    pub(super) origin_relays: BTreeMap<String, SocketAddr>,
    pub(super) deadline: Instant,
    pub(super) requests: AtomicU64,
    /// Flash crowd: every viewer waits here before its first session.
    pub(super) start: Option<tokio::sync::Barrier>,
}

impl Shared {
    fn more(&self) -> bool {
        Instant::now() < self.deadline
            && (self.args.max_requests == 0
                || self.requests.load(Ordering::Relaxed) < self.args.max_requests)
    }
}

/// Asks the router where `path` is for a viewer at `local`: (target, path, edge name).
pub(super) async fn resolve(
    router: SocketAddr,
    local: IpAddr,
    path: &str,
) -> anyhow::Result<(SocketAddr, String, String)> {
    let mut c = loadgen::connect(router, Some(local)).await?;
    let r = c.get(path, None, false, Duration::from_secs(10)).await?;
    anyhow::ensure!(r.status == 302, "router answered {} for {path}", r.status);
    let loc = r
        .headers
        .get(http::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .context("302 without Location")?;
    let uri: http::Uri = loc.parse().context("bad Location")?;
    let addr = url_addr(loc)?;
    let edge = r
        .headers
        .get(cdn_geo_router::EDGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_owned();
    let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    Ok((addr, pq, edge))
}

pub(super) async fn viewer(
    sh: Arc<Shared>,
    region: usize,
    region_name: String,
    ip: IpAddr,
    seed: u64,
) -> ViewerStats {
    let mut rng = StdRng::seed_from_u64(seed);
    let zipf = Zipf::new(sh.videos.len() as f64, sh.args.alpha.max(0.0)).expect("valid zipf");
    let mut vs = ViewerStats {
        region,
        sessions: 0,
        st: loadgen::Stats::default(),
        hits: 0,
        resolves: loadgen::histogram(),
        routed_to: BTreeMap::new(),
        first: Default::default(),
    };
    if let Some(start) = &sh.start {
        start.wait().await;
    }
    let mut conn: Option<(SocketAddr, Conn)> = None;
    let mut n = 0u64;
    while sh.more() && (sh.args.sessions == 0 || vs.sessions < sh.args.sessions) {
        let rank = zipf.sample(&mut rng) as usize;
        // A flash crowd: everyone plays the same (first) video.
        let rank = if sh.args.flash_crowd { 1 } else { rank };
        let video = &sh.videos[rank.clamp(1, sh.videos.len()) - 1];
        // The whole session's choices are drawn first, so every mode sees the same ones.
        let chunks = video.size.div_ceil(CHUNK);
        let mut watch = 1;
        while watch < chunks && !rng.random_bool(sh.args.abandon.clamp(0.0, 1.0)) {
            watch += 1;
        }
        vs.sessions += 1;
        let path = format!("/synthetic/{}?size={}", video.id, video.size);
        let (target, path, edge) = if sh.mode == Mode::Origin {
            let Some(a) = sh.origin_relays.get(&region_name) else {
                break;
            };
            (*a, path, "origin".to_owned())
        } else {
            let t0 = Instant::now();
            match resolve(sh.router, ip, &path).await {
                Ok(r) => {
                    loadgen::record(&mut vs.resolves, t0.elapsed());
                    r
                }
                Err(e) => {
                    let job = Job::full(&video.id, video.size);
                    vs.st.error(&job, &e);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            }
        };
        *vs.routed_to.entry(edge).or_default() += 1;
        for c in 0..watch {
            if !sh.more() {
                break;
            }
            sh.requests.fetch_add(1, Ordering::Relaxed);
            let end = ((c + 1) * CHUNK).min(video.size) - 1;
            let mut job = Job::range(&video.id, video.size, c * CHUNK, end);
            job.path = path.clone();
            if conn
                .as_ref()
                .is_none_or(|(a, c)| *a != target || !c.is_open())
            {
                match loadgen::connect(target, Some(ip)).await {
                    Ok(c) => conn = Some((target, c)),
                    Err(e) => {
                        vs.st.error(&job, &e);
                        conn = None;
                        break;
                    }
                }
            }
            let Some((_, cn)) = conn.as_mut() else { break };
            let keep = sh.args.verify_every <= 1 || n.is_multiple_of(sh.args.verify_every);
            n += 1;
            match cn
                .get(&job.path, job.range, keep, Duration::from_secs(60))
                .await
            {
                Ok(r) => {
                    vs.first.record(&video.id, c, (c == 0).then_some(r.ttfb));
                    // The nearest cache's member is the last one (RFC 9211 §2).
                    let hit = r
                        .headers
                        .get_all("cache-status")
                        .iter()
                        .next_back()
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.rsplit(',').next())
                        .is_some_and(|last| last.split(';').any(|p| p.trim() == "hit"));
                    let before = vs.st.corrupt + vs.st.bad_status;
                    vs.st.check(&job, &r);
                    if vs.st.corrupt + vs.st.bad_status == before && hit {
                        vs.hits += 1;
                    }
                }
                Err(e) => {
                    vs.st.error(&job, &e);
                    conn = None;
                    break;
                }
            }
        }
    }
    vs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tests::args;

    #[test]
    fn catalogue_is_seeded_and_bounded() {
        let a = args(&["--videos", "50"]);
        let c = catalogue(&a);
        assert_eq!(c.len(), 50);
        assert!(c.iter().all(|v| v.size > 0 && v.size <= 48 * CHUNK));
        assert_eq!(
            catalogue(&a).iter().map(|v| v.size).collect::<Vec<_>>(),
            c.iter().map(|v| v.size).collect::<Vec<_>>()
        );
    }
}
