"""aio-pika (asyncio, on aiormq) the way applications use it: a robust
connection that survives a broker restart, the RPC pattern, exchange-to-exchange
bindings with an auto-delete source, and a 22 MB message with confirms.

Each test runs its own event loop (asyncio.run), so no pytest plugin is needed.
"""

import asyncio
import uuid

import aio_pika
import pytest
from aio_pika.exceptions import ChannelNotFoundEntity
from aio_pika.patterns import RPC

WAIT = 10.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=25))


def unique(prefix):
    return f"compat.aio.{prefix}.{uuid.uuid4().hex[:8]}"


@pytest.mark.restart
@pytest.mark.timeout(60)
def test_robust_connection_reconnects_after_a_restart(fresh_broker):
    """A robust connection and its consumer come back by themselves after the
    broker is killed and started again on the same port and data dir; a
    persistent message published after the restart reaches the restored consumer."""

    async def main():
        conn = await aio_pika.connect_robust(fresh_broker.url(), reconnect_interval=0.2)
        try:
            ch = await conn.channel()
            q = await ch.declare_queue(unique("robust"), durable=True)
            received = asyncio.Queue()

            async def on_message(message):
                async with message.process():
                    await received.put(message.body)

            await q.consume(on_message)
            reconnected = asyncio.Event()
            conn.reconnect_callbacks.add(lambda *_: reconnected.set())

            await ch.default_exchange.publish(
                aio_pika.Message(b"before", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=q.name,
            )
            assert await asyncio.wait_for(received.get(), WAIT) == b"before"

            await asyncio.get_running_loop().run_in_executor(
                None, lambda: fresh_broker.restart(same_port=True)
            )
            await asyncio.wait_for(reconnected.wait(), WAIT)
            # The channel is restored after the connection: publish until it works.
            await ch.default_exchange.publish(
                aio_pika.Message(b"after", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=q.name,
            )
            assert await asyncio.wait_for(received.get(), WAIT) == b"after"
            await q.delete(if_unused=False, if_empty=False)
        finally:
            await conn.close()

    run(main())


def test_rpc_pattern_call_and_teardown(broker):
    """aio_pika.patterns.RPC: register, call, and close both sides. close()
    cancels the auto-delete reply queue's consumer (which deletes the queue)
    and then unbinds it, which RabbitMQ answers with unbind-ok."""

    async def main():
        conn = await aio_pika.connect(broker.url())
        try:
            server_rpc = await RPC.create(await conn.channel())
            client_rpc = await RPC.create(await conn.channel())
            method = unique("multiply")

            async def multiply(*, x, y):
                return x * y

            await server_rpc.register(method, multiply, auto_delete=True)
            results = [await client_rpc.call(method, kwargs=dict(x=i, y=7)) for i in range(5)]
            assert results == [0, 7, 14, 21, 28]
            await client_rpc.close()
            await server_rpc.unregister(multiply)
            await server_rpc.close()
            # The connection is still fine afterwards.
            ch = await conn.channel()
            q = await ch.declare_queue(exclusive=True)
            assert q.name.startswith("amq.gen-")
        finally:
            await conn.close()

    run(main())


def test_exchange_to_exchange_with_an_auto_delete_source(broker):
    """Messages flow source → destination → queue; removing the source's last
    binding deletes the auto-delete source, and unbinding again (as teardown
    code does) is still ok."""

    async def main():
        conn = await aio_pika.connect(broker.url())
        try:
            ch = await conn.channel()
            src = await ch.declare_exchange(unique("src"), aio_pika.ExchangeType.FANOUT, auto_delete=True)
            dst = await ch.declare_exchange(unique("dst"), aio_pika.ExchangeType.DIRECT)
            q = await ch.declare_queue(exclusive=True)
            await q.bind(dst, routing_key="k")
            await dst.bind(src)
            await src.publish(aio_pika.Message(b"via two exchanges"), routing_key="k")
            msg = None
            for _ in range(200):
                msg = await q.get(no_ack=True, fail=False)
                if msg is not None:
                    break
                await asyncio.sleep(0.02)
            assert msg is not None and msg.body == b"via two exchanges"

            await dst.unbind(src)
            check = await conn.channel()
            with pytest.raises(ChannelNotFoundEntity):
                await check.declare_exchange(src.name, passive=True)
            await dst.unbind(src)  # the source is gone: still unbind-ok
            await dst.delete()
        finally:
            await conn.close()

    run(main())


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["transient", "persistent"])
def test_a_22_mb_message_round_trips_with_confirms(broker, mode):
    """22 MB (RabbitMQ's limit is 128 MiB) through a durable queue, confirmed,
    consumed and compared byte for byte."""
    body = bytes(range(256)) * (22_000_000 // 256)
    delivery_mode = (
        aio_pika.DeliveryMode.PERSISTENT if mode == "persistent" else aio_pika.DeliveryMode.NOT_PERSISTENT
    )

    async def main():
        conn = await aio_pika.connect(broker.url())
        try:
            ch = await conn.channel(publisher_confirms=True)
            q = await ch.declare_queue(unique("big"), durable=True)
            confirmation = await ch.default_exchange.publish(
                aio_pika.Message(body, delivery_mode=delivery_mode, message_id="big-1"),
                routing_key=q.name,
                timeout=60,
            )
            assert confirmation is not None
            got = asyncio.get_running_loop().create_future()

            async def on_message(message):
                await message.ack()
                if not got.done():
                    got.set_result(message)

            await q.consume(on_message)
            message = await asyncio.wait_for(got, 60)
            assert len(message.body) == len(body)
            assert message.body == body
            assert message.message_id == "big-1"
            assert message.delivery_mode == delivery_mode
            await q.delete(if_unused=False, if_empty=False)
        finally:
            await conn.close()

    asyncio.run(asyncio.wait_for(main(), timeout=80))
