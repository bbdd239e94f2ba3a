#!/usr/bin/env bash
# Runs the whole hit-ratio benchmark set (calibration against libCacheSim on the Twitter
# trace, synthetic Zipf calibration, video-like decision workloads) and writes each run's
# hit_ratio.csv, report.txt and SVG charts under bench/results/hit-ratio/<run>/.
#
# Usage: bench/hit-ratio.sh [TRACE]
#   TRACE defaults to ../shared/data/traces/twitter_cluster52.csv.zst (relative to the repo
#   root); runs that need it are skipped when it is missing. The trace is read in place,
#   never copied into the repository.
# Environment: JOBS (parallel replays, default 1 for clean ops/s), OUT (output root),
#   CDN (the binary; default: build target/release/cdn).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
trace="${1:-${TRACE:-$root/../shared/data/traces/twitter_cluster52.csv.zst}}"
jobs="${JOBS:-1}"
out="${OUT:-$root/bench/results/hit-ratio}"
if [[ -z "${CDN:-}" ]]; then
  cargo build --release --bin cdn
  CDN="$root/target/release/cdn"
fi

run() { # run NAME ARGS...
  local name="$1"
  shift
  echo "=== $name: cdn bench hit-ratio $* --jobs $jobs --out $out/$name"
  "$CDN" bench hit-ratio "$@" --jobs "$jobs" --out "$out/$name"
}

start=$SECONDS
mkdir -p "$out"

if [[ -f "$trace" ]]; then
  # Calibration against REFERENCE.md section 3 (libCacheSim 0.3.5).
  run twitter-unit --trace "$trace" --unit objects --sizes 0.01,0.1
  run twitter-bytes --trace "$trace" --unit bytes --sizes 0.01,0.1
  # Miss-ratio curve for the chart.
  run twitter-bytes-curve --trace "$trace" --unit bytes \
    --sizes 0.001,0.003,0.01,0.03,0.1,0.2,0.4
else
  echo "trace $trace not found: skipping the Twitter runs" >&2
fi

# Synthetic Zipf calibration: 200,000 objects, 2,000,000 requests, cache = 10% of the
# catalogue (20,000 objects), unit sizes.
for a in 0.8 1.0; do
  run "zipf-a$a-unit" --workload zipf --alpha "$a" --objects 200000 --requests 2000000 \
    --unit objects --capacities 20000
done

# Decision workloads: video sessions (1 MiB chunks, abandonment, churn) and Zipf objects
# with a video size mix (chunks, partial chunks, small objects) and churn. Every policy runs,
# including the edge's own store (edge-tinylfu, edge-lru, edge-s3fifo, edge-grouped,
# edge-s3fifo-rate) and its S3-FIFOs weighted by size alone (edge-s3fifo-raw,
# edge-grouped-raw, edge-s3fifo-rate-raw), and the harness's expected-rate policies (rate,
# s3fifo-rate); the video workloads carry each chunk's object, which only the grouped and
# rate policies use.
for a in 0.6 0.8 1.0; do
  run "video-a$a" --workload video --alpha "$a" --videos 2000 --requests 2000000 \
    --chunk-bytes 1048576 --median-chunks 150 --abandon 0.02 --sessions 64 \
    --churn-every 200 --churn-top 10 --unit bytes --sizes 0.003,0.01,0.03,0.1,0.3
done
for a in 0.6 1.0; do
  run "zipf-mix-a$a" --workload zipf --alpha "$a" --objects 200000 --requests 2000000 \
    --object-size video-mix --size-bytes 1048576 --churn-every 2000 --churn-top 10 \
    --unit bytes --sizes 0.01,0.1
done
# Seed sensitivity of the decision.
for seed in 1 2; do
  run "video-a0.8-seed$seed" --workload video --alpha 0.8 --seed "$seed" \
    --churn-every 200 --unit bytes --sizes 0.01,0.1 \
    --policies s3fifo,moka-tinylfu,moka-lru,edge-tinylfu,edge-lru,edge-s3fifo,edge-s3fifo-raw,grouped,edge-grouped,edge-grouped-raw,rate,s3fifo-rate,edge-s3fifo-rate,edge-s3fifo-rate-raw
done

echo
echo "=== decision summary (byte-sized caches)"
for f in "$out"/*/report.txt; do
  grep -q "^unit: Bytes" "$f" || continue
  name="$(basename "$(dirname "$f")")"
  grep -E "^cache = |edge-usable" "$f" | paste - - |
    sed -E "s/^cache = ([0-9.]+%) of the working set[^\t]*\t *edge-usable \(byte miss ratio\): /$name \1: /"
done
echo "total $((SECONDS - start)) s"
