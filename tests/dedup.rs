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

/// The community plugin's exchange type: routes like fanout, keys on the
/// `x-deduplication-header` header only, `x-cache-size` required.
#[tokio::test]
async fn plugin_exchange_type_routes_like_fanout_and_drops_duplicates() {
    let broker = Broker::start();
    if broker.is_external() {
        return; // needs RabbitMQ's deduplication plugin
    }
    let (conn, ch) = connect_channel(&broker).await;
    let x = unique("plugin-x");
    // Missing x-cache-size: 406 as the plugin answers.
    let res = ch
        .exchange_declare(
            x.as_str().into(),
            ExchangeKind::Custom("x-message-deduplication".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_code(res, 406);
    let ch = conn.create_channel().await.expect("channel");
    within(
        "exchange.declare",
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Custom("x-message-deduplication".into()),
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args(&[("x-cache-size", AMQPValue::LongInt(100))]),
        ),
    )
    .await
    .expect("exchange.declare");
    let q1 = declare_queue(&ch, "plugin-q1").await;
    let q2 = declare_queue(&ch, "plugin-q2").await;
    for (q, key) in [(&q1, "a"), (&q2, "b")] {
        within(
            "queue.bind",
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.bind");
    }
    confirm_select(&ch).await;
    let keyed = |k: &str| {
        BasicProperties::default().with_headers(args(&[(
            "x-deduplication-header",
            AMQPValue::LongString(LongString::from(k)),
        )]))
    };
    for (body, k) in [("one", "k1"), ("again", "k1"), ("two", "k2")] {
        let c = publish_confirmed(&ch, &x, "any-key", body.as_bytes(), keyed(k)).await;
        assert!(c.is_ack());
    }
    // message-id alone is not a key on the plugin's type.
    for _ in 0..2 {
        publish_confirmed(&ch, &x, "", b"mid", with_id("same-id")).await;
    }
    let want = vec![
        b"one".to_vec(),
        b"two".to_vec(),
        b"mid".to_vec(),
        b"mid".to_vec(),
    ];
    assert_eq!(
        drain(&ch, &q1).await,
        want,
        "every binding gets it, any key"
    );
    assert_eq!(drain(&ch, &q2).await, want);
    let _ = conn.close(200, "bye".into()).await;
}

/// A publish nacked because its queue is full leaves no key behind: the
/// producer's retry is stored, not confirmed as a duplicate and dropped.
#[tokio::test]
async fn a_nacked_publish_leaves_no_key() {
    let broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let (x, q) = topology(&ch).await;
    let full = declare_durable_queue(
        &ch,
        "dedup-full",
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            (
                "x-overflow",
                AMQPValue::LongString(LongString::from("reject-publish")),
            ),
        ]),
    )
    .await;
    within(
        "queue.bind",
        ch.queue_bind(
            full.as_str().into(),
            x.as_str().into(),
            "full".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.bind");
    confirm_select(&ch).await;
    assert!(publish_confirmed(&ch, &x, "full", b"m1", with_id("m1"))
        .await
        .is_ack());
    let c = publish_confirmed(&ch, &x, "full", b"m2", with_id("m2")).await;
    assert!(c.is_nack(), "queue full: {c:?}");
    assert_eq!(drain(&ch, &full).await, vec![b"m1".to_vec()]);
    let c = publish_confirmed(&ch, &x, "full", b"m2", with_id("m2")).await;
    assert!(c.is_ack(), "the retry is accepted: {c:?}");
    assert_eq!(drain(&ch, &full).await, vec![b"m2".to_vec()]);
    assert!(drain(&ch, &q).await.is_empty());
    let _ = conn.close(200, "bye".into()).await;
}
