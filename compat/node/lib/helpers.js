// Shared helpers for the amqplib tests: the broker URL (from compat/conftest.py
// through AMQP_URL, or a local RabbitMQ), unique names, bounded waits.
'use strict';

const crypto = require('node:crypto');

const URL = process.env.AMQP_URL || 'amqp://guest:guest@127.0.0.1:5672/%2f';

function unique(prefix) {
  return `compat.node.${prefix}.${crypto.randomBytes(4).toString('hex')}`;
}

// Resolve with `promise`, or reject after `ms`: a broker that never answers
// fails the test instead of hanging it.
function within(ms, what, promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Callback style to promise, for the callback API: fn(cb) → Promise.
function call(fn) {
  return new Promise((resolve, reject) => {
    fn((err, value) => (err ? reject(err) : resolve(value)));
  });
}

// Call from each test file: once its tests are done, a connection a broker left
// half-closed (after breaking the protocol) must not keep the file's process
// alive; the results are already reported by then.
function exitWhenDone(after) {
  after(() => {
    setTimeout(() => process.exit(), 3000).unref();
  });
}

module.exports = { URL, unique, within, call, exitWhenDone };
