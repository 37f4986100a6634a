//! `x-queue-type: quorum` on a single node, as clients see it: RabbitMQ
//! 3.10's declare rules and 406 texts, `x-delivery-count` on deliveries,
//! the delivery limit (argument or policy) dead-lettering with reason
//! `delivery_limit` or dropping, and the management API's `type`, `leader`
//! and `members`. Side by side with RabbitMQ through HOPPER_TEST_EXTERNAL_URI.

mod common;

use common::mgmt::{http, wait_json, GUEST};
use common::{connect, quorum_args, reply_code, unique, Broker};
use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;
use serde_json::json;
use std::time::{Duration, Instant};

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Declare on a fresh channel; Ok, or the (code, text) the channel closed with.
async fn try_declare(
    conn: &lapin::Connection,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> Result<String, (u16, String)> {
    let ch = conn.create_channel().await.expect("channel");
    match ch.queue_declare(name.into(), opts, args).await {
        Ok(q) => {
            let n = q.name().to_string();
            let _ = ch.queue_delete(n.as_str().into(), Default::default()).await;
            let _ = ch.close(200, "bye".into()).await;
            Ok(n)
        }
        Err(e) => {
            let msg = match e.kind() {
                lapin::ErrorKind::ProtocolError(p) => p.get_message().to_string(),
                other => format!("{other:?}"),
            };
            Err((reply_code(&e).unwrap_or(0), msg))
        }
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test]
async fn declare_rules_and_texts_match_rabbitmq() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let q = unique("qq");
    let cases: Vec<(QueueDeclareOptions, FieldTable, &str, String)> = vec![
        (
            QueueDeclareOptions::default(),
            quorum_args(&[]),
            "nd",
            format!("PRECONDITION_FAILED - invalid property 'non-durable' for queue '{q}-nd' in vhost '/'"),
        ),
        (
            QueueDeclareOptions { durable: true, exclusive: true, ..Default::default() },
            quorum_args(&[]),
            "ex",
            format!("PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue '{q}-ex' in vhost '/'"),
        ),
        (
            QueueDeclareOptions { durable: true, auto_delete: true, ..Default::default() },
            quorum_args(&[]),
            "ad",
            format!("PRECONDITION_FAILED - invalid property 'auto-delete' for queue '{q}-ad' in vhost '/'"),
        ),
        (
            durable(),
            quorum_args(&[("x-max-priority", AMQPValue::LongInt(5))]),
            "prio",
            format!("PRECONDITION_FAILED - invalid arg 'x-max-priority' for queue '{q}-prio' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        (
            durable(),
            quorum_args(&[("x-queue-mode", text("lazy"))]),
            "mode",
            format!("PRECONDITION_FAILED - invalid arg 'x-queue-mode' for queue '{q}-mode' in vhost '/' of queue type rabbit_quorum_queue"),
        ),
        (
            durable(),
            quorum_args(&[("x-queue-leader-locator", text("bogus"))]),
            "loc",
            format!("PRECONDITION_FAILED - invalid arg 'x-queue-leader-locator' for queue '{q}-loc' in vhost '/': invalid_queue_locator_arg"),
        ),
        (
            durable(),
            quorum_args(&[("x-quorum-initial-group-size", AMQPValue::LongInt(0))]),
            "igs",
            format!("PRECONDITION_FAILED - invalid arg 'x-quorum-initial-group-size' for queue '{q}-igs' in vhost '/': {{value_zero,0}}"),
        ),
        (
            durable(),
            {
                let mut t = FieldTable::default();
                t.insert("x-queue-type".into(), text("foo"));
                t
            },
            "foo",
            format!("PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}-foo' in vhost '/': \"unsupported queue type 'foo'\""),
        ),
        (
            durable(),
            {
                let mut t = FieldTable::default();
                t.insert("x-queue-type".into(), AMQPValue::LongInt(1));
                t
            },
            "int",
            format!("PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}-int' in vhost '/': {{unacceptable_type,signedint}}"),
        ),
    ];
    for (opts, args, suffix, want) in cases {
        let got = try_declare(&conn, &format!("{q}-{suffix}"), opts, args).await;
        assert_eq!(got, Err((406, want)), "{suffix}");
    }
    assert_eq!(
        try_declare(&conn, "", durable(), quorum_args(&[])).await,
        Err((
            406,
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
                .into()
        ))
    );
    // The arguments quorum queues take.
    let all = quorum_args(&[
        ("x-delivery-limit", AMQPValue::LongInt(2)),
        ("x-quorum-initial-group-size", AMQPValue::LongInt(3)),
        ("x-queue-leader-locator", text("balanced")),
        ("x-single-active-consumer", AMQPValue::Boolean(true)),
        ("x-max-length", AMQPValue::LongInt(10)),
        ("x-max-length-bytes", AMQPValue::LongInt(10_000)),
        ("x-overflow", text("reject-publish")),
        ("x-message-ttl", AMQPValue::LongInt(1000)),
        ("x-expires", AMQPValue::LongInt(100_000)),
        ("x-dead-letter-exchange", text("")),
        ("x-dead-letter-routing-key", text("x")),
    ]);
    let ok = format!("{q}-ok");
    assert_eq!(try_declare(&conn, &ok, durable(), all).await, Ok(ok));
    // An explicit classic type stays accepted, even non-durable.
    let mut classic = FieldTable::default();
    classic.insert("x-queue-type".into(), text("classic"));
    let cl = format!("{q}-cl");
    assert_eq!(
        try_declare(&conn, &cl, QueueDeclareOptions::default(), classic).await,
        Ok(cl)
    );
    // A redeclare without the type is inequivalent, in RabbitMQ's words.
    let re = format!("{q}-re");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(re.as_str().into(), durable(), quorum_args(&[]))
        .await
        .unwrap();
    assert_eq!(
        try_declare(&conn, &re, durable(), FieldTable::default()).await,
        Err((406, format!("PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{re}' in vhost '/': received none but current is the value 'quorum' of type 'longstr'")))
    );
    ch.queue_delete(re.as_str().into(), Default::default())
        .await
        .unwrap();
    let _ = conn.close(200, "bye".into()).await;
}

async fn wait_count(ch: &lapin::Channel, q: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = ch
            .queue_declare(
                q.into(),
                QueueDeclareOptions {
                    passive: true,
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count();
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{q}: {got} messages, not {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn delivery_count(p: &BasicProperties) -> Option<i64> {
    match p.headers().as_ref()?.inner().get("x-delivery-count")? {
        AMQPValue::LongLongInt(n) => Some(*n),
        other => panic!("x-delivery-count of type {other:?}"),
    }
}

#[tokio::test]
async fn delivery_count_header_and_delivery_limit_dead_letters() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("qq-dl");
    let dead = unique("qq-dead");
    ch.queue_declare(
        dead.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_declare(
        q.as_str().into(),
        durable(),
        quorum_args(&[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&dead)),
        ]),
    )
    .await
    .unwrap();
    common::fill_queue(&conn, &q, &[b"m"]).await;
    wait_count(&ch, &q, 1).await;
    // Delivered three times (counts 0, 1, 2), then past the limit.
    for n in 0..3 {
        let m = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("delivery {n}"));
        assert_eq!(delivery_count(&m.delivery.properties), Some(n));
        assert_eq!(m.delivery.redelivered, n > 0);
        ch.basic_nack(
            m.delivery.delivery_tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    wait_count(&ch, &dead, 1).await;
    wait_count(&ch, &q, 0).await;
    let d = common::get(&ch, &dead, true).await.expect("dead letter");
    let headers = d.delivery.properties.headers().clone().unwrap();
    assert_eq!(
        headers.inner().get("x-first-death-reason"),
        Some(&text("delivery_limit"))
    );
    // Without a dead-letter exchange, past the limit the message is dropped,
    // also when it comes back because its channel closed.
    let q2 = unique("qq-drop");
    ch.queue_declare(
        q2.as_str().into(),
        durable(),
        quorum_args(&[("x-delivery-limit", AMQPValue::LongInt(0))]),
    )
    .await
    .unwrap();
    common::fill_queue(&conn, &q2, &[b"m"]).await;
    let ch2 = conn.create_channel().await.unwrap();
    let got = ch2
        .basic_get(q2.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap();
    assert!(got.is_some());
    ch2.close(200, "bye".into()).await.unwrap();
    wait_count(&ch, &q2, 0).await;
    for name in [&q, &q2, &dead] {
        common::delete_queue(&conn, name).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn api_shows_the_type_leader_members_and_a_delivery_limit_policy_applies() {
    let mut broker = Broker::start();
    let api = broker.mgmt_addr();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let q = unique("qq-api");
    ch.queue_declare(q.as_str().into(), durable(), quorum_args(&[]))
        .await
        .unwrap();
    let info = wait_json(api, &format!("/api/queues/%2F/{q}"), |j| {
        j["type"] == json!("quorum") && j["leader"].is_string() && j["node"].is_string()
    });
    assert_eq!(info["leader"], info["node"]);
    assert_eq!(info["members"], json!([info["node"]]));
    // A delivery-limit policy (apply-to quorum_queues is 3.12's; `queues` here).
    let p = unique("qq-pol");
    let body =
        format!(r#"{{"pattern":"^{q}$","definition":{{"delivery-limit":0}},"apply-to":"queues"}}"#);
    let r = http(
        api,
        "PUT",
        &format!("/api/policies/%2F/{p}"),
        GUEST,
        Some(&body),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    wait_json(api, &format!("/api/queues/%2F/{q}"), |j| {
        j["policy"] == json!(p)
    });
    common::fill_queue(&conn, &q, &[b"m"]).await;
    let m = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    wait_count(&ch, &q, 0).await;
    assert_eq!(
        http(
            api,
            "DELETE",
            &format!("/api/policies/%2F/{p}"),
            GUEST,
            None
        )
        .status,
        204
    );
    common::delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[test]
fn declared_through_the_api_client_and_kept_across_a_restart() {
    use rabbitmq_http_client::requests::QueueParams;
    let mut broker = Broker::start();
    let mut c = common::mgmt::client(&mut broker);
    let q = common::mgmt::name("qq-client");
    c.declare_queue("/", &QueueParams::new_quorum_queue(&q, None))
        .expect("declare a quorum queue through the API");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info = c.get_queue_info("/", &q).expect("queue info");
        if info.queue_type == "quorum" {
            assert!(info.durable && !info.auto_delete && !info.exclusive);
            break;
        }
        assert!(Instant::now() < deadline, "type {:?}", info.queue_type);
        std::thread::sleep(Duration::from_millis(100));
    }
    if !broker.is_external() {
        broker.restart();
        c = common::mgmt::client(&mut broker);
        let info = c.get_queue_info("/", &q).expect("after restart");
        assert_eq!(info.queue_type, "quorum");
    }
    c.delete_queue("/", &q, false).expect("delete");
}

/// A quorum queue keeps every message on disk, whatever its delivery mode
/// (RabbitMQ's quorum queues have no transient messages): a transient
/// message confirmed into one is still there after a kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_in_a_quorum_queue_survive_kill9() {
    let mut broker = Broker::start();
    if broker.is_external() {
        eprintln!("skipped: kills the broker");
        return;
    }
    let q = unique("quorum-transient");
    {
        let conn = connect(&broker).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.queue_declare(q.as_str().into(), durable(), quorum_args(&[]))
            .await
            .expect("declare");
        ch.confirm_select(Default::default())
            .await
            .expect("confirm.select");
        let confirm = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                b"transient",
                BasicProperties::default().with_delivery_mode(1),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }
    broker.kill9();
    broker.start_again();
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.expect("channel");
    let got = ch
        .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
        .expect("the confirmed transient message is still in the quorum queue");
    assert_eq!(got.delivery.data, b"transient");
}
