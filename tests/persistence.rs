//! Durability across broker restarts (hopper only: these kill the broker, so
//! they skip themselves against an external broker).

mod common;

use common::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn durable_topology_and_persistent_messages_survive_kill9() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("durable-q");
    let x = unique("durable-x");
    {
        let (conn, ch) = connect_channel(&broker).await;
        within(
            "declare",
            ch.queue_declare(q.as_str().into(), durable(), FieldTable::default()),
        )
        .await
        .unwrap();
        within(
            "exchange.declare",
            ch.exchange_declare(
                x.as_str().into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        within(
            "bind",
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .unwrap();
        confirm_select(&ch).await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        for body in [&b"p1"[..], b"p2"] {
            let c = publish_confirmed(&ch, "", &q, body, persistent.clone()).await;
            assert!(c.is_ack());
        }
        // Transient message in a durable queue: lost on restart.
        let c = publish_confirmed(
            &ch,
            "",
            &q,
            b"transient",
            BasicProperties::default().with_delivery_mode(1),
        )
        .await;
        assert!(c.is_ack());
        let c = publish_confirmed(&ch, &x, "k", b"p3", persistent.clone()).await;
        assert!(c.is_ack());
        drop(conn);
    }
    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    assert_eq!(message_count(&ch, &q).await, 3);
    let got = drain(&ch, &q).await;
    assert_eq!(got, vec![b"p1".to_vec(), b"p2".to_vec(), b"p3".to_vec()]);
    // The durable exchange and binding are back too.
    confirm_select(&ch).await;
    publish_confirmed(&ch, &x, "k", b"after", BasicProperties::default()).await;
    assert_eq!(drain(&ch, &q).await, vec![b"after".to_vec()]);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn transient_queue_is_gone_after_restart() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("transient-q");
    {
        let (conn, ch) = connect_channel(&broker).await;
        let _ = declare_queue(&ch, "unused").await;
        within(
            "declare",
            ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default()),
        )
        .await
        .unwrap();
        drop(conn);
    }
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "passive",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn unacked_persistent_messages_survive_restart() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("acked-q");
    {
        let (conn, ch) = connect_channel(&broker).await;
        within(
            "declare",
            ch.queue_declare(q.as_str().into(), durable(), FieldTable::default()),
        )
        .await
        .unwrap();
        confirm_select(&ch).await;
        let persistent = BasicProperties::default().with_delivery_mode(2);
        for body in [&b"a"[..], b"b", b"c"] {
            publish_confirmed(&ch, "", &q, body, persistent.clone()).await;
        }
        let m = get(&ch, &q, false).await.unwrap();
        within("ack", m.delivery.acker.ack(Default::default()))
            .await
            .unwrap();
        // A synchronous round trip after the ack so it has been processed.
        assert_eq!(message_count(&ch, &q).await, 2);
        within("close", conn.close(200, "bye".into()))
            .await
            .unwrap();
    }
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    // Acks are not synchronously durable (in RabbitMQ either), so after a
    // SIGKILL the acked message may come back; the others must.
    let got = drain(&ch, &q).await;
    assert!(
        got == vec![b"b".to_vec(), b"c".to_vec()]
            || got == vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()],
        "after restart: {got:?}"
    );
    let _ = conn.close(200, "bye".into()).await;
}
