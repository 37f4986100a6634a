#!/usr/bin/env python3
"""A fault campaign against a 3-node hopper cluster's quorum queues (see cluster_chaos.sh).

For --minutes, rounds of: confirming publishers on every node (each unconfirmed
publish, nacked or cut off, retried with the same message-id on another node) and
acking consumers on every node work for a random while, then one fault:

- kill-leader / kill-follower: kill -9 of the queue's leader / of a follower,
  restarted after a random while;
- sigterm: SIGTERM of a random node (a leader hands over first), restarted;
- cut: the link between two nodes closed through its proxy (drop: the peers see
  it go down), healed after a while;
- stall: the link between two nodes silently stops forwarding (a partition only
  timeouts notice), healed after a while;
- isolate: both links of one node (the leader, half of the time) cut; its own
  clients stay connected to it, so their publishes must be nacked or time out.

The fault's start is recorded; the round waits for the first confirm of a publish
sent after it (the failover time) and, for leader faults, for the survivors to
agree on a new leader. At the end everything is healed, every node restarted,
publishers finish their retries, consumers drain, and the checker (compat/
cluster_history.py) reports: confirmed, lost (confirmed, never consumed),
duplicates (retries, redeliveries), unexpected, failover times per fault kind,
and every redelivery without the redelivered flag classified (--history FILE
keeps the whole history for a closer look). Exits 1 if anything was lost or unexpected.
"""

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "compat"))

from cluster_harness import Cluster  # noqa: E402
from cluster_history import History, summary  # noqa: E402
from cluster_workload import Workload  # noqa: E402

KINDS = ("kill-leader", "kill-follower", "sigterm", "cut", "stall", "isolate")


def parse_weights(text):
    weights = {}
    for part in text.split(","):
        kind, _, w = part.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--faults: unknown fault {kind!r} (one of {', '.join(KINDS)})")
        weights[kind] = float(w or 1)
    return weights


def stats(xs):
    xs = [x for x in xs if x is not None]
    return {"n": len(xs), "p50": round(statistics.median(xs), 3), "max": round(max(xs), 3)} if xs else {"n": 0}


