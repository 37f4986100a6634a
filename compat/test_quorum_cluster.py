"""Quorum queues on a 3-node cluster (issue 15): three hopper processes on loopback.

- the checker itself: a made-up history with a lost, a duplicated and an
  unexpected message is reported as such (so a passing run means something);
- a consumer on a follower gets and acks what is published through another node;
- `x-delivery-limit`: redeliveries carry `x-delivery-count`, and a message
  returned more often than the limit is dead-lettered (to another quorum queue)
  or dropped, through consumers on nodes that do not lead the queue;
- basic.get through a follower, and a reject with requeue through one;
- confirmed load through all three nodes while the queue's leader is killed -9
  three times (and restarted each time), then a drain through all nodes:
  nothing confirmed is lost, duplicates are counted and printed per failover;
- a node stopped while many messages go through the others rejoins, and with
  another node killed (so the rejoined one is needed for a majority) publishing
  with confirms and consuming still work and nothing confirmed is lost.

The expectations of the follower, delivery-limit and basic.get tests were checked
against RabbitMQ 3.10.8 by pointing all three "nodes" at its single node.
The harness is cluster_harness.py (processes, leader lookup, link proxy), the
history and checker cluster_history.py, the clients cluster_workload.py. The
file skips with HOPPER_TEST_EXTERNAL (it starts its own brokers).
Waits are for conditions with generous limits; nothing asserts a duration.
"""

import os
import time
import uuid

import pika
import pytest

from cluster_harness import Cluster
from cluster_history import History, body_for, body_matches, summary
from cluster_workload import Workload

EXTERNAL = os.environ.get("HOPPER_TEST_EXTERNAL", "").strip()
# Messages through the two other nodes while one is down (test_a_stopped_node_rejoins...).
REJOIN_MESSAGES = int(os.environ.get("HOPPER_CLUSTER_REJOIN_MESSAGES", "20000"))

pytestmark = pytest.mark.skipif(bool(EXTERNAL), reason="starts its own 3-node cluster (HOPPER_TEST_EXTERNAL is set)")


@pytest.fixture(scope="module")
def _cluster():
    # HOPPER_CLUSTER_KEEP=1 keeps the nodes' data dirs and logs (the path is printed).
    c = Cluster(size=3, keep=bool(os.environ.get("HOPPER_CLUSTER_KEEP"))).start()
    print(f"cluster work dir {c.workdir}")
    yield c
    c.cleanup()


@pytest.fixture
def cluster(_cluster):
    """The module's cluster with every node running (a test may leave one down)."""
    for n in _cluster.nodes:
        if not n.alive():
            n.start()
    yield _cluster


def qname(what):
    return f"qc.{what}.{uuid.uuid4().hex[:8]}"


def others(cluster, *nodes):
    return [n.id for n in cluster.nodes if n.id not in nodes]


def wait_counts(cluster, queue, want, timeout=30):
    """Every live node's API reports `want` messages in the queue."""
    cluster.wait_for(lambda: all(v == want for v in cluster.message_counts(queue).values()),
                     f"{queue}: {want} messages on every node (now {cluster.message_counts(queue)})", timeout)


def delete_queue(cluster, queue):
    try:
        conn = cluster.live()[0].connect()
        conn.channel().queue_delete(queue)
        conn.close()
    except Exception:
        pass


# ---------------------------------------------------------------------- the checker
def test_checker_reports_lost_duplicated_and_unexpected_messages():
    """No broker: a history with one of each fault must be reported as such."""
    h = History()
    for mid in ("a", "b", "c", "d"):
        h.publish_sent(mid, 1, 1)
        h.publish_done(mid, 1, "ack")
    h.publish_sent("e", 1, 2)
    h.publish_done("e", 1, "closed")  # never confirmed: its loss is allowed
    h.fault("kill-leader", 1)
    h.publish_sent("b", 2, 2)  # b retried after its confirm was lost: stored twice
    h.publish_done("b", 2, "ack")
    h.consumed("a", 1, 2, False, 0, body_matches(body_for("a", 1, 50), "a", 1))
    h.consumed("a", 1, 3, True, 1)  # a redelivered (its ack was lost)
    h.consumed("b", 1, 2, False, 0)
    h.consumed("b", 2, 2, False, 0)
    h.consumed("c", 1, 2, False, 0, body_matches(b"c/1/..x", "c", 1))  # corrupted body
    h.consumed("zz", 1, 2, False, 0)  # never published
    r = h.report()
    assert (r["confirmed"], r["lost"], r["lost_ids"]) == (4, 1, ["d"])
    assert (r["duplicates"], r["duplicates_from_redelivery"], r["duplicates_from_retries"]) == (2, 1, 1)
    assert r["unexpected"] == 2 and r["never_confirmed"] == 1
    assert r["faults"][0]["failover_s"] is not None and r["faults"][0]["duplicates"] == 2


