//! Synthetic, seeded workloads for the hit-ratio benchmark: Zipf object popularity with
//! fixed, lognormal or video-chunk-mix sizes, popularity churn (new releases entering the
//! top), and video sessions that read chunks in order and abandon part-way.
//!
//! Runs are reproducible: the same spec and seed give the same trace (for a given `rand`
//! version). Per-object properties (size, video length) are derived from the object id and
//! the seed, so they do not depend on request order.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, LogNormal, Zipf};

use super::queue::IdMap;
use super::trace::{Request, Trace};

/// How object sizes are drawn (once per object).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeDist {
    /// Every object has this size.
    Fixed(u64),
    /// Lognormal with this median (bytes) and sigma (of the underlying normal).
    LogNormal { median: f64, sigma: f64 },
    /// A video CDN's mix: 80% full chunks of `chunk` bytes, 10% partial last chunks
    /// (uniform up to a chunk), 10% small objects (manifests, thumbnails: lognormal around
    /// 8 KiB).
    VideoMix { chunk: u64 },
}

/// Popularity churn: every `every` draws (requests for Zipf, sessions for video), one new
/// item enters at a uniformly random rank among the `top` most popular; everything below
/// moves down one rank and the least popular item retires. `every == 0` disables churn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Churn {
    pub every: u64,
    pub top: u64,
}

/// Independent requests for objects with Zipf popularity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ZipfSpec {
    pub objects: u64,
    pub requests: u64,
    pub alpha: f64,
    pub sizes: SizeDist,
    pub churn: Churn,
    pub seed: u64,
}

/// Viewing sessions: a session picks a video by Zipf popularity, starts at chunk 0 (10% seek
/// to a random chunk first), reads chunks in order and after each chunk abandons with
/// probability `abandon`, else stops at the video's end. `concurrent` sessions are active at
/// once and their requests interleave. Video lengths are lognormal around `median_chunks`
/// (sigma 1); every chunk is `chunk_bytes` except a shorter last one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VideoSpec {
    pub videos: u64,
    pub requests: u64,
    pub alpha: f64,
    pub chunk_bytes: u64,
    pub median_chunks: f64,
    pub abandon: f64,
    pub concurrent: usize,
    pub churn: Churn,
    pub seed: u64,
}

/// A seeded generator for per-item properties: the same (seed, item) gives the same value.
fn item_rng(seed: u64, item: u64, salt: u64) -> StdRng {
    let mut x = seed ^ item.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt.rotate_left(32);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    StdRng::seed_from_u64(x ^ (x >> 29))
}

fn draw_size(dist: SizeDist, seed: u64, id: u64) -> u64 {
    match dist {
        SizeDist::Fixed(s) => s.max(1),
        SizeDist::LogNormal { median, sigma } => {
            let d = LogNormal::new(median.max(1.0).ln(), sigma.max(0.0)).expect("valid lognormal");
            (d.sample(&mut item_rng(seed, id, 1)).round() as u64).max(1)
        }
        SizeDist::VideoMix { chunk } => {
            let mut rng = item_rng(seed, id, 1);
            let p: f64 = rng.random();
            if p < 0.8 {
                chunk.max(1)
            } else if p < 0.9 {
                rng.random_range(1..=chunk.max(1))
            } else {
                let d = LogNormal::new((8192f64).ln(), 1.0).expect("valid lognormal");
                (d.sample(&mut rng).round() as u64).clamp(100, chunk.max(100))
            }
        }
    }
}

/// Items ranked by popularity, with churn.
struct Popularity {
    ranks: Vec<u64>,
    next_item: u64,
    zipf: Zipf<f64>,
    churn: Churn,
    draws: u64,
    /// What the caller counts time in (video: requests generated so far), for `events`.
    at: u64,
    /// Each churn event: (`at` when it came, the rank it entered at, 0-based).
    events: Vec<(u64, usize)>,
}

impl Popularity {
    fn new(items: u64, alpha: f64, churn: Churn) -> anyhow::Result<Self> {
        anyhow::ensure!(items >= 1, "need at least one object/video");
        let zipf = Zipf::new(items as f64, alpha)
            .map_err(|e| anyhow::anyhow!("bad Zipf parameters (n {items}, alpha {alpha}): {e}"))?;
        Ok(Self {
            ranks: (0..items).collect(),
            next_item: items,
            zipf,
            churn,
            draws: 0,
            at: 0,
            events: Vec::new(),
        })
    }

    fn draw(&mut self, rng: &mut StdRng) -> u64 {
        self.draws += 1;
        if self.churn.every > 0 && self.draws.is_multiple_of(self.churn.every) {
            let top = self.churn.top.clamp(1, self.ranks.len() as u64) as usize;
            let pos = rng.random_range(0..top);
            self.ranks.pop();
            self.ranks.insert(pos, self.next_item);
            self.next_item += 1;
            self.events.push((self.at, pos));
        }
        let rank = (self.zipf.sample(rng) as usize).clamp(1, self.ranks.len());
        self.ranks[rank - 1]
    }
}

