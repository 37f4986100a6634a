//! RabbitMQ queue/exchange arguments that unmodified clients rely on:
//! TTLs, dead-lettering, length limits, priorities, alternate exchanges.

mod common;

use common::*;
use lapin::options::{
    BasicNackOptions, BasicPublishOptions, BasicRejectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use std::time::Duration;

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

async fn declare_with(ch: &Channel, prefix: &str, arguments: FieldTable) -> String {
    let name = unique(prefix);
    within(
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            arguments,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declare {name}: {e:?}"));
    name
}

#[tokio::test]
async fn queue_message_ttl_expires_messages() {
    let Some(broker) = external_only("timing.rs: queue_message_ttl_expires_messages") else {
        return;
    };
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_with(
        &ch,
        "ttl",
        args(&[("x-message-ttl", AMQPValue::LongInt(150))]),
    )
    .await;
    fill_queue(&conn, &q, &[b"short-lived"]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        get(&ch, &q, true).await.is_none(),
        "message outlived x-message-ttl"
    );
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn per_message_expiration_expires_messages() {
    let Some(broker) = external_only("timing.rs: per_message_expiration_expires_messages") else {
        return;
    };
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "expiration").await;
    confirm_select(&ch).await;
    publish_confirmed(
        &ch,
        "",
        &q,
        b"expiring",
        BasicProperties::default().with_expiration("150".into()),
    )
    .await;
    publish_confirmed(&ch, "", &q, b"staying", BasicProperties::default()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(drain(&ch, &q).await, vec![b"staying".to_vec()]);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn invalid_expiration_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "bad-expiration").await;
    confirm_select(&ch).await;
    let confirm = within(
        "publish",
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_expiration("soon".into()),
        ),
    )
    .await
    .unwrap();
    assert_code(within("confirm", confirm).await, 406);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn invalid_ttl_argument_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "declare",
        ch.queue_declare(
            unique("bad-ttl").as_str().into(),
            QueueDeclareOptions::default(),
            args(&[("x-message-ttl", s("ten"))]),
        ),
    )
    .await;
    assert_code(res, 406);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn rejected_messages_are_dead_lettered_with_x_death() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let dlq = declare_queue(&ch, "dlq").await;
    let q = declare_with(
        &ch,
        "dlx-src",
        args(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    fill_queue(&conn, &q, &[b"bad-1", b"bad-2"]).await;
    let m1 = get(&ch, &q, false).await.expect("m1");
    within(
        "reject",
        m1.delivery
            .acker
            .reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    let m2 = get(&ch, &q, false).await.expect("m2");
    within(
        "nack",
        m2.delivery.acker.nack(BasicNackOptions {
            multiple: false,
            requeue: false,
        }),
    )
    .await
    .unwrap();
    let mut dead = Vec::new();
    within("dead letters", async {
        while dead.len() < 2 {
            match get(&ch, &dlq, true).await {
                Some(m) => dead.push(m),
                None => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await;
    assert_eq!(dead[0].delivery.data, b"bad-1");
    assert_eq!(dead[1].delivery.data, b"bad-2");
    let headers = dead[0]
        .delivery
        .properties
        .headers()
        .clone()
        .expect("dead-lettered message has headers");
    let x_death = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a.clone(),
        other => panic!("x-death must be an array, got {other:?}"),
    };
    let first = match x_death.as_slice().first() {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("x-death[0] must be a table, got {other:?}"),
    };
    assert_eq!(first.inner().get("reason"), Some(&s("rejected")));
    assert_eq!(first.inner().get("queue"), Some(&s(&q)));
    assert_eq!(first.inner().get("exchange"), Some(&s("")));
    assert_eq!(
        first.inner().get("count"),
        Some(&AMQPValue::LongLongInt(1)),
        "{first:?}"
    );
    assert_eq!(
        first.inner().get("routing-keys"),
        Some(&AMQPValue::FieldArray(vec![s(&q)].into()))
    );
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&s("rejected"))
    );
    assert_eq!(headers.inner().get("x-first-death-queue"), Some(&s(&q)));
    assert_eq!(dead[0].delivery.routing_key.as_str(), dlq);
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &dlq).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_with_reason_expired() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let dlq = declare_queue(&ch, "dlq-expired").await;
    let q = declare_with(
        &ch,
        "dlx-ttl",
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(100)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    fill_queue(&conn, &q, &[b"old"]).await;
    let m = within("expired message to be dead-lettered", async {
        loop {
            if let Some(m) = get(&ch, &dlq, true).await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(m.delivery.data, b"old");
    let headers = m.delivery.properties.headers().clone().expect("headers");
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&s("expired"))
    );
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &dlq).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn max_length_drops_from_the_head() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_with(
        &ch,
        "maxlen",
        args(&[("x-max-length", AMQPValue::LongInt(2))]),
    )
    .await;
    fill_queue(&conn, &q, &[b"1", b"2", b"3"]).await;
    assert_eq!(drain(&ch, &q).await, vec![b"2".to_vec(), b"3".to_vec()]);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn max_length_reject_publish_nacks() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_with(
        &ch,
        "maxlen-reject",
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    confirm_select(&ch).await;
    let c1 = publish_confirmed(&ch, "", &q, b"1", BasicProperties::default()).await;
    assert_eq!(c1, Confirmation::Ack(None));
    let c2 = publish_confirmed(&ch, "", &q, b"2", BasicProperties::default()).await;
    assert!(
        c2.is_nack(),
        "over-limit publish must be nacked, got {c2:?}"
    );
    assert_eq!(drain(&ch, &q).await, vec![b"1".to_vec()]);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn unused_queue_expires() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_with(
        &ch,
        "x-expires",
        args(&[("x-expires", AMQPValue::LongInt(200))]),
    )
    .await;
    // Any declare (even passive) or basic.get renews the lease, so probe
    // with mandatory publishes: once the queue is gone they are returned.
    confirm_select(&ch).await;
    within_for(Duration::from_secs(5), "queue to expire", async {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let confirm = ch
                .basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    b"probe",
                    BasicProperties::default(),
                )
                .await
                .unwrap();
            if let Confirmation::Ack(Some(ret)) = confirm.await.unwrap() {
                assert_eq!(ret.reply_code, 312);
                return;
            }
        }
    })
    .await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn priority_queue_delivers_highest_priority_first() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_with(
        &ch,
        "prio",
        args(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]),
    )
    .await;
    confirm_select(&ch).await;
    for (body, prio) in [("low", 1u8), ("high", 9), ("none", 0), ("mid", 5)] {
        publish_confirmed(
            &ch,
            "",
            &q,
            body.as_bytes(),
            BasicProperties::default().with_priority(prio),
        )
        .await;
    }
    assert_eq!(
        drain(&ch, &q).await,
        vec![
            b"high".to_vec(),
            b"mid".to_vec(),
            b"low".to_vec(),
            b"none".to_vec()
        ]
    );
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn alternate_exchange_receives_unroutable_messages() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let ae = unique("ae");
    let x = unique("with-ae");
    within(
        "declare ae",
        ch.exchange_declare(
            ae.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    within(
        "declare x",
        ch.exchange_declare(
            x.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args(&[("alternate-exchange", s(&ae))]),
        ),
    )
    .await
    .unwrap();
    let q = declare_queue(&ch, "ae-sink").await;
    within(
        "bind",
        ch.queue_bind(
            q.as_str().into(),
            ae.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    confirm_select(&ch).await;
    // Mandatory, yet not returned: the alternate exchange routed it.
    let confirm = ch
        .basic_publish(
            x.as_str().into(),
            "no-binding".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"caught",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        within("confirm", confirm).await.unwrap(),
        Confirmation::Ack(None)
    );
    let m = get(&ch, &q, true)
        .await
        .expect("message via alternate exchange");
    assert_eq!(m.delivery.data, b"caught");
    assert_eq!(m.delivery.exchange.as_str(), x);
    assert_eq!(m.delivery.routing_key.as_str(), "no-binding");
    delete_queue(&conn, &q).await;
    delete_exchange(&conn, &x).await;
    delete_exchange(&conn, &ae).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn invalid_length_limit_arguments_are_406() {
    let broker = Broker::start();
    for bad in [
        args(&[("x-max-length", AMQPValue::LongInt(-1))]),
        args(&[("x-max-length", s("ten"))]),
        args(&[("x-overflow", s("drop-tail"))]),
    ] {
        let (conn, ch) = connect_channel(&broker).await;
        let name = unique("bad-limit");
        assert_code(
            within(
                "queue.declare",
                ch.queue_declare(name.as_str().into(), QueueDeclareOptions::default(), bad),
            )
            .await,
            406,
        );
        let _ = conn.close(200, "bye".into()).await;
    }
}

/// A message's expiry is stored with it: after a restart it still expires.
#[tokio::test]
async fn message_ttl_survives_restart() {
    let mut broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_durable_queue(
        &ch,
        "ttl-durable",
        args(&[("x-message-ttl", AMQPValue::LongInt(2500))]),
    )
    .await;
    confirm_select(&ch).await;
    let c = publish_confirmed(
        &ch,
        "",
        &q,
        b"short-lived",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    assert!(c.is_ack());
    let _ = conn.close(200, "bye".into()).await;
    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    assert_eq!(message_count(&ch, &q).await, 1, "expired too early");
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        get(&ch, &q, true).await.is_none(),
        "outlived its TTL after a restart"
    );
    let _ = conn.close(200, "bye".into()).await;
}

/// Two queues dead-lettering expired messages into each other: the message
/// is dropped when it comes round (no rejection in the cycle), never loops.
#[tokio::test]
async fn dead_letter_cycle_without_rejection_is_dropped() {
    let Some(broker) = external_only("timing.rs: dead_letter_cycle_without_rejection_is_dropped")
    else {
        return;
    };
    let (conn, ch) = connect_channel(&broker).await;
    let a = unique("cycle-a");
    let b = unique("cycle-b");
    for (q, next) in [(&a, &b), (&b, &a)] {
        within(
            "queue.declare",
            ch.queue_declare(
                q.as_str().into(),
                QueueDeclareOptions::default(),
                args(&[
                    ("x-message-ttl", AMQPValue::LongInt(50)),
                    ("x-dead-letter-exchange", s("")),
                    ("x-dead-letter-routing-key", s(next)),
                ]),
            ),
        )
        .await
        .expect("declare");
    }
    fill_queue(&conn, &a, &[b"round and round"]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(message_count(&ch, &a).await, 0);
    assert_eq!(message_count(&ch, &b).await, 0);
    assert_broker_healthy(&broker).await;
    delete_queue(&conn, &a).await;
    delete_queue(&conn, &b).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Priorities are stored with persistent messages: after a crash the
/// backlog comes back highest priority first, FIFO within a priority.
#[tokio::test]
async fn priorities_survive_restart_in_order() {
    let mut broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_durable_queue(
        &ch,
        "prio-durable",
        args(&[("x-max-priority", AMQPValue::LongInt(10))]),
    )
    .await;
    confirm_select(&ch).await;
    for (body, prio) in [("p1", 1u8), ("p5a", 5), ("p3", 3), ("p5b", 5), ("p0", 0)] {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_priority(prio);
        assert!(publish_confirmed(&ch, "", &q, body.as_bytes(), props)
            .await
            .is_ack());
    }
    let _ = conn.close(200, "bye".into()).await;
    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    let got: Vec<Vec<u8>> = drain(&ch, &q).await;
    let want: Vec<Vec<u8>> = ["p5a", "p5b", "p3", "p1", "p0"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(got, want);
    let _ = conn.close(200, "bye".into()).await;
}

async fn consumer_with(
    ch: &Channel,
    q: &str,
    no_ack: bool,
    arguments: FieldTable,
) -> lapin::Consumer {
    within(
        "basic.consume",
        ch.basic_consume(
            q.into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            arguments,
        ),
    )
    .await
    .expect("consume")
}

/// With x-single-active-consumer only the oldest consumer receives; the next
/// one takes over when it cancels.
#[tokio::test]
async fn single_active_consumer_takes_over_on_cancel() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_with(
        &ch,
        "sac",
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let ch1 = conn.create_channel().await.expect("channel");
    let ch2 = conn.create_channel().await.expect("channel");
    let mut first = consumer_with(&ch1, &q, true, FieldTable::default()).await;
    let mut second = consumer_with(&ch2, &q, true, FieldTable::default()).await;
    fill_queue(&conn, &q, &[b"1", b"2", b"3"]).await;
    for want in [b"1", b"2", b"3"] {
        assert_eq!(next_delivery(&mut first).await.data, want);
    }
    assert_no_delivery(&mut second, Duration::from_millis(200)).await;
    within("cancel", ch1.basic_cancel(first.tag(), Default::default()))
        .await
        .expect("cancel");
    fill_queue(&conn, &q, &[b"4"]).await;
    assert_eq!(next_delivery(&mut second).await.data, b"4");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Consumers with a higher x-priority get messages while they have credit;
/// lower ones get what they cannot take.
#[tokio::test]
async fn higher_priority_consumer_is_served_first() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "cprio").await;
    let low_ch = conn.create_channel().await.expect("channel");
    let high_ch = conn.create_channel().await.expect("channel");
    within("qos", high_ch.basic_qos(2, Default::default()))
        .await
        .expect("qos");
    let mut low = consumer_with(
        &low_ch,
        &q,
        false,
        args(&[("x-priority", AMQPValue::LongInt(1))]),
    )
    .await;
    let mut high = consumer_with(
        &high_ch,
        &q,
        false,
        args(&[("x-priority", AMQPValue::LongInt(10))]),
    )
    .await;
    fill_queue(&conn, &q, &[b"a", b"b"]).await;
    assert_eq!(next_delivery(&mut high).await.data, b"a");
    assert_eq!(next_delivery(&mut high).await.data, b"b");
    assert_no_delivery(&mut low, Duration::from_millis(200)).await;
    fill_queue(&conn, &q, &[b"c"]).await;
    assert_eq!(
        next_delivery(&mut low).await.data,
        b"c",
        "high is at its prefetch limit"
    );
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn max_length_bytes_drops_from_the_head_and_rejects() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_with(
        &ch,
        "maxbytes",
        args(&[("x-max-length-bytes", AMQPValue::LongInt(10))]),
    )
    .await;
    fill_queue(&conn, &q, &[b"aaaa", b"bbbb", b"cccc"]).await;
    assert_eq!(
        drain(&ch, &q).await,
        vec![b"bbbb".to_vec(), b"cccc".to_vec()]
    );

    let r = declare_with(
        &ch,
        "maxbytes-reject",
        args(&[
            ("x-max-length-bytes", AMQPValue::LongInt(5)),
            ("x-overflow", s("reject-publish")),
        ]),
    )
    .await;
    confirm_select(&ch).await;
    let c1 = publish_confirmed(&ch, "", &r, b"aaaa", BasicProperties::default()).await;
    assert!(c1.is_ack());
    let c2 = publish_confirmed(&ch, "", &r, b"bb", BasicProperties::default()).await;
    assert!(c2.is_nack(), "over the byte limit must be nacked: {c2:?}");
    assert_eq!(drain(&ch, &r).await, vec![b"aaaa".to_vec()]);
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &r).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn reject_publish_dlx_nacks_and_dead_letters() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let dlq = declare_queue(&ch, "rpdlx-dead").await;
    let q = declare_with(
        &ch,
        "rpdlx",
        args(&[
            ("x-max-length", AMQPValue::LongInt(1)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s(&dlq)),
        ]),
    )
    .await;
    confirm_select(&ch).await;
    assert!(
        publish_confirmed(&ch, "", &q, b"1", BasicProperties::default())
            .await
            .is_ack()
    );
    let c2 = publish_confirmed(&ch, "", &q, b"2", BasicProperties::default()).await;
    assert!(c2.is_nack(), "{c2:?}");
    assert_eq!(drain(&ch, &q).await, vec![b"1".to_vec()]);
    let dead = within("dead letter", async {
        loop {
            if let Some(m) = get(&ch, &dlq, true).await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(dead.delivery.data, b"2");
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &dlq).await;
    let _ = conn.close(200, "bye".into()).await;
}