class Campaign:
    def __init__(self, args, rng):
        self.args, self.rng = args, rng
        self.cluster = Cluster(size=3, binary=args.binary, proxied=True, workdir=args.work_dir, keep=True,
                               rust_log=args.rust_log)
        self.history = History()
        self.queues = [f"chaos.qq{i}" for i in range(args.queues)]
        self.workloads = []
        self.leader_times = []  # seconds from a leader fault to an agreed new leader
        self.sigterm_status = []
        self.no_failover = 0

    def log(self, text):
        self.history.note(text)
        print(f"[{self.history.now():7.1f}s] {text}", flush=True)

    def start(self):
        self.cluster.start()
        for q in self.queues:
            self.cluster.declare_quorum(q, timeout=60)
        a = self.args
        for q in self.queues:
            self.workloads.append(Workload(
                self.cluster, q, self.history, publishers=[1, 2, 3] * a.publishers, consumers=[1, 2, 3] * a.consumers,
                window=a.window, size=a.size, rate=a.rate, prefix=f"{q[-1]}.", confirm_timeout=a.confirm_timeout,
            ).start())
        self.log(f"cluster up in {self.cluster.workdir}; queues {self.queues}")

    def leader(self):
        return self.cluster.guess_leader(self.rng.choice(self.queues), timeout=10)[0]

    def wait_failover(self, at, what, queue):
        deadline = time.monotonic() + self.args.failover_timeout
        while time.monotonic() < deadline:
            first = self.history.first_ack_after(at, queue)
            if first is not None:
                return first - at
            time.sleep(0.1)
        self.no_failover += 1
        self.log(f"{what}: no publish sent after it was confirmed within {self.args.failover_timeout}s")
        return None

    def wait_new_leader(self, queue, old, at):
        view = self.cluster.wait_leader(queue, timeout=30, not_node=old)
        if view.agreed:
            self.leader_times.append(self.history.now() - at)
            return view.leader
        return None

    def round(self, n):
        a, rng, c = self.args, self.rng, self.cluster
        kind = rng.choices(list(a.weights), weights=list(a.weights.values()))[0]
        queue = rng.choice(self.queues)
        leader, _ = c.guess_leader(queue, timeout=10)
        hold = rng.uniform(a.min_hold, a.max_hold)
        at = self.history.now()
        if kind in ("kill-leader", "kill-follower", "sigterm"):
            if kind == "kill-leader":
                victim = leader
            elif kind == "kill-follower":
                victim = rng.choice([x.id for x in c.nodes if x.id != leader])
            else:
                victim = rng.choice([x.id for x in c.nodes])
            self.history.fault(kind, victim, note=f"{queue} leader {leader}", queue=queue)
            if kind == "sigterm":
                self.sigterm_status.append(c.node(victim).terminate())
            else:
                c.node(victim).kill()
            failover = self.wait_failover(at, f"round {n} {kind} {victim}", queue)
            new = self.wait_new_leader(queue, victim, at) if victim == leader else leader
            time.sleep(max(0.0, hold - (self.history.now() - at)))
            c.node(victim).start()
            self.history.fault_end(kind, victim)
            self.log(f"round {n}: {kind} node {victim} ({queue} leader {leader} -> {new}), "
                     f"failover {failover and round(failover, 2)}s, down {self.history.now() - at:.1f}s")
            return
        if kind in ("cut", "stall"):
            pair = tuple(rng.sample([x.id for x in c.nodes], 2))
            mode = "drop" if kind == "cut" else "stall"
            self.history.fault(kind, pair, note=f"{queue} leader {leader}", queue=queue)
            c.cut(*pair, mode=mode)
            failover = self.wait_failover(at, f"round {n} {kind} {pair}", queue)
            time.sleep(max(0.0, hold - (self.history.now() - at)))
            c.heal(*pair)
            self.history.fault_end(kind, pair)
            self.log(f"round {n}: {kind} link {pair[0]}-{pair[1]} ({queue} leader {leader}) for "
                     f"{self.history.now() - at:.1f}s, failover {failover and round(failover, 2)}s")
            return
        # isolate: both links of one node, the leader half of the time
        victim = leader if rng.random() < 0.5 else rng.choice([x.id for x in c.nodes])
        mode = rng.choice(["drop", "stall"])
        pairs = [(victim, x.id) for x in c.nodes if x.id != victim]
        self.history.fault(kind, victim, note=f"{mode}; {queue} leader {leader}", queue=queue)
        for p in pairs:
            c.cut(*p, mode=mode)
        failover = self.wait_failover(at, f"round {n} isolate {victim}", queue)
        new = self.wait_new_leader(queue, victim, at) if victim == leader else leader
        time.sleep(max(0.0, hold - (self.history.now() - at)))
        for p in pairs:
            c.heal(*p)
        self.history.fault_end(kind, victim)
        self.log(f"round {n}: isolate ({mode}) node {victim} ({queue} leader {leader} -> {new}) for "
                 f"{self.history.now() - at:.1f}s, failover {failover and round(failover, 2)}s")

    def finish(self):
        c, a = self.cluster, self.args
        c.heal()
        for node in c.nodes:
            if not node.alive():
                node.start()
        self.log("healed, every node up; publishers finish their retries")
        for w in self.workloads:
            w.stop_publishing(timeout=a.finish_timeout)
        self.log("restarting every node (SIGTERM, one at a time)")
        for node in c.nodes:
            self.sigterm_status.append(node.terminate())
            node.start()
        drained = all(w.wait_drained(timeout=a.finish_timeout, idle=3) for w in self.workloads)
        counts = {q: c.message_counts(q) for q in self.queues}
        for w in self.workloads:
            w.stop()
        return drained, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", help="the broker (default: as compat/conftest.py finds it)")
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--json", help="write the report here too")
    ap.add_argument("--work-dir", help="nodes' data dirs and logs (default: a temp dir, removed on success)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir even on success")
    ap.add_argument("--history", help="write the whole history here as JSON lines (every publish attempt, "
                    "delivery, ack, fault; gzipped if FILE ends in .gz); `compat/cluster_history.py FILE` "
                    "reports on it again")
    ap.add_argument("--rust-log", help="the nodes' RUST_LOG (default: info)")
    ap.add_argument("--queues", type=int, default=1, help="quorum queues (each with its own clients)")
    ap.add_argument("--publishers", type=int, default=1, help="per node and queue")
    ap.add_argument("--consumers", type=int, default=1, help="per node and queue")
    ap.add_argument("--rate", type=float, default=60, help="messages/s per publisher")
    ap.add_argument("--window", type=int, default=20, help="publishes in flight per publisher")
    ap.add_argument("--size", type=int, default=512, help="message body bytes")
    ap.add_argument("--confirm-timeout", type=float, default=60,
                    help="seconds a publisher waits for a confirm before retrying elsewhere")
    ap.add_argument("--min-load", type=float, default=2, help="seconds of load between faults, at least")
    ap.add_argument("--max-load", type=float, default=8)
    ap.add_argument("--min-hold", type=float, default=2, help="seconds a fault lasts, at least")
    ap.add_argument("--max-hold", type=float, default=15)
    ap.add_argument("--failover-timeout", type=float, default=60)
    ap.add_argument("--finish-timeout", type=float, default=180)
    ap.add_argument("--faults", default="kill-leader=3,kill-follower=2,sigterm=1,cut=2,stall=1,isolate=1",
                    help=f"weights, kind=weight,... (kinds: {', '.join(KINDS)})")
    args = ap.parse_args()
    args.weights = parse_weights(args.faults)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    camp = Campaign(args, rng)
    print(f"cluster chaos: {args.minutes} min, seed {seed}, work dir {camp.cluster.workdir}, "
          f"binary {camp.cluster.binary}", flush=True)
    rounds = 0
    try:
        camp.start()
        deadline = time.monotonic() + args.minutes * 60
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(args.min_load, args.max_load))
            rounds += 1
            camp.round(rounds)
            counts = camp.history.counts()
            print(f"           confirmed {counts['confirmed']}, consumed {counts['consumed']}", flush=True)
        drained, counts = camp.finish()
    except BaseException:
        print(camp.cluster.logs_tail(20), file=sys.stderr)
        if args.history:
            camp.history.dump(args.history)
        camp.cluster.cleanup()
        raise
    report = camp.history.report()
    proxies = {f"{i}-{j}": {"bytes": p.bytes, "connections": p.connections}
               for (i, j), p in camp.cluster.proxies.items()}
    report.update({
        "seed": seed, "minutes": args.minutes, "rounds": rounds, "binary": camp.cluster.binary,
        "drained": drained, "final_counts": counts,
        "no_confirm_after_fault": camp.no_failover,
        "leader_elected_s": stats(camp.leader_times),
        "sigterm_exit_status": [s for s in camp.sigterm_status if s != 0] or "all 0",
        "node_start_s": stats([t for n in camp.cluster.nodes for t in n.start_seconds]),
        "unconfirmed_given_up": sum(len(w.unconfirmed_at_stop) for w in camp.workloads),
        "client_errors": [e for w in camp.workloads for e in w.errors][:10],
        "proxies": proxies,
    })
    print(summary(report))
    print(json.dumps({k: v for k, v in report.items() if k not in ("events", "faults", "unflagged_sample")}, indent=2, default=str))
    if args.history:
        camp.history.dump(args.history)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2, default=str)
    ok = report["lost"] == 0 and report["unexpected"] == 0
    camp.cluster.cleanup()
    if ok and not args.keep and not args.work_dir:
        shutil.rmtree(camp.cluster.workdir, ignore_errors=True)
    else:
        print(f"logs and data kept in {camp.cluster.workdir}")
    print("cluster chaos: PASS" if ok else "cluster chaos: FAIL", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
