#!/usr/bin/env bash
# Run every fuzz target for a short while (default 30 s each). Not part of CI:
# it needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# Usage: scripts/fuzz-smoke.sh [seconds-per-target]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
secs="${1:-30}"
for target in frame_decoder content_assembly field_table connection; do
    mkdir -p "corpus/$target"
    echo "== $target (${secs}s)"
    # -max_len: the frame targets need room for frames up to frame_max.
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$secs" -max_len=65536 -timeout=20 -rss_limit_mb=2048 -print_final_stats=1 2>&1 |
        grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|==|SUMMARY|Done)' || true
    if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
        echo "!! $target left artifacts in fuzz/artifacts/$target" >&2
        exit 1
    fi
done
