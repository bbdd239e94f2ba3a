//! The hot workloads of `compare` and `capacity`: warmed multi-chunk objects read by aligned
//! 1 MiB Range requests (`hot-1m`), and warmed 16 KiB objects read whole (`hot-16k`).

use rand::Rng;
use rand::rngs::StdRng;

use crate::loadgen::Job;

pub(crate) const MIB: u64 = 1 << 20;

/// The objects of the `hot-1m` scenario: `n` objects of `chunks` × 1 MiB, ids
/// `{prefix}hot1m-{i}`.
pub(crate) fn hot_1m_objects(prefix: &str, n: u64, chunks: u64) -> Vec<(String, u64)> {
    (0..n)
        .map(|i| (format!("{prefix}hot1m-{i}"), chunks * MIB))
        .collect()
}

/// The objects of the `hot-16k` scenario: `n` objects of 16 KiB, ids `{prefix}hot16k-{i}`.
pub(crate) fn hot_16k_objects(prefix: &str, n: u64) -> Vec<(String, u64)> {
    (0..n)
        .map(|i| (format!("{prefix}hot16k-{i}"), 16 * 1024))
        .collect()
}

/// A request of `hot-1m`: a Range request for a random aligned 1 MiB chunk of a random object
/// of `objs` (sizes whole MiB).
pub(crate) fn hot_1m_job(objs: &[(String, u64)], rng: &mut StdRng) -> Job {
    let (id, size) = &objs[rng.random_range(0..objs.len())];
    let c = rng.random_range(0..(*size / MIB).max(1));
    Job::range(id, *size, c * MIB, (c + 1) * MIB - 1)
}

/// A request of `hot-16k`: a GET of a whole random object of `objs`.
pub(crate) fn hot_16k_job(objs: &[(String, u64)], rng: &mut StdRng) -> Job {
    let (id, size) = &objs[rng.random_range(0..objs.len())];
    Job::full(id, *size)
}
