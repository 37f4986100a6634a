"""Connection-level behaviour: handshake, capabilities, auth, heartbeats, channels."""

import time

import pika
import pytest
from pika.exceptions import ProbableAccessDeniedError, ProbableAuthenticationError

from amqp_helpers import assert_connection_usable, pump


def test_blocking_connection_opens_and_closes(amqp):
    conn = amqp.connect()
    assert conn.is_open
    ch = conn.channel()
    assert ch.is_open
    ch.close()
    assert ch.is_closed
    conn.close()
    assert conn.is_closed


def test_server_properties_advertise_rabbitmq_capabilities(amqp):
    """pika (and kombu) look at these to enable confirms, nacks, cancel notifications."""
    props = amqp.conn._impl.server_properties
    caps = props.get("capabilities")
    assert isinstance(caps, dict), f"server_properties without capabilities table: {props!r}"
    for cap in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "per_consumer_qos",
    ):
        assert caps.get(cap) is True, f"capability {cap!r} missing or false in {caps!r}"
    for key in ("product", "version", "platform"):
        assert key in props, f"server property {key!r} missing in {props!r}"
    assert amqp.conn._impl.publisher_confirms
    assert amqp.conn._impl.basic_nack
    assert amqp.conn._impl.consumer_cancel_notify
    assert amqp.conn._impl.exchange_exchange_bindings


def test_server_says_rabbitmq_3x_so_kombu_uses_global_qos(amqp):
    """kombu (Celery) takes RabbitMQ 3.3 to 3.x semantics (global basic.qos) only
    when `product` is "RabbitMQ"; it reads the version too."""
    from kombu.transport.pyamqp import Transport

    props = amqp.conn._impl.server_properties
    assert props["product"] == "RabbitMQ"
    major, minor, _patch = (int(p) for p in props["version"].split("."))
    assert major == 3 and minor >= 3

    class _Conn:
        server_properties = props

    assert Transport.qos_semantics_matches_spec(None, _Conn()) is False


def test_update_secret_is_accepted_and_the_connection_keeps_working(amqp):
    """RabbitMQ 3.x answers update-secret-ok (its internal users' state cannot
    expire, so the secret is not re-checked) and the connection goes on."""
    amqp.conn.update_secret("guest", "token refresh")
    amqp.conn.update_secret("not the password", "rotation")
    assert_connection_usable(amqp.conn)


def test_tune_defaults_match_rabbitmq(amqp):
    """RabbitMQ proposes frame_max 131072, channel_max 2047, heartbeat 60 s;
    pika (no preferences given) takes the server's heartbeat and the smaller limits."""
    params = amqp.conn._impl.params
    assert params.frame_max == 131072
    assert params.channel_max == 2047
    assert params.heartbeat == 60


def test_wrong_password_is_refused(broker):
    """The client advertises authentication_failure_close, so the broker must say
    403 ACCESS_REFUSED with connection.close rather than just dropping the socket."""
    params = broker.params(credentials=pika.PlainCredentials("guest", "definitely-wrong"))
    with pytest.raises(ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    assert "403" in str(info.value) and "ACCESS_REFUSED" in str(info.value), repr(info.value)


def test_unknown_user_is_refused(broker):
    params = broker.params(credentials=pika.PlainCredentials("no-such-user-xyz", "guest"))
    with pytest.raises(ProbableAuthenticationError) as info:
        pika.BlockingConnection(params)
    assert "ACCESS_REFUSED" in str(info.value), repr(info.value)


def test_unknown_vhost_is_refused(broker):
    params = broker.params(virtual_host="no-such-vhost-xyz")
    with pytest.raises(ProbableAccessDeniedError) as info:
        pika.BlockingConnection(params)
    # RabbitMQ answers connection.open for an unknown vhost with 530 NOT_ALLOWED
    assert "530" in str(info.value) and "NOT_ALLOWED" in str(info.value), repr(info.value)


def test_refused_login_does_not_break_the_next_one(broker):
    with pytest.raises(ProbableAuthenticationError):
        pika.BlockingConnection(broker.params(credentials=pika.PlainCredentials("guest", "nope")))
    conn = broker.connect()
    try:
        assert_connection_usable(conn)
    finally:
        conn.close()


def test_heartbeat_negotiation_keeps_idle_connection_open(amqp):
    """heartbeat=2: the broker must send heartbeats and accept pika's.

    pika checks every (timeout + 5) = 7 s that *something* arrived, and the broker
    should drop a client that sends nothing for 2 intervals; idling 8 s covers both.
    """
    conn = amqp.connect(heartbeat=2)
    assert conn._impl.params.heartbeat == 2
    received_before = conn._impl.bytes_received
    pump(conn, 8.0)
    assert conn.is_open, "connection closed while idle with heartbeat=2"
    # only heartbeat frames (8 bytes each) can have arrived while idle
    assert conn._impl.bytes_received - received_before >= 8, "broker sent no heartbeat in 8 s"
    assert_connection_usable(conn)


def test_heartbeat_disabled_connection_works(amqp):
    conn = amqp.connect(heartbeat=0)
    assert conn._impl.params.heartbeat == 0
    pump(conn, 0.5)
    assert_connection_usable(conn)


def test_many_channels_on_one_connection(amqp):
    conn = amqp.conn
    q = amqp.queue_name()
    setup = conn.channel()
    setup.queue_declare(q)
    channels = [conn.channel() for _ in range(40)]
    numbers = {ch.channel_number for ch in channels}
    assert len(numbers) == 40
    for i, ch in enumerate(channels):
        ch.confirm_delivery()
        ch.basic_publish("", q, str(i).encode())
    assert setup.queue_declare(q, passive=True).method.message_count == 40
    for ch in channels[::2]:
        ch.close()
    assert all(ch.is_open for ch in channels[1::2])
    assert_connection_usable(conn)


def test_channel_close_and_reopen(amqp):
    conn = amqp.conn
    for _ in range(5):
        ch = conn.channel()
        ch.queue_declare("", exclusive=True)
        ch.close()
    assert_connection_usable(conn)


def test_connection_close_is_prompt(amqp):
    conn = amqp.connect()
    conn.channel()
    start = time.monotonic()
    conn.close()
    assert conn.is_closed
    assert time.monotonic() - start < 3.0
