#!/usr/bin/env bash
# A fault campaign against quorum queues on a 3-node cluster (not in CI): for
# MINUTES (default 30), rounds of kill -9 of the leader or of a follower,
# SIGTERM, and link cuts (closed, or silently stalled) through a TCP proxy
# between two nodes or around one node, under confirming publishers on every
# node (each unconfirmed publish retried with the same message-id on another
# node) and acking consumers on every node. scripts/cluster_chaos.py drives it
# (its harness and checker are compat/cluster_*.py); at the end it heals
# everything, restarts every node, drains, and prints the checker's report:
# confirmed, lost, duplicates (retries, redeliveries), unexpected, failover
# times p50/max per fault kind, redeliveries without the redelivered flag
# classified (compat/cluster_history.py `unflagged_redeliveries`). Exits 1 if
# anything confirmed was lost or anything unexpected was consumed.
#
#   cargo build --bin hopper
#   scripts/cluster_chaos.sh                          # 30 minutes
#   MINUTES=5 scripts/cluster_chaos.sh --seed 42 --json chaos.json
#   scripts/cluster_chaos.sh --faults kill-leader=1,isolate=1 --rate 200
#   scripts/cluster_chaos.sh --history h.jsonl --rust-log info,hopper::cluster=debug
#   ~/.cache/hopper-venv/bin/python compat/cluster_history.py h.jsonl   # report again
#
# Environment:
#   HOPPER_BIN   the broker (default: $CARGO_TARGET_DIR or target/, debug/hopper)
#   MINUTES      how long (default 30)
#   PYTHON       a Python with pika and aiormq (default: ~/.cache/hopper-venv/bin/python
#                if present, else python3; pip install -r compat/requirements.txt)
# Further arguments go to scripts/cluster_chaos.py (--help lists them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HOPPER_BIN="${HOPPER_BIN:-$TARGET/debug/hopper}"
MINUTES="${MINUTES:-30}"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$HOME/.cache/hopper-venv/bin/python" ]]; then
        PYTHON="$HOME/.cache/hopper-venv/bin/python"
    else
        PYTHON=python3
    fi
fi

if [[ ! -x "$HOPPER_BIN" ]]; then
    echo "no broker at $HOPPER_BIN: run 'cargo build --bin hopper' (or set HOPPER_BIN)" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import pika, aiormq' 2>/dev/null; then
    echo "$PYTHON has no pika/aiormq: pip install -r $ROOT/compat/requirements.txt (or set PYTHON)" >&2
    exit 2
fi
exec "$PYTHON" "$ROOT/scripts/cluster_chaos.py" --binary "$HOPPER_BIN" --minutes "$MINUTES" "$@"
