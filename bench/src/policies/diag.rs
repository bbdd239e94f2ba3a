//! A diagnostic, test-only and ignored by default: on the video workload of
//! `bench/hit-ratio.sh` (α 0.8), which requests Belady hits and a policy misses, by chunk
//! index, the object's popularity rank, the time since the chunk's last access and whether
//! the request comes from a session that started after the chunk was last read (issue #18;
//! the findings are in BENCHMARKS.md). Run with
//! `cargo test --release -p cdn-bench --lib diag -- --ignored --nocapture`
//! (`CDN_DIAG=alpha,share,policy` to change the workload's α, the cache share, the policy).

use super::rate::RateKnobs;
use super::*;
use crate::sim::{SizeUnit, capacity_for};
use crate::synth::{Churn, VideoSpec, video};

fn index_bucket(k: u32) -> &'static str {
    match k {
        0 => "0",
        1..=3 => "1-3",
        4..=15 => "4-15",
        16..=63 => "16-63",
        64..=255 => "64-255",
        _ => "256+",
    }
}

fn rank_bucket(r: usize) -> &'static str {
    match r {
        0..10 => "1-10",
        10..30 => "11-30",
        30..100 => "31-100",
        100..300 => "101-300",
        300..1000 => "301-1000",
        _ => "1001+",
    }
}

fn age_bucket(a: u64) -> String {
    if a == u64::MAX {
        return "never".into();
    }
    let b = 64 - a.max(1).leading_zeros();
    format!("2^{:02}", b - 1)
}

/// Counts per category: [Belady hit & policy miss, both hit, Belady miss & policy hit].
#[derive(Default)]
struct Table(std::collections::BTreeMap<String, [u64; 3]>);

impl Table {
    fn add(&mut self, key: impl Into<String>, slot: usize) {
        self.0.entry(key.into()).or_default()[slot] += 1;
    }

    fn print(&self, title: &str, total_requests: u64) {
        let lost: u64 = self.0.values().map(|v| v[0]).sum();
        println!("\n{title}: Belady-only hits {lost}");
        println!(
            "  {:<12} {:>9} {:>7} {:>9} {:>9} {:>8}",
            "bucket", "B-only", "share", "both", "P-only", "B-only/r"
        );
        for (k, v) in &self.0 {
            println!(
                "  {:<12} {:>9} {:>6.1}% {:>9} {:>9} {:>7.2}%",
                k,
                v[0],
                100.0 * v[0] as f64 / lost.max(1) as f64,
                v[1],
                v[2],
                100.0 * v[0] as f64 / total_requests as f64
            );
        }
    }
}

/// `CDN_DIAG=alpha,share,...`: the workload's α (0.8), the cache's share of the working set
/// (0.1) and the rest of the fields, in order.
fn diag_args() -> (f64, f64, Vec<String>) {
    let spec = std::env::var("CDN_DIAG").unwrap_or_default();
    let mut parts = spec.split(',').map(str::to_string);
    let alpha = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.8);
    let share = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.1);
    (alpha, share, parts.collect())
}

/// The video workload of `bench/hit-ratio.sh` with this α and seed (42 there).
fn workload(alpha: f64, seed: u64) -> VideoSpec {
    VideoSpec {
        videos: 2000,
        requests: 2_000_000,
        alpha,
        chunk_bytes: 1 << 20,
        median_chunks: 150.0,
        abandon: 0.02,
        concurrent: 64,
        churn: Churn {
            every: 200,
            top: 10,
        },
        seed,
    }
}

