//! queue.declare / bind / unbind / purge / delete semantics.

mod common;

use common::*;
use lapin::options::{
    BasicCancelOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
    QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use std::time::Duration;

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn passive_declare(ch: &Channel, q: &str) -> lapin::Result<lapin::Queue> {
    within(
        "passive queue.declare",
        ch.queue_declare(q.into(), passive(), FieldTable::default()),
    )
    .await
}

/// Poll (on fresh channels) until the queue no longer exists.
async fn wait_until_gone(conn: &Connection, q: &str) {
    within_for(Duration::from_secs(5), "queue to be deleted", async {
        loop {
            let ch = conn.create_channel().await.expect("open channel");
            match passive_declare(&ch, q).await {
                Err(e) if reply_code(&e) == Some(404) => return,
                Err(e) => panic!("unexpected error: {e:?}"),
                Ok(_) => {
                    let _ = ch.close(200, "bye".into()).await;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn server_named_queue_has_amq_gen_prefix() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = within(
        "declare",
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
    .unwrap();
    assert!(q.name().as_str().starts_with("amq.gen-"), "{:?}", q.name());
    assert!(q.name().as_str().len() > "amq.gen-".len() + 8);
    assert_eq!(q.message_count(), 0);
    assert_eq!(q.consumer_count(), 0);
    // It really exists under that name.
    passive_declare(&ch, q.name().as_str())
        .await
        .expect("server-named queue exists");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn passive_declare_reports_message_and_consumer_counts() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "counts").await;
    fill_queue(&conn, &q, &[b"1", b"2", b"3"]).await;
    let info = passive_declare(&ch, &q).await.unwrap();
    assert_eq!(info.message_count(), 3);
    assert_eq!(info.consumer_count(), 0);
    // An active redeclare reports the same counts.
    let info = within(
        "redeclare",
        ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default()),
    )
    .await
    .unwrap();
    assert_eq!(info.message_count(), 3);

    let q2 = declare_queue(&ch, "counts-consumers").await;
    let cch = conn.create_channel().await.unwrap();
    let _c1 = consume(&cch, &q2, false).await;
    let _c2 = consume(&cch, &q2, false).await;
    let info = passive_declare(&ch, &q2).await.unwrap();
    assert_eq!(info.consumer_count(), 2);
    assert_eq!(info.message_count(), 0);
    delete_queue(&conn, &q).await;
    delete_queue(&conn, &q2).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    assert_code(passive_declare(&ch, &unique("missing")).await, 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn redeclare_with_different_durable_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "redur").await;
    let res = within(
        "redeclare",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 406);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn redeclare_with_different_ttl_argument_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = unique("ttl");
    let mut args = FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(60000));
    within(
        "declare",
        ch.queue_declare(q.as_str().into(), Default::default(), args.clone()),
    )
    .await
    .unwrap();
    // Same arguments: fine.
    within(
        "redeclare",
        ch.queue_declare(q.as_str().into(), Default::default(), args),
    )
    .await
    .expect("equivalent redeclare");
    let mut other = FieldTable::default();
    other.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
    let res = within(
        "redeclare",
        ch.queue_declare(q.as_str().into(), Default::default(), other),
    )
    .await;
    assert_code(res, 406);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn declaring_amq_prefixed_queue_is_403() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "declare",
        ch.queue_declare(
            format!("amq.{}", unique("x")).as_str().into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 403);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_dies_with_it() {
    let broker = Broker::start();
    let (owner, och) = connect_channel(&broker).await;
    let q = unique("exclusive");
    within(
        "declare exclusive",
        och.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    // The owner's other channels may use it.
    let och2 = owner.create_channel().await.unwrap();
    passive_declare(&och2, &q).await.expect("owner sees it");

    let (other, ch) = connect_channel(&broker).await;
    let res = within(
        "declare from another connection",
        ch.queue_declare(
            q.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 405);
    let ch = other.create_channel().await.unwrap();
    assert_code(passive_declare(&ch, &q).await, 405);
    let ch = other.create_channel().await.unwrap();
    let res = within(
        "consume from another connection",
        ch.basic_consume(
            q.as_str().into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res.map(|_| ()), 405);

    within("close owner", owner.close(200, "bye".into()))
        .await
        .unwrap();
    wait_until_gone(&other, &q).await;
    let _ = other.close(200, "bye".into()).await;
}

#[tokio::test]
async fn auto_delete_queue_goes_when_last_consumer_cancels() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = unique("autodel");
    within(
        "declare",
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
    .unwrap();
    let c1 = consume(&ch, &q, false).await;
    let c2 = consume(&ch, &q, false).await;
    within(
        "cancel",
        ch.basic_cancel(c1.tag(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    // One consumer left: still there.
    let info = passive_declare(&ch, &q).await.expect("still exists");
    assert_eq!(info.consumer_count(), 1);
    within(
        "cancel",
        ch.basic_cancel(c2.tag(), BasicCancelOptions::default()),
    )
    .await
    .unwrap();
    wait_until_gone(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn auto_delete_queue_without_consumers_stays() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = unique("autodel-never-consumed");
    within(
        "declare",
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
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    passive_declare(&ch, &q)
        .await
        .expect("never consumed: stays");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn purge_returns_message_count() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "purge").await;
    fill_queue(&conn, &q, &[b"a", b"b", b"c", b"d"]).await;
    let n = within(
        "purge",
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 4);
    assert_eq!(message_count(&ch, &q).await, 0);
    let n = within(
        "purge",
        ch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 0);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn purge_does_not_touch_unacked_messages() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "purge-unacked").await;
    fill_queue(&conn, &q, &[b"a", b"b", b"c"]).await;
    let held = get(&ch, &q, false).await.expect("a message");
    let pch = conn.create_channel().await.unwrap();
    let n = within(
        "purge",
        pch.queue_purge(q.as_str().into(), QueuePurgeOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 2, "only ready messages are purged");
    // The unacked one comes back when its channel closes.
    drop(held);
    within("close", ch.close(200, "bye".into())).await.unwrap();
    let m = within_for(Duration::from_secs(5), "requeued message", async {
        loop {
            if let Some(m) = get(&pch, &q, true).await {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(m.delivery.data, b"a");
    assert!(m.delivery.redelivered);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn delete_if_unused_with_consumer_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "del-unused").await;
    let cch = conn.create_channel().await.unwrap();
    let _c = consume(&cch, &q, false).await;
    let res = within(
        "delete",
        ch.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_code(res, 406);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn delete_if_empty_with_messages_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "del-empty").await;
    fill_queue(&conn, &q, &[b"x"]).await;
    let res = within(
        "delete",
        ch.queue_delete(
            q.as_str().into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_code(res, 406);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn delete_returns_message_count_and_removes_queue() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "del-count").await;
    fill_queue(&conn, &q, &[b"1", b"2", b"3", b"4", b"5"]).await;
    let n = within(
        "delete",
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default()),
    )
    .await
    .unwrap();
    assert_eq!(n, 5);
    assert_code(passive_declare(&ch, &q).await, 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn deleting_a_missing_queue_is_ok_with_zero() {
    // RabbitMQ made queue.delete idempotent.
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let n = within(
        "delete",
        ch.queue_delete(
            unique("missing").as_str().into(),
            QueueDeleteOptions::default(),
        ),
    )
    .await
    .expect("delete of a missing queue");
    assert_eq!(n, 0);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn bind_and_unbind_control_routing() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "bind").await;
    within(
        "bind",
        ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    // Binding twice is idempotent.
    within(
        "bind again",
        ch.queue_bind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    confirm_select(&ch).await;
    publish_confirmed(&ch, "amq.direct", &q, b"bound", Default::default()).await;
    assert_eq!(drain(&ch, &q).await, vec![b"bound".to_vec()]);
    within(
        "unbind",
        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    publish_confirmed(&ch, "amq.direct", &q, b"unbound", Default::default()).await;
    assert!(
        drain(&ch, &q).await.is_empty(),
        "unbound queue got a message"
    );
    // Unbinding something that is not bound is fine too.
    within(
        "unbind again",
        ch.queue_unbind(
            q.as_str().into(),
            "amq.direct".into(),
            q.as_str().into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("idempotent unbind");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn binding_to_missing_exchange_is_404() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "bind-missing-x").await;
    let res = within(
        "bind",
        ch.queue_bind(
            q.as_str().into(),
            unique("missing-x").as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn binding_missing_queue_is_404() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "bind",
        ch.queue_bind(
            unique("missing-q").as_str().into(),
            "amq.direct".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn binding_to_the_default_exchange_is_403() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "bind-default").await;
    let res = within(
        "bind",
        ch.queue_bind(
            q.as_str().into(),
            "".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 403);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn declare_with_empty_name_passive_is_an_error() {
    // Passive declare needs a name; RabbitMQ answers NOT_FOUND for "".
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = passive_declare(&ch, "").await;
    assert_code(res, 404);
    let _ = conn.close(200, "bye".into()).await;
}
