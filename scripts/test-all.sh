#!/usr/bin/env bash
# Runs every check of the project, the same way locally and in CI:
#   1. system packages needed to build (clang/libclang for RocksDB's bindgen, g++, python venv)
#      and to test (openssl, for the TLS compat tests' certificates; prometheus, for promtool
#      and the Prometheus server that tests/prometheus.rs runs against the broker)
#   2. the layering check (scripts/check-layers.sh: modules depend only downwards), then
#      cargo fmt --check, cargo clippy -D warnings and cargo test over the workspace (the
#      broker and perf/), all in the dev profile, so RocksDB is compiled once, into
#      $CARGO_TARGET_DIR
#   3. cargo build --all-targets (no-op after cargo test), then the compatibility suite (compat/:
#      pika, aio-pika, a Celery worker, and Node's amqplib from compat/node) against that binary,
#      in a venv at $HOPPER_VENV (default ~/.cache/hopper-venv); compat/node's packages by `npm ci`.
# Every step runs even if an earlier one failed (except the compat suite, which needs
# the binary); the script ends with a summary and exits non-zero if anything failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hopper-target}"
VENV="${HOPPER_VENV:-$HOME/.cache/hopper-venv}"
PYTHON="${PYTHON:-python3}"
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/hopper-test-all.XXXXXX")"
trap 'rm -rf "$LOG_DIR"' EXIT

declare -a STEP_NAMES=()
declare -a STEP_RESULTS=()
FAILED=0

banner() { printf '\n==== %s ====\n' "$*"; }

record() { # name result
    STEP_NAMES+=("$1")
    STEP_RESULTS+=("$2")
    if [[ "$2" == FAILED* ]]; then FAILED=1; fi
}

# run_step NAME LOGFILE CMD...: runs CMD, output to the terminal and to LOGFILE.
run_step() {
    local name="$1" log="$2"
    shift 2
    banner "$name: $*"
    local start=$SECONDS
    if "$@" 2>&1 | tee "$log"; then
        record "$name" "ok ($((SECONDS - start))s)"
        return 0
    else
        record "$name" "FAILED ($((SECONDS - start))s)"
        return 1
    fi
}

# ---------------------------------------------------------------- 1. system packages
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "need root (or sudo) to run: $*" >&2
        return 1
    fi
}

install_system_packages() {
    local missing=()
    local pkg
    for pkg in clang libclang-dev; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    # compat/test_tls.py makes its test certificates with the openssl command
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    # compat/node (amqplib tests): node >= 18 and npm (Debian's nodejs, npm)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    # compat/test_ui.py: the web UI in headless Chromium (driven by PyPI
    # playwright with executable_path, so no `playwright install` download);
    # about 30 s to install on the dev VM
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v "$PYTHON" >/dev/null 2>&1 || missing+=(python3)
    # tests/prometheus.rs: `promtool check metrics` and a Prometheus server scraping
    # the broker (Debian's prometheus: ~15 s to install with --no-install-recommends)
    command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
    if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "system packages already present"
        return 0
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # (functions run by run_step are in a condition context, where set -e is off:
    # every command that matters is checked explicitly)
    as_root apt-get update -q || return 1
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}" || return 1
}

run_step "system packages" "$LOG_DIR/apt.log" install_system_packages || true

# ---------------------------------------------------------------- 2. Rust checks
run_step "layers" "$LOG_DIR/layers.log" bash scripts/check-layers.sh || true
run_step "cargo fmt" "$LOG_DIR/fmt.log" cargo fmt --all -- --check || true
run_step "cargo clippy" "$LOG_DIR/clippy.log" cargo clippy --workspace --all-targets -- -D warnings || true
# --workspace builds the hopper binary that perf's smoke test (perf/tests/) drives.
# HOPPER_REQUIRE_PROMTOOL: tests/prometheus.rs fails (instead of skipping) without promtool.
run_step "cargo test" "$LOG_DIR/cargo-test.log" env HOPPER_REQUIRE_PROMTOOL=1 cargo test --workspace || true

