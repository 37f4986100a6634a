//! Channel lifecycle and channel-level error isolation.

mod common;

use common::raw::{self, RawClient};
use common::*;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ExchangeKind};
use std::collections::HashSet;

#[tokio::test]
async fn many_channels_on_one_connection() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let mut channels = Vec::new();
    for _ in 0..100 {
        channels.push(
            within("channel.open", conn.create_channel())
                .await
                .expect("open channel"),
        );
    }
    let ids: HashSet<u16> = channels.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), 100);
    // Every channel works independently.
    let mut names = HashSet::new();
    for ch in &channels {
        let q = within(
            "queue.declare",
            ch.queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare");
        names.insert(q.name().to_string());
    }
    assert_eq!(names.len(), 100, "server-named queues must be distinct");
    for ch in &channels {
        within("channel.close", ch.close(200, "bye".into()))
            .await
            .expect("close channel");
    }
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .unwrap();
}

#[tokio::test]
async fn channel_error_closes_only_that_channel() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let bad = within("open", conn.create_channel()).await.unwrap();
    let good = within("open", conn.create_channel()).await.unwrap();
    let q = declare_queue(&good, "isolation").await;

    let missing = unique("missing");
    let res = within(
        "passive declare",
        bad.queue_declare(
            missing.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);

    // The failed channel is unusable...
    let res = within(
        "declare on closed channel",
        bad.queue_declare(q.as_str().into(), Default::default(), FieldTable::default()),
    )
    .await;
    assert!(res.is_err(), "a closed channel must not accept methods");
    // ...but the connection and the other channel still work.
    assert!(conn.status().connected());
    confirm_select(&good).await;
    let c = publish_confirmed(&good, "", &q, b"hello", BasicProperties::default()).await;
    assert!(c.is_ack());
    let m = get(&good, &q, true).await.expect("message");
    assert_eq!(m.delivery.data, b"hello");
    // And new channels can be opened.
    let third = within("open", conn.create_channel()).await.unwrap();
    within(
        "passive declare",
        third.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive amq.direct");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn server_channel_close_carries_offending_class_and_method() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;

    // queue.declare (50, 10) passive on a missing queue.
    c.open_channel(1).await;
    c.send_method(1, &raw::queue_declare(&unique("missing"), true))
        .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        (close.code, close.class_id, close.method_id),
        (404, 50, 10),
        "{close:?}"
    );
    assert!(close.text.starts_with("NOT_FOUND"), "{close:?}");

    // The same channel number can be reopened after close-ok.
    c.open_channel(1).await;

    // exchange.declare (40, 10) passive on a missing exchange.
    c.send_method(
        1,
        &AMQPClass::Exchange(proto::exchange::AMQPMethod::Declare(
            proto::exchange::Declare {
                exchange: unique("missing-x").as_str().into(),
                kind: "direct".into(),
                passive: true,
                durable: false,
                auto_delete: false,
                internal: false,
                nowait: false,
                arguments: FieldTable::default(),
            },
        )),
    )
    .await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        (close.code, close.class_id, close.method_id),
        (404, 40, 10),
        "{close:?}"
    );

    // basic.publish (60, 40) to a missing exchange.
    c.open_channel(1).await;
    c.send_method(1, &raw::basic_publish(&unique("missing-x"), "rk"))
        .await;
    c.send(&raw::header_frame(1, 2)).await;
    c.send(&raw::body_frame(1, b"hi")).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        (close.code, close.class_id, close.method_id),
        (404, 60, 40),
        "{close:?}"
    );

    // Other channels were untouched all along.
    c.open_channel(2).await;
    c.send_method(2, &raw::queue_declare("", false)).await;
    match c.expect_method(2).await {
        AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(_)) => {}
        other => panic!("expected declare-ok, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test]
async fn client_channel_close_gets_close_ok_and_number_is_reusable() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    for _ in 0..3 {
        c.open_channel(7).await;
        c.send_method(
            7,
            &AMQPClass::Channel(proto::channel::AMQPMethod::Close(proto::channel::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await;
        match c.expect_method(7).await {
            AMQPClass::Channel(proto::channel::AMQPMethod::CloseOk(_)) => {}
            other => panic!("expected channel.close-ok, got {other:?}"),
        }
    }
    c.close().await;
}

#[tokio::test]
async fn channel_flow_active_true_is_acknowledged() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        &AMQPClass::Channel(proto::channel::AMQPMethod::Flow(proto::channel::Flow {
            active: true,
        })),
    )
    .await;
    match c.expect_method(1).await {
        AMQPClass::Channel(proto::channel::AMQPMethod::FlowOk(ok)) => assert!(ok.active),
        other => panic!("expected channel.flow-ok, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test]
async fn channel_flow_active_false_is_not_implemented_540() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        &AMQPClass::Channel(proto::channel::AMQPMethod::Flow(proto::channel::Flow {
            active: false,
        })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 540, "{close:?}");
    assert_broker_healthy(&broker).await;
}
