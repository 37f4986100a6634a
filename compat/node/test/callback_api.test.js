// amqplib's callback API (require('amqplib/callback_api')) against the broker
// under test.
'use strict';

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const amqp = require('amqplib/callback_api');
const { URL, unique, within, call, exitWhenDone } = require('../lib/helpers');

exitWhenDone(after);

const WAIT = 10000;

async function withConnection(fn) {
  const conn = await within(WAIT, 'connect', call((cb) => amqp.connect(URL, cb)));
  try {
    return await fn(conn);
  } finally {
    // bounded: a broker that broke the protocol may never answer close
    await within(WAIT, 'connection.close', call((cb) => conn.close(cb))).catch(() => conn.connection.stream.destroy());
  }
}

test('callback API: declare, publish, get and ack', async () => {
  await withConnection(async (conn) => {
    const ch = await call((cb) => conn.createChannel(cb));
    const q = unique('cb-get');
    const ok = await call((cb) => ch.assertQueue(q, { exclusive: true }, cb));
    assert.equal(ok.queue, q);
    ch.sendToQueue(q, Buffer.from('hello'), { contentType: 'text/plain', headers: { 'x-n': 7 } });
    let msg = false;
    for (let i = 0; i < 100 && !msg; i++) {
      msg = await call((cb) => ch.get(q, {}, cb));
      if (!msg) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(msg, 'message arrives');
    assert.equal(msg.content.toString(), 'hello');
    assert.equal(msg.properties.contentType, 'text/plain');
    assert.equal(msg.properties.headers['x-n'], 7);
    ch.ack(msg);
    await call((cb) => ch.close(cb));
  });
});

test('callback API: consume with prefetch, nack with requeue redelivers', async () => {
  await withConnection(async (conn) => {
    const ch = await call((cb) => conn.createChannel(cb));
    const q = unique('cb-consume');
    await call((cb) => ch.assertQueue(q, { exclusive: true }, cb));
    ch.prefetch(1);
    const seen = [];
    const done = new Promise((resolve) => {
      ch.consume(
        q,
        (msg) => {
          seen.push([msg.content.toString(), msg.fields.redelivered]);
          if (!msg.fields.redelivered) ch.nack(msg, false, true);
          else {
            ch.ack(msg);
            resolve();
          }
        },
        {},
        (err) => assert.ifError(err),
      );
    });
    ch.sendToQueue(q, Buffer.from('again'));
    await within(WAIT, 'redelivery', done);
    assert.deepEqual(seen, [
      ['again', false],
      ['again', true],
    ]);
    await call((cb) => ch.close(cb));
  });
});

test('callback API: ConfirmChannel publish callbacks and waitForConfirms', async () => {
  await withConnection(async (conn) => {
    const ch = await call((cb) => conn.createConfirmChannel(cb));
    const q = unique('cb-confirms');
    await call((cb) => ch.assertQueue(q, { durable: true }, cb));
    let acked = 0;
    for (let i = 0; i < 50; i++) {
      ch.sendToQueue(q, Buffer.from(`m${i}`), { persistent: true }, (err) => {
        assert.ifError(err);
        acked += 1;
      });
    }
    await within(WAIT, 'waitForConfirms', call((cb) => ch.waitForConfirms(cb)));
    assert.equal(acked, 50);
    const ok = await call((cb) => ch.deleteQueue(q, {}, cb));
    assert.equal(ok.messageCount, 50);
    await call((cb) => ch.close(cb));
  });
});

test('callback API: updateSecret calls back and the connection keeps working', async () => {
  await withConnection(async (conn) => {
    await within(WAIT, 'update-secret-ok', call((cb) => conn.updateSecret(Buffer.from('guest'), 'rotation', cb)));
    const ch = await call((cb) => conn.createChannel(cb));
    const ok = await call((cb) => ch.assertQueue('', { exclusive: true }, cb));
    assert.match(ok.queue, /^amq\.gen-/);
    await call((cb) => ch.close(cb));
  });
});

test('callback API: exchange-to-exchange binding routes, unbind of a deleted source is ok', async () => {
  await withConnection(async (conn) => {
    const ch = await call((cb) => conn.createChannel(cb));
    const src = unique('cb-src');
    const dst = unique('cb-dst');
    await call((cb) => ch.assertExchange(src, 'fanout', { autoDelete: false }, cb));
    await call((cb) => ch.assertExchange(dst, 'direct', { autoDelete: false }, cb));
    await call((cb) => ch.bindExchange(dst, src, '', {}, cb));
    const { queue } = await call((cb) => ch.assertQueue('', { exclusive: true }, cb));
    await call((cb) => ch.bindQueue(queue, dst, 'k', {}, cb));
    ch.publish(src, 'k', Buffer.from('through two exchanges'));
    let msg = false;
    for (let i = 0; i < 100 && !msg; i++) {
      msg = await call((cb) => ch.get(queue, { noAck: true }, cb));
      if (!msg) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(msg, 'message routed through the exchange binding');
    assert.equal(msg.content.toString(), 'through two exchanges');
    await call((cb) => ch.deleteExchange(src, {}, cb));
    await within(WAIT, 'unbind-ok', call((cb) => ch.unbindExchange(dst, src, '', {}, cb)));
    await call((cb) => ch.deleteExchange(dst, {}, cb));
    await call((cb) => ch.close(cb));
  });
});
