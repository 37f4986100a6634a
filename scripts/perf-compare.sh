#!/usr/bin/env bash
# Runs the five performance scenarios of the `perf` tool against hopper (a
# fresh release broker per scenario, on a free port with a temporary data
# dir) and, if one is listening, against a local RabbitMQ; prints a markdown
# table (scenario, hopper, RabbitMQ, ratio) and the exact commands.
#
#   cargo build --release --bin hopper --bin perf
#   scripts/perf-compare.sh                       # ~15 s per timed scenario
#   DURATION=5 BACKLOG=100000 scripts/perf-compare.sh
#
# Environment:
#   HOPPER_BIN, PERF_BIN   binaries (default: $CARGO_TARGET_DIR or target/, release/)
#   RABBITMQ_URI           default amqp://guest:guest@127.0.0.1:5672/%2f; RABBITMQ=0 skips it
#   DURATION               seconds per timed scenario (default 15)
#   BACKLOG                messages in the backlog scenario (default 1000000)
#   CONNECTIONS, IDLE      idle-connection scenario (default 1000 connections held 10 s)
#   OUT                    directory for the JSON reports (default: a new temp dir)
# RabbitMQ's memory is the RSS of its beam.smp process. RabbitMQ keeps the
# descriptor limit it was started with (Debian's default 1024 admits ~860
# clients): for the 1,000-connection scenario start it after `ulimit -n 65536`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
HOPPER_BIN="${HOPPER_BIN:-$TARGET/release/hopper}"
PERF_BIN="${PERF_BIN:-$TARGET/release/perf}"
RABBITMQ_URI="${RABBITMQ_URI:-amqp://guest:guest@127.0.0.1:5672/%2f}"
DURATION="${DURATION:-15}"
BACKLOG="${BACKLOG:-1000000}"
CONNECTIONS="${CONNECTIONS:-1000}"
IDLE="${IDLE:-10}"
OUT="${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/perf-compare.XXXXXX")}"
mkdir -p "$OUT"

for bin in "$HOPPER_BIN" "$PERF_BIN"; do
    if [[ ! -x "$bin" ]]; then
        echo "missing $bin: run 'cargo build --release --bin hopper --bin perf' (or set HOPPER_BIN / PERF_BIN)" >&2
        exit 1
    fi
done
# 1,000 connections need more descriptors than the usual 1024 (broker and tool inherit this).
ulimit -n "$(( CONNECTIONS * 2 + 1024 ))" 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

HOPPER_PID=""
HOPPER_DATA=""
stop_hopper() {
    if [[ -n "$HOPPER_PID" ]]; then
        kill "$HOPPER_PID" 2>/dev/null || true
        wait "$HOPPER_PID" 2>/dev/null || true
        HOPPER_PID=""
    fi
    if [[ -n "$HOPPER_DATA" ]]; then
        rm -rf "$HOPPER_DATA"
        HOPPER_DATA=""
    fi
}
trap stop_hopper EXIT

# Start a fresh hopper; sets HOPPER_URI and HOPPER_PID.
start_hopper() {
    stop_hopper
    HOPPER_DATA="$(mktemp -d "${TMPDIR:-/tmp}/perf-hopper.XXXXXX")"
    local fifo="$HOPPER_DATA/stdout"
    mkfifo "$fifo"
    "$HOPPER_BIN" --listen 127.0.0.1:0 --management-listen off --metrics-listen off --data-dir "$HOPPER_DATA/data" >"$fifo" 2>"$OUT/hopper-$1.log" &
    HOPPER_PID=$!
    local line=""
    exec 3<"$fifo"
    if ! read -r -t 30 line <&3 || [[ "$line" != "hopper listening on "* ]]; then
        echo "hopper did not start (got: '$line'); see $OUT/hopper-$1.log" >&2
        exit 1
    fi
    # Keep draining its stdout so it never blocks on a full pipe.
    cat <&3 >/dev/null &
    exec 3<&-
    HOPPER_URI="amqp://guest:guest@${line#hopper listening on }/%2f"
}

rabbitmq_up() {
    [[ "${RABBITMQ:-1}" != "0" ]] || return 1
    local hostport="${RABBITMQ_URI#*://}"
    hostport="${hostport#*@}"
    hostport="${hostport%%/*}"
    (exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}") 2>/dev/null
}
RABBIT=0
if rabbitmq_up; then
    RABBIT=1
    RABBIT_PID="$(pgrep -o -f beam.smp || true)"
fi

rabbit_fd_limit() {
    awk '/Max open files/ {print $4}' "/proc/${RABBIT_PID:-0}/limits" 2>/dev/null || true
}
rabbit_fds_enough() {
    local limit
    limit="$(rabbit_fd_limit)"
    [[ "$limit" == unlimited ]] || [[ -n "$limit" && "$limit" -ge $(( CONNECTIONS + 512 )) ]]
}

declare -a SCENARIOS=(
    "1 transient 1p1c autoack|--producers 1 --consumers 1 --size 1024 --autoack --duration $DURATION"
    "2a persistent confirms 1p|--persistent --confirm 100 --prefetch 100 --producers 1 --consumers 1 --size 1024 --duration $DURATION"
    "2b persistent confirms 4p|--persistent --confirm 100 --prefetch 100 --producers 4 --consumers 4 --size 1024 --duration $DURATION"
    "3 backlog $BACKLOG persistent|--persistent --confirm 100 --prefetch 100 --producers 1 --consumers 1 --size 1024 --backlog $BACKLOG --rss-pid PID"
    "4 fanout 10 queues|--producers 1 --exchange-type fanout --queues 10 --consumers 10 --size 1024 --autoack --duration $DURATION"
    "5 idle connections|--connections $CONNECTIONS --idle $IDLE --rss-pid PID"
)

