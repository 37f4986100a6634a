"""Confirming publishers and acking consumers spread over a cluster's nodes.

Owns: an asyncio loop in a thread of its own running aiormq clients (the
library under aio-pika) against one queue, recording everything in a
`cluster_history.History`:

- a publisher keeps a window of publishes in flight on its node (message-id
  `<prefix><publisher>-<seq>`, header `attempt`, a checkable body), waits for
  their confirms, and retries every one not acked (nacked, connection or
  channel lost, no confirm within `confirm_timeout`) with the same message-id
  and the next attempt number on ANOTHER node; it goes back to its home node
  once that has worked for `return_home_after` seconds;
- a consumer on its node acks each delivery after recording it (an ack lost
  with a node is a redelivery: at-least-once), and records the ack as sent
  (its consumer named `<prefix>c<n>#<connection>@<node>`); when its connection breaks it
  reconnects to the next node (ids in turn), and goes back home (cancel, ack
  what is in flight, reconnect) once it has been away `return_home_after` s,
  so every node keeps a consumer.

Never: kills, restarts or inspects processes (the caller does faults), or
judges the history (`History.report()` does).
"""

import asyncio
import logging
import threading
import time

import aiormq
from aiormq.exceptions import DeliveryError
from pamqp import commands as spec

from cluster_history import body_for, body_matches

# aiormq logs every connection a killed node drops, with a traceback: expected here.
logging.getLogger("aiormq").setLevel(logging.CRITICAL)


