"""Fixtures for the hopper Python compatibility suite.

By default every test session starts its own hopper process:

    hopper --listen 127.0.0.1:0 --data-dir <temp dir>

and reads the port from the single line the broker prints on stdout
(``hopper listening on 127.0.0.1:PORT``).  The binary is taken from
``HOPPER_BIN``, else ``$CARGO_TARGET_DIR/debug/hopper``, else
``~/.cache/hopper-target/debug/hopper``.

With ``HOPPER_TEST_EXTERNAL=host:port`` the suite runs against a broker that
is already running (for example a real RabbitMQ on 127.0.0.1:5672, which is
how the expectations in this suite are checked); tests that need to kill and
restart the broker are skipped in that mode.
"""

import ctypes
import glob
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid

import pika
import pytest

LISTEN_LINE = re.compile(r"^hopper listening on (127\.0\.0\.1):(\d+)$")
STARTUP_TIMEOUT = float(os.environ.get("HOPPER_STARTUP_TIMEOUT", "30"))
EXTERNAL = os.environ.get("HOPPER_TEST_EXTERNAL", "").strip()
USERNAME = os.environ.get("HOPPER_TEST_USER", "guest")
PASSWORD = os.environ.get("HOPPER_TEST_PASSWORD", "guest")


# One lookup of the binary for the suite and the cluster harness.
from cluster_harness import hopper_binary  # noqa: E402


def _die_with_parent():
    """Runs in the child before exec: SIGKILL the broker if pytest dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:  # pragma: no cover - best effort only
        pass


class BrokerError(RuntimeError):
    pass


class Broker:
    """A broker under test: either a hopper process we own, or an external one."""

    def __init__(self, external=None, extra_args=()):
        self.external = external is not None
        self.proc = None
        self.data_dir = None
        self.log_path = None
        self.extra_stdout = []
        self.extra_args = list(extra_args)
        self.crashes = 0
        if self.external:
            host, _, port = external.rpartition(":")
            if not host or not port.isdigit():
                raise BrokerError(f"HOPPER_TEST_EXTERNAL must be host:port, got {external!r}")
            self.host, self.port = host, int(port)
        else:
            self.binary = hopper_binary()
            if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
                raise BrokerError(
                    f"hopper binary not found at {self.binary}; build it with "
                    "`cargo build --bin hopper` or set HOPPER_BIN"
                )
            self.workdir = tempfile.mkdtemp(prefix="hopper-compat-")
            self.data_dir = os.path.join(self.workdir, "data")
            os.mkdir(self.data_dir)
            self.log_path = os.path.join(self.workdir, "hopper.log")
            self.host, self.port = None, None
            try:
                self.start()
            except BaseException:
                shutil.rmtree(self.workdir, ignore_errors=True)
                raise

    # ----------------------------------------------------------------- process
    def start(self, port=0):
        """Start hopper on `port` (0: any free port; the port it took is read back)."""
        assert not self.external
        log = open(self.log_path, "ab")
        log.write(f"---- starting hopper at {time.strftime('%H:%M:%S')} ----\n".encode())
        log.flush()
        listen = f"127.0.0.1:{port}"
        cmd = [self.binary, "--listen", listen, "--management-listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0",
               "--data-dir", self.data_dir, *self.extra_args]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            preexec_fn=_die_with_parent,
        )
        log.close()
        # (reset before reading: lines after the first may arrive in the same read)
        self.extra_stdout = []
        line = self._read_first_line()
        match = LISTEN_LINE.match(line)
        if not match:
            self.kill()
            raise BrokerError(
                f"hopper's first stdout line should be 'hopper listening on 127.0.0.1:PORT', "
                f"got {line!r}\n{self.log_tail()}"
            )
        self.host, self.port = match.group(1), int(match.group(2))
        if self.port == 0:
            self.kill()
            raise BrokerError("hopper reported port 0 instead of the port it bound")
        threading.Thread(target=self._drain_stdout, args=(self.proc,), daemon=True).start()

    def _read_first_line(self):
        fd = self.proc.stdout.fileno()
        buf = b""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise BrokerError(
                    f"hopper printed no complete line on stdout within {STARTUP_TIMEOUT}s "
                    f"(got {buf!r})\n{self.log_tail()}"
                )
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.2))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(timeout=5)
                    raise BrokerError(
                        f"hopper exited with status {code} before printing its listen line "
                        f"(stdout so far {buf!r})\n{self.log_tail()}"
                    )
                buf += chunk
        first, _, rest = buf.partition(b"\n")
        if rest.strip():
            self.extra_stdout.append(rest.decode(errors="replace"))
        return first.decode(errors="replace").rstrip("\r")

    def stdout_value(self, prefix, timeout=STARTUP_TIMEOUT):
        """The rest of the first stdout line after the listen line that starts with
        `prefix` (e.g. "hopper amqps listening on "), waiting for it if need be."""
        deadline = time.monotonic() + timeout
        while True:
            # chunks may split a line: join them, and look at complete lines only
            for line in "".join(self.extra_stdout).split("\n")[:-1]:
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            if time.monotonic() > deadline or not self.alive():
                raise BrokerError(f"hopper printed no {prefix!r} line\n{self.log_tail()}")
            time.sleep(0.02)

    def _drain_stdout(self, proc):
        for raw in proc.stdout:
            if proc is self.proc:
                self.extra_stdout.append(raw.decode(errors="replace"))

    def alive(self):
        return self.external or (self.proc is not None and self.proc.poll() is None)

    def kill(self):
        """SIGKILL the broker (no chance to flush or shut down cleanly)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        """SIGTERM, then SIGKILL if the broker is still there after 5 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self, graceful=False, same_port=False):
        """Kill -9 (or, with graceful=True, SIGTERM and wait) and start again on the
        same data dir.  The port may change (take params() again afterwards) unless
        same_port=True, for clients that reconnect to the address they know."""
        if self.external:
            pytest.skip("cannot restart an external broker (HOPPER_TEST_EXTERNAL)")
        port = self.port if same_port else 0
        if graceful:
            self.stop()
        else:
            self.kill()
        self.start(port=port)

    def url(self, vhost="%2F"):
        """amqp:// URL of this broker (guest credentials unless overridden)."""
        user, password = urllib.parse.quote(USERNAME, safe=""), urllib.parse.quote(PASSWORD, safe="")
        return f"amqp://{user}:{password}@{self.host}:{self.port}/{vhost}"

    def cleanup(self):
        if not self.external:
            self.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines=60):
        if not self.log_path or not os.path.exists(self.log_path):
            return "(no broker log)"
        with open(self.log_path, "rb") as fh:
            tail = fh.read().decode(errors="replace").splitlines()[-lines:]
        return "---- hopper stderr (tail) ----\n" + "\n".join(tail)

    # -------------------------------------------------------------- connecting
    def params(self, **overrides):
        kwargs = dict(
            host=self.host,
            port=self.port,
            virtual_host="/",
            credentials=pika.PlainCredentials(USERNAME, PASSWORD),
            connection_attempts=1,
            socket_timeout=5,
            stack_timeout=15,
            blocked_connection_timeout=15,
            client_properties={"connection_name": "hopper-compat"},
        )
        kwargs.update(overrides)
        return pika.ConnectionParameters(**kwargs)

    def connect(self, **overrides):
        return pika.BlockingConnection(self.params(**overrides))