def test_checker_classifies_redeliveries_without_the_flag_and_reloads_a_dump(tmp_path):
    """No broker: an unflagged second delivery of one stored copy is counted and
    classified (earlier copy acked, nodes, the fault before it; a publish confirmed
    after its first copy was delivered, with a second, is one the broker stored
    twice); a dump loads back."""
    h = History()
    h.publish_sent("a", 1, 1)
    h.publish_done("a", 1, "ack")
    h.consumed("a", 1, 2, False, 0, consumer="c0#1@2")
    h.delivery_acked("a", 1, 2, "c0#1@2")
    h.fault("cut", (1, 2))
    h.consumed("a", 1, 3, False, 0, consumer="c1#1@3")  # again, unflagged
    h.fault_end("cut", (1, 2))
    h.consumed("a", 1, 1, True, 1, consumer="c2#1@1")  # again, flagged: fine
    # b: confirmed after its first copy was consumed, with a second: the broker stored it twice.
    h.publish_sent("b", 1, 3)
    h.consumed("b", 1, 1, False, 0, consumer="c2#1@1")
    h.delivery_acked("b", 1, 1, "c2#1@1")
    h.publish_done("b", 1, "ack")
    h.consumed("b", 1, 1, False, 0, consumer="c2#1@1")
    r = h.report()
    assert r["redelivered_without_flag"] == 2
    a, b = r["unflagged_sample"]
    assert (a["class"], a["nodes"], a["earlier_flagged"]) == (
        "earlier acked, later a fresh copy (count 0)", "2->3", False)
    assert a["last_fault"]["kind"] == "cut" and a["last_fault"]["on"]
    assert (b["mid"], b["class"]) == ("b", "one publish stored twice (confirmed with the later copy)")
    assert sorted(row["n"] for row in r["unflagged_by_class"]) == [1, 1]
    path = tmp_path / "history.jsonl"
    h.dump(path)
    again = History.load(path).report()
    assert {k: again[k] for k in ("redelivered_without_flag", "unflagged_sample", "confirmed", "duplicates")} == {
        k: r[k] for k in ("redelivered_without_flag", "unflagged_sample", "confirmed", "duplicates")}


# ---------------------------------------------------------------------- followers
@pytest.mark.timeout(120)
def test_a_consumer_on_a_follower_gets_what_another_node_takes(cluster):
    q = qname("follower")
    cluster.declare_quorum(q)
    leader, view = cluster.guess_leader(q)
    follower = others(cluster, leader)[0]
    via = others(cluster, follower)[0]  # the other follower when the leader is known
    print(f"leader {leader} ({view}), consumer on {follower}, publishing through {via}")
    n = 100
    consumer = cluster.node(follower).connect()
    cch = consumer.channel()
    cch.basic_qos(prefetch_count=10)
    got = []

    def on_message(ch, method, props, body):
        got.append((props.message_id, body, method.redelivered))
        ch.basic_ack(method.delivery_tag)

    cch.basic_consume(q, on_message)
    pub = cluster.node(via).connect()
    pch = pub.channel()
    pch.confirm_delivery()
    for i in range(n):
        pch.basic_publish("", q, body_for(f"f{i}", 1, 64),
                          pika.BasicProperties(message_id=f"f{i}", delivery_mode=2), mandatory=True)
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        consumer.process_data_events(time_limit=0.1)
    ids = [m for m, _, _ in got]
    assert sorted(ids, key=lambda m: int(m[1:])) == [f"f{i}" for i in range(n)], \
        f"consumer on node {follower} got {len(got)} of {n} published through node {via}"
    assert ids == [f"f{i}" for i in range(n)], "one publisher, one consumer: in order"
    assert all(body_matches(b, m, 1) and not r for m, b, r in got)
    cch.cancel()
    wait_counts(cluster, q, 0)  # the acks settled them everywhere
    consumer.close()
    pub.close()
    delete_queue(cluster, q)


