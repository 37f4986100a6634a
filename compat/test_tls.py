"""amqps: pika over TLS (ssl.create_default_context trusting a CA made for the test).

The certificates are made with the ``openssl`` command (Python's ``ssl`` module
cannot create them; ``scripts/test-all.sh`` installs openssl when it is missing):
a CA, a server certificate it signs for localhost and 127.0.0.1 with an RSA key in
the traditional PKCS#1 form, and an EC key in SEC1 form for a second broker, so
both key encodings that RabbitMQ users commonly have are loaded (the Rust tests
use PKCS#8).  Each test here starts its own broker with a ``[tls]`` config, so the
module skips against an external broker.
"""

import os
import shutil
import socket
import ssl
import subprocess
import tempfile

import pika
import pytest
from pika.exceptions import AMQPConnectionError

from conftest import EXTERNAL, Broker

pytestmark = pytest.mark.skipif(
    bool(EXTERNAL), reason="needs a broker started with a [tls] config (HOPPER_TEST_EXTERNAL is set)"
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMQPS_LINE = "hopper amqps listening on "


def _openssl(*args, cwd):
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make test certificates (apt-get install openssl)")
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(workdir, name):
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=workdir,
    )
    return os.path.join(workdir, f"{name}.pem")


def sign_server_cert(workdir, ca, key_file, out):
    """A certificate for localhost / 127.0.0.1 over `key_file`, signed by `ca`."""
    with open(os.path.join(workdir, "server.ext"), "w") as fh:
        fh.write(
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
            "extendedKeyUsage=serverAuth\n"
            "basicConstraints=CA:FALSE\n"
        )
    _openssl("req", "-new", "-key", key_file, "-subj", "/CN=localhost", "-out", "server.csr", cwd=workdir)
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", out,
        cwd=workdir,
    )
    return os.path.join(workdir, out)


@pytest.fixture(scope="module")
def pki():
    workdir = tempfile.mkdtemp(prefix="hopper-compat-tls-")
    ca = make_ca(workdir, "ca")
    # RSA key in PKCS#1 ("BEGIN RSA PRIVATE KEY")
    _openssl("genrsa", "-traditional", "-out", "rsa.key", "2048", cwd=workdir)
    rsa_cert = sign_server_cert(workdir, "ca", "rsa.key", "rsa.pem")
    # EC key in SEC1 ("BEGIN EC PRIVATE KEY", after an EC PARAMETERS section)
    _openssl("ecparam", "-genkey", "-name", "prime256v1", "-out", "ec.key", cwd=workdir)
    ec_cert = sign_server_cert(workdir, "ca", "ec.key", "ec.pem")
    with open(os.path.join(workdir, "rsa.key")) as fh:
        assert "BEGIN RSA PRIVATE KEY" in fh.read()
    with open(os.path.join(workdir, "ec.key")) as fh:
        assert "BEGIN EC PRIVATE KEY" in fh.read()
    yield {
        "dir": workdir,
        "ca": ca,
        "rsa": (rsa_cert, os.path.join(workdir, "rsa.key")),
        "ec": (ec_cert, os.path.join(workdir, "ec.key")),
        "other_ca": make_ca(workdir, "other"),
    }
    shutil.rmtree(workdir, ignore_errors=True)


def start_tls_broker(pki, kind):
    cert, key = pki[kind]
    with open(os.path.join(ROOT, "conf", "broker.toml")) as fh:
        text = fh.read()
    text += f'\n[tls]\nlisten = "127.0.0.1:0"\ncert_file = "{cert}"\nkey_file = "{key}"\n'
    config = os.path.join(pki["dir"], f"broker-{kind}.toml")
    with open(config, "w") as fh:
        fh.write(text)
    broker = Broker(extra_args=["--config", config])
    try:
        host, _, port = broker.stdout_value(AMQPS_LINE).rpartition(":")
        broker.tls_host, broker.tls_port = host, int(port)
    except BaseException:
        broker.cleanup()
        raise
    return broker


@pytest.fixture(scope="module")
def tls_broker(pki):
    broker = start_tls_broker(pki, "rsa")
    yield broker
    broker.cleanup()


def tls_params(broker, cafile, **overrides):
    context = ssl.create_default_context(cafile=cafile)
    return broker.params(
        port=broker.tls_port,
        ssl_options=pika.SSLOptions(context, server_hostname="localhost"),
        **overrides,
    )


def test_publish_with_confirms_and_consume_over_tls(tls_broker, pki):
    conn = pika.BlockingConnection(tls_params(tls_broker, pki["ca"]))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        q = ch.queue_declare("", exclusive=True).method.queue
        bodies = [f"tls {i}".encode() for i in range(20)] + [os.urandom(300_000)]
        for body in bodies:
            ch.basic_publish("", q, body, mandatory=True)  # raises unless acked
        got = []
        for _method, _props, body in ch.consume(q, inactivity_timeout=5):
            assert body is not None, f"only {len(got)} of {len(bodies)} messages arrived"
            got.append(body)
            if len(got) == len(bodies):
                break
        ch.cancel()
        assert got == bodies
    finally:
        conn.close()


def test_plain_listener_still_serves_beside_tls(tls_broker, pki):
    """Publish on the plain port, get it on the TLS port: one broker behind both."""
    plain = tls_broker.connect()
    secure = pika.BlockingConnection(tls_params(tls_broker, pki["ca"]))
    try:
        pch = plain.channel()
        pch.confirm_delivery()
        q = pch.queue_declare("").method.queue
        pch.basic_publish("", q, b"from plain")
        method, _props, body = secure.channel().basic_get(q, auto_ack=True)
        assert method is not None and body == b"from plain"
        pch.queue_delete(q)
    finally:
        plain.close()
        secure.close()


def test_untrusted_certificate_is_refused_by_the_client(tls_broker, pki):
    # (pika 1.3 re-raises the ssl module's verification error as it is)
    with pytest.raises((ssl.SSLCertVerificationError, AMQPConnectionError)):
        pika.BlockingConnection(tls_params(tls_broker, pki["other_ca"]))
    conn = pika.BlockingConnection(tls_params(tls_broker, pki["ca"]))
    assert conn.is_open
    conn.close()


def test_plain_amqp_on_the_tls_port_is_dropped(tls_broker, pki):
    with pytest.raises(AMQPConnectionError):
        pika.BlockingConnection(tls_broker.params(port=tls_broker.tls_port))
    # a raw socket speaking AMQP there is closed too (after a TLS alert, if any)
    with socket.create_connection(("127.0.0.1", tls_broker.tls_port), timeout=5) as sock:
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        while sock.recv(4096):
            pass
    assert tls_broker.alive()
    conn = pika.BlockingConnection(tls_params(tls_broker, pki["ca"]))
    assert conn.is_open
    conn.close()


def test_ec_key_in_sec1_form_is_loaded(pki):
    broker = start_tls_broker(pki, "ec")
    try:
        conn = pika.BlockingConnection(tls_params(broker, pki["ca"]))
        ch = conn.channel()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"ec")
        method, _props, body = ch.basic_get(q, auto_ack=True)
        assert body == b"ec"
        conn.close()
    finally:
        broker.cleanup()
