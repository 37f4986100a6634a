"""Queues: declare (passive, server-named, exclusive, auto-delete), purge, delete, arguments."""

import time

import pika
import pytest

from amqp_helpers import assert_connection_usable, channel_error, message_count, wait_until


def test_declare_returns_name_and_counts(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ok = ch.queue_declare(q)
    assert ok.method.queue == q
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0
    for i in range(3):
        ch.basic_publish("", q, b"m%d" % i)
    # redeclare (not passive) reports the counts too
    again = ch.queue_declare(q)
    assert again.method.message_count == 3
    passive = ch.queue_declare(q, passive=True)
    assert passive.method.queue == q
    assert passive.method.message_count == 3
    assert passive.method.consumer_count == 0


def test_passive_declare_reports_consumer_count(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q)
    other = amqp.channel()
    other.basic_consume(q, lambda *a: None)
    other.basic_consume(q, lambda *a: None)
    assert ch.queue_declare(q, passive=True).method.consumer_count == 2


def test_passive_declare_of_missing_queue_is_404_and_connection_survives(amqp):
    ch = amqp.channel()
    with channel_error(404) as info:
        ch.queue_declare(amqp.queue_name(), passive=True)
    assert "NOT_FOUND" in info.value.reply_text
    assert ch.is_closed
    with pytest.raises(pika.exceptions.ChannelWrongStateError):
        ch.queue_declare("", exclusive=True)
    assert_connection_usable(amqp.conn)


def test_server_named_queue(amqp):
    ch = amqp.channel(confirm=True)
    ok = ch.queue_declare("", exclusive=True)
    name = ok.method.queue
    assert name.startswith("amq.gen-"), name
    assert len(name) > len("amq.gen-")
    other = ch.queue_declare("", exclusive=True).method.queue
    assert other != name
    ch.basic_publish("", name, b"hello")
    method, _props, body = ch.basic_get(name, auto_ack=True)
    assert body == b"hello"


def test_redeclare_with_different_durable_is_406_and_connection_survives(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q, durable=False)
    with channel_error(406) as info:
        ch.queue_declare(q, durable=True)
    assert "PRECONDITION_FAILED" in info.value.reply_text
    assert_connection_usable(amqp.conn)


def test_redeclare_with_different_arguments_is_406(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q, arguments={"x-max-length": 10})
    ch.queue_declare(q, arguments={"x-max-length": 10})  # same is fine
    with channel_error(406):
        ch.queue_declare(q, arguments={"x-max-length": 20})
    # the queue itself is untouched
    ch2 = amqp.channel()
    assert ch2.queue_declare(q, passive=True).method.queue == q


def test_declare_amq_prefixed_queue_is_403(amqp):
    ch = amqp.channel()
    with channel_error(403):
        ch.queue_declare("amq.compat-" + amqp.prefix.rsplit(".", 1)[-1])


def test_exclusive_queue_is_locked_for_other_connections(amqp):
    owner = amqp.connect()
    och = owner.channel()
    q = amqp.queue_name()
    och.queue_declare(q, exclusive=True)
    other = amqp.connect()
    for attempt in (
        lambda ch: ch.queue_declare(q, passive=True),
        lambda ch: ch.queue_declare(q),
        lambda ch: ch.basic_consume(q, lambda *a: None),
        lambda ch: ch.basic_get(q),
        lambda ch: ch.queue_delete(q),
        lambda ch: ch.queue_purge(q),
    ):
        ch = other.channel()
        with channel_error(405) as info:
            attempt(ch)
        assert "RESOURCE_LOCKED" in info.value.reply_text
    assert_connection_usable(other)
    # the owner can use it on any of its channels
    och2 = owner.channel()
    och2.queue_declare(q, passive=True)
    och2.basic_publish("", q, b"mine")
    assert wait_until(owner, lambda: message_count(och2, q) == 1)


def test_exclusive_queue_deleted_when_owner_connection_closes(amqp):
    owner = amqp.connect()
    q = amqp.queue_name()
    owner.channel().queue_declare(q, exclusive=True)
    owner.close()
    ch = amqp.channel()
    deadline = time.monotonic() + 5
    while True:
        try:
            ch.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            break
        assert time.monotonic() < deadline, "exclusive queue outlived its connection"
        time.sleep(0.05)


def test_auto_delete_queue_deleted_after_last_consumer_cancels(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    probe = amqp.channel()
    assert probe.queue_declare(q, passive=True).method.consumer_count == 1
    ch.basic_cancel(t2)
    deadline = time.monotonic() + 5
    while True:
        try:
            probe.queue_declare(q, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            break
        assert time.monotonic() < deadline, "auto-delete queue survived its last consumer"
        time.sleep(0.05)


def test_auto_delete_queue_without_consumers_stays(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q, auto_delete=True)
    time.sleep(0.2)
    assert ch.queue_declare(q, passive=True).method.queue == q


def test_purge_returns_count(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q)
    for i in range(5):
        ch.basic_publish("", q, b"x")
    ok = ch.queue_purge(q)
    assert ok.method.message_count == 5
    assert message_count(ch, q) == 0
    assert ch.queue_purge(q).method.message_count == 0


def test_purge_keeps_unacked_messages(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"held")
    ch.basic_publish("", q, b"ready")
    method, _p, body = ch.basic_get(q)
    assert body == b"held"
    assert ch.queue_purge(q).method.message_count == 1
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body == b"held"


def test_delete_returns_count_and_removes_queue(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q)
    for _ in range(4):
        ch.basic_publish("", q, b"x")
    assert ch.queue_delete(q).method.message_count == 4
    with channel_error(404):
        ch.queue_declare(q, passive=True)


def test_delete_missing_queue_is_ok(amqp):
    ch = amqp.channel()
    assert ch.queue_delete(amqp.queue_name()).method.message_count == 0
    assert ch.is_open


def test_delete_if_empty_on_nonempty_queue_is_406(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    with channel_error(406):
        ch.queue_delete(q, if_empty=True)
    ch = amqp.channel()
    assert message_count(ch, q) == 1


def test_delete_if_unused_with_consumer_is_406(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    other = amqp.channel()
    with channel_error(406):
        other.queue_delete(q, if_unused=True)


def test_deleting_queue_cancels_its_consumers(amqp):
    """RabbitMQ sends basic.cancel (consumer_cancel_notify) when the queue goes away."""
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q)
    cancelled = []
    ch.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = ch.basic_consume(q, lambda *a: None)
    amqp.channel().queue_delete(q)
    assert wait_until(amqp.conn, lambda: cancelled), "no basic.cancel from the broker"
    assert cancelled == [tag]
    assert ch.is_open


def test_max_length_drops_oldest(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q, arguments={"x-max-length": 3})
    for i in range(5):
        ch.basic_publish("", q, b"m%d" % i)
    assert message_count(ch, q) == 3
    bodies = [ch.basic_get(q, auto_ack=True)[2] for _ in range(3)]
    assert bodies == [b"m2", b"m3", b"m4"]


def test_priority_queue_delivers_highest_first(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q, arguments={"x-max-priority": 10})
    for prio, body in ((1, b"low"), (9, b"high"), (5, b"mid"), (None, b"none"), (9, b"high2")):
        ch.basic_publish("", q, body, pika.BasicProperties(priority=prio))
    bodies = [ch.basic_get(q, auto_ack=True)[2] for _ in range(5)]
    assert bodies == [b"high", b"high2", b"mid", b"low", b"none"]


def test_message_ttl_queue_argument(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q, arguments={"x-message-ttl": 100})
    ch.basic_publish("", q, b"short-lived")
    time.sleep(0.4)
    assert ch.basic_get(q) == (None, None, None)
    assert message_count(ch, q) == 0


def test_per_message_expiration(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q)
    ch.basic_publish("", q, b"expires", pika.BasicProperties(expiration="50"))
    ch.basic_publish("", q, b"stays", pika.BasicProperties(expiration="600000"))
    time.sleep(0.3)
    method, props, body = ch.basic_get(q, auto_ack=True)
    assert body == b"stays"
    assert props.expiration == "600000"
    assert ch.basic_get(q) == (None, None, None)


def test_dead_letter_on_reject(amqp):
    ch = amqp.channel(confirm=True)
    dlx = amqp.exchange_name()
    q, dlq = amqp.queue_name(), amqp.queue_name()
    ch.exchange_declare(dlx, exchange_type="fanout")
    ch.queue_declare(dlq)
    ch.queue_bind(dlq, dlx)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", q, b"doomed", pika.BasicProperties(headers={"k": "v"}))
    method, _p, _b = ch.basic_get(q)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert wait_until(amqp.conn, lambda: message_count(ch, dlq) == 1), "nothing dead-lettered"
    method, props, body = ch.basic_get(dlq, auto_ack=True)
    assert body == b"doomed"
    assert props.headers["k"] == "v"
    deaths = props.headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1
    death = deaths[0]
    assert death["reason"] == "rejected"
    assert death["queue"] == q
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == [q]


def test_queue_name_with_unicode(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name() + ".ünïcödé-✓"
    amqp.track_queue(q)
    ch.queue_declare(q)
    ch.basic_publish("", q, "grüße".encode())
    method, _p, body = ch.basic_get(q, auto_ack=True)
    assert body.decode() == "grüße"
    assert ch.queue_declare(q, passive=True).method.queue == q


def test_consume_from_missing_queue_is_404(amqp):
    ch = amqp.channel()
    with channel_error(404):
        ch.basic_consume(amqp.queue_name(), lambda *a: None)
    assert_connection_usable(amqp.conn)


def test_max_length_bytes_drops_oldest(amqp):
    ch = amqp.channel(confirm=True)
    q = amqp.queue_name()
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, body)
    bodies = []
    while True:
        method, _p, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            break
        bodies.append(body)
    assert bodies == [b"bbbb", b"cccc"]


def test_reject_publish_dlx_nacks_and_dead_letters(amqp):
    ch = amqp.channel(confirm=True)
    q, dlq = amqp.queue_name(), amqp.queue_name()
    ch.queue_declare(dlq)
    ch.queue_declare(q, arguments={
        "x-max-length": 1,
        "x-overflow": "reject-publish-dlx",
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dlq,
    })
    ch.basic_publish("", q, b"kept")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"refused")
    assert wait_until(ch.connection, lambda: message_count(ch, dlq) == 1)
    assert message_count(ch, q) == 1


def test_queue_expires_when_unused(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q, arguments={"x-expires": 300})
    time.sleep(1.0)
    with channel_error(404):
        ch.queue_declare(q, passive=True)


def test_single_active_consumer(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q, arguments={"x-single-active-consumer": True})
    got = {"first": [], "second": []}
    tag1 = ch.basic_consume(q, lambda c, m, p, b: got["first"].append(b), auto_ack=True)
    ch.basic_consume(q, lambda c, m, p, b: got["second"].append(b), auto_ack=True)
    for i in range(3):
        ch.basic_publish("", q, b"%d" % i)
    assert wait_until(ch.connection, lambda: len(got["first"]) == 3)
    ch.basic_cancel(tag1)
    ch.basic_publish("", q, b"3")
    assert wait_until(ch.connection, lambda: got["second"] == [b"3"])
    assert got["second"] == [b"3"]


def test_consumer_priority(amqp):
    ch = amqp.channel()
    q = amqp.queue_name()
    ch.queue_declare(q)
    got = {"low": [], "high": []}
    ch.basic_consume(q, lambda c, m, p, b: got["low"].append(b), auto_ack=True,
                     arguments={"x-priority": 1})
    ch.basic_consume(q, lambda c, m, p, b: got["high"].append(b), auto_ack=True,
                     arguments={"x-priority": 10})
    for i in range(5):
        ch.basic_publish("", q, b"%d" % i)
    assert wait_until(ch.connection, lambda: len(got["high"]) == 5)
    assert got["low"] == []
