#!/usr/bin/env python3
"""A crash campaign against hopper, and its checker (see scripts/chaos.sh).

Rounds of: start the broker on one data directory, let confirming publishers
and acking consumers work for a random while, then kill -9 it (now and then
SIGTERM instead). Publishers retry every unconfirmed message with the same
`message-id` (and a higher `attempt` header) once the broker is back; one
pair of publishers goes through a deduplicating durable direct exchange, one
through a plain one. After the last round the broker is started once more,
publishers finish, consumers drain both queues, and the checker reports:

- confirmed: messages whose publish was confirmed (each counted once);
- lost: confirmed but never consumed (must be 0);
- duplicates from redelivery: the same stored copy consumed again (an ack
  lost in a crash: allowed, flagged `redelivered`);
- duplicates from retries: two stored copies of one message id (a retry of a
  publish whose confirm was lost in the crash): expected on the plain path,
  must be 0 on the dedup path;
- restart times (spawn to listening, p50 / max) and the queue depths found
  after each restart.

Exits 1 when something was lost or the dedup path duplicated a retry.
"""

import argparse
import collections
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import pika

DEDUP_X, PLAIN_X = "chaos.dedup", "chaos.plain"
QUEUES = {DEDUP_X: "chaos.q.dedup", PLAIN_X: "chaos.q.plain"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def params(port):
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        heartbeat=0,
        connection_attempts=1,
        socket_timeout=3,
        blocked_connection_timeout=30,
    )


