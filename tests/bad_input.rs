//! Malformed and out-of-order input over a raw socket. After each, the broker
//! must close just that connection with the right code and keep serving others.

mod common;

use common::raw::{self, RawClient};
use common::*;
use lapin::protocol::{self as proto, AMQPClass};
use std::time::{Duration, Instant};

async fn opened(broker: &Broker) -> RawClient {
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c
}

fn qos() -> AMQPClass {
    AMQPClass::Basic(proto::basic::AMQPMethod::Qos(proto::basic::Qos {
        prefetch_count: 1,
        global: false,
    }))
}

#[tokio::test]
async fn frame_larger_than_frame_max_is_501() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    // Only the header of a too-large frame: the broker must judge the size
    // field without waiting for a payload that is never coming.
    let size: u32 = 131072 + 1;
    let mut bytes = vec![raw::FRAME_BODY];
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(&size.to_be_bytes());
    bytes.extend_from_slice(&[0u8; 16]);
    c.send(&bytes).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert!(close.text.starts_with("FRAME_ERROR"), "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn frame_of_exactly_frame_max_is_accepted() {
    // RabbitMQ accepts a payload of exactly frame_max bytes (its check is
    // `payload > frame_max`), so a full-size body frame must go through.
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send_method(1, &raw::queue_declare("", false)).await;
    let q = match c.expect_method(1).await {
        AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(ok)) => ok.queue.to_string(),
        other => panic!("{other:?}"),
    };
    let body = vec![7u8; 131072 - 8];
    c.send_method(1, &raw::basic_publish("", &q)).await;
    c.send(&raw::header_frame(1, body.len() as u64)).await;
    c.send(&raw::body_frame(1, &body)).await;
    c.send_method(
        1,
        &AMQPClass::Basic(proto::basic::AMQPMethod::Get(proto::basic::Get {
            queue: q.as_str().into(),
            no_ack: true,
        })),
    )
    .await;
    match c.expect_method(1).await {
        AMQPClass::Basic(proto::basic::AMQPMethod::GetOk(_)) => {}
        other => panic!("expected get-ok, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test]
async fn bad_frame_end_octet_is_501() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    let mut f = raw::method_frame(1, &qos());
    let last = f.len() - 1;
    f[last] = 0x00;
    c.send(&f).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn frame_size_field_of_u32_max_is_501_without_hanging() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    let mut bytes = vec![raw::FRAME_METHOD];
    bytes.extend_from_slice(&1u16.to_be_bytes());
    bytes.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send(&bytes).await;
    let started = Instant::now();
    let close = c.read_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the size field alone must trigger the error"
    );
    // RabbitMQ cannot parse our close-ok (it is still "inside" the bogus
    // frame) and drops the socket after its 3 s closing timeout.
    c.expect_closed(Duration::from_secs(8)).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn unknown_frame_type_is_501() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send(&raw::frame(9, 1, b"????")).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn method_on_unopened_channel_is_504() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send_method(5, &raw::queue_declare("", false)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 504, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (50, 10), "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn second_channel_open_on_same_channel_is_504() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send_method(1, &raw::channel_open()).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 504, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (20, 10), "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn opening_more_channels_than_channel_max_is_530() {
    // RabbitMQ limits the number of open channels to the negotiated
    // channel_max (2047): the 2048th channel.open is NOT_ALLOWED.
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    let mut batch = Vec::new();
    for ch in 1..=2048u16 {
        batch.extend(raw::method_frame(ch, &raw::channel_open()));
    }
    c.send(&batch).await;
    let mut opened = 0;
    let close = loop {
        match c.next_method(WAIT).await {
            Ok((ch, f)) if ch != 0 => {
                assert_eq!(f.ids(), Some((20, 11)), "expected channel.open-ok");
                opened += 1;
            }
            Ok((_, f)) => break c.answer_close(&f).await,
            Err(e) => panic!("after {opened} open-oks: {e:?}"),
        }
    };
    assert_eq!(opened, 2047);
    assert_eq!(close.code, 530, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn content_header_without_publish_is_505() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send(&raw::header_frame(1, 3)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 505, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn content_body_without_publish_is_505() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send(&raw::body_frame(1, b"abc")).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 505, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn method_between_header_and_body_is_505() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send_method(1, &raw::basic_publish("", "nowhere")).await;
    c.send(&raw::header_frame(1, 10)).await;
    c.send_method(1, &qos()).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 505, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn method_instead_of_content_header_is_505() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send_method(1, &raw::basic_publish("", "nowhere")).await;
    c.send_method(1, &qos()).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 505, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn unknown_class_id_is_rejected() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    let mut payload = Vec::new();
    payload.extend_from_slice(&99u16.to_be_bytes());
    payload.extend_from_slice(&10u16.to_be_bytes());
    c.send(&raw::frame(raw::FRAME_METHOD, 1, &payload)).await;
    // RabbitMQ 3.10 drops the socket without a connection.close here; a
    // close with a hard-error code is acceptable too.
    if let Some(close) = c.close_or_drop().await {
        assert!(close.code >= 500, "{close:?}");
    }
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn unknown_method_id_is_rejected() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    let mut payload = Vec::new();
    payload.extend_from_slice(&50u16.to_be_bytes());
    payload.extend_from_slice(&999u16.to_be_bytes());
    c.send(&raw::frame(raw::FRAME_METHOD, 1, &payload)).await;
    // RabbitMQ 3.10 drops the socket without a connection.close here; a
    // close with a hard-error code is acceptable too.
    if let Some(close) = c.close_or_drop().await {
        assert!(close.code >= 500, "{close:?}");
    }
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn truncated_method_arguments_are_rejected() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    // queue.declare whose arguments stop in the middle of the queue name.
    let mut payload = Vec::new();
    payload.extend_from_slice(&50u16.to_be_bytes());
    payload.extend_from_slice(&10u16.to_be_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes()); // reserved-1
    payload.push(20); // shortstr length 20...
    payload.extend_from_slice(b"abc"); // ...but only 3 bytes
    c.send(&raw::frame(raw::FRAME_METHOD, 1, &payload)).await;
    let close = c.expect_connection_close().await;
    // RabbitMQ: FRAME_ERROR "cannot decode ..." naming queue.declare.
    assert_eq!(close.code, 501, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (50, 10), "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn heartbeat_on_nonzero_channel_is_505() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send(&raw::frame(raw::FRAME_HEARTBEAT, 1, &[])).await;
    let close = c.expect_connection_close().await;
    // RabbitMQ: UNEXPECTED_FRAME "type 8, all octets = <<>>".
    assert_eq!(close.code, 505, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn content_frame_on_channel_zero_is_505() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send(&raw::header_frame(0, 3)).await;
    let close = c.expect_connection_close().await;
    // RabbitMQ: UNEXPECTED_FRAME "type 2, all octets = ...".
    assert_eq!(close.code, 505, "{close:?}");
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn garbage_after_handshake_is_501() {
    let broker = Broker::start();
    let mut c = opened(&broker).await;
    c.send(b"\x01\x00\x01\x00\x00\x00\x02hi\xCEthis is not AMQP at all")
        .await;
    // A method frame whose 2-byte payload cannot even hold class and
    // method ids. RabbitMQ: FRAME_ERROR "unknown_frame".
    let close = c.read_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    c.expect_closed(Duration::from_secs(8)).await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn abrupt_disconnect_mid_frame_leaves_broker_healthy() {
    let broker = Broker::start();
    for _ in 0..5 {
        let mut c = opened(&broker).await;
        let f = raw::method_frame(1, &raw::queue_declare("", false));
        c.send(&f[..f.len() / 2]).await;
        drop(c);
    }
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn many_bad_connections_in_parallel_leave_broker_healthy() {
    let broker = Broker::start();
    let addr = broker.addr();
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::open(addr).await;
            c.open_channel(1).await;
            let mut f = raw::method_frame(1, &qos());
            let last = f.len() - 1;
            f[last] = i; // never 0xCE
            c.send(&f).await;
            c.expect_connection_close().await.code
        }));
    }
    for t in tasks {
        assert_eq!(within("bad client", t).await.unwrap(), 501);
    }
    assert_broker_healthy(&broker).await;
}