def _safe_name(text):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:60]


class Client:
    """Per-test helper: tracked connections and unique, cleaned-up names."""

    def __init__(self, broker, test_name):
        self.broker = broker
        self.prefix = f"compat.{_safe_name(test_name)}.{uuid.uuid4().hex[:8]}"
        self._counter = 0
        self._connections = []
        self._queues = []
        self._exchanges = []
        self._conn = None

    def _next(self, kind):
        self._counter += 1
        return f"{self.prefix}.{kind}{self._counter}"

    def queue_name(self):
        """A unique queue name, deleted after the test."""
        name = self._next("q")
        self._queues.append(name)
        return name

    def exchange_name(self):
        """A unique exchange name, deleted after the test."""
        name = self._next("x")
        self._exchanges.append(name)
        return name

    def track_queue(self, name):
        """Delete this (test-chosen) queue name after the test too."""
        self._queues.append(name)

    def connect(self, **overrides):
        """A new BlockingConnection, closed after the test."""
        conn = self.broker.connect(**overrides)
        self._connections.append(conn)
        return conn

    @property
    def conn(self):
        """The test's default connection (opened on first use)."""
        if self._conn is None or not self._conn.is_open:
            self._conn = self.connect()
        return self._conn

    def channel(self, confirm=False, conn=None):
        ch = (conn or self.conn).channel()
        if confirm:
            ch.confirm_delivery()
        return ch

    def close(self):
        for conn in self._connections:
            try:
                if conn.is_open:
                    conn.close()
            except Exception:
                pass
        self._connections = []
        if not (self._queues or self._exchanges) or not self.broker.alive():
            return
        try:
            conn = self.broker.connect()
        except Exception:
            return
        try:
            for kind, names in (("queue", self._queues), ("exchange", self._exchanges)):
                for name in names:
                    try:
                        ch = conn.channel()
                        if kind == "queue":
                            ch.queue_delete(name)
                        else:
                            ch.exchange_delete(name)
                        ch.close()
                    except Exception:
                        if not conn.is_open:
                            return
        finally:
            try:
                conn.close()
            except Exception:
                pass


# ------------------------------------------------------------------ hooks
def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "hopper_todo(feature): RabbitMQ behaviour hopper does not implement yet; "
        "expected to fail (strictly) against hopper, must pass against RabbitMQ",
    )


def pytest_collection_modifyitems(config, items):
    """Against hopper, tests of features its README lists as not done are strict xfails:
    they are still run, and once the feature lands they XPASS, which fails the run
    as a reminder to drop the marker.  Against an external broker they are plain tests."""
    if EXTERNAL:
        return
    for item in items:
        marker = item.get_closest_marker("hopper_todo")
        if marker is not None:
            feature = marker.args[0] if marker.args else "this feature"
            item.add_marker(
                pytest.mark.xfail(reason=f"hopper does not implement {feature} yet", strict=True)
            )


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def _session_broker():
    broker = Broker(external=EXTERNAL or None)
    yield broker
    broker.cleanup()


@pytest.fixture
def broker(_session_broker):
    """The shared broker.  Restarted (same data dir) if an earlier test crashed it."""
    b = _session_broker
    if not b.alive():
        b.crashes += 1
        b.start()
    yield b
    if not b.alive():
        code = b.proc.returncode
        pytest.fail(f"hopper died during this test (exit status {code})\n{b.log_tail()}", pytrace=False)


@pytest.fixture
def amqp(broker, request):
    client = Client(broker, request.node.name)
    yield client
    client.close()


@pytest.fixture
def fresh_broker():
    """A private hopper with its own data dir, for tests that kill/restart it."""
    if EXTERNAL:
        pytest.skip("needs its own broker process (HOPPER_TEST_EXTERNAL is set)")
    b = Broker()
    yield b
    b.cleanup()


@pytest.fixture
def fresh_amqp(fresh_broker, request):
    client = Client(fresh_broker, request.node.name)
    yield client
    client.close()