#[test]
#[ignore = "diagnostic: run by hand (see the module's doc)"]
fn what_belady_keeps_that_the_policy_does_not() {
    let (alpha, share, rest) = diag_args();
    let policy_name = rest.first().map_or("grouped", String::as_str).to_string();
    let trace = video(&workload(alpha, 42)).expect("workload");
    let stats = trace.stats();
    let capacity = capacity_for(share, SizeUnit::Bytes, &stats);
    let kind = <PolicyKind as clap::ValueEnum>::from_str(&policy_name, true).expect("policy");
    let mut belady = Belady::new(capacity);
    let mut policy = kind.build(capacity, 42);

    // Popularity rank of each object: by its sessions (chunk-0 requests) in the whole trace.
    let mut starts: IdMap<u64> = IdMap::default();
    for r in &trace.requests {
        *starts.entry(r.group).or_default() += u64::from(r.index == 0);
    }
    let mut by_starts: Vec<(u64, u64)> = starts.iter().map(|(&g, &n)| (n, g)).collect();
    by_starts.sort_unstable_by(|a, b| b.cmp(a));
    let rank: IdMap<usize> = by_starts
        .iter()
        .enumerate()
        .map(|(i, &(_, g))| (g, i))
        .collect();

    // Sessions inferred from the trace: a request for chunk k continues the session of the
    // same object that last read k - 1, else starts one. Per object: (last index, start,
    // last read).
    let mut sessions: IdMap<Vec<(u32, u64, u64)>> = IdMap::default();
    // Per chunk: (time of last access, start of the session that made it).
    let mut last: IdMap<(u64, u64)> = IdMap::default();

    let (mut by_index, mut by_rank, mut by_age, mut by_later, mut by_cross) = (
        Table::default(),
        Table::default(),
        Table::default(),
        Table::default(),
        Table::default(),
    );
    let (mut b_hits, mut p_hits) = (0u64, 0u64);
    for (t, r) in trace.requests.iter().enumerate() {
        let t = t as u64;
        let g = Group {
            id: r.group,
            index: r.index,
        };
        let bh = belady.access(r.id, r.size, r.next_access());
        let ph = policy.access_in_group(r.id, r.size, r.next_access(), g);
        b_hits += u64::from(bh);
        p_hits += u64::from(ph);

        // A session reads a chunk about every 64 requests; one silent for 2,000 has ended.
        let list = sessions.entry(r.group).or_default();
        list.retain(|s| t - s.2 <= 2_000);
        let start = match list
            .iter_mut()
            .filter(|s| r.index > 0 && s.0 + 1 == r.index)
            .max_by_key(|s| s.2)
        {
            Some(s) => {
                s.0 = r.index;
                s.2 = t;
                s.1
            }
            None => {
                list.push((r.index, t, t));
                t
            }
        };
        let prev = last.insert(r.id, (t, start));
        let slot = match (bh, ph) {
            (true, false) => 0,
            (true, true) => 1,
            (false, true) => 2,
            (false, false) => continue,
        };
        let age = prev.map_or(u64::MAX, |p| t - p.0);
        let later = match prev {
            Some((_, by)) if by == start => "same session",
            Some((at, _)) if start > at => "later session",
            Some(_) => "earlier/concurrent session",
            None => "first access",
        };
        by_index.add(index_bucket(r.index), slot);
        by_rank.add(rank_bucket(rank[&r.group]), slot);
        by_age.add(age_bucket(age), slot);
        by_later.add(later, slot);
        by_cross.add(format!("{later:.5} {}", index_bucket(r.index)), slot);
    }
    let n = trace.requests.len() as u64;
    // The static optimum with perfect knowledge of rates: the chunks with the most
    // requests in the whole trace (by requests per byte), each missed once.
    {
        let mut count: IdMap<(u64, u64)> = IdMap::default();
        for r in &trace.requests {
            let e = count.entry(r.id).or_insert((0, r.size));
            e.0 += 1;
        }
        let mut v: Vec<(u64, u64)> = count.values().copied().collect();
        v.sort_unstable_by(|a, b| (b.0 * a.1).cmp(&(a.0 * b.1)));
        let (mut used, mut hit_bytes) = (0u64, 0u64);
        for (c, size) in v {
            if used + size > capacity {
                break;
            }
            used += size;
            hit_bytes += (c - 1) * size;
        }
        println!(
            "static top chunks by whole-trace count: byte miss ratio {:.4}",
            1.0 - hit_bytes as f64 / stats.requested_bytes as f64
        );
    }
    println!(
        "α {alpha}, cache {share} of the working set ({capacity} B), {n} requests: Belady hits {b_hits}, {} hits {p_hits}",
        policy.name()
    );
    by_index.print("by chunk index", n);
    by_rank.print("by object rank (sessions in the whole trace)", n);
    by_age.print("by requests since the chunk's last access", n);
    by_later.print("by who read the chunk last", n);
    by_cross.print("by who read it last x chunk index", n);
}

