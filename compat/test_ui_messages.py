"""Hopper-only management endpoints behind the web UI, driven over HTTP with
pika on the AMQP side:

- GET /api/queues/{vhost}/{queue}/browse shows ready messages and changes
  nothing: a consumer afterwards gets them in order, not redelivered;
  paged-out messages (recovered after a restart) are read from the store.
- POST /api/queues/{vhost}/{queue}/move re-publishes messages and removes
  them only once the new copy is confirmed: dead-lettered messages go back
  where they died; a move that cannot route keeps the message.
"""

import base64
import json
import time
import urllib.error
import urllib.parse
import urllib.request

import pika
import pytest

from amqp_helpers import get_one, message_count
from conftest import EXTERNAL, PASSWORD, USERNAME

if EXTERNAL:
    pytest.skip("browse and move are Hopper's own endpoints", allow_module_level=True)


def call(broker, method, path, body=None):
    """(status, JSON) of an API call as guest."""
    mgmt = broker.stdout_value("hopper management listening on ")
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{mgmt}/api{path}", data=data, method=method)
    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def qpath(name, vhost="/"):
    return f"/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}"


def wait_browsable(broker, q, n, timeout=5.0):
    """Wait until `n` messages of `q` are deliverable (browse stops at the
    first one still waiting for its store write, as basic.get would)."""
    deadline = time.monotonic() + timeout
    while True:
        _, page = call(broker, "GET", qpath(q) + "/browse")
        if page["count"] >= n:
            return
        assert time.monotonic() < deadline, f"{q}: {page['count']} of {n} deliverable"
        time.sleep(0.02)


def persistent(**kw):
    return pika.BasicProperties(delivery_mode=2, **kw)


def test_browse_shows_a_window_and_changes_nothing(broker, amqp):
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q, durable=True)
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode(), persistent(headers={"n": i}))

    status, page = call(broker, "GET", qpath(q) + "/browse?offset=1&count=2")
    assert status == 200, page
    assert page["ready"] == 5 and page["offset"] == 1 and page["count"] == 2
    assert [m["payload"] for m in page["messages"]] == ["m1", "m2"]
    assert [m["position"] for m in page["messages"]] == [1, 2]
    m = page["messages"][0]
    assert m["redelivered"] is False
    assert m["routing_key"] == q and m["exchange"] == ""
    assert m["properties"]["headers"] == {"n": 1}
    assert m["properties"]["delivery_mode"] == 2

    # All of them, twice: still five, and a consumer sees them as new, in order.
    for _ in range(2):
        status, page = call(broker, "GET", qpath(q) + "/browse")
        assert [m["payload"] for m in page["messages"]] == [f"m{i}" for i in range(5)]
    assert message_count(ch, q) == 5
    for i in range(5):
        method, _, body = get_one(ch, q, auto_ack=True)
        assert body == f"m{i}".encode()
        assert method.redelivered is False

    status, page = call(broker, "GET", qpath(q) + "/browse?encoding=base64&count=1")
    assert status == 200 and page["messages"] == [] and page["ready"] == 0
    assert call(broker, "GET", qpath(q + ".missing") + "/browse")[0] == 404
    assert call(broker, "GET", qpath(q) + "/browse?offset=x")[0] == 400


def test_browse_search_finds_messages_by_body_key_or_id_and_pages_on(broker, amqp):
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q, durable=True)
    ch.queue_bind(q, "amq.direct", routing_key="invoice.paid")
    for i in range(40):
        body = b"order %d needle" % i if i % 10 == 3 else b"order %d" % i
        ch.basic_publish("", q, body, persistent(message_id=f"m-{i}"))
    ch.basic_publish("amq.direct", "invoice.paid", b"by key", persistent())
    ch.basic_publish("", q, b"by id", persistent(message_id="find-me-42", correlation_id="c"))
    wait_browsable(broker, q, 42)

    def search(text, **params):
        query = urllib.parse.urlencode({"search": text, **params})
        status, page = call(broker, "GET", qpath(q) + "/browse?" + query)
        assert status == 200, page
        return page

    page = search("needle", count=2)
    assert [m["payload"] for m in page["messages"]] == ["order 3 needle", "order 13 needle"]
    assert [m["position"] for m in page["messages"]] == [3, 13]
    assert page["next_offset"] == 14 and page["scanned"] == 14 and page["ready"] == 42
    page = search("needle", offset=page["next_offset"])
    assert [m["position"] for m in page["messages"]] == [23, 33]
    assert page["next_offset"] == 42 and page["scanned"] == 28
    assert [m["payload"] for m in search("invoice.paid")["messages"]] == ["by key"]
    assert [m["payload"] for m in search("find-me")["messages"]] == ["by id"]
    assert search("no such text")["messages"] == []
    # Searching took nothing and marked nothing.
    assert message_count(ch, q) == 42
    method, _, body = get_one(ch, q, auto_ack=True)
    assert body == b"order 0" and method.redelivered is False