/// Generates a Zipf workload.
pub fn zipf(spec: &ZipfSpec) -> anyhow::Result<Trace> {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut pop = Popularity::new(spec.objects, spec.alpha, spec.churn)?;
    let mut sizes: IdMap<u64> = IdMap::default();
    let requests = (0..spec.requests)
        .map(|_| {
            let id = pop.draw(&mut rng);
            let size = *sizes
                .entry(id)
                .or_insert_with(|| draw_size(spec.sizes, spec.seed, id));
            Request::new(id, size)
        })
        .collect();
    let churn = if spec.churn.every > 0 {
        format!(
            ", churn 1 per {} req into top {}",
            spec.churn.every, spec.churn.top
        )
    } else {
        String::new()
    };
    let sizes = match spec.sizes {
        SizeDist::Fixed(_) => "fixed",
        SizeDist::LogNormal { .. } => "lognormal",
        SizeDist::VideoMix { .. } => "video-mix",
    };
    let name = format!(
        "zipf a={}, {} objects, {sizes} sizes{}",
        spec.alpha,
        spec.objects,
        if spec.churn.every > 0 { ", churn" } else { "" }
    );
    let mut trace = Trace::from_requests(name, requests);
    trace.spec = format!(
        "zipf a={} {} objects {} req, sizes {:?}{churn}, seed {}",
        spec.alpha, spec.objects, spec.requests, spec.sizes, spec.seed
    );
    Ok(trace)
}

#[derive(Debug, Clone, Copy)]
struct Session {
    video: u64,
    chunk: u64,
    len: u64,
}

/// Chunk object id: video in the high bits, chunk index in the low 24.
fn chunk_id(video: u64, chunk: u64) -> u64 {
    (video << 24) | (chunk & 0xff_ffff)
}

/// Generates a video-session workload.
pub fn video(spec: &VideoSpec) -> anyhow::Result<Trace> {
    video_with_churn(spec).map(|(trace, _)| trace)
}

/// The popularity churn of a generated video workload, for a diagnostic that knows the
/// generator's true rates: each event as (the number of requests generated before it, the
/// rank it entered at, 0-based); the new video's id is `videos` + the event's position.
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(test), allow(dead_code))] // read by the true-rate diagnostic (policies::diag)
pub struct ChurnLog {
    pub events: Vec<(u64, usize)>,
}

