"""Exchanges: declare/delete, each type's routing, bindings, errors."""

import pika
import pytest
from pika.exceptions import UnroutableError

from amqp_helpers import assert_connection_usable, channel_error, message_count


def _bodies(ch, queue):
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


@pytest.mark.parametrize("kind", ["direct", "fanout", "topic", "headers"])
@pytest.mark.parametrize("durable", [False, True])
def test_declare_each_exchange_type(amqp, kind, durable):
    ch = amqp.channel()
    x = amqp.exchange_name()
    ok = ch.exchange_declare(x, exchange_type=kind, durable=durable)
    assert isinstance(ok.method, pika.spec.Exchange.DeclareOk)
    # identical redeclare and passive declare are both fine
    ch.exchange_declare(x, exchange_type=kind, durable=durable)
    ch.exchange_declare(x, passive=True)
    ch.exchange_delete(x)
    with channel_error(404):
        ch.exchange_declare(x, passive=True)


@pytest.mark.parametrize("name", ["amq.direct", "amq.fanout", "amq.topic", "amq.headers", "amq.match"])
def test_builtin_exchanges_exist(amqp, name):
    ch = amqp.channel()
    ch.exchange_declare(name, passive=True)


def test_declare_default_exchange_is_403(amqp):
    # RabbitMQ 3.10: even a passive declare of "" is refused
    ch = amqp.channel()
    with channel_error(403) as info:
        ch.exchange_declare("", passive=True)
    assert "default exchange" in info.value.reply_text


def test_passive_declare_missing_exchange_is_404_and_connection_survives(amqp):
    ch = amqp.channel()
    with channel_error(404):
        ch.exchange_declare(amqp.exchange_name(), passive=True)
    assert ch.is_closed
    assert_connection_usable(amqp.conn)


def test_redeclare_exchange_with_other_type_is_406(amqp):
    ch = amqp.channel()
    x = amqp.exchange_name()
    ch.exchange_declare(x, exchange_type="direct")
    with channel_error(406):
        ch.exchange_declare(x, exchange_type="fanout")
    assert_connection_usable(amqp.conn)


def test_redeclare_exchange_with_other_durability_is_406(amqp):
    ch = amqp.channel()
    x = amqp.exchange_name()
    ch.exchange_declare(x, exchange_type="topic", durable=False)
    with channel_error(406):
        ch.exchange_declare(x, exchange_type="topic", durable=True)


def test_declare_amq_prefixed_exchange_is_403(amqp):
    ch = amqp.channel()
    with channel_error(403):
        ch.exchange_declare("amq.compat-" + amqp.prefix.rsplit(".", 1)[-1], exchange_type="direct")
    assert_connection_usable(amqp.conn)


def test_unknown_exchange_type_is_refused(amqp):
    # RabbitMQ: 503 COMMAND_INVALID "unknown exchange type" -- a connection error
    conn = amqp.connect()
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        ch.exchange_declare(amqp.exchange_name(), exchange_type="no-such-type")
    assert info.value.reply_code == 503, repr(info.value)
    assert "COMMAND_INVALID" in info.value.reply_text
    assert conn.is_closed


