//! basic.ack / nack / reject / recover, and unacked messages coming back
//! when their channel, connection or socket goes.

mod common;

use common::consume::*;
use common::raw::{self, RawClient};
use common::*;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRecoverOptions, BasicRejectOptions};
use lapin::protocol::{self as proto, AMQPClass};
use std::time::Duration;

#[tokio::test]
async fn ack_multiple_acks_everything_up_to_the_tag() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "ack-multi").await;
    fill_queue(&conn, &q, &[b"1", b"2", b"3"]).await;
    let gch = conn.create_channel().await.unwrap();
    let mut tags = Vec::new();
    for _ in 0..3 {
        tags.push(
            get(&gch, &q, false)
                .await
                .expect("msg")
                .delivery
                .delivery_tag,
        );
    }
    assert_eq!(tags, [1, 2, 3]);
    within("ack", gch.basic_ack(2, BasicAckOptions { multiple: true }))
        .await
        .unwrap();
    within("close", gch.close(200, "bye".into())).await.unwrap();
    // Only #3 was still unacked and comes back.
    wait_for_ready(&ch, &q, 1).await;
    let m = get(&ch, &q, true).await.expect("requeued");
    assert_eq!(m.delivery.data, b"3");
    assert!(m.delivery.redelivered);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn requeued_messages_come_back_first_and_redelivered() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "requeue").await;
    fill_queue(&conn, &q, &[b"m1", b"m2", b"m3"]).await;
    let m1 = get(&ch, &q, false).await.expect("m1");
    let m2 = get(&ch, &q, false).await.expect("m2");
    assert_eq!(m1.delivery.data, b"m1");
    assert_eq!(m2.delivery.data, b"m2");
    within(
        "nack",
        ch.basic_nack(
            m2.delivery.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        ),
    )
    .await
    .unwrap();
    let again = get(&ch, &q, false).await.expect("m2 again");
    assert_eq!(again.delivery.data, b"m2", "requeued message must be first");
    assert!(again.delivery.redelivered);
    within(
        "reject",
        ch.basic_reject(
            m1.delivery.delivery_tag,
            BasicRejectOptions { requeue: true },
        ),
    )
    .await
    .unwrap();
    let again1 = get(&ch, &q, false).await.expect("m1 again");
    assert_eq!(again1.delivery.data, b"m1");
    assert!(again1.delivery.redelivered);
    let m3 = get(&ch, &q, false).await.expect("m3");
    assert_eq!(m3.delivery.data, b"m3");
    assert!(!m3.delivery.redelivered);
    within(
        "ack all",
        ch.basic_ack(m3.delivery.delivery_tag, BasicAckOptions { multiple: true }),
    )
    .await
    .unwrap();
    assert!(get(&ch, &q, true).await.is_none());
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn nack_multiple_with_requeue_and_without() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "nack-multi").await;
    fill_queue(&conn, &q, &[b"1", b"2", b"3", b"4"]).await;
    let cch = conn.create_channel().await.unwrap();
    let mut c = consume(&cch, &q, false).await;
    let mut tags = Vec::new();
    for _ in 0..4 {
        tags.push(next_delivery(&mut c).await.delivery_tag);
    }
    // Drop 1 and 2.
    within(
        "nack",
        cch.basic_nack(
            tags[1],
            BasicNackOptions {
                multiple: true,
                requeue: false,
            },
        ),
    )
    .await
    .unwrap();
    // Requeue 3 and 4: they come straight back to the (only) consumer.
    within(
        "nack",
        cch.basic_nack(
            tags[3],
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        ),
    )
    .await
    .unwrap();
    let d3 = next_delivery(&mut c).await;
    let d4 = next_delivery(&mut c).await;
    assert_eq!((body(&d3).as_str(), d3.redelivered), ("3", true));
    assert_eq!((body(&d4).as_str(), d4.redelivered), ("4", true));
    assert!(d3.delivery_tag > tags[3], "redeliveries get new tags");
    within(
        "reject",
        d3.acker.reject(BasicRejectOptions { requeue: false }),
    )
    .await
    .unwrap();
    within("ack", d4.acker.ack(BasicAckOptions::default()))
        .await
        .unwrap();
    assert_no_delivery(&mut c, QUIET).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn ack_of_unknown_delivery_tag_is_406() {
    let broker = Broker::start();
    let (mut c, _q) = raw_channel_with_consumer(&broker).await;
    c.send_method(1, &ack(99, false)).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(
        (close.code, close.class_id, close.method_id),
        (406, 60, 80),
        "{close:?}"
    );
    assert!(close.text.starts_with("PRECONDITION_FAILED"), "{close:?}");
    // The connection is fine.
    c.open_channel(2).await;
    c.close().await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn double_ack_is_406() {
    let broker = Broker::start();
    let (mut c, q) = raw_channel_with_consumer(&broker).await;
    c.send_method(1, &raw::basic_publish("", &q)).await;
    c.send(&raw::header_frame(1, 1)).await;
    c.send(&raw::body_frame(1, b"x")).await;
    // basic.get it (needs a round trip so the publish is enqueued first).
    let get = AMQPClass::Basic(proto::basic::AMQPMethod::Get(proto::basic::Get {
        queue: q.as_str().into(),
        no_ack: false,
    }));
    let tag = loop {
        c.send_method(1, &get).await;
        match c.expect_method(1).await {
            AMQPClass::Basic(proto::basic::AMQPMethod::GetOk(ok)) => break ok.delivery_tag,
            AMQPClass::Basic(proto::basic::AMQPMethod::GetEmpty(_)) => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("expected get-ok, got {other:?}"),
        }
    };
    assert_eq!(tag, 1);
    c.send_method(1, &ack(1, false)).await;
    c.send_method(1, &ack(1, false)).await;
    let close = c.expect_channel_close(1).await;
    assert_eq!(close.code, 406, "{close:?}");
    c.close().await;
}

#[tokio::test]
async fn recover_with_requeue_redelivers_unacked() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "recover").await;
    fill_queue(&conn, &q, &[b"r1", b"r2"]).await;
    let cch = conn.create_channel().await.unwrap();
    let mut c = consume(&cch, &q, false).await;
    let first = [next_delivery(&mut c).await, next_delivery(&mut c).await];
    assert!(first.iter().all(|d| !d.redelivered));
    within(
        "recover",
        cch.basic_recover(BasicRecoverOptions { requeue: true }),
    )
    .await
    .unwrap();
    let mut again = vec![next_delivery(&mut c).await, next_delivery(&mut c).await];
    again.sort_by_key(body);
    assert_eq!(
        again
            .iter()
            .map(|d| (body(d), d.redelivered))
            .collect::<Vec<_>>(),
        vec![("r1".to_string(), true), ("r2".to_string(), true)]
    );
    for d in &again {
        within("ack", d.acker.ack(BasicAckOptions::default()))
            .await
            .unwrap();
    }
    assert_no_delivery(&mut c, QUIET).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn recover_ok_comes_before_the_redeliveries() {
    // lapin drops buffered deliveries when recover-ok arrives, so a broker
    // that redelivers before answering recover-ok loses messages for lapin
    // users. RabbitMQ answers recover-ok first.
    let broker = Broker::start();
    let (mut c, q) = raw_channel_with_consumer(&broker).await;
    for body in [&b"r1"[..], b"r2"] {
        c.send_method(1, &raw::basic_publish("", &q)).await;
        c.send(&raw::header_frame(1, body.len() as u64)).await;
        c.send(&raw::body_frame(1, body)).await;
    }
    c.send_method(1, &raw::basic_consume(q.as_str(), "c1"))
        .await;
    let mut delivered = 0;
    while delivered < 2 {
        match c.expect_method(1).await {
            AMQPClass::Basic(proto::basic::AMQPMethod::ConsumeOk(_)) => {}
            AMQPClass::Basic(proto::basic::AMQPMethod::Deliver(d)) => {
                assert!(!d.redelivered);
                delivered += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    c.send_method(
        1,
        &AMQPClass::Basic(proto::basic::AMQPMethod::Recover(proto::basic::Recover {
            requeue: true,
        })),
    )
    .await;
    match c.expect_method(1).await {
        AMQPClass::Basic(proto::basic::AMQPMethod::RecoverOk(_)) => {}
        other => panic!("expected basic.recover-ok before any redelivery, got {other:?}"),
    }
    for _ in 0..2 {
        match c.expect_method(1).await {
            AMQPClass::Basic(proto::basic::AMQPMethod::Deliver(d)) => assert!(d.redelivered),
            other => panic!("expected a redelivery, got {other:?}"),
        }
    }
    c.close().await;
}

#[tokio::test]
async fn unacked_messages_return_when_channel_closes() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "unacked-ch").await;
    fill_queue(&conn, &q, &[b"a", b"b"]).await;
    let cch = conn.create_channel().await.unwrap();
    let mut c = consume(&cch, &q, false).await;
    next_delivery(&mut c).await;
    next_delivery(&mut c).await;
    assert_eq!(message_count(&ch, &q).await, 0);
    within("close", cch.close(200, "bye".into())).await.unwrap();
    wait_for_ready(&ch, &q, 2).await;
    let a = get(&ch, &q, true).await.unwrap();
    let b = get(&ch, &q, true).await.unwrap();
    assert_eq!(
        (a.delivery.data.as_slice(), a.delivery.redelivered),
        (&b"a"[..], true)
    );
    assert_eq!(
        (b.delivery.data.as_slice(), b.delivery.redelivered),
        (&b"b"[..], true)
    );
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn unacked_messages_return_when_connection_closes() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "unacked-conn").await;
    fill_queue(&conn, &q, &[b"a", b"b", b"c"]).await;
    let (conn2, cch) = connect_channel(&broker).await;
    let mut c = consume(&cch, &q, false).await;
    for _ in 0..3 {
        next_delivery(&mut c).await;
    }
    within("close", conn2.close(200, "bye".into()))
        .await
        .unwrap();
    wait_for_ready(&ch, &q, 3).await;
    let got: Vec<(Vec<u8>, bool)> = {
        let mut v = Vec::new();
        while let Some(m) = get(&ch, &q, true).await {
            v.push((m.delivery.data.clone(), m.delivery.redelivered));
        }
        v
    };
    assert_eq!(
        got,
        vec![
            (b"a".to_vec(), true),
            (b"b".to_vec(), true),
            (b"c".to_vec(), true)
        ]
    );
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn unacked_messages_return_when_socket_drops_abruptly() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "unacked-drop").await;
    fill_queue(&conn, &q, &[b"x"]).await;
    let mut raw_c = RawClient::open(broker.addr()).await;
    raw_c.open_channel(1).await;
    raw_c
        .send_method(1, &raw::basic_consume(q.as_str(), ""))
        .await;
    let mut saw_deliver = false;
    while !saw_deliver {
        match raw_c.expect_method(1).await {
            AMQPClass::Basic(proto::basic::AMQPMethod::ConsumeOk(_)) => {}
            AMQPClass::Basic(proto::basic::AMQPMethod::Deliver(_)) => saw_deliver = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(message_count(&ch, &q).await, 0);
    drop(raw_c); // no connection.close: TCP just goes away
    wait_for_ready(&ch, &q, 1).await;
    let m = get(&ch, &q, true).await.unwrap();
    assert!(m.delivery.redelivered);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}