/// [`video`], with the log of its popularity churn.
pub fn video_with_churn(spec: &VideoSpec) -> anyhow::Result<(Trace, ChurnLog)> {
    anyhow::ensure!(
        (0.0..1.0).contains(&spec.abandon),
        "abandon must be in [0, 1)"
    );
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut pop = Popularity::new(spec.videos, spec.alpha, spec.churn)?;
    let lengths = LogNormal::new(spec.median_chunks.max(1.0).ln(), 1.0).expect("valid lognormal");
    let chunk_bytes = spec.chunk_bytes.max(1);
    let mut video_len: IdMap<(u64, u64)> = IdMap::default(); // (chunks, last chunk bytes)
    let mut info = |video: u64| {
        *video_len.entry(video).or_insert_with(|| {
            let mut r = item_rng(spec.seed, video, 2);
            let chunks = (lengths.sample(&mut r).round() as u64).clamp(1, 0xff_ffff);
            (chunks, r.random_range(1..=chunk_bytes))
        })
    };
    // `generated`: the requests so far, the time of any churn this draw brings.
    let mut new_session =
        |rng: &mut StdRng, info: &mut dyn FnMut(u64) -> (u64, u64), generated: usize| {
            pop.at = generated as u64;
            let video = pop.draw(rng);
            let (len, _) = info(video);
            let chunk = if rng.random_bool(0.1) {
                rng.random_range(0..len)
            } else {
                0
            };
            Session { video, chunk, len }
        };
    let mut sessions: Vec<Session> = (0..spec.concurrent.max(1))
        .map(|_| new_session(&mut rng, &mut info, 0))
        .collect();
    let mut requests = Vec::with_capacity(spec.requests as usize);
    while (requests.len() as u64) < spec.requests {
        let i = rng.random_range(0..sessions.len());
        let s = &mut sessions[i];
        let (len, last_bytes) = info(s.video);
        let size = if s.chunk + 1 == len {
            last_bytes
        } else {
            chunk_bytes
        };
        requests.push(Request {
            group: s.video,
            index: s.chunk as u32,
            ..Request::new(chunk_id(s.video, s.chunk), size)
        });
        s.chunk += 1;
        if s.chunk >= s.len || rng.random_bool(spec.abandon) {
            sessions[i] = new_session(&mut rng, &mut info, requests.len());
        }
    }
    let log = ChurnLog { events: pop.events };
    let churn = if spec.churn.every > 0 {
        format!(
            ", churn 1 per {} sessions into top {}",
            spec.churn.every, spec.churn.top
        )
    } else {
        String::new()
    };
    let name = format!(
        "video a={}, {} videos, {} B chunks{}",
        spec.alpha,
        spec.videos,
        chunk_bytes,
        if spec.churn.every > 0 { ", churn" } else { "" }
    );
    let mut trace = Trace::from_requests(name, requests);
    trace.group_source = "generator (object = video, index = chunk)".into();
    trace.spec = format!(
        "video a={} {} videos {} req, {} B chunks, median {} chunks, abandon {}, {} sessions{churn}, seed {}",
        spec.alpha,
        spec.videos,
        spec.requests,
        chunk_bytes,
        spec.median_chunks,
        spec.abandon,
        spec.concurrent,
        spec.seed
    );
    Ok((trace, log))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zspec() -> ZipfSpec {
        ZipfSpec {
            objects: 1000,
            requests: 20_000,
            alpha: 1.0,
            sizes: SizeDist::LogNormal {
                median: 1000.0,
                sigma: 1.0,
            },
            churn: Churn { every: 500, top: 5 },
            seed: 7,
        }
    }

    #[test]
    fn zipf_is_reproducible_and_skewed() {
        let a = zipf(&zspec()).expect("gen");
        let b = zipf(&zspec()).expect("gen");
        assert_eq!(a.requests, b.requests);
        let c = zipf(&ZipfSpec { seed: 8, ..zspec() }).expect("gen");
        assert_ne!(a.requests, c.requests);
        // Sizes are per object.
        let mut seen: IdMap<u64> = IdMap::default();
        for r in &a.requests {
            assert_eq!(*seen.entry(r.id).or_insert(r.size), r.size);
        }
        // Churn brought new objects (ids >= 1000) and they got requests.
        assert!(a.requests.iter().any(|r| r.id >= 1000));
        // Skew: the most popular object gets far more than 1/1000 of the requests.
        let mut counts: IdMap<u64> = IdMap::default();
        for r in &a.requests {
            *counts.entry(r.id).or_default() += 1;
        }
        let max = counts.values().max().copied().unwrap_or(0);
        assert!(max > 20_000 / 100, "max {max}");
    }

    #[test]
    fn video_sessions_read_chunks_in_order() {
        let spec = VideoSpec {
            videos: 50,
            requests: 5000,
            alpha: 0.8,
            chunk_bytes: 1 << 20,
            median_chunks: 20.0,
            abandon: 0.05,
            concurrent: 1,
            churn: Churn { every: 0, top: 0 },
            seed: 3,
        };
        let t = video(&spec).expect("gen");
        assert_eq!(t.requests.len(), 5000);
        assert_eq!(t.requests, video(&spec).expect("gen").requests);
        // With one session at a time, consecutive requests of the same video are consecutive
        // chunks.
        let mut in_order = 0;
        for w in t.requests.windows(2) {
            if w[0].id >> 24 == w[1].id >> 24 && (w[1].id & 0xff_ffff) == (w[0].id & 0xff_ffff) + 1
            {
                in_order += 1;
            }
        }
        assert!(in_order > 4000, "{in_order}");
        assert!(t.requests.iter().all(|r| r.size >= 1 && r.size <= 1 << 20));
    }

    #[test]
    fn the_churn_log_says_when_each_new_video_entered() {
        let spec = VideoSpec {
            videos: 50,
            requests: 20_000,
            alpha: 0.8,
            chunk_bytes: 1 << 20,
            median_chunks: 10.0,
            abandon: 0.05,
            concurrent: 4,
            churn: Churn { every: 20, top: 3 },
            seed: 5,
        };
        let (t, log) = video_with_churn(&spec).expect("gen");
        assert_eq!(t.requests, video(&spec).expect("gen").requests);
        assert!(log.events.len() > 20, "{}", log.events.len());
        assert!(log.events.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(log.events.iter().all(|&(_, pos)| pos < 3));
        // New video `50 + n` is requested only after event n, and most of them are.
        let mut first: IdMap<usize> = IdMap::default();
        for (i, r) in t.requests.iter().enumerate() {
            first.entry(r.group).or_insert(i);
        }
        let mut seen = 0;
        for (n, &(at, _)) in log.events.iter().enumerate() {
            if let Some(&i) = first.get(&(50 + n as u64)) {
                assert!(i as u64 >= at, "video {} at {i}, entered at {at}", 50 + n);
                seen += 1;
            }
        }
        assert!(seen * 2 > log.events.len(), "{seen}");
    }

    #[test]
    fn video_mix_sizes_are_bounded() {
        for id in 0..2000 {
            let s = draw_size(SizeDist::VideoMix { chunk: 1 << 20 }, 1, id);
            assert!((1..=1 << 20).contains(&s), "{s}");
        }
    }
}
