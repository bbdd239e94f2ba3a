#!/usr/bin/env bash
# The edge against nginx (proxy_cache + slice 1m + proxy_cache_lock) and Varnish (malloc),
# in front of the same origin, under the same load, in one run: `cdn bench compare`.
# Installs nginx, varnish and wrk with apt when missing, builds the release binary, runs the
# comparison (own load generator, plus wrk for the hot scenarios; every access log off, then
# each server's default access log on) and writes compare.csv and report.md under
# bench/results/compare/<date>/ (or OUT).
#
# Usage: bench/nginx-compare.sh [extra `cdn bench compare` flags, e.g. --duration 20]
# Environment: OUT (output dir), CDN (the binary; default: build target/release/cdn).
# The nginx/Varnish configs used are bench/nginx.conf.in and bench/varnish.vcl.in.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
missing=()
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v varnishd >/dev/null || [[ -x /usr/sbin/varnishd ]] || missing+=(varnish)
command -v wrk >/dev/null || missing+=(wrk)
if ((${#missing[@]})); then
  echo "installing ${missing[*]} with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
if [[ -z "${CDN:-}" ]]; then
  cargo build --release --bin cdn
  CDN="$root/target/release/cdn"
fi
out="${OUT:-$root/bench/results/compare/$(date -u +%Y-%m-%d)}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$CDN" --log warn bench compare --wrk --out "$out" "$@"
# The servers' run directories (configs, logs, wrk output) stay in $out; the bulky
# origin root and nginx cache are removed by the command.
