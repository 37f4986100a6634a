"""The asynchronous SelectConnection adapter (callback style, as used by many services)."""

import pika
from pika.exceptions import ChannelClosedByBroker


class AsyncRun:
    """Runs a SelectConnection until `finish()` is called or the time limit passes."""

    def __init__(self, broker, timeout=10, **param_overrides):
        self.timeout = timeout
        self.timed_out = False
        self.open_error = None
        self.close_reason = None
        self.events = []
        self.params = broker.params(**param_overrides)
        self.conn = None

    def run(self, on_open):
        def on_open_error(conn, err):
            self.open_error = err
            conn.ioloop.stop()

        def on_close(conn, reason):
            self.close_reason = reason
            conn.ioloop.stop()

        def on_timeout():
            self.timed_out = True
            self.conn.ioloop.stop()

        self.conn = pika.SelectConnection(
            self.params,
            on_open_callback=on_open,
            on_open_error_callback=on_open_error,
            on_close_callback=on_close,
        )
        self.conn.ioloop.call_later(self.timeout, on_timeout)
        try:
            self.conn.ioloop.start()
        finally:
            if self.timed_out and not self.conn.is_closed:
                try:
                    self.conn.close()
                    self.conn.ioloop.call_later(2, self.conn.ioloop.stop)
                    self.conn.ioloop.start()
                except Exception:
                    pass
        assert self.open_error is None, f"connection failed to open: {self.open_error!r}"
        assert not self.timed_out, f"timed out after {self.timeout}s; events so far: {self.events}"

    def finish(self):
        self.conn.close()


def test_select_publish_consume_roundtrip(broker, amqp):
    q = amqp.queue_name()
    run = AsyncRun(broker)
    received = []

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        ch.queue_declare(q, callback=lambda frame: on_declared(ch, frame))

    def on_declared(ch, frame):
        run.events.append(("declared", frame.method.queue))
        ch.basic_consume(q, on_message, callback=lambda _f: publish(ch))

    def publish(ch):
        for i in range(3):
            ch.basic_publish(
                "", q, b"async-%d" % i,
                pika.BasicProperties(correlation_id="c%d" % i, headers={"i": i}),
            )

    def on_message(ch, method, props, body):
        received.append((body, props.correlation_id, props.headers, method.redelivered))
        ch.basic_ack(method.delivery_tag)
        if len(received) == 3:
            run.finish()

    run.run(on_open)
    assert run.events == [("declared", q)]
    assert received == [(b"async-%d" % i, "c%d" % i, {"i": i}, False) for i in range(3)]
    ch = amqp.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_select_publisher_confirms(broker, amqp):
    q = amqp.queue_name()
    run = AsyncRun(broker)
    acked, nacked = set(), set()
    total = 25

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        ch.queue_declare(q, callback=lambda _f: ch.confirm_delivery(on_confirm, callback=lambda _f: publish(ch)))

    def publish(ch):
        for i in range(total):
            ch.basic_publish("", q, b"%d" % i)

    def on_confirm(frame):
        method = frame.method
        tags = range(1, method.delivery_tag + 1) if method.multiple else [method.delivery_tag]
        target = acked if isinstance(method, pika.spec.Basic.Ack) else nacked
        for tag in tags:
            if tag not in acked and tag not in nacked:
                target.add(tag)
        if len(acked) + len(nacked) == total:
            run.finish()

    run.run(on_open)
    assert nacked == set()
    assert acked == set(range(1, total + 1))
    ch = amqp.channel()
    assert ch.queue_declare(q, passive=True).method.message_count == total


def test_select_mandatory_unroutable_is_returned_before_ack(broker, amqp):
    x = amqp.exchange_name()
    amqp.channel().exchange_declare(x, exchange_type="direct")
    run = AsyncRun(broker)

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        ch.add_on_return_callback(on_return)
        ch.confirm_delivery(on_confirm, callback=lambda _f: ch.basic_publish(x, "nobody", b"bounce", mandatory=True))

    def on_return(ch, method, props, body):
        run.events.append(("return", method.reply_code, method.reply_text, body))

    def on_confirm(frame):
        kind = "ack" if isinstance(frame.method, pika.spec.Basic.Ack) else "nack"
        run.events.append((kind, frame.method.delivery_tag))
        run.finish()

    run.run(on_open)
    assert run.events == [("return", 312, "NO_ROUTE", b"bounce"), ("ack", 1)]


def test_select_channel_error_keeps_connection(broker, amqp):
    missing = amqp.queue_name()
    run = AsyncRun(broker)
    state = {}

    def on_open(conn):
        conn.channel(on_open_callback=on_first_channel)

    def on_first_channel(ch):
        ch.add_on_close_callback(on_first_closed)
        ch.queue_declare(missing, passive=True, callback=lambda _f: run.events.append("unexpected declare-ok"))

    def on_first_closed(ch, reason):
        state["reason"] = reason
        run.conn.channel(on_open_callback=on_second_channel)

    def on_second_channel(ch):
        ch.queue_declare("", exclusive=True, callback=lambda frame: on_second_declared(frame))

    def on_second_declared(frame):
        state["second"] = frame.method.queue
        state["conn_open"] = run.conn.is_open
        run.finish()

    run.run(on_open)
    assert run.events == []
    reason = state.get("reason")
    assert isinstance(reason, ChannelClosedByBroker), repr(reason)
    assert reason.reply_code == 404
    assert state["second"].startswith("amq.gen-")
    assert state["conn_open"] is True


def test_select_prefetch_and_requeue(broker, amqp):
    q = amqp.queue_name()
    ch = amqp.channel(confirm=True)
    ch.queue_declare(q)
    for i in range(6):
        ch.basic_publish("", q, b"%d" % i)
    run = AsyncRun(broker)
    seen = []

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch_):
        ch_.basic_qos(prefetch_count=2, callback=lambda _f: ch_.basic_consume(q, on_message))

    def on_message(ch_, method, props, body):
        seen.append((body, method.redelivered))
        if body == b"0" and not method.redelivered:
            ch_.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch_.basic_ack(method.delivery_tag)
        if len(seen) == 7:
            run.finish()

    run.run(on_open)
    bodies = [b for b, _ in seen]
    assert sorted(bodies) == sorted([b"%d" % i for i in range(6)] + [b"0"])
    assert seen[0] == (b"0", False)
    assert [b for b, redelivered in seen if redelivered] == [b"0"]
    # first deliveries keep queue order (RabbitMQ may deliver the requeued
    # message after messages already on their way, so its position is not fixed)
    assert [b for b, redelivered in seen if not redelivered] == [b"%d" % i for i in range(6)]
