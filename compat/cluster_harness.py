"""A hopper cluster on loopback for tests and chaos runs: N processes, faults, a link proxy.

Owns: starting N `hopper` processes (each with its own AMQP, management and
cluster-link port, data dir, config file and log, all under one work dir),
kill -9 / SIGTERM / restart of a node on the SAME ports and data dir, the
quorum-queue leader as the live nodes see it (majority answer of
`GET /api/queues/{vhost}/{name}`), and `LinkProxy`, a TCP proxy put on the
cluster link between two nodes so a fault can cut and heal it.

The cluster link is one TCP connection per node pair, dialed by the lower id
at the address its own `[cluster] peers` lists for the higher id (each node's
own entry stays its `listen` address). To proxy pair (i, j) with i < j, node
i's config lists peer j at the proxy's port; the proxy forwards to j's real
link port. The proxy outlives node restarts.

Never: touches a process it did not start, binds anything but 127.0.0.1, or
leaves a work dir behind after `cleanup()` (unless `keep=True`).

The history recorder/checker is `cluster_history`; the asyncio publishers and
consumers are `cluster_workload`.
"""

import base64
import collections
import ctypes
import glob
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pika

STARTUP_TIMEOUT = float(os.environ.get("HOPPER_STARTUP_TIMEOUT", "30"))
LISTEN_LINE = re.compile(r"^hopper listening on 127\.0\.0\.1:(\d+)$")
USER, PASSWORD = "guest", "guest"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(ROOT, "conf", "broker.toml")