# ---------------------------------------------------------------------- delivery limit
def _consume_one(node, queue, timeout=30):
    """Open a connection to `node`, consume one message from `queue` (prefetch 1) and
    cancel the consumer, so a nack with requeue returns the message once (a live
    consumer would get it straight back, and closing would return it a second time):
    (connection, channel, method, properties, body); fails after `timeout`."""
    conn = node.connect()
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)
    got = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append((m, p, b)))
    deadline = time.monotonic() + timeout
    while not got:
        if time.monotonic() > deadline:
            conn.close()
            raise AssertionError(f"a consumer on node {node.id} got nothing from {queue} in {timeout}s")
        conn.process_data_events(time_limit=0.1)
    ch.basic_cancel(tag)
    return (conn, ch, *got[0])


@pytest.mark.timeout(120)
def test_delivery_limit_dead_letters_or_drops_and_counts_deliveries(cluster):
    q, dlq, drop = qname("limit"), qname("dead"), qname("drop")
    cluster.declare_quorum(dlq)
    cluster.declare_quorum(q, {"x-delivery-limit": 2, "x-dead-letter-exchange": "",
                               "x-dead-letter-routing-key": dlq})
    cluster.declare_quorum(drop, {"x-delivery-limit": 0})
    leader, _ = cluster.guess_leader(q)
    a, b = others(cluster, leader)
    pub = cluster.node(leader).connect()
    pch = pub.channel()
    pch.confirm_delivery()
    pch.basic_publish("", q, b"limited", pika.BasicProperties(message_id="lim", delivery_mode=2))
    pch.basic_publish("", drop, b"dropped", pika.BasicProperties(message_id="drop", delivery_mode=2))
    pub.close()
    # Delivered three times (limit 2), to consumers on the two followers in turn.
    for n in range(3):
        conn, ch, method, props, body = _consume_one(cluster.node((a, b)[n % 2]), q)
        count = (props.headers or {}).get("x-delivery-count")
        assert body == b"limited" and method.redelivered == (n > 0)
        assert count == n or (n == 0 and count is None), f"delivery {n}: x-delivery-count {count!r}"
        ch.basic_nack(method.delivery_tag, requeue=True)
        conn.close()
    conn, ch, method, props, body = _consume_one(cluster.node(b), dlq)
    headers = props.headers or {}
    death = (headers.get("x-death") or [{}])[0]
    assert body == b"limited" and headers.get("x-first-death-reason") == "delivery_limit", headers
    assert death.get("reason") == "delivery_limit" and death.get("queue") == q, headers
    ch.basic_ack(method.delivery_tag)
    conn.close()
    # Limit 0 and no dead-letter exchange: returned once, gone.
    conn, ch, method, _, body = _consume_one(cluster.node(a), drop)
    assert body == b"dropped"
    ch.basic_nack(method.delivery_tag, requeue=True)
    conn.close()
    for name in (q, dlq, drop):
        wait_counts(cluster, name, 0)
    for name in (q, dlq, drop):
        delete_queue(cluster, name)


@pytest.mark.timeout(120)
def test_basic_get_through_a_follower(cluster):
    """basic.get is consuming too: through a follower it gets the leader's messages,
    and a reject with requeue puts the message back for any node's next get,
    redelivered (RabbitMQ 3.10 gives it after the message behind it)."""
    q = qname("get")
    cluster.declare_quorum(q)
    leader, _ = cluster.guess_leader(q)
    a, b = others(cluster, leader)
    pub = cluster.node(leader).connect()
    pch = pub.channel()
    pch.confirm_delivery()
    for i in range(2):
        pch.basic_publish("", q, f"g{i}".encode(), pika.BasicProperties(message_id=f"g{i}", delivery_mode=2))
    pub.close()
    conn = cluster.node(a).connect()
    ch = conn.channel()
    method, _, body = ch.basic_get(q)
    deadline = time.monotonic() + 20
    while method is None and time.monotonic() < deadline:
        time.sleep(0.1)
        method, _, body = ch.basic_get(q)
    assert method is not None, f"basic.get through follower {a} found nothing ({cluster.message_counts(q)})"
    assert body == b"g0" and not method.redelivered
    ch.basic_reject(method.delivery_tag, requeue=True)
    conn.close()
    conn = cluster.node(b).connect()
    ch = conn.channel()
    got = []
    deadline = time.monotonic() + 20
    while len(got) < 2 and time.monotonic() < deadline:
        method, _, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            time.sleep(0.1)
            continue
        got.append((body, method.redelivered))
    conn.close()
    assert sorted(got) == [(b"g0", True), (b"g1", False)], got
    wait_counts(cluster, q, 0)
    delete_queue(cluster, q)


