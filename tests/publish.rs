//! basic.publish: bodies, properties, returns, errors, publisher confirms.

mod common;

use common::raw::{self, RawClient};
use common::*;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation};
use std::collections::BTreeSet;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn bodies_of_many_sizes_arrive_intact() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "sizes").await;
    // frame_max is 131072, so a body frame carries at most 131064 bytes.
    let sizes = [
        0usize,
        1,
        131_063,
        131_064,
        131_065,
        131_072,
        262_128,
        262_129,
        1 << 20,
        (1 << 20) + 3,
    ];
    confirm_select(&ch).await;
    for &n in &sizes {
        let c = publish_confirmed(&ch, "", &q, &pattern(n), BasicProperties::default()).await;
        assert!(c.is_ack(), "size {n} not acked");
    }
    // Via a consumer, checking order too.
    let cch = conn.create_channel().await.unwrap();
    let mut consumer = consume(&cch, &q, true).await;
    for &n in &sizes {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data.len(), n, "body length");
        assert!(d.data == pattern(n), "body of {n} bytes corrupted");
    }
    within(
        "cancel",
        cch.basic_cancel(consumer.tag(), Default::default()),
    )
    .await
    .unwrap();
    // And via basic.get.
    for &n in &sizes {
        publish_confirmed(&ch, "", &q, &pattern(n), BasicProperties::default()).await;
    }
    let gch = conn.create_channel().await.unwrap();
    for (i, &n) in sizes.iter().enumerate() {
        let m = get(&gch, &q, true).await.expect("message");
        assert_eq!(m.message_count as usize, sizes.len() - i - 1);
        assert_eq!(m.delivery.data.len(), n, "basic.get body length");
        assert!(
            m.delivery.data == pattern(n),
            "basic.get body of {n} bytes corrupted"
        );
    }
    assert!(get(&gch, &q, true).await.is_none());
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn big_body_via_basic_get() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "big-get").await;
    confirm_select(&ch).await;
    let body = pattern(3 * 131072 + 17);
    publish_confirmed(&ch, "", &q, &body, BasicProperties::default()).await;
    publish_confirmed(&ch, "", &q, b"", BasicProperties::default()).await;
    let m = get(&ch, &q, true).await.expect("big message");
    assert_eq!(m.message_count, 1);
    assert!(m.delivery.data == body, "big body corrupted");
    let m = get(&ch, &q, true).await.expect("empty message");
    assert_eq!(m.message_count, 0);
    assert!(m.delivery.data.is_empty());
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

fn rich_headers() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("deep".into()));
    nested.insert("n".into(), AMQPValue::LongInt(-7));
    let mut h = FieldTable::default();
    h.insert("bool-t".into(), AMQPValue::Boolean(true));
    h.insert("bool-f".into(), AMQPValue::Boolean(false));
    h.insert("i8".into(), AMQPValue::ShortShortInt(-8));
    h.insert("u8".into(), AMQPValue::ShortShortUInt(200));
    h.insert("i16".into(), AMQPValue::ShortInt(-1600));
    h.insert("u16".into(), AMQPValue::ShortUInt(60000));
    h.insert("i32".into(), AMQPValue::LongInt(-2_000_000_000));
    h.insert("u32".into(), AMQPValue::LongUInt(4_000_000_000));
    h.insert("i64".into(), AMQPValue::LongLongInt(-9_000_000_000_000));
    h.insert("f32".into(), AMQPValue::Float(1.5));
    h.insert("f64".into(), AMQPValue::Double(-2.25e100));
    h.insert(
        "decimal".into(),
        AMQPValue::DecimalValue(DecimalValue {
            scale: 2,
            value: 12345,
        }),
    );
    h.insert(
        "string".into(),
        AMQPValue::LongString(LongString::from("héllo wörld")),
    );
    h.insert(
        "binary-string".into(),
        AMQPValue::LongString(LongString::from(vec![0u8, 1, 2, 255, 0])),
    );
    h.insert("empty-string".into(), AMQPValue::LongString("".into()));
    h.insert(
        "array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![
            AMQPValue::LongInt(1),
            AMQPValue::LongString("two".into()),
            AMQPValue::Boolean(true),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::Void])),
        ])),
    );
    h.insert(
        "empty-array".into(),
        AMQPValue::FieldArray(FieldArray::from(vec![])),
    );
    h.insert("timestamp".into(), AMQPValue::Timestamp(1_700_000_000));
    h.insert("table".into(), AMQPValue::FieldTable(nested));
    h.insert(
        "empty-table".into(),
        AMQPValue::FieldTable(FieldTable::default()),
    );
    h.insert(
        "bytes".into(),
        AMQPValue::ByteArray(ByteArray::from(vec![9u8, 8, 7, 0, 255])),
    );
    h.insert("void".into(), AMQPValue::Void);
    h
}