def hopper_binary():
    """$HOPPER_BIN, else $CARGO_TARGET_DIR/debug/hopper, else ~/.cache/hopper-target/debug/hopper
    (the same order as conftest.py)."""
    if os.environ.get("HOPPER_BIN"):
        return os.environ["HOPPER_BIN"]
    candidates = []
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", "hopper"))
    candidates.append(os.path.expanduser("~/.cache/hopper-target/debug/hopper"))
    for base in list(candidates):
        target_dir = os.path.dirname(os.path.dirname(base))
        candidates.extend(sorted(glob.glob(os.path.join(target_dir, "*", "debug", "hopper"))))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return candidates[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    """Runs in the child before exec: SIGKILL the broker if the test process dies."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort only
        pass


def node_id_of(name):
    """`hopper@3` -> 3; anything else -> None."""
    m = re.fullmatch(r"hopper@(\d+)", str(name or ""))
    return int(m.group(1)) if m else None


class ClusterError(RuntimeError):
    pass


# ------------------------------------------------------------------ the link proxy
class LinkProxy:
    """Forwards 127.0.0.1:port to a node's cluster-link port, in threads.

    `cut("drop")` closes every forwarded connection and refuses new ones (the
    peers see the link go down at once); `cut("stall")` keeps the connections
    open but forwards nothing (a silent partition: only the peers' own timeouts
    notice; held bytes flow again on heal, as TCP would deliver them).
    """

    def __init__(self, target_port, name=""):
        self.target_port, self.name = target_port, name
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.mode = "open"
        self._pairs = set()
        self._closed = False
        self.bytes = 0
        self.connections = 0
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, daemon=True, name=f"proxy-{name}").start()

    def _accept_loop(self):
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "drop":
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = (client, upstream)
            with self._lock:
                if self._closed or self.mode == "drop":
                    client.close()
                    upstream.close()
                    continue
                self._pairs.add(pair)
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src, dst, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                # Held here while stalled; a drop cut or close() wakes us by closing.
                while not self._flowing.wait(0.2):
                    if pair not in self._pairs:
                        return
                dst.sendall(data)
                self.bytes += len(data)
        except OSError:
            pass
        finally:
            self._close_pair(pair)

    def _close_pair(self, pair):
        with self._lock:
            self._pairs.discard(pair)
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def cut(self, mode="drop"):
        if mode not in ("drop", "stall"):
            raise ValueError(f"cut mode {mode!r}: drop or stall")
        self.mode = mode
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
            with self._lock:
                pairs = list(self._pairs)
            for pair in pairs:
                self._close_pair(pair)

    def heal(self):
        self.mode = "open"
        self._flowing.set()

    def close(self):
        self._closed = True
        self._flowing.set()
        self._listener.close()
        with self._lock:
            pairs = list(self._pairs)
        for pair in pairs:
            self._close_pair(pair)


# ------------------------------------------------------------------ one node
class Node:
    """One hopper process of the cluster; its ports and data dir never change."""

    def __init__(self, cluster, node_id):
        self.cluster, self.id = cluster, node_id
        self.amqp_port, self.mgmt_port, self.link_port = free_port(), free_port(), free_port()
        base = os.path.join(cluster.workdir, f"node{node_id}")
        self.data_dir = os.path.join(base, "data")
        os.makedirs(self.data_dir)
        self.config_path = os.path.join(base, "broker.toml")
        self.log_path = os.path.join(base, "hopper.log")
        self.proc = None
        self._log_leaders, self._log_offset = {}, 0
        self.starts = 0
        self.start_seconds = []

    @property
    def name(self):
        return f"hopper@{self.id}"

    def write_config(self):
        peers = []
        for other in self.cluster.nodes:
            port = other.link_port
            proxy = self.cluster.proxies.get((self.id, other.id))
            if proxy is not None:  # we dial other (lower id dials higher): through the proxy
                port = proxy.port
            peers.append(f'{{ id = {other.id}, addr = "127.0.0.1:{port}" }}')
        with open(BASE_CONFIG) as fh:
            base = fh.read()
        section = (
            f"\n[cluster]\nnode_id = {self.id}\nlisten = \"127.0.0.1:{self.link_port}\"\n"
            f"peers = [ {', '.join(peers)} ]\nsecret_file = \"{self.cluster.secret_path}\"\n"
        )
        with open(self.config_path, "w") as fh:
            fh.write(base + section + self.cluster.extra_config)

    def start(self, timeout=STARTUP_TIMEOUT):
        """Start on this node's ports and data dir; returns once it listens for AMQP."""
        if self.alive():
            raise ClusterError(f"node {self.id} is already running")
        t0 = time.monotonic()
        log = open(self.log_path, "ab")
        log.write(f"---- starting node {self.id} at {time.strftime('%H:%M:%S')} ----\n".encode())
        log.flush()
        cmd = [
            self.cluster.binary, "--config", self.config_path,
            "--listen", f"127.0.0.1:{self.amqp_port}",
            "--management-listen", f"127.0.0.1:{self.mgmt_port}",
            "--metrics-listen", "off", "--data-dir", self.data_dir,
        ]
        env = dict(os.environ)
        if self.cluster.rust_log:
            env["RUST_LOG"] = self.cluster.rust_log
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=log, preexec_fn=_die_with_parent, env=env)
        log.close()
        self.starts += 1
        line = self._first_line(timeout)
        m = LISTEN_LINE.match(line)
        if not m or int(m.group(1)) != self.amqp_port:
            self.kill()
            raise ClusterError(f"node {self.id}: unexpected first stdout line {line!r}\n{self.log_tail()}")
        threading.Thread(target=self._drain, args=(self.proc,), daemon=True).start()
        self.start_seconds.append(time.monotonic() - t0)
        return self.start_seconds[-1]

    def _first_line(self, timeout):
        fd, buf = self.proc.stdout.fileno(), b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise ClusterError(f"node {self.id} printed no line in {timeout}s\n{self.log_tail()}")
            ready, _, _ = select.select([fd], [], [], min(left, 0.2))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    status = self.proc.wait(timeout=5)
                    raise ClusterError(f"node {self.id} exited with {status} at start\n{self.log_tail()}")
                buf += chunk
        return buf.partition(b"\n")[0].decode(errors="replace").rstrip("\r")

    @staticmethod
    def _drain(proc):
        for _ in proc.stdout:
            pass

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL: no chance to flush, hand over leadership or say goodbye."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=30)

    def terminate(self, timeout=30):
        """SIGTERM and wait (SIGKILL after `timeout`); returns the exit status."""
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            return "killed after SIGTERM timeout"

    def restart(self, graceful=False):
        if graceful:
            self.terminate()
        else:
            self.kill()
        return self.start()

    LEADER_LINE = re.compile(r"quorum queue leader queue=(\S+) .*leader=hopper@(\d+)")

    def logged_leaders(self):
        """queue -> the leader this node's log last named (read incrementally)."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                chunk = fh.read()
        except OSError:
            return self._log_leaders
        complete = chunk.rfind(b"\n") + 1  # a line still being written waits for next time
        self._log_offset += complete
        for m in self.LEADER_LINE.finditer(chunk[:complete].decode(errors="replace")):
            self._log_leaders[m.group(1)] = int(m.group(2))
        return self._log_leaders

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, "rb") as fh:
                tail = fh.read().decode(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no log)"
        return f"---- node {self.id} log (tail) ----\n" + "\n".join(tail)

    # -------------------------------------------------------------- clients
    def url(self, vhost="%2F"):
        return f"amqp://{USER}:{PASSWORD}@127.0.0.1:{self.amqp_port}/{vhost}"

    def params(self, **overrides):
        kw = dict(host="127.0.0.1", port=self.amqp_port, virtual_host="/",
                  credentials=pika.PlainCredentials(USER, PASSWORD), connection_attempts=1,
                  socket_timeout=5, stack_timeout=15, blocked_connection_timeout=30, heartbeat=0,
                  client_properties={"connection_name": f"cluster-test@{self.id}"})
        kw.update(overrides)
        return pika.ConnectionParameters(**kw)

    def connect(self, **overrides):
        return pika.BlockingConnection(self.params(**overrides))

    def api(self, path, timeout=5):
        """GET the management API; the decoded JSON, or raises (URLError, HTTPError, ...)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.mgmt_port}{path}")
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode())

    def queue_info(self, queue, vhost="/"):
        return self.api(f"/api/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(queue, safe='')}")


