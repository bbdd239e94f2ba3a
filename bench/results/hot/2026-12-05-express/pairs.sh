#!/usr/bin/env bash
# Paired runs on a quiet machine: edge variants alternated, the bench driven by DRIVER.
# usage: pairs.sh OUT DRIVER SCENARIOS ROUNDS NAME=BIN[@EDGE_CONFIG]...
# (a variant is a binary, optionally with an edge config file, e.g. one saying express = false)
set -u
OUT=$1; DRIVER=$2; SCEN=$3; ROUNDS=$4; shift 4
mkdir -p "$OUT"
for round in $(seq 1 "$ROUNDS"); do
  for pair in "$@"; do
    which=${pair%%=*}; spec=${pair#*=}
    bin=${spec%%@*}; cfg=()
    [[ $spec == *@* ]] && cfg=(--edge-config "${spec#*@}")
    cat /proc/loadavg >> "$OUT/load.txt"
    "$DRIVER" --log warn bench compare --servers edge --scenarios "$SCEN" \
      --access-log off,on --repeats 1 --duration 5 --cdn-bin "$bin" "${cfg[@]}" \
      --out "$OUT/$which-$round" > "$OUT/$which-$round.txt" 2>&1
    echo "$which $round rc=$?" >> "$OUT/done.txt"
  done
done
# One row per run: name-round scenario logs req/s p99 cpu/req
for f in "$OUT"/*-[0-9]*/compare.csv; do
  d=$(basename "$(dirname "$f")")
  python3 - "$f" "$d" <<'PY'
import csv,sys
rows=list(csv.DictReader(open(sys.argv[1])))
for r in rows:
    if r.get('tool','cdn')!='cdn': continue
    print(sys.argv[2], r['scenario'], r['logs'], r['req_per_s'] if 'req_per_s' in r else r.get('rps'), r.get('p99_ms'), r.get('server_cpu_us_per_req'))
PY
done | sort -k2,3 > "$OUT/summary.txt"
cat "$OUT/summary.txt"