declare -a COMMANDS=()
run_one() { # broker-name uri pid args -> json file
    local name="$1" uri="$2" pid="$3" args="$4" file="$5"
    args="${args//--rss-pid PID/--rss-pid $pid}"
    local cmd="$PERF_BIN --uri '$uri' $args --queue perf-compare --json --quiet"
    COMMANDS+=("[$name] $cmd")
    echo "== $name: $cmd" >&2
    # shellcheck disable=SC2086
    if ! "$PERF_BIN" --uri "$uri" $args --queue perf-compare --json --quiet >"$file" 2>"$file.err"; then
        echo "   failed: $(tail -1 "$file.err")" >&2
        echo '{}' >"$file"
    fi
}

i=0
for s in "${SCENARIOS[@]}"; do
    label="${s%%|*}"
    args="${s#*|}"
    start_hopper "$i"
    run_one hopper "$HOPPER_URI" "$HOPPER_PID" "$args" "$OUT/$i-hopper.json"
    stop_hopper
    if [[ "$RABBIT" == 1 && "$args" == --connections* ]] && ! rabbit_fds_enough; then
        # Out of descriptors, RabbitMQ 3.10 can lose its Mnesia database
        # and stop serving everyone: do not push it there.
        echo '{}' >"$OUT/$i-rabbitmq.json"
        echo "skipped: RabbitMQ's open-file limit ($(rabbit_fd_limit)) is too low for $CONNECTIONS connections; restart it after 'ulimit -n 65536'" >"$OUT/$i-rabbitmq.json.err"
        echo "   $(cat "$OUT/$i-rabbitmq.json.err")" >&2
    elif [[ "$RABBIT" == 1 ]]; then
        run_one rabbitmq "$RABBITMQ_URI" "${RABBIT_PID:-0}" "$args" "$OUT/$i-rabbitmq.json"
    else
        echo '{}' >"$OUT/$i-rabbitmq.json"
    fi
    echo "$label" >"$OUT/$i.label"
    i=$((i + 1))
done

python3 - "$OUT" "$i" <<'PY'
import json, sys, os
out, n = sys.argv[1], int(sys.argv[2])

def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception:
        return {}

def get(r, *path):
    for p in path:
        if not isinstance(r, dict) or r.get(p) is None:
            return None
        r = r[p]
    return r

def phase_peak(r, name):
    for p in get(r, "rss", "phases") or []:
        if p.get("phase") == name:
            return p["peak_kb"] / 1024
    return None

# (label, function of report, unit, higher is better)
metrics = {
    0: [("consumed msg/s", lambda r: get(r, "consume_rate"), "{:,.0f}", True),
        ("end-to-end p99 ms", lambda r: ms(get(r, "latency", "end_to_end", "p99_us")), "{:.2f}", False)],
    1: [("confirmed msg/s", lambda r: get(r, "confirm_rate"), "{:,.0f}", True),
        ("publish-to-confirm p99 ms", lambda r: ms(get(r, "latency", "confirm", "p99_us")), "{:.2f}", False),
        ("consumed msg/s", lambda r: get(r, "consume_rate"), "{:,.0f}", True)],
    3: [("publish (confirmed) msg/s", lambda r: get(r, "backlog", "publish_rate"), "{:,.0f}", True),
        ("drain msg/s", lambda r: get(r, "backlog", "drain_rate"), "{:,.0f}", True),
        ("RSS peak publishing MiB", lambda r: phase_peak(r, "publish"), "{:.1f}", False),
        ("RSS peak draining MiB", lambda r: phase_peak(r, "drain"), "{:.1f}", False)],
    4: [("delivered msg/s", lambda r: get(r, "consume_rate"), "{:,.0f}", True),
        ("end-to-end p99 ms", lambda r: ms(get(r, "latency", "end_to_end", "p99_us")), "{:.2f}", False)],
    5: [("RSS before MiB", lambda r: kb(get(r, "idle", "rss_before_kb")), "{:.1f}", False),
        ("RSS after MiB", lambda r: kb(get(r, "idle", "rss_after_kb")), "{:.1f}", False),
        ("KiB per connection", lambda r: get(r, "idle", "per_connection_kb"), "{:.1f}", False)],
}
metrics[2] = metrics[1]

def ms(us):
    return None if us is None else us / 1000

def kb(v):
    return None if v is None else v / 1024

print("| scenario | metric | hopper | RabbitMQ | hopper / RabbitMQ |")
print("|---|---|---:|---:|---:|")
for i in range(n):
    label = open(os.path.join(out, f"{i}.label")).read().strip()
    h = load(os.path.join(out, f"{i}-hopper.json"))
    r = load(os.path.join(out, f"{i}-rabbitmq.json"))
    for name, f, fmt, _ in metrics[i]:
        hv, rv = f(h), f(r)
        hs = fmt.format(hv) if hv is not None else "n/a"
        rs = fmt.format(rv) if rv is not None else "n/a"
        ratio = f"{hv / rv:.2f}" if hv is not None and rv else "n/a"
        print(f"| {label} | {name} | {hs} | {rs} | {ratio} |")
for i in range(n):
    label = open(os.path.join(out, f"{i}.label")).read().strip()
    for broker in ("hopper", "rabbitmq"):
        err = os.path.join(out, f"{i}-{broker}.json.err")
        if not load(os.path.join(out, f"{i}-{broker}.json")) and os.path.exists(err):
            lines = [l for l in open(err).read().splitlines() if l.strip()]
            if lines:
                print(f"\n{broker} failed in '{label}': {lines[-1]}")
PY
echo
echo "Commands (JSON reports in $OUT):"
for c in "${COMMANDS[@]}"; do
    echo "    $c"
done
