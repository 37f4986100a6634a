//! What real client libraries rely on, each checked against RabbitMQ 3.10.8:
//! connection.update-secret, idempotent unbinds (aio-pika's RPC pattern and
//! exchange-to-exchange teardown), RabbitMQ's 128 MiB message size limit, the
//! server properties kombu/Celery choose their QoS semantics from, and plain
//! (colourless) logs when stderr is not a terminal.
//!
//! Everything but the log test also runs against `HOPPER_TEST_EXTERNAL_URI`.

mod common;

use common::raw::*;
use common::*;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::time::Duration;

// ------------------------------------------------------------ update-secret

fn update_secret(secret: &str) -> AMQPClass {
    AMQPClass::Connection(proto::connection::AMQPMethod::UpdateSecret(
        proto::connection::UpdateSecret {
            new_secret: LongString::from(secret.as_bytes().to_vec()),
            reason: "token refresh".into(),
        },
    ))
}

#[tokio::test]
async fn update_secret_is_answered_and_the_connection_keeps_working() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    // RabbitMQ's internal users cannot expire: any new secret is accepted
    // (it is only checked by backends such as OAuth 2).
    for secret in ["guest", "not the password"] {
        c.send_method(0, &update_secret(secret)).await;
        match c.expect_method(0).await {
            AMQPClass::Connection(proto::connection::AMQPMethod::UpdateSecretOk(_)) => {}
            other => panic!("expected connection.update-secret-ok, got {other:?}"),
        }
    }
    // The connection still works: a channel, a queue, a message.
    c.open_channel(1).await;
    let q = unique("after-update-secret");
    c.send_method(1, &queue_declare(&q, false)).await;
    match c.expect_method(1).await {
        AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(_)) => {}
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
    c.send_method(
        1,
        &AMQPClass::Queue(proto::queue::AMQPMethod::Delete(proto::queue::Delete {
            queue: q.as_str().into(),
            if_unused: false,
            if_empty: false,
            nowait: false,
        })),
    )
    .await;
    match c.expect_method(1).await {
        AMQPClass::Queue(proto::queue::AMQPMethod::DeleteOk(_)) => {}
        other => panic!("expected queue.delete-ok, got {other:?}"),
    }
    c.close().await;
}

// ------------------------------------------------------------ idempotent unbind

async fn channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel.open")
}

async fn queue_unbind(conn: &Connection, q: &str, x: &str, key: &str) -> lapin::Result<()> {
    let ch = channel(conn).await;
    within(
        "queue.unbind",
        ch.queue_unbind(q.into(), x.into(), key.into(), FieldTable::default()),
    )
    .await
}