/// The expected-rate policy with λ(O) taken from the whole trace (O's session starts within
/// ± `window` requests): how far perfect knowledge of the rates, not of the requests, gets.
#[test]
#[ignore = "diagnostic: run by hand (see the module's doc)"]
fn expected_rate_with_oracle_rates() {
    let (alpha, share, _) = diag_args();
    let trace = video(&workload(alpha, 42)).expect("workload");
    let stats = trace.stats();
    let capacity = capacity_for(share, SizeUnit::Bytes, &stats);
    let mut starts: IdMap<Vec<u64>> = IdMap::default();
    for (t, r) in trace.requests.iter().enumerate() {
        if r.index == 0 {
            starts.entry(r.group).or_default().push(t as u64 + 1);
        }
    }
    let knobs = RateKnobs::from_env();
    let mut p = RateSampled::with_oracle(capacity, knobs, starts);
    let (mut bytes, mut miss) = (0u64, 0u64);
    for r in &trace.requests {
        let g = Group {
            id: r.group,
            index: r.index,
        };
        bytes += r.size;
        if !p.access_in_group(r.id, r.size, None, g) {
            miss += r.size;
        }
    }
    println!(
        "α {alpha}, cache {share}: rate-oracle {knobs:?}: byte miss ratio {:.4}",
        miss as f64 / bytes as f64
    );
}

/// The rate policy with the rates the generator drew from (its Zipf popularity, rank by rank
/// as it churns): what no estimate from past requests can beat (BENCHMARKS.md, "Beyond
/// S3-FIFO, fourth round"). `CDN_DIAG=alpha,share[,seed]`; `CDN_RATE` as for the policy.
#[test]
#[ignore = "diagnostic: run by hand (see the module's doc)"]
fn expected_rate_with_true_rates() {
    use super::rate::TrueRates;
    use crate::synth::video_with_churn;
    let (alpha, share, rest) = diag_args();
    let seed: u64 = rest.first().and_then(|s| s.parse().ok()).unwrap_or(42);
    let (trace, log) = video_with_churn(&workload(alpha, seed)).expect("workload");
    let stats = trace.stats();
    let capacity = capacity_for(share, SizeUnit::Bytes, &stats);
    let starts = trace.requests.iter().filter(|r| r.index == 0).count();
    let per_request = starts as f64 / trace.requests.len() as f64;
    let knobs = RateKnobs::from_env();
    let truth = TrueRates::new(2000, alpha, per_request, log.events.clone());
    let half = trace.requests.len() / 2;
    let run = |p: &mut RateSampled| {
        // Byte miss ratio over the whole trace and over its second half (warmed up).
        let (mut bytes, mut miss, mut bytes2, mut miss2) = (0u64, 0u64, 0u64, 0u64);
        for (t, r) in trace.requests.iter().enumerate() {
            let g = Group {
                id: r.group,
                index: r.index,
            };
            let hit = p.access_in_group(r.id, r.size, None, g);
            bytes += r.size;
            miss += if hit { 0 } else { r.size };
            if t >= half {
                bytes2 += r.size;
                miss2 += if hit { 0 } else { r.size };
            }
        }
        (miss as f64 / bytes as f64, miss2 as f64 / bytes2 as f64)
    };
    let (whole, second) = run(&mut RateSampled::with_true_rates(capacity, knobs, truth));
    let (online, online2) = run(&mut RateSampled::with_knobs(capacity, knobs));
    println!(
        "α {alpha}, cache {share}, seed {seed}, {} churn events, {per_request:.5} chunk-0 \
         requests per request, {knobs:?}: byte miss ratio \
         rate-true {whole:.4} (second half {second:.4}), rate-sampled {online:.4} (second half \
         {online2:.4})",
        log.events.len(),
    );
}
