//! basic.consume / get / qos / cancel; acks, nacks, rejects, recover and
//! the return of unacked messages are in tests/consume_acks.rs.

mod common;

use common::consume::*;
use common::raw::{self, RawClient};
use common::*;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, BasicRecoverOptions,
};
use lapin::protocol::{self as proto, AMQPClass};
use std::time::Duration;

#[tokio::test]
async fn server_generated_consumer_tag() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "ctag").await;
    let c1 = consume(&ch, &q, false).await;
    let c2 = consume(&ch, &q, false).await;
    assert!(c1.tag().as_str().starts_with("amq.ctag-"), "{:?}", c1.tag());
    assert_ne!(c1.tag(), c2.tag());
    let c3 = consume_with(&ch, &q, "my-tag", BasicConsumeOptions::default())
        .await
        .unwrap();
    assert_eq!(c3.tag().as_str(), "my-tag");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_a_channel_is_530() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "ctag-reuse").await;
    let _c = consume_with(&ch, &q, "dup", BasicConsumeOptions::default())
        .await
        .unwrap();
    let res = consume_with(&ch, &q, "dup", BasicConsumeOptions::default()).await;
    assert_code(res.map(|_| ()), 530);
    drop(conn);
    assert_broker_healthy(&broker).await;
    let (conn, _) = connect_channel(&broker).await;
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn consuming_from_missing_queue_is_404() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = consume_with(&ch, &unique("missing"), "", BasicConsumeOptions::default()).await;
    assert_code(res.map(|_| ()), 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn exclusive_consumer_blocks_others_with_403() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "excl-consumer").await;
    let _c = consume_with(
        &ch,
        &q,
        "",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let res = consume_with(&ch2, &q, "", BasicConsumeOptions::default()).await;
    assert_code(res.map(|_| ()), 403);

    // And an exclusive consumer cannot join a queue that has consumers.
    let q2 = declare_queue(&ch, "excl-consumer2").await;
    let _plain = consume(&ch, &q2, false).await;
    let ch3 = conn.create_channel().await.unwrap();
    let res = consume_with(
        &ch3,
        &q2,
        "",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
    )
    .await;
    assert_code(res.map(|_| ()), 403);
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &q2).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn no_ack_consumer_removes_messages_on_delivery() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "noack").await;
    fill_queue(&conn, &q, &[b"1", b"2", b"3"]).await;
    let cch = conn.create_channel().await.unwrap();
    let mut consumer = consume(&cch, &q, true).await;
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let d = next_delivery(&mut consumer).await;
        assert!(!d.redelivered);
        bodies.push(body(&d));
    }
    assert_eq!(bodies, ["1", "2", "3"]);
    // Closing the channel requeues nothing: there is nothing unacked.
    within("close", cch.close(200, "bye".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn basic_get_and_get_empty() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "get").await;
    assert!(get(&ch, &q, false).await.is_none(), "get-empty expected");
    fill_queue(&conn, &q, &[b"a", b"b", b"c"]).await;
    let m = get(&ch, &q, false).await.expect("message");
    assert_eq!(m.delivery.data, b"a");
    assert_eq!(m.message_count, 2, "messages left after this one");
    assert_eq!(m.delivery.delivery_tag, 1);
    assert!(!m.delivery.redelivered);
    assert_eq!(m.delivery.routing_key.as_str(), q);
    let m2 = get(&ch, &q, false).await.expect("message");
    assert_eq!(m2.delivery.delivery_tag, 2);
    assert_eq!(m2.message_count, 1);
    within("ack", m.delivery.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    within("ack", m2.delivery.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let m3 = get(&ch, &q, true).await.expect("message");
    assert_eq!(m3.message_count, 0);
    assert!(get(&ch, &q, true).await.is_none());
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn basic_get_on_missing_queue_is_404() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "basic.get",
        ch.basic_get(unique("missing").as_str().into(), Default::default()),
    )
    .await;
    assert_code(res.map(|_| ()), 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn per_consumer_prefetch_limits_each_consumer() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "qos").await;
    let bodies: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
    fill_queue(&conn, &q, &refs).await;

    let cch = conn.create_channel().await.unwrap();
    within("qos", cch.basic_qos(2, BasicQosOptions { global: false }))
        .await
        .unwrap();
    let mut a = consume(&cch, &q, false).await;
    let mut b = consume(&cch, &q, false).await;
    let (got_a, got_b) = gather_two(&mut a, &mut b).await;
    assert_eq!(got_a.len(), 2, "consumer a holds at most 2 unacked");
    assert_eq!(got_b.len(), 2, "consumer b holds at most 2 unacked");
    assert_eq!(message_count(&ch, &q).await, 6);

    // Acking one of a's frees exactly one slot for a.
    within("ack", got_a[0].acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let d = next_delivery(&mut a).await;
    assert!(!d.redelivered);
    assert_no_delivery(&mut a, QUIET).await;
    assert_no_delivery(&mut b, Duration::from_millis(50)).await;
    assert_eq!(message_count(&ch, &q).await, 5);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn global_prefetch_limits_the_whole_channel() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q1 = declare_queue(&ch, "qos-global1").await;
    let q2 = declare_queue(&ch, "qos-global2").await;
    for q in [&q1, &q2] {
        fill_queue(&conn, q, &[b"1", b"2", b"3", b"4", b"5"]).await;
    }
    let cch = conn.create_channel().await.unwrap();
    within("qos", cch.basic_qos(3, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut a = consume(&cch, &q1, false).await;
    let mut b = consume(&cch, &q2, false).await;
    let (got_a, got_b) = gather_two(&mut a, &mut b).await;
    assert_eq!(
        got_a.len() + got_b.len(),
        3,
        "channel-wide prefetch of 3 (a got {}, b got {})",
        got_a.len(),
        got_b.len()
    );
    // Acking everything (multiple) lets more through.
    let last = got_a
        .iter()
        .chain(got_b.iter())
        .map(|d| d.delivery_tag)
        .max()
        .unwrap();
    within(
        "ack multiple",
        cch.basic_ack(last, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    let (more_a, more_b) = gather_two(&mut a, &mut b).await;
    assert_eq!(more_a.len() + more_b.len(), 3);
    delete_queue(&conn, &q1).await;
    delete_queue(&conn, &q2).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn prefetch_zero_means_unlimited() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "qos0").await;
    let bodies: Vec<Vec<u8>> = (0..50).map(|i| format!("m{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
    fill_queue(&conn, &q, &refs).await;
    let cch = conn.create_channel().await.unwrap();
    within("qos", cch.basic_qos(0, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut c = consume(&cch, &q, false).await;
    for i in 0..50 {
        let d = next_delivery(&mut c).await;
        assert_eq!(body(&d), format!("m{i}"));
    }
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn two_consumers_get_messages_round_robin() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "rr").await;
    let cch = conn.create_channel().await.unwrap();
    let mut a = consume(&cch, &q, true).await;
    let mut b = consume(&cch, &q, true).await;
    let bodies: Vec<Vec<u8>> = (0..10).map(|i| format!("m{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = bodies.iter().map(|b| b.as_slice()).collect();
    fill_queue(&conn, &q, &refs).await;
    let (got_a, got_b) = gather_two(&mut a, &mut b).await;
    assert_eq!(
        got_a.len(),
        5,
        "a: {:?}",
        got_a.iter().map(body).collect::<Vec<_>>()
    );
    assert_eq!(
        got_b.len(),
        5,
        "b: {:?}",
        got_b.iter().map(body).collect::<Vec<_>>()
    );
    // Each consumer sees its share in publish order.
    for got in [&got_a, &got_b] {
        let idx: Vec<usize> = got.iter().map(|d| body(d)[1..].parse().unwrap()).collect();
        assert!(idx.windows(2).all(|w| w[0] < w[1]), "out of order: {idx:?}");
    }
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn deleting_the_queue_cancels_its_consumers() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "cancel-notify").await;
    let cch = conn.create_channel().await.unwrap();
    let mut c = consume(&cch, &q, false).await;
    within(
        "delete",
        ch.queue_delete(q.as_str().into(), Default::default()),
    )
    .await
    .unwrap();
    // lapin ends the stream when it receives the server's basic.cancel.
    match within("basic.cancel from server", c.next()).await {
        None => {}
        Some(other) => panic!("expected the consumer to be cancelled, got {other:?}"),
    }
    // The channel survives.
    assert!(cch.status().connected());
    let q2 = declare_queue(&cch, "after-cancel").await;
    delete_queue(&conn, &q2).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn raw_server_basic_cancel_frame_names_the_consumer() {
    let broker = Broker::start();
    let (mut c, q) = raw_channel_with_consumer(&broker).await;
    c.send_method(1, &raw::basic_consume(q.as_str(), "watcher"))
        .await;
    match c.expect_method(1).await {
        AMQPClass::Basic(proto::basic::AMQPMethod::ConsumeOk(ok)) => {
            assert_eq!(ok.consumer_tag.as_str(), "watcher")
        }
        other => panic!("expected consume-ok, got {other:?}"),
    }
    // Delete the queue from another connection.
    let (conn, ch) = connect_channel(&broker).await;
    within(
        "delete",
        ch.queue_delete(q.as_str().into(), Default::default()),
    )
    .await
    .unwrap();
    match c.expect_method(1).await {
        AMQPClass::Basic(proto::basic::AMQPMethod::Cancel(cancel)) => {
            assert_eq!(cancel.consumer_tag.as_str(), "watcher")
        }
        other => panic!("expected basic.cancel, got {other:?}"),
    }
    c.close().await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn cancel_stops_deliveries_but_keeps_unacked_ackable() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "cancel").await;
    fill_queue(&conn, &q, &[b"1"]).await;
    let cch = conn.create_channel().await.unwrap();
    let mut c = consume(&cch, &q, false).await;
    let d = next_delivery(&mut c).await;
    within(
        "cancel",
        cch.basic_cancel(c.tag(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    fill_queue(&conn, &q, &[b"2"]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        message_count(&ch, &q).await,
        1,
        "cancelled consumer got a message"
    );
    // Acking a message of the cancelled consumer is still valid.
    within("ack", d.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    let q2 = declare_queue(&cch, "cancel-probe").await; // channel still fine
    within("close", cch.close(200, "bye".into())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(message_count(&ch, &q).await, 1, "acked message came back");
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &q2).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn recover_without_requeue_is_not_implemented_540() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "recover",
        ch.basic_recover(BasicRecoverOptions { requeue: false }),
    )
    .await;
    assert_code(res, 540);
    drop(conn);
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn prefetch_size_is_not_implemented_540() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    // basic.qos with prefetch-size 1000 (lapin cannot send it).
    let mut payload = Vec::new();
    payload.extend_from_slice(&60u16.to_be_bytes());
    payload.extend_from_slice(&10u16.to_be_bytes());
    payload.extend_from_slice(&1000u32.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    payload.push(0);
    c.send(&raw::frame(raw::FRAME_METHOD, 1, &payload)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 540, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (60, 10), "{close:?}");
}