# ---------------------------------------------------------------- 3. Python compat suite
setup_venv() {
    if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
        rm -rf "$VENV"
        "$PYTHON" -m venv "$VENV" || return 1
    fi
    local want have
    want="$(sha256sum compat/requirements.txt | cut -d' ' -f1)"
    have="$(cat "$VENV/.hopper-requirements.sha256" 2>/dev/null || true)"
    if [[ "$want" != "$have" ]]; then
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r compat/requirements.txt || return 1
        echo "$want" >"$VENV/.hopper-requirements.sha256" || return 1
    else
        echo "venv $VENV is up to date"
    fi
}

# compat/node: the locked amqplib (package-lock.json) into compat/node/node_modules
# (not committed); npm keeps its download cache in ~/.npm, outside the clone.
setup_node() {
    (cd compat/node && npm ci --no-audit --no-fund --prefer-offline --loglevel=error) || return 1
}

run_compat() {
    # always test the binary we just built, never an external broker
    env -u HOPPER_TEST_EXTERNAL HOPPER_BIN="$CARGO_TARGET_DIR/debug/hopper" HOPPER_REQUIRE_NODE=1 HOPPER_REQUIRE_BROWSER=1 \
        "$VENV/bin/python" -m pytest compat -p no:cacheprovider
}

if run_step "cargo build" "$LOG_DIR/build.log" cargo build --workspace --all-targets; then
    if run_step "python venv" "$LOG_DIR/venv.log" setup_venv; then
        # (without node packages, compat/test_node_amqplib.py fails loudly below
        # instead of skipping: HOPPER_REQUIRE_NODE)
        run_step "node packages" "$LOG_DIR/npm.log" setup_node || true
        run_step "compat (pytest)" "$LOG_DIR/compat.log" run_compat || true
    else
        record "compat (pytest)" "FAILED (not run: no venv)"
    fi
else
    record "compat (pytest)" "FAILED (not run: no binary)"
fi

# ---------------------------------------------------------------- summary
# Totals from cargo's "test result:" lines and pytest's closing line.
# (awk, not grep: a grep that matches nothing would end the script under pipefail)
sum_counts() { # WORD-REGEX: sums "N WORD" occurrences on stdin
    awk -v w="$1" '{
        line = $0
        while (match(line, "[0-9]+ " w)) {
            split(substr(line, RSTART, RLENGTH), parts, " ")
            total += parts[1]
            line = substr(line, RSTART + RLENGTH)
        }
    } END { print total + 0 }'
}
cargo_results() { awk '/^test result:/' "$LOG_DIR/cargo-test.log" 2>/dev/null || true; }
pytest_closing() {
    awk '/(passed|failed|errors?|skipped|no tests ran).* in [0-9.]+s/ { last = $0 } END { print last }' \
        "$LOG_DIR/compat.log" 2>/dev/null || true
}
cargo_passed=$(cargo_results | sum_counts 'passed')
cargo_failed=$(cargo_results | sum_counts 'failed')
cargo_ignored=$(cargo_results | sum_counts 'ignored')
py_passed=$(pytest_closing | sum_counts 'passed')
py_failed=$(pytest_closing | sum_counts '(failed|errors?)')
py_skipped=$(pytest_closing | sum_counts '(skipped|xfailed)')

banner "summary"
for i in "${!STEP_NAMES[@]}"; do
    printf '  %-18s %s\n' "${STEP_NAMES[$i]}" "${STEP_RESULTS[$i]}"
done
printf '  %-18s %s passed, %s failed, %s ignored\n' "cargo tests" "$cargo_passed" "$cargo_failed" "$cargo_ignored"
printf '  %-18s %s passed, %s failed, %s skipped or xfailed\n' "compat tests" "$py_passed" "$py_failed" "$py_skipped"
echo
if [[ $FAILED -ne 0 ]]; then
    echo "RESULT: FAILED"
else
    echo "RESULT: all checks passed"
fi
echo "total: $((cargo_passed + py_passed)) passed, $((cargo_failed + py_failed)) failed, $((cargo_ignored + py_skipped)) skipped"
exit "$FAILED"
