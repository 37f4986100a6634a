"""Access control seen by pika: a user whose password hash was made here the
way RabbitMQ makes it (base64(salt ++ SHA-256(salt ++ password))), with
permissions that refuse some publishes and consumes with 403 ACCESS_REFUSED."""

import base64
import hashlib
import os
import tempfile

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, ProbableAccessDeniedError

from conftest import EXTERNAL, Broker

CONF = os.path.join(os.path.dirname(__file__), os.pardir, "conf", "broker.toml")


def rabbitmq_hash(password):
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


@pytest.fixture(scope="module")
def restricted_broker():
    if EXTERNAL:
        pytest.skip("configures its own users (HOPPER_TEST_EXTERNAL is set)")
    with open(CONF) as fh:
        text = fh.read()
    text += f"""
[[users]]
name = "app"
password_hash = "{rabbitmq_hash('app-pw')}"
permissions = [{{ vhost = "/", configure = "^app\\\\.", write = "^app\\\\.", read = "^app\\\\." }}]
"""
    fd, path = tempfile.mkstemp(prefix="hopper-access-", suffix=".toml")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    b = Broker(extra_args=["--config", path])
    yield b
    b.cleanup()
    os.unlink(path)


def app_channel(broker):
    conn = broker.connect(credentials=pika.PlainCredentials("app", "app-pw"))
    return conn, conn.channel()


def test_allowed_names_work(restricted_broker):
    conn, ch = app_channel(restricted_broker)
    ch.confirm_delivery()
    ch.exchange_declare("app.x", "direct")
    ch.queue_declare("app.q")
    ch.queue_bind("app.q", "app.x", "k")
    ch.basic_publish("app.x", "k", b"hello")
    method, _props, body = ch.basic_get("app.q", auto_ack=True)
    assert body == b"hello"
    conn.close()


def test_publish_to_a_refused_exchange_is_403(restricted_broker):
    conn, ch = app_channel(restricted_broker)
    ch.confirm_delivery()
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.basic_publish("", "app.q", b"x")
    assert info.value.reply_code == 403
    assert info.value.reply_text == (
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'app'"
    )
    assert conn.is_open
    conn.close()


def test_consume_from_a_refused_queue_is_403(restricted_broker):
    admin = restricted_broker.connect()
    admin.channel().queue_declare("other.q")
    conn, ch = app_channel(restricted_broker)
    with pytest.raises(ChannelClosedByBroker) as info:
        ch.basic_consume("other.q", lambda *a: None)
    assert info.value.reply_code == 403
    assert info.value.reply_text == (
        "ACCESS_REFUSED - access to queue 'other.q' in vhost '/' refused for user 'app'"
    )
    conn.close()
    admin.close()


def test_vhost_without_permissions_is_530(restricted_broker):
    # guest's entry names only "/", and "app" has none for other vhosts either.
    with pytest.raises(ProbableAccessDeniedError) as info:
        restricted_broker.connect(
            credentials=pika.PlainCredentials("app", "app-pw"), virtual_host="nope"
        )
    assert "530" in str(info.value), repr(info.value)
