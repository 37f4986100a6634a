//! exchange.declare / exchange.delete / exchange.bind semantics.

mod common;

use common::*;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, ExchangeKind};

fn passive() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

async fn declare(ch: &Channel, name: &str, kind: ExchangeKind) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

#[tokio::test]
async fn declare_all_four_types_and_passive_redeclare() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let kinds = [
        ExchangeKind::Direct,
        ExchangeKind::Fanout,
        ExchangeKind::Topic,
        ExchangeKind::Headers,
    ];
    let mut names = Vec::new();
    for kind in kinds {
        let name = unique("x-type");
        declare(&ch, &name, kind.clone()).await.expect("declare");
        // Identical redeclare is fine.
        declare(&ch, &name, kind.clone()).await.expect("redeclare");
        within(
            "passive",
            ch.exchange_declare(name.as_str().into(), kind, passive(), FieldTable::default()),
        )
        .await
        .expect("passive declare of an existing exchange");
        names.push(name);
    }
    for name in &names {
        within(
            "exchange.delete",
            ch.exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default()),
        )
        .await
        .expect("delete");
    }
    // Deleted means gone.
    let res = within(
        "passive",
        ch.exchange_declare(
            names[0].as_str().into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn passive_declare_of_missing_exchange_is_404() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "passive",
        ch.exchange_declare(
            unique("nope").as_str().into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn redeclare_with_different_type_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let name = unique("x-retype");
    declare(&ch, &name, ExchangeKind::Direct).await.unwrap();
    let res = declare(&ch, &name, ExchangeKind::Fanout).await;
    assert_code(res, 406);
    delete_exchange(&conn, &name).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn redeclare_with_different_durability_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let name = unique("x-redur");
    declare(&ch, &name, ExchangeKind::Direct).await.unwrap();
    let res = within(
        "declare",
        ch.exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 406);
    delete_exchange(&conn, &name).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn passive_declare_ignores_type_mismatch() {
    // A passive declare only checks existence.
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    within(
        "passive",
        ch.exchange_declare(
            "amq.fanout".into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare with another type is ok");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn declaring_amq_prefixed_exchange_is_403() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = declare(&ch, &format!("amq.{}", unique("foo")), ExchangeKind::Direct).await;
    assert_code(res, 403);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn declaring_the_default_exchange_is_403() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = declare(&ch, "", ExchangeKind::Direct).await;
    // RabbitMQ's exact text (no vhost in it).
    let err = res.expect_err("declaring the default exchange must fail");
    assert_eq!(reply_code(&err), Some(403), "{err:?}");
    match err.kind() {
        lapin::ErrorKind::ProtocolError(p) => assert_eq!(
            p.get_message().as_str(),
            "ACCESS_REFUSED - operation not permitted on the default exchange"
        ),
        other => panic!("{other:?}"),
    }
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn deleting_the_default_exchange_is_403() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "delete",
        ch.exchange_delete("".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_code(res, 403);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn deleting_amq_direct_is_403() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "delete",
        ch.exchange_delete("amq.direct".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_code(res, 403);
    // Still there.
    let ch2 = conn.create_channel().await.unwrap();
    within(
        "passive",
        ch2.exchange_declare(
            "amq.direct".into(),
            ExchangeKind::Direct,
            passive(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("amq.direct survives");
    let _ = conn.close(200, "bye".into()).await;
}

/// RabbitMQ refuses to delete any `amq.` name, even one that does not exist
/// ("deletion of system exchange 'amq.nonexistent' in vhost '/' not allowed").
#[tokio::test]
async fn deleting_any_amq_name_is_403_even_when_missing() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "delete",
        ch.exchange_delete("amq.nonexistent".into(), ExchangeDeleteOptions::default()),
    )
    .await;
    assert_code(res, 403);
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn predeclared_exchanges_exist() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    for (name, kind) in [
        ("amq.direct", ExchangeKind::Direct),
        ("amq.fanout", ExchangeKind::Fanout),
        ("amq.topic", ExchangeKind::Topic),
        ("amq.headers", ExchangeKind::Headers),
        ("amq.match", ExchangeKind::Headers),
    ] {
        within(
            "passive",
            ch.exchange_declare(name.into(), kind.clone(), passive(), FieldTable::default()),
        )
        .await
        .unwrap_or_else(|e| panic!("{name} must exist: {e:?}"));
        // The amq. prefix check applies only to new exchanges: an equivalent
        // (durable, same type) redeclare of an existing amq.* exchange is ok.
        within(
            "redeclare",
            ch.exchange_declare(
                name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("equivalent redeclare of {name} must be ok: {e:?}"));
    }
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn delete_if_unused_with_binding_is_406() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = unique("x-inuse");
    declare(&ch, &x, ExchangeKind::Direct).await.unwrap();
    let q = declare_queue(&ch, "inuse").await;
    within(
        "bind",
        ch.queue_bind(
            q.as_str().into(),
            x.as_str().into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    let res = within(
        "delete if-unused",
        ch.exchange_delete(
            x.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await;
    assert_code(res, 406);
    // Without if_unused it works, and the binding goes with it.
    let ch2 = conn.create_channel().await.unwrap();
    within(
        "delete",
        ch2.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn delete_if_unused_without_binding_is_ok() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = unique("x-unused");
    declare(&ch, &x, ExchangeKind::Topic).await.unwrap();
    within(
        "delete if-unused",
        ch.exchange_delete(
            x.as_str().into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        ),
    )
    .await
    .expect("delete unused exchange");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn deleting_a_missing_exchange_is_ok() {
    // RabbitMQ made exchange.delete idempotent (no 404 for a missing exchange).
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    within(
        "delete",
        ch.exchange_delete(
            unique("never-declared").as_str().into(),
            ExchangeDeleteOptions::default(),
        ),
    )
    .await
    .expect("exchange.delete of a missing exchange");
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn unknown_exchange_type_is_connection_error_503() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = declare(
        &ch,
        &unique("x-weird"),
        ExchangeKind::Custom("no-such-type".into()),
    )
    .await;
    assert_code(res, 503);
    // COMMAND_INVALID is a hard error: the whole connection goes.
    within("connection to go", async {
        while conn.status().connected() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn exchange_to_exchange_binding_routes() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let src = unique("e2e-src");
    let dst = unique("e2e-dst");
    declare(&ch, &src, ExchangeKind::Topic).await.unwrap();
    declare(&ch, &dst, ExchangeKind::Fanout).await.unwrap();
    within(
        "exchange.bind",
        ch.exchange_bind(
            dst.as_str().into(),
            src.as_str().into(),
            "a.*".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind");
    let q = declare_queue(&ch, "e2e").await;
    within(
        "bind",
        ch.queue_bind(
            q.as_str().into(),
            dst.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    confirm_select(&ch).await;
    for rk in ["a.b", "b.a", "a.c", "a"] {
        let c = publish_confirmed(&ch, &src, rk, rk.as_bytes(), BasicProperties::default()).await;
        assert!(c.is_ack());
    }
    let got = drain(&ch, &q).await;
    assert_eq!(got, vec![b"a.b".to_vec(), b"a.c".to_vec()]);
    for x in [&src, &dst] {
        delete_exchange(&conn, x).await;
    }
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn binding_to_missing_exchange_for_exchange_bind_is_404() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "exchange.bind",
        ch.exchange_bind(
            "amq.fanout".into(),
            unique("missing-src").as_str().into(),
            "".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    let _ = conn.close(200, "bye".into()).await;
}
