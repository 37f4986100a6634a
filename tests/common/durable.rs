//! Helpers shared by the crash-durability suites (tests/durability*.rs):
//! declaring durable topology, reading queues back, a deterministic RNG.

use super::*;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::time::Duration;

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

pub fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

pub fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

pub fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

pub fn durable_queue_opts() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub fn passive_queue_opts() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

pub fn durable_exchange_opts() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub async fn open_channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("open channel")
}

pub async fn durable_queue(ch: &Channel, name: &str, args: FieldTable) {
    within(
        "durable queue.declare",
        ch.queue_declare(name.into(), durable_queue_opts(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("declare durable queue {name}: {e:?}"));
}

pub async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    opts: ExchangeDeclareOptions,
    args: FieldTable,
) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, opts, args),
    )
    .await
}

pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e:?}"));
}

/// Passive queue.declare: Ok(message count) or the error.
pub async fn passive_queue(ch: &Channel, name: &str) -> lapin::Result<u32> {
    within(
        "passive queue.declare",
        ch.queue_declare(name.into(), passive_queue_opts(), FieldTable::default()),
    )
    .await
    .map(|q| q.message_count())
}

/// Passive exchange.declare.
pub async fn passive_exchange(ch: &Channel, name: &str) -> lapin::Result<()> {
    declare_exchange(
        ch,
        name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// One message read back after a restart.
#[derive(Debug, Clone)]
pub struct Got {
    pub body: String,
    pub redelivered: bool,
}

/// Empty a queue with no-ack basic.get (a definite end: get-empty) and return
/// what came out, in order.
pub async fn get_all(ch: &Channel, queue: &str) -> Vec<Got> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(Got {
            body: String::from_utf8_lossy(&m.delivery.data).into_owned(),
            redelivered: m.delivery.redelivered,
        });
        assert!(out.len() <= 100_000, "queue {queue} never runs dry");
    }
    out
}

/// Consume everything a recovered queue holds (its count by passive declare
/// first: nothing else publishes to it), acking as it goes, and return it in
/// delivery order. Afterwards the queue must be empty and stay quiet.
pub async fn consume_all(conn: &Connection, queue: &str) -> Vec<Got> {
    let ch = open_channel(conn).await;
    let expected = passive_queue(&ch, queue)
        .await
        .unwrap_or_else(|e| panic!("recovered queue {queue} is missing: {e:?}"));
    within("basic.qos", ch.basic_qos(1000, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume");
    let mut out = Vec::with_capacity(expected as usize);
    let mut last_tag = 0;
    let mut unacked = 0;
    while out.len() < expected as usize {
        let d = match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!(
                "queue {queue}: consumer ended after {} of {expected} deliveries: {other:?}",
                out.len()
            ),
            Err(_) => panic!(
                "queue {queue}: passive declare reported {expected} messages but only {} \
                 were delivered (nothing more within 10s)",
                out.len()
            ),
        };
        out.push(Got {
            body: String::from_utf8_lossy(&d.data).into_owned(),
            redelivered: d.redelivered,
        });
        last_tag = d.delivery_tag;
        unacked += 1;
        if unacked >= 250 {
            within(
                "basic.ack",
                ch.basic_ack(last_tag, BasicAckOptions { multiple: true }),
            )
            .await
            .expect("basic.ack");
            unacked = 0;
        }
    }
    // Nothing beyond what the passive declare counted.
    assert_no_delivery(&mut consumer, Duration::from_millis(300)).await;
    if unacked > 0 {
        within(
            "basic.ack",
            ch.basic_ack(last_tag, BasicAckOptions { multiple: true }),
        )
        .await
        .expect("basic.ack");
    }
    // A synchronous round trip on the same channel: the acks are processed.
    let left = passive_queue(&ch, queue).await.expect("passive declare");
    assert_eq!(left, 0, "queue {queue} not empty after consuming it");
    let _ = within("channel.close", ch.close(200, "done".into())).await;
    out
}

/// A small deterministic generator (splitmix64) for the kill delays.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.next() % (hi_inclusive - lo + 1)
    }
}

/// Up to `n` items of a list, for failure messages.
pub fn sample<T: std::fmt::Debug>(items: &[T], n: usize) -> String {
    if items.len() <= n {
        format!("{items:?}")
    } else {
        format!("{:?} ... ({} in all)", &items[..n], items.len())
    }
}
