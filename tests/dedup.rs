//! Message deduplication (`x-message-deduplication`): duplicates are
//! confirmed but not delivered twice, and the memory of durable exchanges and
//! queues survives a crash, so a producer retrying after one creates no duplicate.

mod common;

use common::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn dedup_args() -> FieldTable {
    args(&[
        ("x-message-deduplication", AMQPValue::Boolean(true)),
        ("x-cache-size", AMQPValue::LongInt(1000)),
    ])
}

fn with_id(id: &str) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(id.into())
        .with_delivery_mode(2)
}

/// A durable deduplicating direct exchange bound to a durable queue.
async fn topology(ch: &Channel) -> (String, String) {
    let x = unique("dedup-x");
    let q = unique("dedup-q");
    within(
        "exchange.declare",
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            dedup_args(),
        ),
    )
    .await
    .expect("exchange.declare");
    within(
        "queue.declare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    within(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
    (x, q)
}

#[tokio::test]
async fn exchange_drops_duplicates_but_confirms_them() {
    let broker = Broker::start();
    if broker.is_external() {
        return; // needs RabbitMQ's deduplication plugin
    }
    let (conn, ch) = connect_channel(&broker).await;
    let (x, q) = topology(&ch).await;
    confirm_select(&ch).await;
    for id in ["a", "a", "b", "a"] {
        let c = publish_confirmed(&ch, &x, "k", id.as_bytes(), with_id(id)).await;
        assert!(c.is_ack(), "duplicates are confirmed too: {c:?}");
    }
    // The plugin's header works as a key as well.
    let hdr = BasicProperties::default().with_headers(args(&[(
        "x-deduplication-header",
        AMQPValue::LongString(LongString::from("h1")),
    )]));
    publish_confirmed(&ch, &x, "k", b"h1", hdr.clone()).await;
    publish_confirmed(&ch, &x, "k", b"h1", hdr).await;
    // No key: never deduplicated.
    publish_confirmed(&ch, &x, "k", b"n", BasicProperties::default()).await;
    publish_confirmed(&ch, &x, "k", b"n", BasicProperties::default()).await;
    let got = drain(&ch, &q).await;
    assert_eq!(
        got,
        vec![
            b"a".to_vec(),
            b"b".to_vec(),
            b"h1".to_vec(),
            b"n".to_vec(),
            b"n".to_vec()
        ]
    );
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn exchange_memory_survives_a_crash() {
    let mut broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let (x, q) = topology(&ch).await;
    confirm_select(&ch).await;
    assert!(
        publish_confirmed(&ch, &x, "k", b"order-1", with_id("order-1"))
            .await
            .is_ack()
    );
    let _ = conn.close(200, "bye".into()).await;
    broker.kill9();
    broker.restart();
    // The producer retries after the crash: no second copy.
    let (conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    assert!(
        publish_confirmed(&ch, &x, "k", b"order-1", with_id("order-1"))
            .await
            .is_ack()
    );
    assert_eq!(drain(&ch, &q).await, vec![b"order-1".to_vec()]);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn queue_refuses_a_key_it_holds_until_the_message_leaves() {
    let mut broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_durable_queue(
        &ch,
        "dedup-queue",
        args(&[("x-message-deduplication", AMQPValue::Boolean(true))]),
    )
    .await;
    confirm_select(&ch).await;
    for _ in 0..2 {
        assert!(publish_confirmed(&ch, "", &q, b"job-1", with_id("job-1"))
            .await
            .is_ack());
    }
    assert_eq!(message_count(&ch, &q).await, 1);
    let _ = conn.close(200, "bye".into()).await;
    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    assert!(publish_confirmed(&ch, "", &q, b"job-1", with_id("job-1"))
        .await
        .is_ack());
    assert_eq!(
        message_count(&ch, &q).await,
        1,
        "the key was rebuilt at boot"
    );
    // Once consumed, the key is free again.
    assert_eq!(drain(&ch, &q).await, vec![b"job-1".to_vec()]);
    assert!(publish_confirmed(&ch, "", &q, b"job-1", with_id("job-1"))
        .await
        .is_ack());
    assert_eq!(message_count(&ch, &q).await, 1);
    let _ = conn.close(200, "bye".into()).await;
}
