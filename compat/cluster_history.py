"""What the clients of a cluster saw, and the checker over it.

Owns: the history of a run (every publish attempt: message id, attempt number,
node, when sent, outcome; every delivery: id, attempt, node, redelivered,
`x-delivery-count`, body check, consumer; every ack a consumer sent; every
fault: kind, node(s), when it started and ended), `dump()`/`load()` of it as
JSON lines, and `report()`, which checks it:

- confirmed: message ids with at least one acked publish attempt;
- lost: confirmed but never consumed (must be 0);
- duplicates: deliveries of an id beyond its first, split into redeliveries of
  one stored copy (same attempt: an ack lost with a node) and retries (two
  attempts of one id both stored: a confirm lost with a node, at-least-once);
- unexpected: a delivery of an (id, attempt) that was never sent, or whose body
  is not the one sent (must be 0);
- failover: per fault, the time from the fault to the first ack of a publish
  sent after it, and the duplicates that show up until the next fault;
- redelivered flag missing: a second delivery of one stored copy (same id and
  attempt) without `redelivered`, each classified by `unflagged_redeliveries()`
  (nodes, first copy acked or flagged, delivery counts, faults around it).

`python cluster_history.py HISTORY.jsonl` prints the report of a dumped run.
Thread-safe (one lock); never talks to a broker.
"""

import collections
import gzip
import json
import statistics
import sys
import threading
import time

Attempt = collections.namedtuple("Attempt", "mid attempt node sent done outcome queue")
Delivery = collections.namedtuple("Delivery", "mid attempt node redelivered delivery_count at body_ok consumer",
                                  defaults=(None,))
Ack = collections.namedtuple("Ack", "mid attempt node consumer at")
Fault = collections.namedtuple("Fault", "kind nodes at note queue end", defaults=(None,))


def body_for(mid, attempt, size):
    """The body a publisher sends for (mid, attempt): checkable by the consumer."""
    head = f"{mid}/{attempt}/".encode()
    return head + b"." * max(0, size - len(head))


def body_matches(body, mid, attempt):
    return body.rstrip(b".") == f"{mid}/{attempt}/".encode()


def _pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None