# ---------------------------------------------------------------------- leader kills
@pytest.mark.restart
@pytest.mark.timeout(300)
def test_leader_killed_three_times_under_confirmed_load_loses_nothing(cluster):
    q = qname("load")
    cluster.declare_quorum(q)
    h = History()
    w = Workload(cluster, q, h, rate=150, window=20).start()
    try:
        cluster.wait_for(lambda: h.counts()["confirmed"] >= 300, "300 confirms before the first kill", 60)
        for round_ in range(1, 4):
            leader, view = cluster.guess_leader(q)
            h.fault("kill-leader", leader, note="agreed" if view.agreed else f"not agreed: {view.answers}")
            killed_at = h.now()
            cluster.node(leader).kill()
            cluster.wait_for(lambda: h.first_ack_after(killed_at) is not None,
                             f"round {round_}: a confirm after kill -9 of node {leader}", 60)
            new = cluster.wait_leader(q, timeout=30, not_node=leader)
            h.note(f"round {round_}: killed {leader}, new leader {new.leader} (answers {new.answers})")
            cluster.node(leader).start()
            before = h.counts()["confirmed"]
            cluster.wait_for(lambda: h.counts()["confirmed"] >= before + 300,
                             f"round {round_}: 300 more confirms after restarting node {leader}", 60)
        assert w.stop_publishing(timeout=60), "publishers could not get every message confirmed"
        drained = w.wait_drained(timeout=60)
    finally:
        w.stop()
    r = h.report()
    r["final_counts"] = cluster.message_counts(q)
    print(summary(r), f"\nqueue counts per node at the end: {r['final_counts']}")
    for e in r["events"]:
        print("  ", e)
    assert r["confirmed"] > 0 and drained, f"not drained: counts {cluster.message_counts(q)}\n{summary(r)}"
    assert r["lost"] == 0, f"confirmed messages lost: {r['lost_ids']}\n{summary(r)}\ncounts {r['final_counts']}"
    assert r["unexpected"] == 0, r["unexpected_sample"]
    assert all(f["failover_s"] is not None for f in r["faults"])
    assert not w.errors, w.errors
    delete_queue(cluster, q)


# ---------------------------------------------------------------------- rejoin
@pytest.mark.restart
@pytest.mark.timeout(300)
def test_a_stopped_node_rejoins_and_is_needed_for_the_majority(cluster):
    q = qname("rejoin")
    cluster.declare_quorum(q)
    leader, _ = cluster.guess_leader(q)
    down = others(cluster, leader)[0]  # a follower
    up = others(cluster, down)
    h = History()
    h.fault("stop", down)
    assert cluster.node(down).terminate() == 0, cluster.node(down).log_tail()
    # Many entries through the two others, consumed as they come...
    per = REJOIN_MESSAGES // len(up)
    w = Workload(cluster, q, h, publishers=up, consumers=up, prefix="r", window=50, max_messages=per).start()
    try:
        cluster.wait_for(w.publishers_done, f"{per * len(up)} messages through nodes {up}", 240)
        assert w.wait_drained(timeout=60)
    finally:
        w.stop()
    # ...and a backlog left in the queue for the rejoined node to carry.
    backlog = Workload(cluster, q, h, publishers=up, consumers=[], prefix="b", max_messages=250).start()
    try:
        cluster.wait_for(backlog.publishers_done, "the backlog confirmed", 60)
    finally:
        backlog.stop()
    cluster.node(down).start()
    h.fault("rejoin", down)
    cluster.wait_for(lambda: cluster._has_queue(cluster.node(down), q), f"node {down} back with {q}", 60)
    # The leader goes, so the rejoined node is one of the two that must agree.
    gone, _ = cluster.guess_leader(q)
    if gone == down:
        gone = up[0]
    cluster.node(gone).kill()
    h.fault("kill-leader" if gone == leader else "kill", gone)
    left = others(cluster, gone)
    final = Workload(cluster, q, h, publishers=left, consumers=left, prefix="z", max_messages=250).start()
    try:
        cluster.wait_for(final.publishers_done, f"publishing through {left} with node {gone} down", 120)
        drained = final.wait_drained(timeout=60)
    finally:
        final.stop()
    r = h.report()
    r["final_counts"] = cluster.message_counts(q)
    print(summary(r), f"\nqueue counts per node at the end: {r['final_counts']}")
    assert r["confirmed"] >= REJOIN_MESSAGES and drained, summary(r)
    assert r["lost"] == 0, f"confirmed messages lost: {r['lost_ids']}\n{summary(r)}\ncounts {r['final_counts']}"
    assert r["unexpected"] == 0, r["unexpected_sample"]
    assert not (w.errors or backlog.errors or final.errors)
    cluster.node(gone).start()
    delete_queue(cluster, q)
