#!/usr/bin/env bash
# New TLS connections per second against one release edge, with the kernel's view: starts
# `cdn origin` and `cdn edge --tls-listen` (2 workers, a fresh ECDSA P-256 certificate, no
# HTTP/3) on 127.0.0.1, then three times: `nstat -n`, h2load with N connections at once
# (--h1, one request each: a full handshake every time), `nstat` (accept-queue overflows,
# SYN cookies, TCP timeouts). PERF=1 records the edge's third run with `perf record -g`
# (RUN_DIR/perf.data). Used for BENCHMARKS.md, "New TLS connections: profile and fix".
#
#   bench/tls-handshakes.sh [BIN] [N]     (default target/release/cdn, 2000)
set -euo pipefail
BIN=${1:-target/release/cdn}
N=${2:-2000}
D=${RUN_DIR:-bench-out/tls-handshakes}
rm -rf "$D"; mkdir -p "$D/root" "$D/pki"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout "$D/pki/key.pem" -out "$D/pki/cert.pem" -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1" 2>/dev/null
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
O=$(port); H=$(port); T=$(port)
"$BIN" --log warn origin --listen "127.0.0.1:$O" --root "$D/root" > "$D/origin.log" 2>&1 &
OP=$!
TOKIO_WORKER_THREADS=2 "$BIN" --log warn edge --listen "127.0.0.1:$H" --tls-listen "127.0.0.1:$T" \
    --tls-cert "$D/pki/cert.pem" --tls-key "$D/pki/key.pem" --no-http3 \
    --origin "http://127.0.0.1:$O" --name hs --capacity 256MiB > "$D/edge.log" 2>&1 &
EP=$!
trap 'kill $EP $OP 2>/dev/null || true' EXIT
URL="https://127.0.0.1:$T/synthetic/tlshs?size=1"
for _ in $(seq 50); do h2load --h1 -n 2 "$URL" > /dev/null 2>&1 && break; sleep 0.1; done
for i in 1 2 3; do
    nstat -n > /dev/null
    if [ "${PERF:-0}" = 1 ] && [ "$i" = 3 ]; then
        perf record -F 999 -g -p "$EP" -o "$D/perf.data" -- sleep 6 > /dev/null 2>&1 &
        PP=$!; sleep 0.5
    fi
    h2load --h1 -n "$N" -c "$N" -t 2 "$URL" | grep -E "finished in|requests:"
    echo "$(nstat | grep -E "ListenOverflows|ListenDrops|SyncookiesSent|TCPTimeouts" | tr -s ' ' | tr '\n' ';' || true)"
    if [ "${PERF:-0}" = 1 ] && [ "$i" = 3 ]; then wait "$PP"; fi
done