def _stats(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": round(statistics.median(xs), 3), "max": round(max(xs), 3)}


class History:
    def __init__(self):
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.attempts = []  # Attempt, completed ones
        self.in_flight = {}  # (mid, attempt) -> (node, sent)
        self.sent = set()  # (mid, attempt)
        self.deliveries = []
        self.faults = []
        self.acks = []  # Ack: a consumer acked a delivery
        self.wall_t0 = time.time()  # to line the history up with the nodes' logs
        self.events = []  # (at, text): notes for the report's timeline

    def now(self):
        return time.monotonic() - self.t0

    # -------------------------------------------------------------- recording
    def publish_sent(self, mid, attempt, node, queue=None):
        with self.lock:
            self.sent.add((mid, attempt))
            self.in_flight[(mid, attempt)] = (node, self.now(), queue)

    def publish_done(self, mid, attempt, outcome):
        """outcome: "ack", "nack", "closed" (connection/channel lost), "timeout"."""
        with self.lock:
            node, sent, queue = self.in_flight.pop((mid, attempt), (None, None, None))
            self.attempts.append(Attempt(mid, attempt, node, sent, self.now(), outcome, queue))

    def consumed(self, mid, attempt, node, redelivered, delivery_count, body_ok=True, consumer=None):
        """`consumer`: which consumer (and connection) got it, to match its ack."""
        with self.lock:
            self.deliveries.append(
                Delivery(mid, attempt, node, bool(redelivered), delivery_count, self.now(), body_ok, consumer))

    def delivery_acked(self, mid, attempt, node, consumer=None):
        """The consumer sent basic.ack for its delivery of (mid, attempt)."""
        with self.lock:
            self.acks.append(Ack(mid, attempt, node, consumer, self.now()))

    def fault(self, kind, nodes, note="", queue=None):
        """A fault starts now; `queue`: its failover is measured on that queue's publishes."""
        with self.lock:
            self.faults.append(Fault(kind, tuple(nodes) if isinstance(nodes, (list, tuple)) else (nodes,),
                                     self.now(), note, queue))

    def fault_end(self, kind, nodes):
        """The last fault of `kind` on `nodes` is over (healed, restarted)."""
        nodes = tuple(nodes) if isinstance(nodes, (list, tuple)) else (nodes,)
        with self.lock:
            for i in range(len(self.faults) - 1, -1, -1):
                f = self.faults[i]
                if f.kind == kind and f.nodes == nodes and f.end is None:
                    self.faults[i] = f._replace(end=self.now())
                    break

    def note(self, text):
        with self.lock:
            self.events.append((round(self.now(), 2), text))

    # -------------------------------------------------------------- queries
    def confirmed_ids(self):
        with self.lock:
            return {a.mid for a in self.attempts if a.outcome == "ack"}

    def consumed_ids(self):
        with self.lock:
            return {d.mid for d in self.deliveries}

    def counts(self):
        with self.lock:
            acked = {a.mid for a in self.attempts if a.outcome == "ack"}
            return {"sent": len(self.sent), "confirmed": len(acked),
                    "consumed": len({d.mid for d in self.deliveries}), "deliveries": len(self.deliveries)}

    def last_delivery_at(self):
        with self.lock:
            return self.deliveries[-1].at if self.deliveries else None

    def first_ack_after(self, t, queue=None):
        """When the first publish (to `queue`, if given) sent at or after t was acked."""
        first = None
        with self.lock:
            # attempts are appended as they complete: only the tail can qualify
            for a in reversed(self.attempts):
                if a.done < t:
                    break
                if a.outcome == "ack" and a.sent is not None and a.sent >= t and queue in (None, a.queue):
                    first = a.done if first is None else min(first, a.done)
        return first

    # -------------------------------------------------------------- dump/load
    def dump(self, path):
        """Everything recorded, as JSON lines ("t": start, publish, in_flight,
        deliver, ack, fault, note; times in seconds since the start, whose wall
        clock time the "start" line gives); gzipped when `path` ends in .gz."""
        with self.lock:
            rows = [{"t": "start", "wall_t0": self.wall_t0}]
            rows += [dict(a._asdict(), t="publish") for a in self.attempts]
            rows += [{"t": "in_flight", "mid": m, "attempt": a, "node": n, "sent": s, "queue": q}
                     for (m, a), (n, s, q) in self.in_flight.items()]
            rows += [dict(d._asdict(), t="deliver") for d in self.deliveries]
            rows += [dict(a._asdict(), t="ack") for a in self.acks]
            rows += [dict(f._asdict(), t="fault") for f in self.faults]
            rows += [{"t": "note", "at": at, "text": text} for at, text in self.events]
        with (gzip.open(path, "wt") if str(path).endswith(".gz") else open(path, "w")) as fh:
            for r in rows:
                fh.write(json.dumps(r, default=str) + "\n")

    @classmethod
    def load(cls, path):
        h = cls()
        with (gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)) as fh:
            for line in fh:
                r = json.loads(line)
                t = r.pop("t")
                if t == "start":
                    h.wall_t0 = r["wall_t0"]
                elif t == "publish":
                    h.attempts.append(Attempt(**r))
                    h.sent.add((r["mid"], r["attempt"]))
                elif t == "in_flight":
                    h.in_flight[(r["mid"], r["attempt"])] = (r["node"], r["sent"], r["queue"])
                    h.sent.add((r["mid"], r["attempt"]))
                elif t == "deliver":
                    h.deliveries.append(Delivery(**r))
                elif t == "ack":
                    h.acks.append(Ack(**r))
                elif t == "fault":
                    h.faults.append(Fault(**dict(r, nodes=tuple(r["nodes"]))))
                elif t == "note":
                    h.events.append((r["at"], r["text"]))
        h.deliveries.sort(key=lambda d: d.at)
        return h

    # -------------------------------------------------------------- the checker
    def report(self):
        with self.lock:
            attempts, deliveries = list(self.attempts), list(self.deliveries)
            faults, sent = list(self.faults), set(self.sent)
            consumer_acks = list(self.acks)
            in_flight = dict(self.in_flight)
            events = list(self.events)
        outcomes = collections.Counter(a.outcome for a in attempts)
        confirmed = {a.mid for a in attempts if a.outcome == "ack"}
        acked = {a.mid: a for a in attempts if a.outcome == "ack"}  # the last acked attempt
        ack_node = {m: a.node for m, a in acked.items()}
        published = {m for m, _ in sent}
        by_mid = collections.defaultdict(list)
        for d in deliveries:
            by_mid[d.mid].append(d)
        lost = sorted(m for m in confirmed if m not in by_mid)
        unexpected = [d for d in deliveries if (d.mid, d.attempt) not in sent or not d.body_ok]
        # Duplicates: beyond the first delivery of an id. Each is a retry (another
        # stored attempt) or a redelivery (the same attempt again); each is charged to
        # the last fault before it showed up.
        dup_events = []
        for mid, ds in by_mid.items():
            ds = sorted(ds, key=lambda d: d.at)
            seen_attempts = set()
            for i, d in enumerate(ds):
                if i > 0:
                    kind = "redelivery" if d.attempt in seen_attempts else "retry"
                    dup_events.append((d.at, kind))
                seen_attempts.add(d.attempt)
        dups = collections.Counter(k for _, k in dup_events)
        fault_rows, fault_times = [], [f.at for f in faults]
        for i, f in enumerate(faults):
            until = fault_times[i + 1] if i + 1 < len(faults) else float("inf")
            acks = [a.done for a in attempts if a.outcome == "ack" and a.sent is not None and a.sent >= f.at
                    and f.queue in (None, a.queue)]
            first = min(acks) if acks else None
            fault_rows.append({
                "kind": f.kind, "nodes": list(f.nodes), "at": round(f.at, 2), "note": f.note,
                "failover_s": round(first - f.at, 3) if first is not None else None,
                "duplicates": sum(1 for at, _ in dup_events if f.at <= at < until),
            })
        per_kind = {}
        for kind in sorted({r["kind"] for r in fault_rows}):
            rows = [r for r in fault_rows if r["kind"] == kind]
            per_kind[kind] = {"count": len(rows), "failover_s": _stats([r["failover_s"] for r in rows]),
                              "duplicates": sum(r["duplicates"] for r in rows),
                              "no_ack_after": sum(1 for r in rows if r["failover_s"] is None)}
        delivery_counts = [d.delivery_count for d in deliveries if d.delivery_count is not None]
        redelivered = [d for d in deliveries if d.redelivered]
        unflagged = unflagged_redeliveries(deliveries, consumer_acks, faults, attempts)
        report = {
            "published_ids": len(published),
            "publish_attempts": len(attempts) + len(in_flight),
            "publish_outcomes": dict(outcomes, in_flight=len(in_flight)),
            "confirmed": len(confirmed),
            "never_confirmed": len(published - confirmed),
            "stored_but_unconfirmed": sum(1 for m in by_mid if m not in confirmed),
            "consumed_ids": len(by_mid),
            "deliveries": len(deliveries),
            "lost": len(lost),
            "lost_ids": lost[:20],
            "lost_by_last_node": dict(collections.Counter(ack_node.get(m) for m in lost)),
            "lost_sample": [{"mid": m, "attempt": acked[m].attempt, "node": acked[m].node,
                             "sent": round(acked[m].sent, 3), "acked": round(acked[m].done, 3)}
                            for m in lost[:5]],
            "duplicates": sum(dups.values()),
            "duplicates_from_retries": dups["retry"],
            "duplicates_from_redelivery": dups["redelivery"],
            "unexpected": len(unexpected),
            "unexpected_sample": [d._asdict() for d in unexpected[:5]],
            "redelivered_flagged": len(redelivered),
            "redelivered_without_flag": len(unflagged),
            "unflagged_by_class": _unflagged_table(unflagged),
            "unflagged_sample": unflagged[:20],
            "delivery_count_max": max(delivery_counts) if delivery_counts else None,
            "deliveries_per_node": dict(collections.Counter(d.node for d in deliveries)),
            "confirms_per_node": dict(collections.Counter(a.node for a in attempts if a.outcome == "ack")),
            "faults": fault_rows,
            "faults_by_kind": per_kind,
            "failover_s": _stats([r["failover_s"] for r in fault_rows]),
            "events": events[-50:],
        }
        return report