def test_browse_reads_paged_out_messages_from_the_store(fresh_broker, fresh_amqp):
    # (not a tracked name: closing the client would delete the queue)
    q = fresh_amqp.prefix + ".paged"
    ch = fresh_amqp.channel(confirm=True)
    ch.queue_declare(q, durable=True)
    for i in range(3):
        ch.basic_publish("", q, bytes([0xFF, i]), persistent(message_id=f"stored-{i}"))
    fresh_amqp.close()
    # After a restart the queue holds only ids; bodies stay in the store.
    fresh_broker.restart()

    status, page = call(fresh_broker, "GET", qpath(q) + "/browse")
    assert status == 200, page
    assert page["ready"] == 3
    assert [base64.b64decode(m["payload"]) for m in page["messages"]] == [bytes([0xFF, i]) for i in range(3)]
    assert all(m["payload_encoding"] == "base64" for m in page["messages"])
    # A search reads them back too.
    status, page = call(fresh_broker, "GET", qpath(q) + "/browse?search=stored-1")
    assert [m["properties"]["message_id"] for m in page["messages"]] == ["stored-1"]
    conn = fresh_broker.connect()
    try:
        ch = conn.channel()
        assert message_count(ch, q) == 3
        for i in range(3):
            _, _, body = get_one(ch, q, auto_ack=True)
            assert body == bytes([0xFF, i])
    finally:
        conn.close()


def test_move_sends_dead_lettered_messages_back_where_they_died(broker, amqp):
    work, dlq = amqp.queue_name(), amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(dlq, durable=True)
    ch.queue_declare(work, durable=True, arguments={
        "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq})
    for i in range(3):
        ch.basic_publish("", work, f"job {i}".encode(), persistent(message_id=f"id{i}"))
    for _ in range(3):
        method, _, _ = get_one(ch, work)
        ch.basic_reject(method.delivery_tag, requeue=False)
    assert message_count(ch, dlq) == 3
    wait_browsable(broker, dlq, 3)

    status, res = call(broker, "POST", qpath(dlq) + "/move", {"count": 2})
    assert status == 200 and res == {"moved": 2}, res
    assert message_count(ch, dlq) == 1
    assert message_count(ch, work) == 2
    for i in range(2):
        _, props, body = get_one(ch, work, auto_ack=True)
        assert body == f"job {i}".encode()
        assert props.message_id == f"id{i}"
        assert props.headers["x-death"][0]["queue"] == work

    # An explicit target: the last one to amq.direct with a routing key bound to `work`.
    ch.queue_bind(work, "amq.direct", routing_key="retry")
    status, res = call(broker, "POST", qpath(dlq) + "/move",
                       {"count": 10, "exchange": "amq.direct", "routing_key": "retry"})
    assert res == {"moved": 1}, res
    _, _, body = get_one(ch, work, auto_ack=True)
    assert body == b"job 2"
    assert message_count(ch, dlq) == 0


def test_move_that_cannot_route_keeps_the_message(broker, amqp):
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q, durable=True)
    ch.basic_publish("", q, b"keep me", persistent())
    ch.basic_publish("", q, b"and me", persistent())

    status, res = call(broker, "POST", qpath(q) + "/move",
                       {"count": 2, "exchange": "amq.direct", "routing_key": "unbound"})
    assert status == 200, res
    assert res["moved"] == 0 and "no queue is bound" in res["reason"], res
    status, res = call(broker, "POST", qpath(q) + "/move", {"count": 1, "exchange": "no.such.exchange"})
    assert status == 400 and "NOT_FOUND" in res["reason"], res

    assert message_count(ch, q) == 2
    _, _, body = get_one(ch, q, auto_ack=True)
    assert body == b"keep me"
    _, _, body = get_one(ch, q, auto_ack=True)
    assert body == b"and me"
