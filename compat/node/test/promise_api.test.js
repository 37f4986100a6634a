// amqplib's promise API (require('amqplib')) against the broker under test.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const amqp = require('amqplib');
const { URL, unique, within, exitWhenDone } = require('../lib/helpers');

exitWhenDone(after);

const WAIT = 10000;

async function withConnection(fn) {
  const conn = await within(WAIT, 'connect', amqp.connect(URL));
  try {
    return await fn(conn);
  } finally {
    // bounded: a broker that broke the protocol may never answer close
    await within(WAIT, 'connection.close', conn.close()).catch(() => conn.connection.stream.destroy());
  }
}

test('the server identifies as RabbitMQ 3.x with its capabilities', async () => {
  await withConnection(async (conn) => {
    const props = conn.connection.serverProperties;
    assert.equal(props.product, 'RabbitMQ');
    assert.match(props.version, /^3\.\d+\.\d+$/);
    for (const cap of ['publisher_confirms', 'basic.nack', 'consumer_cancel_notify', 'exchange_exchange_bindings']) {
      assert.equal(props.capabilities[cap], true, `capability ${cap}`);
    }
  });
});

test('publish, consume and ack through a topic exchange', async () => {
  await withConnection(async (conn) => {
    const ch = await conn.createChannel();
    const x = unique('topic');
    await ch.assertExchange(x, 'topic', { autoDelete: true });
    const { queue } = await ch.assertQueue('', { exclusive: true });
    await ch.bindQueue(queue, x, 'orders.*');
    await ch.prefetch(10);
    const received = [];
    const done = new Promise((resolve) => {
      ch.consume(queue, (msg) => {
        received.push({ key: msg.fields.routingKey, body: msg.content.toString(), id: msg.properties.messageId });
        ch.ack(msg);
        if (received.length === 2) resolve();
      });
    });
    ch.publish(x, 'orders.created', Buffer.from('one'), { messageId: 'm1' });
    ch.publish(x, 'invoices.created', Buffer.from('not routed'));
    ch.publish(x, 'orders.paid', Buffer.from('two'), { messageId: 'm2' });
    await within(WAIT, 'two deliveries', done);
    assert.deepEqual(received, [
      { key: 'orders.created', body: 'one', id: 'm1' },
      { key: 'orders.paid', body: 'two', id: 'm2' },
    ]);
    await ch.close();
  });
});

test('ConfirmChannel: every publish is acked, waitForConfirms resolves', async () => {
  await withConnection(async (conn) => {
    const ch = await conn.createConfirmChannel();
    const q = unique('confirms');
    await ch.assertQueue(q, { durable: true });
    const acks = [];
    for (let i = 0; i < 200; i++) {
      acks.push(
        new Promise((resolve, reject) => {
          ch.sendToQueue(q, Buffer.from(`m${i}`), { persistent: true }, (err) => (err ? reject(err) : resolve(i)));
        }),
      );
    }
    await within(WAIT, 'waitForConfirms', ch.waitForConfirms());
    assert.equal((await within(WAIT, 'all publish callbacks', Promise.all(acks))).length, 200);
    const { messageCount } = await ch.checkQueue(q);
    assert.equal(messageCount, 200);
    await ch.deleteQueue(q);
    await ch.close();
  });
});

test('ConfirmChannel: a message to a queue that refuses it is nacked', async () => {
  await withConnection(async (conn) => {
    const ch = await conn.createConfirmChannel();
    const q = unique('reject-publish');
    await ch.assertQueue(q, { exclusive: true, arguments: { 'x-max-length': 1, 'x-overflow': 'reject-publish' } });
    const outcome = (body) =>
      new Promise((resolve) => ch.sendToQueue(q, Buffer.from(body), {}, (err) => resolve(err ? 'nack' : 'ack')));
    assert.equal(await within(WAIT, 'first confirm', outcome('fits')), 'ack');
    assert.equal(await within(WAIT, 'second confirm', outcome('over the limit')), 'nack');
    await ch.close();
  });
});

test('updateSecret resolves and the connection keeps working', async () => {
  await withConnection(async (conn) => {
    await within(WAIT, 'update-secret-ok', conn.updateSecret(Buffer.from('guest'), 'token refresh'));
    const ch = await conn.createChannel();
    const { queue } = await ch.assertQueue('', { exclusive: true });
    ch.sendToQueue(queue, Buffer.from('after update-secret'));
    let msg = false;
    for (let i = 0; i < 100 && !msg; i++) {
      msg = await ch.get(queue, { noAck: true });
      if (!msg) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(msg, 'the message published after update-secret arrives');
    assert.equal(msg.content.toString(), 'after update-secret');
    await ch.close();
  });
});

test('a channel error rejects the pending call and leaves the connection usable', async () => {
  await withConnection(async (conn) => {
    const ch = await conn.createChannel();
    ch.on('error', () => {});
    await assert.rejects(ch.checkQueue(unique('missing')), (err) => err.code === 404);
    const ch2 = await conn.createChannel();
    const { queue } = await ch2.assertQueue('', { exclusive: true });
    assert.match(queue, /^amq\.gen-/);
    await ch2.close();
  });
});

test('unbinding a queue that is gone is ok (RabbitMQ 3.x)', async () => {
  await withConnection(async (conn) => {
    const ch = await conn.createChannel();
    const x = unique('unbind');
    await ch.assertExchange(x, 'direct', { autoDelete: false });
    const q = unique('gone');
    await ch.assertQueue(q, { exclusive: true });
    await ch.bindQueue(q, x, 'k');
    await ch.deleteQueue(q);
    await within(WAIT, 'unbind-ok', ch.unbindQueue(q, x, 'k'));
    await ch.deleteExchange(x);
    await ch.close();
  });
});
