//! Transactions (tx.*) and RPC via direct reply-to.

mod common;

use common::*;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use std::time::Duration;

async fn publish(ch: &lapin::Channel, rk: &str, body: &[u8], props: BasicProperties) {
    within(
        "publish",
        ch.basic_publish(
            "".into(),
            rk.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("publish");
}

#[tokio::test]
async fn tx_commit_makes_publishes_visible() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "tx-commit").await;
    let tx = conn.create_channel().await.unwrap();
    within("tx.select", tx.tx_select()).await.unwrap();
    publish(&tx, &q, b"1", BasicProperties::default()).await;
    publish(&tx, &q, b"2", BasicProperties::default()).await;
    // A round trip on the tx channel: the publishes have been processed,
    // but are held until commit.
    assert_eq!(
        message_count(&tx, &q).await,
        0,
        "uncommitted publish visible"
    );
    within("tx.commit", tx.tx_commit()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 2);
    // The channel stays transactional: the next batch waits for a commit too.
    publish(&tx, &q, b"3", BasicProperties::default()).await;
    assert_eq!(message_count(&tx, &q).await, 2);
    within("tx.commit", tx.tx_commit()).await.unwrap();
    assert_eq!(
        drain(&ch, &q).await,
        vec![b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn tx_rollback_discards_publishes() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "tx-rollback").await;
    let tx = conn.create_channel().await.unwrap();
    within("tx.select", tx.tx_select()).await.unwrap();
    publish(&tx, &q, b"discard me", BasicProperties::default()).await;
    within("tx.rollback", tx.tx_rollback()).await.unwrap();
    within("tx.commit", tx.tx_commit()).await.unwrap();
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn tx_rollback_discards_acks() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "tx-acks").await;
    fill_queue(&conn, &q, &[b"m1", b"m2"]).await;
    let tx = conn.create_channel().await.unwrap();
    within("tx.select", tx.tx_select()).await.unwrap();
    let m1 = get(&tx, &q, false).await.expect("m1");
    let m2 = get(&tx, &q, false).await.expect("m2");
    within(
        "ack",
        tx.basic_ack(m1.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .unwrap();
    within("tx.rollback", tx.tx_rollback()).await.unwrap();
    within(
        "ack",
        tx.basic_ack(m2.delivery.delivery_tag, BasicAckOptions::default()),
    )
    .await
    .unwrap();
    within("tx.commit", tx.tx_commit()).await.unwrap();
    // m2's ack was committed; m1's was rolled back, so m1 is still unacked
    // and returns to the queue when the channel closes.
    within("close", tx.close(200, "bye".into())).await.unwrap();
    within("requeue", async {
        while message_count(&ch, &q).await != 1 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let back = get(&ch, &q, true).await.expect("m1 back");
    assert_eq!(back.delivery.data, b"m1");
    assert!(back.delivery.redelivered);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn tx_commit_without_select_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    assert_code(within("tx.commit", ch.tx_commit()).await, 406);
    let ch = conn.create_channel().await.unwrap();
    assert_code(within("tx.rollback", ch.tx_rollback()).await, 406);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn confirm_and_tx_are_mutually_exclusive_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    within("tx.select", ch.tx_select()).await.unwrap();
    assert_code(
        within("confirm.select", ch.confirm_select(Default::default())).await,
        406,
    );
    let ch = conn.create_channel().await.unwrap();
    confirm_select(&ch).await;
    assert_code(within("tx.select", ch.tx_select()).await, 406);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn direct_reply_to_rpc_round_trip() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let server_q = declare_queue(&ch, "rpc-server").await;

    // Client side: consume the pseudo-queue in no-ack mode, then publish
    // with reply_to = amq.rabbitmq.reply-to on the same channel.
    let client = conn.create_channel().await.unwrap();
    let mut replies = within(
        "consume reply-to",
        client.basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume amq.rabbitmq.reply-to");
    publish(
        &client,
        &server_q,
        b"ping",
        BasicProperties::default()
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_correlation_id("c-1".into()),
    )
    .await;

    // Server side: the request's reply_to was rewritten to a routable name.
    let server = conn.create_channel().await.unwrap();
    let req = within("request", async {
        loop {
            if let Some(m) = get(&server, &server_q, true).await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let reply_to = req
        .delivery
        .properties
        .reply_to()
        .clone()
        .expect("reply_to")
        .to_string();
    assert!(
        reply_to.starts_with("amq.rabbitmq.reply-to."),
        "reply_to must be rewritten, got {reply_to:?}"
    );
    publish(
        &server,
        &reply_to,
        b"pong",
        BasicProperties::default().with_correlation_id("c-1".into()),
    )
    .await;
    let reply = match within("reply", replies.next()).await {
        Some(Ok(d)) => d,
        other => panic!("expected a reply, got {other:?}"),
    };
    assert_eq!(reply.data, b"pong");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("c-1")
    );
    delete_queue(&conn, &server_q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn publishing_with_reply_to_pseudo_queue_without_consuming_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "rpc-noconsumer").await;
    let pch = conn.create_channel().await.unwrap();
    confirm_select(&pch).await;
    let confirm = within(
        "publish",
        pch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        ),
    )
    .await
    .unwrap();
    assert_code(within("confirm", confirm).await, 406);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}