def test_direct_exchange_routes_by_exact_key(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    qa, qb = amqp.queue_name(), amqp.queue_name()
    ch.exchange_declare(x, exchange_type="direct")
    for q in (qa, qb):
        ch.queue_declare(q)
    ch.queue_bind(qa, x, routing_key="a")
    ch.queue_bind(qb, x, routing_key="b")
    ch.queue_bind(qb, x, routing_key="both")
    ch.queue_bind(qa, x, routing_key="both")
    ch.basic_publish(x, "a", b"to-a")
    ch.basic_publish(x, "b", b"to-b")
    ch.basic_publish(x, "both", b"to-both")
    ch.basic_publish(x, "A", b"nowhere")  # keys are case sensitive
    assert _bodies(ch, qa) == [b"to-a", b"to-both"]
    assert _bodies(ch, qb) == [b"to-b", b"to-both"]


def test_fanout_exchange_ignores_routing_key(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    queues = [amqp.queue_name() for _ in range(3)]
    ch.exchange_declare(x, exchange_type="fanout")
    for i, q in enumerate(queues):
        ch.queue_declare(q)
        ch.queue_bind(q, x, routing_key=f"ignored-{i}")
    ch.basic_publish(x, "whatever", b"one")
    ch.basic_publish(x, "", b"two")
    for q in queues:
        assert _bodies(ch, q) == [b"one", b"two"]


TOPIC_CASES = [
    # routing key, set of patterns that must match
    ("quick.orange.rabbit", {"*.orange.*", "*.*.rabbit", "#", "#.rabbit"}),
    ("lazy.orange.elephant", {"*.orange.*", "lazy.#", "#"}),
    ("quick.orange.fox", {"*.orange.*", "#"}),
    ("lazy.brown.fox", {"lazy.#", "#"}),
    ("lazy.pink.rabbit", {"lazy.#", "*.*.rabbit", "#", "#.rabbit"}),
    ("quick.brown.fox", {"#"}),
    ("orange", {"#"}),
    ("quick.orange.male.rabbit", {"#", "#.rabbit"}),
    ("lazy.orange.male.rabbit", {"lazy.#", "#", "#.rabbit"}),
    ("lazy", {"lazy.#", "#"}),
    ("rabbit", {"#", "#.rabbit"}),
    ("a.b.c", {"a.*.c", "#", "a.#.c"}),
    ("a.c", {"#", "a.#.c"}),
    ("a.x.y.c", {"#", "a.#.c"}),
    ("", {"#"}),
]
TOPIC_PATTERNS = ["*.orange.*", "*.*.rabbit", "lazy.#", "#", "#.rabbit", "a.*.c", "a.#.c"]


def test_topic_exchange_wildcards(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    ch.exchange_declare(x, exchange_type="topic")
    queue_of = {}
    for pattern in TOPIC_PATTERNS:
        q = amqp.queue_name()
        ch.queue_declare(q)
        ch.queue_bind(q, x, routing_key=pattern)
        queue_of[pattern] = q
    for key, _ in TOPIC_CASES:
        ch.basic_publish(x, key, key.encode())
    for pattern, q in queue_of.items():
        expected = [key.encode() for key, matches in TOPIC_CASES if pattern in matches]
        assert _bodies(ch, q) == expected, f"pattern {pattern!r}"


def test_headers_exchange_all_and_any(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    q_all, q_any, q_default = amqp.queue_name(), amqp.queue_name(), amqp.queue_name()
    ch.exchange_declare(x, exchange_type="headers")
    for q in (q_all, q_any, q_default):
        ch.queue_declare(q)
    ch.queue_bind(q_all, x, arguments={"x-match": "all", "format": "pdf", "type": "report"})
    ch.queue_bind(q_any, x, arguments={"x-match": "any", "format": "pdf", "type": "log"})
    # no x-match means "all"
    ch.queue_bind(q_default, x, arguments={"format": "zip", "size": 3})

    def pub(body, headers):
        ch.basic_publish(x, "rk-is-ignored", body, pika.BasicProperties(headers=headers))

    pub(b"pdf-report", {"format": "pdf", "type": "report", "extra": 1})
    pub(b"pdf-only", {"format": "pdf"})
    pub(b"log", {"type": "log"})
    pub(b"zip3", {"format": "zip", "size": 3})
    pub(b"zip4", {"format": "zip", "size": 4})
    pub(b"none", None)
    assert _bodies(ch, q_all) == [b"pdf-report"]
    assert _bodies(ch, q_any) == [b"pdf-report", b"pdf-only", b"log"]
    assert _bodies(ch, q_default) == [b"zip3"]


def test_default_exchange_routes_to_queue_by_name(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"direct to queue")
    assert _bodies(ch, q) == [b"direct to queue"]


def test_bind_to_default_exchange_is_403(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q)
    with channel_error(403):
        ch.queue_bind(q, "", routing_key="anything")
    assert_connection_usable(amqp.conn)


def test_delete_builtin_exchange_is_403(amqp):
    ch = amqp.channel()
    with channel_error(403):
        ch.exchange_delete("amq.direct")


def test_unbind_stops_routing(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    q = amqp.queue_name()
    ch.exchange_declare(x, exchange_type="direct")
    ch.queue_declare(q)
    ch.queue_bind(q, x, routing_key="k")
    ch.basic_publish(x, "k", b"bound")
    ch.queue_unbind(q, x, routing_key="k")
    ch.basic_publish(x, "k", b"unbound")
    with pytest.raises(UnroutableError):
        ch.basic_publish(x, "k", b"unbound-mandatory", mandatory=True)
    assert _bodies(ch, q) == [b"bound"]
    # unbinding a binding that does not exist is not an error
    ch.queue_unbind(q, x, routing_key="never-bound")
    assert ch.is_open


def test_duplicate_binding_delivers_once(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    q = amqp.queue_name()
    ch.exchange_declare(x, exchange_type="topic")
    ch.queue_declare(q)
    ch.queue_bind(q, x, routing_key="a.*")
    ch.queue_bind(q, x, routing_key="a.*")
    ch.queue_bind(q, x, routing_key="#")  # second matching binding: still one copy
    ch.basic_publish(x, "a.b", b"once")
    assert _bodies(ch, q) == [b"once"]


def test_bind_missing_queue_or_exchange_is_404(amqp):
    ch = amqp.channel()
    x = amqp.exchange_name()
    q = amqp.queue_name()
    ch.exchange_declare(x, exchange_type="direct")
    ch.queue_declare(q)
    with channel_error(404):
        ch.queue_bind(amqp.queue_name(), x, routing_key="k")
    ch = amqp.channel()
    with channel_error(404):
        ch.queue_bind(q, amqp.exchange_name(), routing_key="k")
    assert_connection_usable(amqp.conn)


def test_unbind_from_or_to_missing_queue_or_exchange_is_ok(amqp):
    """RabbitMQ 3.x answers unbind-ok when either end is gone or never existed
    (an auto-delete queue gone with its last consumer, an exchange deleted in a
    cascade), unlike bind, which is a 404."""
    ch = amqp.channel()
    x = amqp.exchange_name()
    q = amqp.queue_name()
    ch.exchange_declare(x, exchange_type="direct")
    ch.queue_declare(q)
    ch.queue_unbind(amqp.queue_name(), x, routing_key="k")
    ch.queue_unbind(q, amqp.exchange_name(), routing_key="k")
    ch.queue_unbind(amqp.queue_name(), amqp.exchange_name(), routing_key="k")
    ch.exchange_unbind(destination=amqp.exchange_name(), source=x, routing_key="k")
    ch.exchange_unbind(destination=x, source=amqp.exchange_name(), routing_key="k")
    # a queue deleted after it was bound
    ch.queue_bind(q, x, routing_key="k")
    ch.queue_delete(q)
    ch.queue_unbind(q, x, routing_key="k")
    # the default exchange is still refused
    with channel_error(403):
        ch.queue_unbind(amqp.queue_name(), "", routing_key="k")
    assert_connection_usable(amqp.conn)


def test_exchange_delete_removes_bindings(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    q = amqp.queue_name()
    ch.exchange_declare(x, exchange_type="fanout")
    ch.queue_declare(q)
    ch.queue_bind(q, x)
    ch.exchange_delete(x)
    # same name again, fresh: the old binding must be gone
    ch.exchange_declare(x, exchange_type="fanout")
    with pytest.raises(UnroutableError):
        ch.basic_publish(x, "", b"x", mandatory=True)
    assert message_count(ch, q) == 0


def test_exchange_delete_missing_is_ok(amqp):
    # RabbitMQ (since 3.x) treats deleting a missing exchange as success
    ch = amqp.channel()
    ch.exchange_delete(amqp.exchange_name())
    assert ch.is_open


def test_exchange_to_exchange_binding(amqp):
    ch = amqp.channel(confirm=True)
    src, dst = amqp.exchange_name(), amqp.exchange_name()
    q = amqp.queue_name()
    ch.exchange_declare(src, exchange_type="topic")
    ch.exchange_declare(dst, exchange_type="direct")
    ch.queue_declare(q)
    ch.queue_bind(q, dst, routing_key="orders.new")
    ch.exchange_bind(destination=dst, source=src, routing_key="orders.*")
    ch.basic_publish(src, "orders.new", b"routed via e2e")
    ch.basic_publish(src, "orders.old", b"dropped by dst")
    assert _bodies(ch, q) == [b"routed via e2e"]
    ch.exchange_unbind(destination=dst, source=src, routing_key="orders.*")
    with pytest.raises(UnroutableError):
        ch.basic_publish(src, "orders.new", b"x", mandatory=True)


def test_alternate_exchange_receives_unroutable(amqp):
    ch = amqp.channel(confirm=True)
    x, ae = amqp.exchange_name(), amqp.exchange_name()
    q_main, q_ae = amqp.queue_name(), amqp.queue_name()
    ch.exchange_declare(ae, exchange_type="fanout")
    ch.exchange_declare(x, exchange_type="direct", arguments={"alternate-exchange": ae})
    ch.queue_declare(q_main)
    ch.queue_declare(q_ae)
    ch.queue_bind(q_main, x, routing_key="known")
    ch.queue_bind(q_ae, ae)
    ch.basic_publish(x, "known", b"main")
    # routed through the AE, so a mandatory publish is not returned
    ch.basic_publish(x, "unknown", b"alternate", mandatory=True)
    assert _bodies(ch, q_main) == [b"main"]
    assert _bodies(ch, q_ae) == [b"alternate"]


def test_auto_delete_exchange_goes_with_last_binding(amqp):
    ch = amqp.channel()
    x = amqp.exchange_name()
    q = amqp.queue_name()
    ch.exchange_declare(x, exchange_type="direct", auto_delete=True)
    ch.queue_declare(q)
    ch.queue_bind(q, x, routing_key="k")
    ch.exchange_declare(x, passive=True)
    ch.queue_unbind(q, x, routing_key="k")
    with channel_error(404):
        ch.exchange_declare(x, passive=True)
