#!/usr/bin/env bash
# A 404 storm: wrk on a missing segment stored as a negative entry, through the edge with
# the express lane and without it (express = false), nginx's proxy_cache_valid-like TTL.
set -u
BIN=$1; OUT=$2; mkdir -p "$OUT"
"$BIN" --log warn origin --listen 127.0.0.1:18071 --root testdata/media > "$OUT/origin.log" 2>&1 &
OP=$!
sleep 1
for round in 1 2 3; do
for mode in on off; do
  printf 'negative_ttl_secs = 600\nexpress = %s\n' "$([ $mode = on ] && echo true || echo false)" > "$OUT/edge-$mode.toml"
  TOKIO_WORKER_THREADS=2 "$BIN" --log warn edge --listen 127.0.0.1:18072 --origin http://127.0.0.1:18071 --name storm --config "$OUT/edge-$mode.toml" > "$OUT/edge-$mode.log" 2>&1 &
  EP=$!
  for i in $(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:18072/healthz && break; sleep 0.1; done
  curl -s -o /dev/null -w "warm %{http_code}\n" http://127.0.0.1:18072/live/missing-seg.m4s
  t0=$(awk '{print $14+$15}' /proc/$EP/stat)
  r=$(wrk -t2 -c64 -d5s --latency http://127.0.0.1:18072/live/missing-seg.m4s)
  t1=$(awk '{print $14+$15}' /proc/$EP/stat)
  rps=$(echo "$r" | awk '/Requests\/sec/ {print $2}'); p99=$(echo "$r" | awk '/ 99%/ {print $2}')
  non=$(echo "$r" | awk '/Non-2xx/ {print $NF}')
  echo "$mode-$round req/s=$rps p99=$p99 non2xx=$non cpu_us_per_req=$(python3 -c "print(round(($t1-$t0)*10000/($rps*5),1))")" | tee -a "$OUT/summary.txt"
  kill $EP; wait $EP 2>/dev/null
done
done
kill $OP