fn rich_properties() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(rich_headers())
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("reply-queue".into())
        .with_expiration("600000".into())
        .with_message_id("msg-42".into())
        .with_timestamp(1_699_999_999)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("hopper-tests".into())
        .with_cluster_id("cluster-x".into())
}

#[tokio::test]
async fn all_basic_properties_and_header_types_round_trip() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "props").await;
    confirm_select(&ch).await;
    let props = rich_properties();
    for _ in 0..2 {
        let c = publish_confirmed(&ch, "", &q, b"{}", props.clone()).await;
        assert!(c.is_ack());
    }
    // basic.get path.
    let m = get(&ch, &q, true).await.expect("message");
    assert_eq!(
        m.delivery.properties.headers(),
        props.headers(),
        "basic.get headers"
    );
    assert_eq!(m.delivery.properties, props, "basic.get properties");
    // basic.deliver path.
    let cch = conn.create_channel().await.unwrap();
    let mut consumer = consume(&cch, &q, true).await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"{}");
    assert_eq!(d.properties.headers(), props.headers(), "headers table");
    assert_eq!(d.properties, props, "basic properties");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn no_properties_stay_empty() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "noprops").await;
    confirm_select(&ch).await;
    publish_confirmed(&ch, "", &q, b"x", BasicProperties::default()).await;
    let m = get(&ch, &q, true).await.expect("message");
    assert_eq!(m.delivery.properties, BasicProperties::default());
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn user_id_mismatch_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "userid").await;
    confirm_select(&ch).await;
    let confirm = within(
        "publish",
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default().with_user_id("somebody-else".into()),
        ),
    )
    .await
    .expect("publish is sent");
    assert_code(within("confirm", confirm).await, 406);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn publish_to_missing_exchange_is_404_channel_error() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    let confirm = within(
        "publish",
        ch.basic_publish(
            unique("missing-x").as_str().into(),
            "rk".into(),
            BasicPublishOptions::default(),
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .expect("publish is sent");
    assert_code(within("confirm", confirm).await, 404);
    // Only the channel died.
    assert!(conn.status().connected());
    let ch2 = conn.create_channel().await.expect("new channel");
    let q = declare_queue(&ch2, "after-404").await;
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn mandatory_unroutable_is_returned_before_the_ack() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    let rk = unique("nowhere");
    let confirm = within(
        "publish",
        ch.basic_publish(
            "".into(),
            rk.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            BasicProperties::default().with_message_id("m-1".into()),
        ),
    )
    .await
    .unwrap();
    // lapin attaches a return to the confirm only if the return arrived first.
    match within("confirm", confirm).await.unwrap() {
        Confirmation::Ack(Some(ret)) => {
            assert_eq!(ret.reply_code, 312);
            assert_eq!(ret.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(ret.delivery.data, b"bounce");
            assert_eq!(ret.delivery.routing_key.as_str(), rk);
            assert_eq!(ret.delivery.exchange.as_str(), "");
            assert_eq!(
                ret.delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.as_str()),
                Some("m-1")
            );
        }
        other => panic!("expected an ack carrying the returned message, got {other:?}"),
    }
    // A routable mandatory publish is just acked.
    let q = declare_queue(&ch, "mandatory-ok").await;
    let confirm = ch
        .basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"kept",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        within("confirm", confirm).await.unwrap(),
        Confirmation::Ack(None)
    );
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn non_mandatory_unroutable_is_acked_and_dropped() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    let c = publish_confirmed(
        &ch,
        "amq.direct",
        &unique("nobody"),
        b"x",
        Default::default(),
    )
    .await;
    assert_eq!(c, Confirmation::Ack(None));
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn raw_mandatory_return_frames_and_order() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        &AMQPClass::Confirm(proto::confirm::AMQPMethod::Select(proto::confirm::Select {
            nowait: false,
        })),
    )
    .await;
    match c.expect_method(1).await {
        AMQPClass::Confirm(proto::confirm::AMQPMethod::SelectOk(_)) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    let rk = unique("nowhere");
    c.send_method(
        1,
        &AMQPClass::Basic(proto::basic::AMQPMethod::Publish(proto::basic::Publish {
            exchange: "amq.direct".into(),
            routing_key: rk.as_str().into(),
            mandatory: true,
            immediate: false,
        })),
    )
    .await;
    c.send(&raw::header_frame(1, 5)).await;
    c.send(&raw::body_frame(1, b"hello")).await;
    // Expect exactly: basic.return, content header, body, basic.ack(1).
    let f = c.read_frame(WAIT).await.expect("basic.return");
    match f.method() {
        Some(AMQPClass::Basic(proto::basic::AMQPMethod::Return(r))) => {
            assert_eq!(r.reply_code, 312);
            assert_eq!(r.reply_text.as_str(), "NO_ROUTE");
            assert_eq!(r.exchange.as_str(), "amq.direct");
            assert_eq!(r.routing_key.as_str(), rk);
        }
        other => panic!("expected basic.return first, got {other:?} ({f:?})"),
    }
    let h = c.read_frame(WAIT).await.expect("content header");
    assert_eq!((h.typ, h.channel), (raw::FRAME_HEADER, 1), "{h:?}");
    assert_eq!(&h.payload[0..2], &60u16.to_be_bytes());
    assert_eq!(&h.payload[4..12], &5u64.to_be_bytes());
    let b = c.read_frame(WAIT).await.expect("content body");
    assert_eq!((b.typ, b.channel), (raw::FRAME_BODY, 1));
    assert_eq!(b.payload, b"hello");
    let a = c.read_frame(WAIT).await.expect("basic.ack");
    match a.method() {
        Some(AMQPClass::Basic(proto::basic::AMQPMethod::Ack(ack))) => {
            assert_eq!(ack.delivery_tag, 1);
            assert!(!ack.multiple);
        }
        other => panic!("expected basic.ack after the return, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test]
async fn immediate_flag_is_not_implemented_540() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    let confirm = within(
        "publish",
        ch.basic_publish(
            "".into(),
            "whatever".into(),
            BasicPublishOptions {
                immediate: true,
                ..Default::default()
            },
            b"x",
            BasicProperties::default(),
        ),
    )
    .await
    .unwrap();
    assert_code(within("confirm", confirm).await, 540);
    within("connection to go", async {
        while conn.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn confirms_for_many_publishes_are_all_acks() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "confirm-many").await;
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .unwrap();
    let mut confirms = Vec::new();
    for i in 0..500u32 {
        confirms.push(
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                &i.to_be_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap(),
        );
    }
    for (i, c) in confirms.into_iter().enumerate() {
        let c = within("confirm", c).await.unwrap();
        assert_eq!(c, Confirmation::Ack(None), "publish #{i}");
    }
    assert_eq!(message_count(&ch, &q).await, 500);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn confirm_delivery_tags_start_at_one_and_cover_every_publish() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_method(
        1,
        &AMQPClass::Confirm(proto::confirm::AMQPMethod::Select(proto::confirm::Select {
            nowait: false,
        })),
    )
    .await;
    match c.expect_method(1).await {
        AMQPClass::Confirm(proto::confirm::AMQPMethod::SelectOk(_)) => {}
        other => panic!("expected confirm.select-ok, got {other:?}"),
    }
    // Unroutable, non-mandatory publishes are confirmed too.
    let n = 20u64;
    let mut batch = Vec::new();
    for i in 0..n {
        batch.extend(raw::method_frame(
            1,
            &raw::basic_publish("", &unique("nobody")),
        ));
        batch.extend(raw::header_frame(1, 1));
        batch.extend(raw::body_frame(1, &[i as u8]));
    }
    c.send(&batch).await;
    let mut confirmed = BTreeSet::new();
    let mut highest = 0u64;
    while confirmed.len() < n as usize {
        match c.expect_method(1).await {
            AMQPClass::Basic(proto::basic::AMQPMethod::Ack(a)) => {
                assert!(a.delivery_tag >= 1, "delivery tag 0 confirmed");
                assert!(a.delivery_tag <= n, "tag {} beyond {n}", a.delivery_tag);
                assert!(a.delivery_tag > highest, "confirms out of order");
                if a.multiple {
                    for t in highest + 1..=a.delivery_tag {
                        confirmed.insert(t);
                    }
                } else {
                    confirmed.insert(a.delivery_tag);
                }
                highest = a.delivery_tag;
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    assert_eq!(confirmed, (1..=n).collect::<BTreeSet<_>>());
    c.close().await;
}

#[tokio::test]
async fn confirm_select_twice_is_fine() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    confirm_select(&ch).await;
    let c = publish_confirmed(&ch, "", &unique("nobody"), b"x", Default::default()).await;
    assert!(c.is_ack());
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn persistent_message_to_durable_queue_is_confirmed() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = unique("durable");
    within(
        "declare",
        ch.queue_declare(
            q.as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    confirm_select(&ch).await;
    let c = publish_confirmed(
        &ch,
        "",
        &q,
        b"persist me",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    assert_eq!(c, Confirmation::Ack(None));
    let m = get(&ch, &q, true).await.expect("message");
    assert_eq!(m.delivery.properties.delivery_mode(), &Some(2));
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}
