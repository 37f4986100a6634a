"""Publishing and consuming with BlockingConnection: acks, requeue, confirms, qos, returns."""

import time

import pika
import pytest
from pika.exceptions import UnroutableError

from amqp_helpers import (
    Collector,
    assert_connection_usable,
    channel_error,
    get_one,
    message_count,
    pump,
    wait_message_count,
    wait_until,
)


def _queue(amqp, ch, **kw):
    q = amqp.queue_name()
    ch.queue_declare(q, **kw)
    return q


def test_publish_consume_roundtrip(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    ch.basic_publish("", q, b"hello world", pika.BasicProperties(content_type="text/plain"))
    got = Collector(ack=True)
    tag = ch.basic_consume(q, got)
    assert wait_until(amqp.conn, lambda: len(got) == 1), "message not delivered"
    method, props, body = got.messages[0]
    assert body == b"hello world"
    assert props.content_type == "text/plain"
    assert method.consumer_tag == tag
    assert method.exchange == ""
    assert method.routing_key == q
    assert method.redelivered is False
    assert method.delivery_tag == 1
    ch.basic_cancel(tag)
    assert wait_message_count(ch, q, 0) == 0


def test_consume_generator_with_inactivity_timeout(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    for i in range(3):
        ch.basic_publish("", q, b"g%d" % i)
    bodies = []
    for method, _props, body in ch.consume(q, inactivity_timeout=2):
        if method is None:
            break
        bodies.append(body)
        ch.basic_ack(method.delivery_tag)
        if len(bodies) == 3:
            break
    ch.cancel()
    assert bodies == [b"g0", b"g1", b"g2"]


def test_consumer_gets_messages_published_later(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    got = Collector(ack=True)
    ch.basic_consume(q, got)
    pump(amqp.conn, 0.1)
    pub = amqp.channel(conn=amqp.connect())
    for i in range(5):
        pub.basic_publish("", q, b"late%d" % i)
    assert wait_until(amqp.conn, lambda: len(got) == 5)
    assert got.bodies == [b"late%d" % i for i in range(5)]


def test_basic_get_and_get_empty(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    assert ch.basic_get(q) == (None, None, None)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert isinstance(method, pika.spec.Basic.GetOk)
    assert body == b"m0"
    assert method.message_count == 2, "get-ok message_count is the number left after this one"
    assert method.redelivered is False
    assert method.routing_key == q
    method, _props, body = ch.basic_get(q)
    assert body == b"m1" and method.message_count == 1
    ch.basic_ack(method.delivery_tag)
    assert ch.basic_get(q, auto_ack=True)[2] == b"m2"
    assert ch.basic_get(q) == (None, None, None)


def test_delivery_tags_increase_per_channel(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(3):
        ch.basic_publish("", q, b"x")
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    ch.basic_ack(3, multiple=True)
    assert message_count(ch, q) == 0


def test_ack_multiple(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(4):
        ch.basic_publish("", q, b"m%d" % i)
    methods = [ch.basic_get(q)[0] for _ in range(4)]
    ch.basic_ack(methods[2].delivery_tag, multiple=True)  # acks 1..3
    ch.close()
    ch = amqp.channel()
    method, _p, body = get_one(ch, q)
    assert body == b"m3" and method.redelivered is True
    assert ch.basic_get(q) == (None, None, None)


def test_nack_requeue_redelivers_first_in_line(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    method, _p, body = ch.basic_get(q)
    assert body == b"m0" and method.redelivered is False
    ch.basic_nack(method.delivery_tag, requeue=True)
    method, _p, body = ch.basic_get(q)
    assert body == b"m0", "requeued message must go back to the head of the queue"
    assert method.redelivered is True
    ch.basic_ack(method.delivery_tag)
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"m1" and method.redelivered is False


def test_reject_requeue_with_consumer(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    seen = []

    def on_message(ch_, method, props, body):
        seen.append((body, method.redelivered))
        if body == b"m0" and not method.redelivered:
            ch_.basic_reject(method.delivery_tag, requeue=True)
        else:
            ch_.basic_ack(method.delivery_tag)

    ch.basic_qos(prefetch_count=1)
    ch.basic_consume(q, on_message)
    assert wait_until(amqp.conn, lambda: len(seen) == 4)
    assert seen == [(b"m0", False), (b"m0", True), (b"m1", False), (b"m2", False)]


def test_reject_without_requeue_discards(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    ch.basic_publish("", q, b"bad")
    ch.basic_publish("", q, b"good")
    method, _p, body = ch.basic_get(q)
    assert body == b"bad"
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert message_count(ch, q) == 1
    assert ch.basic_get(q, auto_ack=True)[2] == b"good"
    assert ch.basic_get(q) == (None, None, None)


def test_nack_multiple_requeue_keeps_order(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    methods = [ch.basic_get(q)[0] for _ in range(3)]  # m0, m1, m2 unacked
    ch.basic_nack(methods[-1].delivery_tag, multiple=True, requeue=True)
    got = []
    for _ in range(5):
        method, _p, body = ch.basic_get(q, auto_ack=True)
        got.append((body, method.redelivered))
    assert got == [(b"m0", True), (b"m1", True), (b"m2", True), (b"m3", False), (b"m4", False)]


def test_nack_multiple_without_requeue_discards(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    ch.basic_get(q)
    last = ch.basic_get(q)[0]
    ch.basic_nack(last.delivery_tag, multiple=True, requeue=False)
    assert ch.basic_get(q, auto_ack=True)[2] == b"m2"
    assert message_count(ch, q) == 0


def test_ack_unknown_delivery_tag_is_406(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    ch.basic_ack(42)
    with channel_error(406) as info:
        ch.queue_declare(q, passive=True)  # the error arrives asynchronously
    assert "unknown delivery tag" in info.value.reply_text
    assert_connection_usable(amqp.conn)


def test_double_ack_is_406(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    ch.basic_publish("", q, b"x")
    method, _p, _b = ch.basic_get(q)
    ch.basic_ack(method.delivery_tag)
    ch.basic_ack(method.delivery_tag)
    with channel_error(406):
        ch.queue_declare(q, passive=True)


def test_unacked_messages_return_when_consumer_connection_closes(amqp):
    setup = amqp.channel(confirm=True)
    q = _queue(amqp, setup)
    for i in range(5):
        setup.basic_publish("", q, b"m%d" % i)
    consumer_conn = amqp.connect()
    cch = consumer_conn.channel()
    got = Collector()  # never acks
    cch.basic_consume(q, got)
    assert wait_until(consumer_conn, lambda: len(got) == 5)
    assert message_count(setup, q) == 0  # all 5 are unacked, none ready
    consumer_conn.close()
    assert wait_message_count(setup, q, 5) == 5, "unacked messages did not come back"
    got = []
    for _ in range(5):
        method, _p, body = setup.basic_get(q, auto_ack=True)
        got.append((body, method.redelivered))
    assert got == [(b"m%d" % i, True) for i in range(5)]


def test_unacked_messages_return_when_channel_closes(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    consumer = amqp.channel()
    consumer.basic_get(q)
    consumer.basic_get(q)
    consumer.close()
    assert wait_message_count(ch, q, 2) == 2
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert (body, method.redelivered) == (b"a", True)


def test_auto_ack_messages_do_not_return(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(3):
        ch.basic_publish("", q, b"x")
    conn = amqp.connect()
    cch = conn.channel()
    got = Collector()
    cch.basic_consume(q, got, auto_ack=True)
    assert wait_until(conn, lambda: len(got) == 3)
    conn.close()
    pump(amqp.conn, 0.2)
    assert message_count(ch, q) == 0


def test_basic_recover_requeues_unacked(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    ch.basic_publish("", q, b"r")
    ch.basic_get(q)
    ch.basic_recover(requeue=True)
    method, _p, body = get_one(ch, q, auto_ack=True)
    assert body == b"r" and method.redelivered is True


def test_cancel_stops_deliveries(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    got = Collector(ack=True)
    tag = ch.basic_consume(q, got)
    ch.basic_publish("", q, b"before")
    assert wait_until(amqp.conn, lambda: len(got) == 1)
    ch.basic_cancel(tag)
    ch.basic_publish("", q, b"after")
    pump(amqp.conn, 0.2)
    assert got.bodies == [b"before"]
    assert message_count(ch, q) == 1


def test_unacked_deliveries_can_be_acked_after_cancel(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    got = Collector()
    tag = ch.basic_consume(q, got)
    assert wait_until(amqp.conn, lambda: len(got) == 3)
    ch.basic_cancel(tag)
    ch.basic_ack(got.messages[-1][0].delivery_tag, multiple=True)
    assert message_count(ch, q) == 0
    ch.close()
    other = amqp.channel()
    assert message_count(other, q) == 0, "acked-after-cancel messages came back"


def test_two_consumers_share_queue_round_robin(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    c1, c2 = Collector(ack=True), Collector(ack=True)
    conn1, conn2 = amqp.connect(), amqp.connect()
    conn1.channel().basic_consume(q, c1)
    conn2.channel().basic_consume(q, c2)
    pump(conn1, 0.1)
    pump(conn2, 0.1)
    for i in range(10):
        ch.basic_publish("", q, b"%d" % i)
    deadline = time.monotonic() + 5
    while len(c1) + len(c2) < 10 and time.monotonic() < deadline:
        conn1.process_data_events(time_limit=0.02)
        conn2.process_data_events(time_limit=0.02)
    assert len(c1) + len(c2) == 10
    assert len(c1) == 5 and len(c2) == 5, (c1.bodies, c2.bodies)
    assert sorted(c1.bodies + c2.bodies, key=int) == [b"%d" % i for i in range(10)]


def test_exclusive_consumer_blocks_others(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    other = amqp.channel(conn=amqp.connect())
    with channel_error(403) as info:
        other.basic_consume(q, lambda *a: None)
    assert "ACCESS_REFUSED" in info.value.reply_text


def test_consumer_on_queue_with_existing_consumer_cannot_be_exclusive(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    ch.basic_consume(q, lambda *a: None)
    other = amqp.channel(conn=amqp.connect())
    with channel_error(403):
        other.basic_consume(q, lambda *a: None, exclusive=True)


def test_explicit_consumer_tag(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    got = Collector(ack=True)
    tag = ch.basic_consume(q, got, consumer_tag="my-tag-1")
    assert tag == "my-tag-1"
    ch.basic_publish("", q, b"x")
    assert wait_until(amqp.conn, lambda: len(got) == 1)
    assert got.messages[0][0].consumer_tag == "my-tag-1"


# ------------------------------------------------------------------ qos
def test_prefetch_limits_unacked_deliveries(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(20):
        ch.basic_publish("", q, b"%d" % i)
    cconn = amqp.connect()
    cch = cconn.channel()
    cch.basic_qos(prefetch_count=3)
    got = Collector()
    cch.basic_consume(q, got)
    assert wait_until(cconn, lambda: len(got) == 3)
    pump(cconn, 0.3)
    assert len(got) == 3, "consumer received more than prefetch_count unacked messages"
    cch.basic_ack(got.messages[0][0].delivery_tag)
    assert wait_until(cconn, lambda: len(got) == 4)
    pump(cconn, 0.2)
    assert len(got) == 4
    cch.basic_ack(got.messages[-1][0].delivery_tag, multiple=True)
    assert wait_until(cconn, lambda: len(got) == 7)
    pump(cconn, 0.2)
    assert len(got) == 7
    assert got.bodies == [b"%d" % i for i in range(7)]


def test_prefetch_never_exceeded_while_acking(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(60):
        ch.basic_publish("", q, b"%d" % i)
    cconn = amqp.connect()
    cch = cconn.channel()
    cch.basic_qos(prefetch_count=5)
    outstanding = []
    max_seen = [0]
    received = []

    def on_message(ch_, method, props, body):
        outstanding.append(method.delivery_tag)
        received.append(body)
        max_seen[0] = max(max_seen[0], len(outstanding))

    cch.basic_consume(q, on_message)
    deadline = time.monotonic() + 15
    while len(received) < 60 and time.monotonic() < deadline:
        cconn.process_data_events(time_limit=0.01)
        if len(outstanding) >= 2:  # ack in small batches
            cch.basic_ack(outstanding.pop(0))
    assert len(received) == 60
    assert max_seen[0] <= 5, f"held {max_seen[0]} unacked with prefetch_count=5"
    assert received == [b"%d" % i for i in range(60)]


def test_prefetch_is_per_consumer(amqp):
    """RabbitMQ: global=False limits each consumer on the channel separately."""
    ch = amqp.channel(confirm=True)
    qa, qb = _queue(amqp, ch), _queue(amqp, ch)
    for i in range(5):
        ch.basic_publish("", qa, b"a")
        ch.basic_publish("", qb, b"b")
    cconn = amqp.connect()
    cch = cconn.channel()
    cch.basic_qos(prefetch_count=2, global_qos=False)
    got = Collector()
    cch.basic_consume(qa, got)
    cch.basic_consume(qb, got)
    assert wait_until(cconn, lambda: len(got) == 4)
    pump(cconn, 0.3)
    assert sorted(got.bodies) == [b"a", b"a", b"b", b"b"]


def test_prefetch_global_is_shared_by_channel(amqp):
    """RabbitMQ: global=True limits all consumers of the channel together."""
    ch = amqp.channel(confirm=True)
    qa, qb = _queue(amqp, ch), _queue(amqp, ch)
    for i in range(5):
        ch.basic_publish("", qa, b"a")
        ch.basic_publish("", qb, b"b")
    cconn = amqp.connect()
    cch = cconn.channel()
    cch.basic_qos(prefetch_count=3, global_qos=True)
    got = Collector()
    cch.basic_consume(qa, got)
    cch.basic_consume(qb, got)
    assert wait_until(cconn, lambda: len(got) == 3)
    pump(cconn, 0.3)
    assert len(got) == 3


def test_prefetch_zero_is_unlimited(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    for i in range(50):
        ch.basic_publish("", q, b"x")
    cch = amqp.channel()
    cch.basic_qos(prefetch_count=0)
    got = Collector()
    cch.basic_consume(q, got)
    assert wait_until(amqp.conn, lambda: len(got) == 50)


# ------------------------------------------------------------- confirms / returns
def test_publisher_confirms(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    ok = ch.confirm_delivery()
    assert ok is None
    for i in range(20):
        assert ch.basic_publish("", q, b"%d" % i) is None
    assert message_count(ch, q) == 20
    # a confirmed publish with no matching queue (not mandatory) is still acked
    ch.basic_publish("", amqp.queue_name(), b"dropped")
    assert ch.is_open


def test_mandatory_unroutable_raises_with_confirms(amqp):
    ch = amqp.channel(confirm=True)
    x = amqp.exchange_name()
    ch.exchange_declare(x, exchange_type="direct")
    with pytest.raises(UnroutableError) as info:
        ch.basic_publish(x, "no-binding", b"lost", mandatory=True)
    returned = info.value.messages
    assert len(returned) == 1
    assert returned[0].body == b"lost"
    assert returned[0].method.reply_code == 312
    assert returned[0].method.reply_text == "NO_ROUTE"
    assert returned[0].method.exchange == x
    assert returned[0].method.routing_key == "no-binding"
    # channel stays usable
    q = _queue(amqp, ch)
    ch.basic_publish("", q, b"ok", mandatory=True)
    assert message_count(ch, q) == 1


def test_mandatory_return_callback_without_confirms(amqp):
    ch = amqp.channel()
    returned = []
    ch.add_on_return_callback(lambda ch_, method, props, body: returned.append((method, props, body)))
    ch.basic_publish(
        "", amqp.queue_name(), b"bounce", pika.BasicProperties(message_id="m-1"), mandatory=True
    )
    assert wait_until(amqp.conn, lambda: returned)
    method, props, body = returned[0]
    assert method.reply_code == 312 and body == b"bounce" and props.message_id == "m-1"


def test_publish_to_missing_exchange_with_confirms_is_404_and_connection_survives(amqp):
    ch = amqp.channel(confirm=True)
    with channel_error(404) as info:
        ch.basic_publish(amqp.exchange_name(), "rk", b"nowhere")
    assert "NOT_FOUND" in info.value.reply_text
    assert ch.is_closed
    assert_connection_usable(amqp.conn)


def test_publish_to_missing_exchange_without_confirms_closes_channel(amqp):
    ch = amqp.channel()
    ch.basic_publish(amqp.exchange_name(), "rk", b"nowhere")
    with channel_error(404):
        ch.queue_declare("", exclusive=True)
    assert ch.is_closed
    assert_connection_usable(amqp.conn)


def test_publish_with_wrong_user_id_is_406(amqp):
    ch = amqp.channel(confirm=True)
    q = _queue(amqp, ch)
    ch.basic_publish("", q, b"ok", pika.BasicProperties(user_id="guest"))
    _m, props, _b = ch.basic_get(q, auto_ack=True)
    assert props.user_id == "guest"
    with channel_error(406):
        ch.basic_publish("", q, b"spoofed", pika.BasicProperties(user_id="someone-else"))


# ------------------------------------------------------------- transactions
def test_tx_commit_and_rollback(amqp):
    ch = amqp.channel()
    q = _queue(amqp, ch)
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back")
    assert message_count(ch, q) == 0
    ch.tx_rollback()
    assert message_count(ch, q) == 0
    ch.basic_publish("", q, b"committed")
    ch.tx_commit()
    assert message_count(ch, q) == 1
    method, _p, body = ch.basic_get(q)
    assert body == b"committed"
    ch.basic_ack(method.delivery_tag)
    ch.tx_rollback()  # the ack is discarded: the message stays unacked on ch
    other = amqp.channel()
    assert message_count(other, q) == 0
    ch.close()  # ... so closing the channel requeues it
    method, _p, body = get_one(other, q, auto_ack=True)
    assert body == b"committed" and method.redelivered is True


def test_tx_commit_applies_acks_and_persistent_publishes(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q, durable=True)
    ch.basic_publish("", q, b"one")
    ch.basic_publish("", q, b"two")
    ch.tx_select()
    method, _p, body = get_one(ch, q, auto_ack=False)
    assert body == b"one"
    ch.basic_ack(method.delivery_tag)
    ch.basic_publish("", q, b"three", pika.BasicProperties(delivery_mode=2))
    ch.tx_commit()
    other = amqp.channel()
    assert message_count(other, q) == 2  # "two" and "three"; "one" acked by the commit
    assert [get_one(other, q, auto_ack=True)[2] for _ in range(2)] == [b"two", b"three"]
    other.queue_delete(q)


def test_confirm_on_tx_channel_is_406(amqp):
    ch = amqp.channel()
    ch.tx_select()
    with channel_error(406):
        ch.confirm_delivery()


def test_direct_reply_to_rpc(amqp):
    ch = amqp.channel()
    server_q = amqp.queue_name()
    ch.queue_declare(server_q)
    replies = []
    ch.basic_consume(
        "amq.rabbitmq.reply-to",
        lambda c, m, p, b: replies.append((p.correlation_id, b)),
        auto_ack=True,
    )
    ch.basic_publish(
        "",
        server_q,
        b"ping",
        pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="42"),
    )
    server = amqp.channel()
    method, props, body = get_one(server, server_q, auto_ack=True)
    assert body == b"ping"
    assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
    server.basic_publish("", props.reply_to, b"pong", pika.BasicProperties(correlation_id="42"))
    deadline = time.time() + 5
    while not replies and time.time() < deadline:
        ch.connection.process_data_events(time_limit=0.1)
    assert replies == [("42", b"pong")]


def test_exchange_deduplication_confirms_but_drops_duplicates(amqp):
    if amqp.broker.external:
        pytest.skip("RabbitMQ needs its deduplication plugin for this")
    ch = amqp.channel(confirm=True)
    x, q = amqp.exchange_name(), amqp.queue_name()
    ch.exchange_declare(x, "direct", arguments={"x-message-deduplication": True, "x-cache-size": 10})
    ch.queue_declare(q)
    ch.queue_bind(q, x, "k")
    props = pika.BasicProperties(message_id="order-42")
    ch.basic_publish(x, "k", b"once", props)
    ch.basic_publish(x, "k", b"once", props)  # confirmed, not routed
    assert message_count(ch, q) == 1