LeaderView = collections.namedtuple("LeaderView", "leader agreed answers reported")
LeaderView.__doc__ = """leader: the node id a majority of the cluster names (None without one);
agreed: whether it is a majority answer; answers: node id -> the leader it named (None: no
answer); reported: False when every node names a leader that is no `hopper@<id>` (then the
leader, if any, is the one the nodes' logs agree on)."""


# ------------------------------------------------------------------ the cluster
class Cluster:
    """N nodes (ids 1..N) on loopback. `proxied=True` puts a LinkProxy on every pair
    (or give a list of (i, j) pairs); `extra_config` is appended after `[cluster]`."""

    def __init__(self, size=3, binary=None, proxied=False, workdir=None, keep=False,
                 extra_config="", rust_log=None):
        self.binary = os.path.abspath(binary or hopper_binary())
        if not (os.path.isfile(self.binary) and os.access(self.binary, os.X_OK)):
            raise ClusterError(f"no hopper binary at {self.binary} (build it, or set HOPPER_BIN)")
        self.workdir = workdir or tempfile.mkdtemp(prefix="hopper-cluster-")
        os.makedirs(self.workdir, exist_ok=True)
        self.keep, self.extra_config, self.rust_log = keep, extra_config, rust_log
        self.secret_path = os.path.join(self.workdir, "cluster.secret")
        with open(self.secret_path, "w") as fh:
            fh.write(os.urandom(16).hex() + "\n")
        self.nodes = []
        self.nodes = [Node(self, i) for i in range(1, size + 1)]
        self.proxies = {}
        pairs = ([(i, j) for i in range(1, size + 1) for j in range(i + 1, size + 1)]
                 if proxied is True else list(proxied or ()))
        for i, j in pairs:
            i, j = min(i, j), max(i, j)
            self.proxies[(i, j)] = LinkProxy(self.node(j).link_port, name=f"{i}-{j}")
        for n in self.nodes:
            n.write_config()

    def node(self, node_id):
        return self.nodes[node_id - 1]

    def live(self):
        return [n for n in self.nodes if n.alive()]

    def start(self):
        for n in self.nodes:
            if not n.alive():
                n.start()
        return self

    def cleanup(self):
        for n in self.nodes:
            n.terminate(timeout=10)
        for p in self.proxies.values():
            p.close()
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -------------------------------------------------------------- link faults
    def proxy(self, i, j):
        try:
            return self.proxies[(min(i, j), max(i, j))]
        except KeyError:
            raise ClusterError(f"pair {i}-{j} has no proxy (Cluster(proxied=...))") from None

    def cut(self, i, j, mode="drop"):
        self.proxy(i, j).cut(mode)

    def heal(self, i=None, j=None):
        """Heal pair (i, j), or every pair without arguments."""
        proxies = self.proxies.values() if i is None else [self.proxy(i, j)]
        for p in proxies:
            p.heal()

    # -------------------------------------------------------------- queues
    def leader(self, queue, vhost="/"):
        """The queue's leader as the live nodes see it: the answer a majority of the
        cluster's nodes gives (and that names a live node), else leader=None."""
        answers, names = {}, []
        for n in self.live():
            try:
                name = n.queue_info(queue, vhost).get("leader")
            except Exception:
                name = None
            answers[n.id] = node_id_of(name)
            names.append(name)
        counts = collections.Counter(v for v in answers.values() if v is not None)
        if counts:
            top, votes = counts.most_common(1)[0]
            if votes > len(self.nodes) // 2 and self.node(top).alive():
                return LeaderView(top, True, answers, True)
        # Every node answered with a name that is no `hopper@<id>` (a broker whose API does
        # not name the leader): the nodes' logs may, else waiting will not change anything.
        if bool(names) and all(isinstance(x, str) and node_id_of(x) is None for x in names):
            logged = self.leader_from_logs(queue)
            return LeaderView(logged, logged is not None, answers, False)
        return LeaderView(None, False, answers, True)

    def wait_leader(self, queue, timeout=30, not_node=None, vhost="/"):
        """Wait until a majority names a live leader (other than `not_node`). On timeout
        returns the last view (leader=None): callers decide what a missing leader means."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.leader(queue, vhost)
            if view.agreed and view.leader != not_node:
                return view
            if (not view.reported and not view.agreed) or time.monotonic() > deadline:
                return view
            time.sleep(0.1)

    def leader_from_logs(self, queue):
        """The queue's leader by the nodes' logs (a fallback for brokers whose API does not
        name it): the majority of each live node's last `quorum queue leader queue=<q>
        ... leader=hopper@N` line, or None."""
        seen = [n.logged_leaders().get(queue) for n in self.live()]
        counts = collections.Counter(x for x in seen if x is not None)
        if counts:
            top, votes = counts.most_common(1)[0]
            if votes > len(self.nodes) // 2 and self.node(top).alive():
                return top
        return None

    def guess_leader(self, queue, vhost="/", timeout=15):
        """(leader id, LeaderView): the agreed leader, else the leader the lowest live node
        names, else the lowest live node."""
        view = self.wait_leader(queue, timeout=timeout, vhost=vhost)
        if view.agreed:
            return view.leader, view
        for nid in sorted(view.answers):
            if view.answers[nid] is not None and self.node(view.answers[nid]).alive():
                return view.answers[nid], view
        return self.live()[0].id, view

    def declare_quorum(self, queue, arguments=None, via=1, timeout=30):
        """Declare a durable quorum queue through node `via` (retrying while the cluster
        forms), then wait until every live node has it."""
        args = {"x-queue-type": "quorum", **(arguments or {})}
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                conn = self.node(via).connect()
                try:
                    conn.channel().queue_declare(queue, durable=True, arguments=args)
                finally:
                    conn.close()
                break
            except Exception as e:  # meta group not formed yet, node restarting...
                last = e
                if time.monotonic() > deadline:
                    raise ClusterError(f"declare {queue} through node {via}: {last!r}") from e
                time.sleep(0.2)
        for n in self.live():
            self.wait_for(lambda n=n: self._has_queue(n, queue),
                          f"queue {queue} on node {n.id}", max(1.0, deadline - time.monotonic()))

    @staticmethod
    def _has_queue(node, queue):
        try:
            return node.queue_info(queue).get("name") == queue
        except Exception:
            return False

    def message_counts(self, queue):
        """node id -> `messages` (ready + unacked) as each live node's API reports it."""
        out = {}
        for n in self.live():
            try:
                out[n.id] = n.queue_info(queue).get("messages")
            except Exception:
                out[n.id] = None
        return out

    @staticmethod
    def wait_for(predicate, what, timeout=30, step=0.1):
        """Wait until predicate() is true; ClusterError naming `what` on timeout."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(step)

    def logs_tail(self, lines=30):
        return "\n".join(n.log_tail(lines) for n in self.nodes)
