#!/usr/bin/env bash
# Paired runs: base and new edge binaries alternated, the bench driven by the new binary.
set -u
B=/work/wt-hot/bins
OUT=/work/wt-hot/bench/results/hot/2026-12-05/pairs
mkdir -p $OUT
for round in 1 2 3; do
  for which in base new; do
    uptime >> $OUT/load.txt
    $B/cdn-new --log warn bench compare --servers edge --scenarios hot-16k,hot-1m \
      --access-log off,on --repeats 1 --duration 5 --cdn-bin $B/cdn-$which \
      --out $OUT/$which-$round > $OUT/$which-$round.txt 2>&1
    echo "$which $round rc=$?" >> $OUT/done.txt
  done
done
