#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for a bounded time each:
#   fuzz/run.sh [SECONDS] [TARGET...]        default: 60 s, every target
# Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain RUSTC_BOOTSTRAP=1 lets
# it pass the sanitizer flags. Builds with debug assertions, so integer overflow is a crash.
# New inputs go to fuzz/corpus/TARGET (ignored by git); crashes to fuzz/artifacts/TARGET.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
export RUSTC_BOOTSTRAP=${RUSTC_BOOTSTRAP:-1}
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
cargo fuzz build -O -a || exit 1
# The HTTP dictionary helps the header targets reach boundary values (e.g. u64::MAX).
dict_for() {
    case "$1" in
        range|conditional|cache_headers|forwarded|peer_frames) echo "-dict=fuzz/dicts/http.dict" ;;
    esac
}
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t"
    echo "== $t: $secs s"
    cargo fuzz run -O -a "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        $(dict_for "$t") \
        || failed+=("$t")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/)"
    exit 1
fi
echo "all ${#targets[@]} targets ran ${secs} s without a crash"