def summary(report):
    """A few lines for humans."""
    lines = [
        f"confirmed {report['confirmed']} of {report['published_ids']} ids "
        f"(attempts {report['publish_attempts']}: {report['publish_outcomes']})",
        f"consumed {report['consumed_ids']} ids in {report['deliveries']} deliveries; "
        f"lost {report['lost']} {report['lost_by_last_node'] or ''}; unexpected {report['unexpected']}",
        f"duplicates {report['duplicates']} (retries {report['duplicates_from_retries']}, "
        f"redeliveries {report['duplicates_from_redelivery']}; redelivered flag missing on "
        f"{report['redelivered_without_flag']}); stored but unconfirmed {report['stored_but_unconfirmed']}",
    ]
    for x in report["lost_sample"]:
        lines.append(f"  lost {x['mid']} (attempt {x['attempt']}): sent through node {x['node']} at "
                     f"{x['sent']}s, confirmed at {x['acked']}s")
    for row in report.get("unflagged_by_class", []):
        lines.append(f"  unflagged {row['n']}x: {row['class']}; nodes {row['nodes']}; last fault "
                     f"{row['last_fault']}; gap p50 {row['gap_s']['p50']}s max {row['gap_s']['max']}s")
    for r in report["faults"]:
        lines.append(f"  fault {r['kind']} {r['nodes']} at {r['at']}s {r['note']}: "
                     f"first ack of a later publish after {r['failover_s']}s, duplicates {r['duplicates']}")
    for kind, s in report["faults_by_kind"].items():
        lines.append(f"  {kind}: {s['count']}x, failover {s['failover_s']}, duplicates {s['duplicates']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ unflagged redeliveries
def unflagged_redeliveries(deliveries, acks, faults, attempts=(), around=10.0, with_confirm=0.25):
    """Every delivery of a stored copy (id, attempt) that was delivered before,
    without the redelivered flag, with what explains it: the nodes that delivered
    the earlier and this copy, whether the earlier one was acked (by its consumer,
    before this one came) or flagged, both delivery counts, the time between, when
    the publish was confirmed, and the faults that started, or were still on, from
    `around` s before the earlier delivery until this one (times relative to this
    delivery).

    The client sends each (id, attempt) once, so a publish confirmed after its
    earlier copy was delivered and with this one (within `with_confirm` s) was
    stored twice by the broker itself: a node proposed it again after its first
    proposal's answer was lost (a forwarded publish retried on whichever node
    leads), the group took the second copy as new because the first was already
    settled, and that commit is the confirm. (A confirm often comes a few ms
    after the first delivery anyway; only one that also comes with the second
    copy counts.)"""
    confirmed_at = {(a.mid, a.attempt): a.done for a in attempts if a.outcome == "ack"}
    acked_at = collections.defaultdict(list)
    for a in acks:
        acked_at[(a.mid, a.attempt, a.consumer)].append(a.at)
    copies = collections.defaultdict(list)
    for d in deliveries:
        copies[(d.mid, d.attempt)].append(d)
    rows = []
    for (mid, attempt), ds in copies.items():
        ds = sorted(ds, key=lambda d: d.at)
        for prev, d in zip(ds, ds[1:]):
            if d.redelivered:
                continue
            ack = min((t for t in acked_at.get((mid, attempt, prev.consumer), ()) if t >= prev.at), default=None)
            acked = ack is not None and ack <= d.at
            near = [f for f in faults if f.at <= d.at and (f.end is None or f.end >= prev.at - around)]
            last = max((f for f in faults if f.at <= d.at), key=lambda f: f.at, default=None)
            confirmed = confirmed_at.get((mid, attempt))
            if confirmed is not None and confirmed > prev.at and abs(confirmed - d.at) <= with_confirm:
                cls = "one publish stored twice (confirmed with the later copy)"
            elif prev.redelivered:
                cls = "earlier copy flagged, later not (a stale delivery)"
            elif acked and not d.delivery_count:
                cls = "earlier acked, later a fresh copy (count 0)"
            elif acked:
                cls = "earlier acked, later counted as returned"
            else:
                cls = "earlier not acked before the later came"
            rows.append({
                "mid": mid, "attempt": attempt, "class": cls,
                "nodes": f"{prev.node}->{d.node}", "consumers": [prev.consumer, d.consumer],
                "at": round(d.at, 3), "gap_s": round(d.at - prev.at, 3),
                "earlier_acked_s": None if ack is None else round(ack - prev.at, 3),
                "earlier_flagged": prev.redelivered, "counts": [prev.delivery_count, d.delivery_count],
                "confirmed_s": None if confirmed is None else round(confirmed - d.at, 3),
                "last_fault": None if last is None else {
                    "kind": last.kind, "nodes": list(last.nodes), "before_s": round(d.at - last.at, 2),
                    "on": last.end is None or last.end >= d.at},
                "faults": [f"{f.kind}{list(f.nodes)} {f.at - d.at:+.1f}s.."
                           f"{'' if f.end is None else f'{f.end - d.at:+.1f}s'}" for f in near],
            })
    rows.sort(key=lambda r: r["at"])
    return rows


def _unflagged_table(rows):
    """The unflagged redeliveries counted by (class, nodes, last fault's kind)."""
    groups = collections.defaultdict(list)
    for r in rows:
        lf = r["last_fault"]
        groups[(r["class"], r["nodes"], lf and f"{lf['kind']}{lf['nodes']}{' (on)' if lf['on'] else ''}")].append(r)
    table = [{"class": c, "nodes": n, "last_fault": f, "n": len(rs), "gap_s": _stats([r["gap_s"] for r in rs])}
             for (c, n, f), rs in groups.items()]
    return sorted(table, key=lambda t: -t["n"])


if __name__ == "__main__":
    rep = History.load(sys.argv[1]).report()
    print(summary(rep))
    print(json.dumps({k: rep[k] for k in ("unflagged_by_class", "unflagged_sample")}, indent=1, default=str))