async fn exchange_unbind(conn: &Connection, dest: &str, src: &str, key: &str) -> lapin::Result<()> {
    let ch = channel(conn).await;
    within(
        "exchange.unbind",
        ch.exchange_unbind(
            dest.into(),
            src.into(),
            key.into(),
            ExchangeUnbindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn declare_exchange(ch: &Channel, name: &str, auto_delete: bool) {
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
}

#[tokio::test]
async fn unbind_from_or_to_something_missing_is_ok() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let q = declare_queue(&ch, "unbind-missing").await;
    let x = unique("unbind-missing-x");
    declare_exchange(&ch, &x, false).await;
    let (nq, nx, nx2) = (unique("never-q"), unique("never-x"), unique("never-x2"));

    queue_unbind(&conn, &nq, &x, "k")
        .await
        .expect("queue.unbind of a missing queue");
    queue_unbind(&conn, &q, &nx, "k")
        .await
        .expect("queue.unbind from a missing exchange");
    queue_unbind(&conn, &nq, &nx, "k")
        .await
        .expect("queue.unbind with both ends missing");
    queue_unbind(&conn, &q, &x, "never-bound")
        .await
        .expect("queue.unbind of a binding that never existed");
    exchange_unbind(&conn, &nx, &x, "k")
        .await
        .expect("exchange.unbind to a missing destination");
    exchange_unbind(&conn, &x, &nx, "k")
        .await
        .expect("exchange.unbind from a missing source");
    exchange_unbind(&conn, &nx, &nx2, "k")
        .await
        .expect("exchange.unbind with both ends missing");

    // The default exchange is still refused, whether the queue exists or not.
    for name in [&q, &nq] {
        assert_code(queue_unbind(&conn, name, "", "k").await, 403);
    }
    assert_code(exchange_unbind(&conn, "", &x, "k").await, 403);
    assert_code(exchange_unbind(&conn, &x, "", "k").await, 403);
    // Binding (not unbinding) a missing queue or exchange stays a 404.
    let res = within(
        "queue.bind",
        channel(&conn).await.queue_bind(
            q.as_str().into(),
            nx.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);

    delete_queue(&conn, &q).await;
    delete_exchange(&conn, &x).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// aio-pika's RPC pattern: an auto-delete reply queue bound to an exchange,
/// consumed, then torn down (cancel, which deletes the queue; then unbind).
/// And an auto-delete exchange bound to another, deleted in a cascade when its
/// last binding goes, then unbound again by the client's own teardown.
#[tokio::test]
async fn unbind_after_auto_delete_removed_the_queue_or_exchange_is_ok() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    let x = unique("rpc-x");
    declare_exchange(&ch, &x, false).await;
    let q = unique("rpc-replies");
    within(
        "queue.declare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare auto-delete queue");
    within(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    let consumer = within(
        "basic.consume",
        ch.basic_consume(
            q.as_str().into(),
            "rpc-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume");
    within(
        "basic.cancel",
        ch.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
    )
    .await
    .expect("cancel");
    // The last consumer left: the queue is gone.
    let gone = within(
        "passive declare",
        channel(&conn).await.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(gone, 404);
    queue_unbind(&conn, &q, &x, &q)
        .await
        .expect("unbind of the auto-deleted reply queue");

    // Exchange to exchange: `src` is auto-delete and goes with its last binding.
    let (src, dst) = (unique("e2e-src"), unique("e2e-dst"));
    declare_exchange(&ch, &dst, false).await;
    declare_exchange(&ch, &src, true).await;
    within(
        "exchange.bind",
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    exchange_unbind(&conn, &dst, &src, "k")
        .await
        .expect("first unbind");
    let gone = within(
        "passive exchange.declare",
        channel(&conn).await.exchange_declare(
            src.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(gone, 404);
    exchange_unbind(&conn, &dst, &src, "k")
        .await
        .expect("unbind again after the auto-delete source went");

    delete_exchange(&conn, &x).await;
    delete_exchange(&conn, &dst).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Another connection's exclusive queue: unbinding a binding it does not have
/// is ok; unbinding one it has is RESOURCE_LOCKED (RabbitMQ checks exclusive
/// access only for a binding it is about to remove).
#[tokio::test]
async fn unbind_of_another_connections_exclusive_queue() {
    let broker = Broker::start();
    let owner = connect(&broker).await;
    let ch = channel(&owner).await;
    let q = unique("excl-unbind");
    within(
        "queue.declare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("declare exclusive");
    within(
        "queue.bind",
        ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("bind");
    let other = connect(&broker).await;
    queue_unbind(&other, &q, "amq.direct", "no-such-key")
        .await
        .expect("unbind of a binding the queue does not have");
    assert_code(queue_unbind(&other, &q, "amq.direct", "k").await, 405);
    // The owner still can.
    queue_unbind(&owner, &q, "amq.direct", "k")
        .await
        .expect("owner unbinds");
    let _ = other.close(200, "bye".into()).await;
    let _ = owner.close(200, "bye".into()).await;
}

// ------------------------------------------------------------ server properties

fn long_string(props: &FieldTable, key: &str) -> String {
    match props.inner().get(key) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => panic!("server property {key} should be a long string, got {other:?}"),
    }
}

/// kombu (Celery's transport) uses global basic.qos, which Celery raises for
/// every ETA task it holds, only for `product` "RabbitMQ" from 3.3 up to 4.0.
#[tokio::test]
async fn server_properties_announce_rabbitmq_3x() {
    let broker = Broker::start();
    let (mut c, hs) = RawClient::handshake(broker.addr(), Auth::Plain("guest", "guest"), 0).await;
    let props = &hs.start.server_properties;
    assert_eq!(long_string(props, "product"), "RabbitMQ");
    let version = long_string(props, "version");
    let parts: Vec<u32> = version
        .split('.')
        .map(|p| p.parse().expect("numeric version part"))
        .collect();
    assert!(
        parts.len() == 3 && parts[0] == 3 && parts[1] >= 3,
        "version {version:?} should be a RabbitMQ 3.x release from 3.3 on"
    );
    if !broker.is_external() {
        // Hopper says who it is elsewhere.
        assert_eq!(
            long_string(props, "hopper_version"),
            env!("CARGO_PKG_VERSION")
        );
        assert!(long_string(props, "information").starts_with("Hopper "));
    }
    c.close().await;
}

// ------------------------------------------------------------ message size

const MAX_MESSAGE_SIZE: u64 = 134_217_728;

/// A 22 MB message (many body frames at frame_max) with publisher confirms,
/// transient and persistent, through a durable queue.
#[tokio::test]
async fn a_22_mb_message_round_trips_with_confirms() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    let q = declare_durable_queue(&ch, "big-22mb", FieldTable::default()).await;
    let body: Vec<u8> = (0..22_000_000u32).map(|i| (i % 251) as u8).collect();
    for delivery_mode in [1u8, 2] {
        let props = BasicProperties::default().with_delivery_mode(delivery_mode);
        // (a debug build on a busy machine: give the 22 MB more than WAIT)
        let c = within_for(
            Duration::from_secs(60),
            "confirm of a 22 MB publish",
            async {
                ch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .expect("basic.publish")
                .await
                .expect("publisher confirm")
            },
        )
        .await;
        assert!(
            c.is_ack(),
            "22 MB publish (delivery_mode {delivery_mode}) not acked: {c:?}"
        );
        let m = within_for(
            Duration::from_secs(60),
            "basic.get of a 22 MB message",
            ch.basic_get(q.as_str().into(), Default::default()),
        )
        .await
        .expect("basic.get")
        .expect("the 22 MB message is in the queue");
        assert_eq!(m.delivery.data.len(), body.len());
        assert!(m.delivery.data == body, "22 MB body changed on the way");
        assert_eq!(m.delivery.properties.delivery_mode(), &Some(delivery_mode));
        within("ack", m.delivery.acker.ack(Default::default()))
            .await
            .expect("ack");
    }
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// One byte over 128 MiB: RabbitMQ's PRECONDITION_FAILED and text, on
/// basic.publish; the connection survives. (RabbitMQ reads the whole body
/// first, hopper refuses at the content header and drops the rest: the
/// client sends it all either way.)
#[tokio::test]
async fn a_message_over_128_mib_is_refused_with_rabbitmqs_code_and_text() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    let q = unique("too-big");
    c.send_method(1, &basic_publish("", &q)).await;
    let size = MAX_MESSAGE_SIZE + 1;
    c.send(&header_frame(1, size)).await;
    // frame_max 131072 minus the 8 bytes of frame overhead per body frame.
    let chunk = vec![0x5au8; 131_064];
    let mut left = size as usize;
    let mut frames = Vec::with_capacity(16 * (chunk.len() + 8));
    while left > 0 {
        let n = left.min(chunk.len());
        frames.extend_from_slice(&body_frame(1, &chunk[..n]));
        left -= n;
        if frames.len() >= 16 * chunk.len() || left == 0 {
            within("send body frames", c.send(&frames)).await;
            frames.clear();
        }
    }
    let close = within_for(
        Duration::from_secs(60),
        "channel.close",
        c.expect_channel_close(1),
    )
    .await;
    assert_eq!(
        close,
        CloseInfo {
            code: 406,
            text: format!(
                "PRECONDITION_FAILED - message size {size} is larger than configured max size {MAX_MESSAGE_SIZE}"
            ),
            class_id: 60,
            method_id: 40,
        }
    );
    // The connection is still usable.
    c.open_channel(2).await;
    c.close().await;
}

// ------------------------------------------------------------ logs

/// With stderr going to a file (as the test harness does), the log has no
/// ANSI colour codes.
#[tokio::test]
async fn logs_have_no_colour_codes_when_stderr_is_not_a_terminal() {
    let broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let conn = connect(&broker).await;
    let ch = channel(&conn).await;
    // A channel error logs at info level too.
    let _ = within(
        "passive declare",
        ch.queue_declare(
            unique("no-such-queue").as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    let _ = conn.close(200, "bye".into()).await;
    let log = broker.log();
    assert!(
        log.contains("connection open"),
        "the broker log should have connection lines: {log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "the broker log has ANSI escape codes: {:?}",
        &log[..log.len().min(400)]
    );
}
