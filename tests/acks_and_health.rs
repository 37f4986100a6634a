//! Unacknowledged deliveries as RabbitMQ accounts for them: basic.get ones
//! count in the API's `messages_unacknowledged`; a delivery left unacked past
//! `consumer_timeout` closes its channel with RabbitMQ's 406 and goes back to
//! its queue; the consumers list reports the timeout. And
//! `/api/aliveness-test/{vhost}`, which really declares, publishes and gets.
//! The first and last also run against RabbitMQ (HOPPER_TEST_EXTERNAL_URI).

mod common;

use common::mgmt::{http, wait_json, GUEST};
use common::{connect, Broker};
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn basic_get_deliveries_count_as_unacknowledged() {
    let mut broker = Broker::start();
    let api = broker.mgmt_addr();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = common::declare_queue(&ch, "get-unacked").await;
    common::fill_queue(&conn, &q, &[b"a", b"b"]).await;
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    let path = format!("/api/queues/%2F/{q}");
    let info = wait_json(api, &path, |j| j["messages_unacknowledged"] == json!(1));
    assert_eq!(info["messages_ready"], json!(1));
    assert_eq!(info["messages"], json!(2));
    m.delivery.acker.ack(Default::default()).await.expect("ack");
    wait_json(api, &path, |j| j["messages_unacknowledged"] == json!(0));
    // A nack with requeue gives it back too.
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    wait_json(api, &path, |j| j["messages_unacknowledged"] == json!(1));
    m.delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    wait_json(api, &path, |j| {
        j["messages_unacknowledged"] == json!(0) && j["messages_ready"] == json!(1)
    });
    common::delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn aliveness_test_declares_publishes_and_gets() {
    let mut broker = Broker::start();
    let api = broker.mgmt_addr();
    let r = http(api, "GET", "/api/aliveness-test/%2F", GUEST, None);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    // RabbitMQ leaves its queue behind, empty.
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(common::message_count(&ch, "aliveness-test").await, 0);
    assert_eq!(
        http(api, "GET", "/api/aliveness-test/no-such-vhost", GUEST, None).status,
        404
    );
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unacked_delivery_past_consumer_timeout_closes_its_channel() {
    if std::env::var(common::EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return; // RabbitMQ's timeout is its config's (30 minutes by default)
    }
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/broker.toml"))
        .expect("read conf/broker.toml");
    assert!(text.contains("consumer_timeout = 1800000"));
    let cfg = tempfile::NamedTempFile::new().expect("temp config");
    std::fs::write(
        cfg.path(),
        text.replace("consumer_timeout = 1800000", "consumer_timeout = 400"),
    )
    .unwrap();
    let path = cfg.path().to_string_lossy().into_owned();
    let mut broker = Broker::start_with_args(&["--config", &path]);
    let api = broker.mgmt_addr();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = common::declare_queue(&ch, "ack-timeout").await;
    common::fill_queue(&conn, &q, &[b"slow"]).await;
    let mut consumer = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = common::next_delivery(&mut consumer).await;
    assert!(!first.redelivered);
    let consumers = wait_json(api, "/api/consumers", |j| {
        j.as_array().is_some_and(|a| !a.is_empty())
    });
    assert_eq!(consumers[0]["consumer_timeout"], json!(400));
    // Never acked: the broker closes the channel, in RabbitMQ's words.
    let end = common::within("the channel closed by the broker", consumer.next()).await;
    let err = match end {
        Some(Err(e)) => e,
        other => panic!("expected the channel to close, got {other:?}"),
    };
    match err.kind() {
        lapin::ErrorKind::ProtocolError(p) => {
            assert_eq!(p.get_id(), 406);
            assert_eq!(
                p.get_message().as_str(),
                format!(
                    "PRECONDITION_FAILED - delivery acknowledgement on channel {} timed out. Timeout value used: 400 ms. This timeout value can be configured, see consumers doc guide to learn more",
                    ch.id()
                )
            );
        }
        other => panic!("{other:?}"),
    }
    // The delivery went back to the queue.
    let ch2 = conn.create_channel().await.unwrap();
    let again = common::get(&ch2, &q, true).await.expect("requeued");
    assert!(again.delivery.redelivered);
    assert_eq!(again.delivery.data, b"slow");
    // A channel whose deliveries are acked in time stays open.
    common::fill_queue(&conn, &q, &[b"quick"]).await;
    let m = ch2
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    m.delivery.acker.ack(Default::default()).await.unwrap();
    ch2.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the channel is still open");
    let _ = conn.close(200, "bye".into()).await;
}