class Workload:
    def __init__(self, cluster, queue, history, publishers=None, consumers=None, window=20, size=200,
                 rate=None, prefix="m", prefetch=50, confirm_timeout=45.0, max_messages=None,
                 return_home_after=5.0):
        """publishers/consumers: the home node id of each (default: one of each per node);
        rate: messages/s per publisher (None: as fast as confirms come back);
        max_messages: new message ids per publisher (None: until stop_publishing())."""
        ids = [n.id for n in cluster.nodes]
        self.cluster, self.queue, self.history = cluster, queue, history
        self.publishers = list(ids if publishers is None else publishers)
        self.consumers = list(ids if consumers is None else consumers)
        self.window, self.size, self.rate, self.prefix = window, size, rate, prefix
        self.prefetch, self.confirm_timeout = prefetch, confirm_timeout
        self.max_messages, self.return_home_after = max_messages, return_home_after
        self._ids = ids
        self._stop_pub = False
        self._give_up_at = None
        self._stop_con = False
        self._pub_done = threading.Event()
        self._con_done = threading.Event()
        self.unconfirmed_at_stop = []  # (mid, attempt) a publisher gave up on
        self.errors = []  # unexpected client-side exceptions (for the report)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"workload-{prefix}")

    # ------------------------------------------------------------------ control
    def start(self):
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._run(self._publisher, self.publishers, self._pub_done), self._loop)
        asyncio.run_coroutine_threadsafe(self._run(self._consumer, self.consumers, self._con_done), self._loop)
        return self

    def stop_publishing(self, timeout=60):
        """No new message ids; publishers keep retrying what is unconfirmed until every
        id is acked or `timeout`. Returns whether every publisher finished in time."""
        self._give_up_at = time.monotonic() + timeout
        self._stop_pub = True
        return self._pub_done.wait(timeout + self.confirm_timeout + 10)

    def publishers_done(self):
        return self._pub_done.is_set()

    def wait_drained(self, timeout=60, idle=1.5):
        """Wait until every confirmed id has been consumed, or every live node reports
        the queue empty, with no delivery for `idle` seconds. False on timeout."""
        h, deadline = self.history, time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = h.last_delivery_at()
            quiet = last is None or h.now() - last >= idle
            if quiet and h.confirmed_ids() <= h.consumed_ids():
                return True
            if quiet:
                counts = self.cluster.message_counts(self.queue)
                if counts and all(c == 0 for c in counts.values()):
                    return True
            time.sleep(0.2)
        return False

    def stop(self):
        """Stop everything (publishers give up at once) and the loop."""
        self._give_up_at = time.monotonic()
        self._stop_pub = self._stop_con = True
        self._pub_done.wait(self.confirm_timeout + 15)
        self._con_done.wait(15)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    # ------------------------------------------------------------------ clients
    async def _run(self, fn, homes, done):
        try:
            results = await asyncio.gather(*(fn(i, home) for i, home in enumerate(homes)), return_exceptions=True)
            self.errors.extend(repr(r) for r in results if isinstance(r, BaseException))
        finally:
            done.set()

    def _next(self, node):
        return self._ids[(self._ids.index(node) + 1) % len(self._ids)]

    async def _connect(self, node):
        conn = await asyncio.wait_for(aiormq.connect(self.cluster.node(node).url() + "?heartbeat=0"), 5)
        return conn

    @staticmethod
    async def _close(conn):
        if conn is None:
            return
        try:
            await asyncio.wait_for(conn.close(), 3)
        except BaseException:  # noqa: B036 - a dead connection may fail to close in any way
            pass

    async def _publisher(self, pid, home):
        h, node, conn, ch = self.history, home, None, None
        retry, seq, issued, ok_since = [], 0, 0, time.monotonic()
        while True:
            if self._stop_pub and (not retry or time.monotonic() >= self._give_up_at):
                self.unconfirmed_at_stop.extend(retry)
                break
            batch, retry = retry[:self.window], retry[self.window:]
            while (not self._stop_pub and len(batch) < self.window
                   and (self.max_messages is None or issued < self.max_messages)):
                batch.append((f"{self.prefix}{pid}-{seq}", 1))
                seq, issued = seq + 1, issued + 1
            if not batch:
                if self.max_messages is not None and issued >= self.max_messages:
                    break
                await asyncio.sleep(0.05)
                continue
            if node != home and time.monotonic() - ok_since > self.return_home_after:
                await self._close(conn)
                conn, node = None, home
            started = time.monotonic()
            try:
                if conn is None or conn.is_closed:
                    conn = await self._connect(node)
                    ch = await asyncio.wait_for(conn.channel(publisher_confirms=True), 5)
            except BaseException as e:  # noqa: B036 - refused, reset, timed out: try another node
                if isinstance(e, asyncio.CancelledError):
                    raise
                await self._close(conn)
                conn, retry, node, ok_since = None, batch + retry, self._next(node), time.monotonic()
                await asyncio.sleep(0.1)
                continue
            tasks = []
            for mid, attempt in batch:
                h.publish_sent(mid, attempt, node, self.queue)
                props = spec.Basic.Properties(message_id=mid, delivery_mode=2, headers={"attempt": attempt})
                tasks.append(asyncio.ensure_future(
                    ch.basic_publish(body_for(mid, attempt, self.size), routing_key=self.queue, properties=props)))
            _, pending = await asyncio.wait(tasks, timeout=self.confirm_timeout)
            failed = False
            for (mid, attempt), t in zip(batch, tasks):
                if t in pending:
                    t.cancel()
                    outcome = "timeout"
                elif t.cancelled() or t.exception() is not None:
                    outcome = "nack" if isinstance(t.exception() if not t.cancelled() else None,
                                                   DeliveryError) else "closed"
                else:
                    outcome = "ack" if isinstance(t.result(), spec.Basic.Ack) else "nack"
                h.publish_done(mid, attempt, outcome)
                if outcome != "ack":
                    retry.append((mid, attempt + 1))
                    failed = True
            if failed:
                await self._close(conn)
                conn, node, ok_since = None, self._next(node), time.monotonic()
            elif self.rate:
                await asyncio.sleep(max(0.0, len(batch) / self.rate - (time.monotonic() - started)))
        await self._close(conn)

    async def _consumer(self, cid, home):
        h, node, serial = self.history, home, 0
        while not self._stop_con:
            conn, going_home = None, False
            serial += 1
            try:
                conn = await self._connect(node)
                ch = await asyncio.wait_for(conn.channel(), 5)
                await asyncio.wait_for(ch.basic_qos(prefetch_count=self.prefetch), 5)
                at, who = node, f"{self.prefix}c{cid}#{serial}@{node}"

                async def on_message(msg, at=at, who=who):
                    props = msg.header.properties
                    headers = props.headers or {}
                    mid, attempt = props.message_id, headers.get("attempt")
                    h.consumed(mid, attempt, at, msg.delivery.redelivered, headers.get("x-delivery-count"),
                               body_matches(msg.body, mid, attempt), consumer=who)
                    await msg.channel.basic_ack(msg.delivery.delivery_tag)
                    h.delivery_acked(mid, attempt, at, who)

                ok = await asyncio.wait_for(ch.basic_consume(self.queue, on_message), 10)
                since = time.monotonic()
                while not self._stop_con and not conn.is_closed and not ch.is_closed:
                    if node != home and time.monotonic() - since > self.return_home_after:
                        # Back home (so every node keeps a consumer): cancel, let the
                        # deliveries in flight be acked, then leave.
                        await asyncio.wait_for(ch.basic_cancel(ok.consumer_tag), 5)
                        await asyncio.sleep(0.5)
                        going_home = True
                        break
                    await asyncio.sleep(0.1)
            except BaseException as e:  # noqa: B036 - the node went away: reconnect elsewhere
                if isinstance(e, asyncio.CancelledError):
                    raise
            finally:
                await self._close(conn)
            if not self._stop_con:
                node = home if going_home else self._next(node)
                await asyncio.sleep(0.1)
