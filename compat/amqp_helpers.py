"""Small helpers shared by the compat tests (bounded waits, error checks)."""

import contextlib
import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker


def wait_until(conn, predicate, timeout=5.0, step=0.05):
    """Process the connection's events until predicate() is true or timeout.

    Returns the final value of predicate() so callers can assert on it.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return bool(predicate())
        conn.process_data_events(time_limit=min(step, remaining))


def pump(conn, seconds):
    """Process the connection's events for a fixed time (to see that nothing more arrives)."""
    deadline = time.monotonic() + seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        conn.process_data_events(time_limit=min(0.05, remaining))


@contextlib.contextmanager
def channel_error(code):
    """Expect the block to raise ChannelClosedByBroker with the given reply code."""
    with pytest.raises(ChannelClosedByBroker) as info:
        yield info
    assert info.value.reply_code == code, (
        f"expected channel error {code}, got {info.value.reply_code} {info.value.reply_text!r}"
    )


def assert_connection_usable(conn):
    """The connection is still open and works: new channel, declare, publish, get."""
    assert conn.is_open, "connection was closed, only the channel should have been"
    ch = conn.channel()
    q = ch.queue_declare(queue="", exclusive=True).method.queue
    ch.confirm_delivery()
    ch.basic_publish("", q, b"still-alive")
    method, _props, body = ch.basic_get(q, auto_ack=True)
    assert method is not None and body == b"still-alive"
    ch.close()
    assert conn.is_open


def get_one(ch, queue, auto_ack=False, timeout=5.0):
    """basic_get, retrying briefly: returns (method, properties, body) or fails."""
    deadline = time.monotonic() + timeout
    while True:
        method, props, body = ch.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            return method, props, body
        if time.monotonic() > deadline:
            pytest.fail(f"no message arrived in {queue!r} within {timeout}s")
        ch.connection.process_data_events(time_limit=0.05)


def message_count(ch, queue):
    return ch.queue_declare(queue, passive=True).method.message_count


def wait_message_count(ch, queue, expected, timeout=5.0):
    """Poll a passive declare until the queue holds `expected` messages."""
    deadline = time.monotonic() + timeout
    while True:
        count = message_count(ch, queue)
        if count == expected or time.monotonic() > deadline:
            return count
        ch.connection.process_data_events(time_limit=0.05)


class Collector:
    """basic_consume callback that records deliveries."""

    def __init__(self, ch=None, ack=False):
        self.ch = ch
        self.ack = ack
        self.messages = []

    def __call__(self, ch, method, props, body):
        self.messages.append((method, props, body))
        if self.ack:
            ch.basic_ack(method.delivery_tag)

    @property
    def bodies(self):
        return [m[2] for m in self.messages]

    def __len__(self):
        return len(self.messages)


def persistent():
    return pika.BasicProperties(delivery_mode=2)
