#!/usr/bin/env bash
# Run every fuzz target for a short while (default 30 s each) and fail if one
# finds a crash, leak or hang. Not part of CI: it needs a nightly toolchain and
# cargo-fuzz (`cargo install cargo-fuzz`). See fuzz/README.md.
# Usage: scripts/fuzz-smoke.sh [seconds-per-target]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
secs="${1:-30}"
# A tokio worker's stack, so that a stack overflow shows up as in the broker.
ulimit -s 2048
failed=0
for spec in frame_decoder:131072 content_assembly:8192 field_table:131072 connection:16384; do
    target="${spec%%:*}"
    max_len="${spec##*:}"
    mkdir -p "corpus/$target"
    echo "== $target (${secs}s)"
    if ! cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$secs" -max_len="$max_len" -len_control=0 -timeout=20 \
        -rss_limit_mb=2048 -print_final_stats=1 >"/tmp/fuzz-smoke-$target.log" 2>&1; then
        echo "!! $target failed: see /tmp/fuzz-smoke-$target.log and fuzz/artifacts/$target" >&2
        failed=1
    fi
    grep -E '^stat::number_of_executed_units' "/tmp/fuzz-smoke-$target.log" || true
done
exit "$failed"