class State:
    """What the clients saw, shared by their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.confirmed = {}  # message id -> exchange
        self.published = set()  # every id ever sent
        self.retries = 0
        self.nacks = 0
        # message id -> list of (attempt, redelivered)
        self.consumed = collections.defaultdict(list)
        self.last_delivery = time.monotonic()


class Broker:
    def __init__(self, binary, data_dir, port, log):
        self.binary, self.data_dir, self.port, self.log = binary, data_dir, port, log
        self.proc = None

    def start(self):
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [self.binary, "--listen", f"127.0.0.1:{self.port}", "--data-dir", self.data_dir],
            stdout=subprocess.PIPE,
            stderr=self.log,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"broker exited at start (status {self.proc.wait()}); see the log")
            if line.startswith("hopper listening on"):
                break
        # Keep draining stdout so the broker never blocks on it.
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return time.monotonic() - t0

    def stop(self, sig):
        self.proc.send_signal(sig)
        try:
            status = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            status = self.proc.wait()
        self.proc = None
        return status


def declare(port):
    conn = pika.BlockingConnection(params(port))
    ch = conn.channel()
    ch.exchange_declare(
        DEDUP_X,
        "direct",
        durable=True,
        arguments={"x-message-deduplication": True, "x-cache-size": 10_000_000},
    )
    ch.exchange_declare(PLAIN_X, "direct", durable=True)
    depths = {}
    for x, q in QUEUES.items():
        ok = ch.queue_declare(q, durable=True)
        ch.queue_bind(q, x, routing_key="k")
        depths[q] = ok.method.message_count
    conn.close()
    return depths


def publisher(name, exchange, port, state, up, stop, size):
    n, attempt = 0, 0
    body = os.urandom(size)
    conn = None
    while True:
        mid = f"{name}-{n}"
        if stop.is_set() and attempt == 0:
            break
        up.wait()
        try:
            if conn is None:
                conn = pika.BlockingConnection(params(port))
                ch = conn.channel()
                ch.confirm_delivery()
            attempt += 1
            if attempt > 1:
                with state.lock:
                    state.retries += 1
            with state.lock:
                state.published.add(mid)
            ch.basic_publish(
                exchange,
                "k",
                body,
                pika.BasicProperties(delivery_mode=2, message_id=mid, headers={"attempt": attempt}),
            )
            with state.lock:
                state.confirmed[mid] = exchange
            n, attempt = n + 1, 0
        except pika.exceptions.NackError:
            with state.lock:
                state.nacks += 1
            time.sleep(0.05)
        except Exception:  # the broker went away: reconnect, retry the same id
            conn = None
            time.sleep(0.05)
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def consumer(queue, port, state, up, stop):
    while not stop.is_set():
        up.wait()
        try:
            conn = pika.BlockingConnection(params(port))
            ch = conn.channel()
            ch.basic_qos(prefetch_count=100)
            for method, props, _body in ch.consume(queue, inactivity_timeout=0.5):
                if stop.is_set():
                    break
                if method is None:
                    continue
                attempt = (props.headers or {}).get("attempt", 0)
                with state.lock:
                    state.consumed[props.message_id].append((attempt, method.redelivered))
                    state.last_delivery = time.monotonic()
                # Processed, then acked: a crash in between is a redelivery.
                ch.basic_ack(method.delivery_tag)
            conn.close()
        except Exception:
            time.sleep(0.05)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/debug/hopper")
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--data-dir", help="default: a fresh temporary directory")
    ap.add_argument("--log", default="chaos-broker.log")
    ap.add_argument("--min-run", type=float, default=0.3, help="seconds of load before a kill, at least")
    ap.add_argument("--max-run", type=float, default=4.0)
    ap.add_argument("--sigterm-every", type=int, default=10, help="about one round in N ends with SIGTERM")
    ap.add_argument("--publishers", type=int, default=2, help="per exchange")
    ap.add_argument("--size", type=int, default=1024, help="message body bytes")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="hopper-chaos-")
    port = free_port()
    log = open(args.log, "a")
    broker = Broker(os.path.abspath(args.binary), data_dir, port, log)
    state = State()
    up, stop_pub, stop_con = threading.Event(), threading.Event(), threading.Event()
    print(f"chaos: {args.rounds} rounds, seed {seed}, data {data_dir}, port {port}, log {args.log}", flush=True)

    restarts, depths, signals = [], [], collections.Counter()
    restarts.append(broker.start())
    depths.append(declare(port))
    threads = []
    for x in (DEDUP_X, PLAIN_X):
        for i in range(args.publishers):
            name = f"{'d' if x == DEDUP_X else 'p'}{i}"
            threads.append(threading.Thread(target=publisher, args=(name, x, port, state, up, stop_pub, args.size), daemon=True))
    consumers = [threading.Thread(target=consumer, args=(q, port, state, up, stop_con), daemon=True) for q in QUEUES.values()]
    for t in threads + consumers:
        t.start()
    up.set()
    for r in range(1, args.rounds + 1):
        time.sleep(rng.uniform(args.min_run, args.max_run))
        sig = signal.SIGTERM if rng.randrange(args.sigterm_every) == 0 else signal.SIGKILL
        up.clear()
        status = broker.stop(sig)
        signals[signal.Signals(sig).name] += 1
        if sig == signal.SIGTERM and status != 0:
            print(f"round {r}: SIGTERM exit status {status}", flush=True)
        restarts.append(broker.start())
        depths.append(declare(port))
        up.set()
        with state.lock:
            print(
                f"round {r}/{args.rounds} {signal.Signals(sig).name}: restart {restarts[-1]:.2f}s, "
                f"depths {depths[-1]}, confirmed {len(state.confirmed)}, retries {state.retries}",
                flush=True,
            )

    # Finish: publishers complete their current message, consumers drain.
    stop_pub.set()
    for t in threads:
        t.join(timeout=120)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        d = declare(port)
        with state.lock:
            idle = time.monotonic() - state.last_delivery
        if sum(d.values()) == 0 and idle > 2:
            break
        time.sleep(0.5)
    stop_con.set()
    for t in consumers:
        t.join(timeout=30)
    final_depths = declare(port)
    term_status = broker.stop(signal.SIGTERM)

    with state.lock:
        confirmed = dict(state.confirmed)
        consumed = {k: list(v) for k, v in state.consumed.items()}
    lost = sorted(m for m in confirmed if m not in consumed)
    report = {"seed": seed, "rounds": args.rounds, "signals": dict(signals)}
    for x, tag in ((DEDUP_X, "d"), (PLAIN_X, "p")):
        ids = [m for m in consumed if m.startswith(tag)]
        redelivery_dups = retry_dups = 0
        for m in ids:
            copies = collections.Counter(a for a, _ in consumed[m])
            retry_dups += len(copies) - 1
            redelivery_dups += sum(c - 1 for c in copies.values())
        report[x] = {
            "confirmed": sum(1 for v in confirmed.values() if v == x),
            "consumed_ids": len(ids),
            "lost": sum(1 for m in lost if m.startswith(tag)),
            "duplicates_from_redelivery": redelivery_dups,
            "duplicates_from_retries": retry_dups,
            "stored_but_unconfirmed": sum(1 for m in ids if m not in confirmed),
        }
    report.update(
        {
            "confirmed": len(confirmed),
            "lost": len(lost),
            "lost_ids": lost[:20],
            "publish_retries": state.retries,
            "nacks": state.nacks,
            "restart_seconds": {"p50": round(statistics.median(restarts), 3), "max": round(max(restarts), 3), "n": len(restarts)},
            "recovered_depths": {
                "max": max(sum(d.values()) for d in depths),
                "p50": pct([sum(d.values()) for d in depths], 50),
            },
            "final_depths": final_depths,
            "final_sigterm_status": term_status,
        }
    )
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    ok = report["lost"] == 0 and report[DEDUP_X]["duplicates_from_retries"] == 0
    print("chaos: PASS" if ok else "chaos: FAIL", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
