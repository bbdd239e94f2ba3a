//! The replay engine of `cdn bench hit-ratio`: turns size ratios into capacities, replays
//! the trace through every (cache size, policy) pair, optionally on several threads, with a
//! progress bar, and collects the counts.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::policies::{CachePolicy, Group, PolicyKind};
use super::trace::{Trace, TraceStats};

/// What cache sizes (and object sizes) are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SizeUnit {
    /// Every object counts 1; the cache holds a share of the distinct objects.
    Objects,
    /// Sizes count; the cache holds a share of the working set (sum of distinct objects'
    /// sizes).
    Bytes,
}

/// The capacity for a size ratio: libCacheSim truncates `ratio × working set`.
pub fn capacity_for(ratio: f64, unit: SizeUnit, stats: &TraceStats) -> u64 {
    let base = match unit {
        SizeUnit::Objects => stats.objects,
        SizeUnit::Bytes => stats.working_set_bytes,
    };
    ((base as f64 * ratio) as u64).max(1)
}

/// The outcome of one replay.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub kind: PolicyKind,
    pub policy: String,
    pub ratio: f64,
    pub capacity: u64,
    pub requests: u64,
    pub misses: u64,
    pub bytes: u64,
    pub miss_bytes: u64,
    pub elapsed: Duration,
}

impl RunResult {
    pub fn object_miss_ratio(&self) -> f64 {
        self.misses as f64 / self.requests.max(1) as f64
    }

    pub fn byte_miss_ratio(&self) -> f64 {
        self.miss_bytes as f64 / self.bytes.max(1) as f64
    }

    pub fn ops_per_sec(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

const PROGRESS_STEP: usize = 1 << 16;

/// Replays the whole trace through `policy`. With unit sizing the policy sees size 1, but
/// byte counts always use the real sizes.
pub fn replay(
    policy: &mut dyn CachePolicy,
    trace: &Trace,
    unit: SizeUnit,
    progress: &ProgressBar,
) -> (u64, u64, u64, Duration) {
    let start = Instant::now();
    let (mut misses, mut bytes, mut miss_bytes) = (0u64, 0u64, 0u64);
    for chunk in trace.requests.chunks(PROGRESS_STEP) {
        for r in chunk {
            let size = match unit {
                SizeUnit::Objects => 1,
                SizeUnit::Bytes => r.size,
            };
            bytes += r.size;
            let group = Group {
                id: r.group,
                index: r.index,
            };
            if !policy.access_in_group(r.id, size, r.next_access(), group) {
                misses += 1;
                miss_bytes += r.size;
            }
        }
        progress.inc(chunk.len() as u64);
    }
    (misses, bytes, miss_bytes, start.elapsed())
}

/// One replay to do.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    pub ratio: f64,
    pub capacity: u64,
    pub kind: PolicyKind,
}

/// Runs every job on `threads` threads and returns the results in job order. The progress bar
/// is drawn (on a terminal) when the total work exceeds a few million requests.
pub fn run_jobs(
    trace: &Trace,
    unit: SizeUnit,
    jobs: &[Job],
    threads: usize,
    seed: u64,
) -> Vec<RunResult> {
    let total = (trace.requests.len() * jobs.len()) as u64;
    let progress = if total >= 4_000_000 {
        let pb = ProgressBar::new(total);
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent}% {human_pos}/{human_len} requests, eta {eta}",
        ) {
            pb.set_style(style);
        }
        pb
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<RunResult>>> = Mutex::new(vec![None; jobs.len()]);
    std::thread::scope(|scope| {
        for _ in 0..threads.clamp(1, jobs.len().max(1)) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else {
                        break;
                    };
                    let mut policy = job.kind.build(job.capacity, seed);
                    let (misses, bytes, miss_bytes, elapsed) =
                        replay(policy.as_mut(), trace, unit, &progress);
                    let result = RunResult {
                        kind: job.kind,
                        policy: policy.name(),
                        ratio: job.ratio,
                        capacity: job.capacity,
                        requests: trace.requests.len() as u64,
                        misses,
                        bytes,
                        miss_bytes,
                        elapsed,
                    };
                    drop(policy);
                    results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(result);
                }
            });
        }
    });
    progress.finish_and_clear();
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Request;

    #[test]
    fn capacity_truncates_like_libcachesim() {
        let stats = TraceStats {
            requests: 1_000_000,
            objects: 143_542,
            working_set_bytes: 29_227_218,
            requested_bytes: 0,
            one_hit_objects: 0,
            min_size: 1,
            max_size: 4985,
        };
        assert_eq!(capacity_for(0.01, SizeUnit::Objects, &stats), 1435);
        assert_eq!(capacity_for(0.1, SizeUnit::Objects, &stats), 14354);
        assert_eq!(capacity_for(0.01, SizeUnit::Bytes, &stats), 292_272);
    }

    #[test]
    fn run_jobs_counts_misses_and_bytes() {
        // 1 2 1 3 1 with sizes 10, 20, 10, 30, 10 and room for 2 objects (unit sizing):
        // LRU misses 1, 2, 3 (evicts 2): 3 misses, 60 of 80 bytes.
        let reqs =
            [(1, 10), (2, 20), (1, 10), (3, 30), (1, 10)].map(|(id, size)| Request::new(id, size));
        let trace = Trace::from_requests("t", reqs.to_vec());
        let jobs = [PolicyKind::Lru, PolicyKind::Fifo].map(|kind| Job {
            ratio: 0.5,
            capacity: 2,
            kind,
        });
        let res = run_jobs(&trace, SizeUnit::Objects, &jobs, 2, 0);
        assert_eq!(res.len(), 2);
        assert_eq!(
            (res[0].misses, res[0].miss_bytes, res[0].bytes),
            (3, 60, 80)
        );
        // FIFO: 3 evicts 1, so the last 1 misses too.
        assert_eq!(res[1].misses, 4);
        assert!((res[0].object_miss_ratio() - 0.6).abs() < 1e-12);
    }
}
