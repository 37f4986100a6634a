#!/usr/bin/env bash
# A crash campaign (not in CI): ROUNDS rounds (default 100) of kill -9 at a
# random moment, now and then SIGTERM instead, under confirming publishers
# that retry unconfirmed messages with the same message-id (one pair through
# a deduplicating durable exchange, one through a plain one) and consumers
# that ack after processing. scripts/chaos.py drives it and checks the
# result: nothing confirmed lost, no duplicate from a retry on the dedup
# path; it prints the figures (confirmed, lost, duplicates by cause, restart
# times p50/max, recovered queue depths) and exits 1 on a failure.
#
#   cargo build --bin hopper
#   scripts/chaos.sh                  # 100 rounds, ~10 minutes
#   ROUNDS=10 scripts/chaos.sh --seed 42 --json chaos.json
#
# Environment:
#   HOPPER_BIN   the broker (default: $CARGO_TARGET_DIR or target/, debug/hopper)
#   ROUNDS       rounds (default 100)
#   PYTHON       a Python with pika (default: python3; pip install -r compat/requirements.txt)
# Further arguments go to scripts/chaos.py (--help lists them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HOPPER_BIN="${HOPPER_BIN:-$TARGET/debug/hopper}"
ROUNDS="${ROUNDS:-100}"
PYTHON="${PYTHON:-python3}"

if [[ ! -x "$HOPPER_BIN" ]]; then
    echo "no broker at $HOPPER_BIN: run 'cargo build --bin hopper' (or set HOPPER_BIN)" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import pika' 2>/dev/null; then
    echo "$PYTHON has no pika: pip install -r $ROOT/compat/requirements.txt (or set PYTHON)" >&2
    exit 2
fi
exec "$PYTHON" "$ROOT/scripts/chaos.py" --binary "$HOPPER_BIN" --rounds "$ROUNDS" "$@"
