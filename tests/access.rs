//! Access control over TCP: per-resource configure / write / read
//! permissions (403 with RabbitMQ's texts). Logins, vhost access, the config's
//! passwords and `hopper hash-password` are in tests/access_login.rs.
//!
//! These tests configure their own users, so they only run against a hopper
//! they start (never against `HOPPER_TEST_EXTERNAL_URI`).

mod common;

use common::access::*;
use common::*;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

// ---- configure ----

#[tokio::test]
async fn configure_permission_on_queues() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (gconn, gch) = connect_channel(&broker).await;
    declare_q(&gch, "q-by-guest").await.expect("guest declares");
    let (conn, ch) = login(&broker, "limited").await;
    declare_q(&ch, "cfg-q").await.expect("cfg-q allowed");
    assert_refused(declare_q(&ch, "q").await, &refused("queue", "q", "limited"));
    // A server-named queue is checked under its amq.gen-* name.
    let ch = channel(&conn).await;
    match declare_q(&ch, "").await {
        Err(e) => {
            let text = format!("{e:?}");
            assert_eq!(reply_code(&e), Some(403), "{text}");
            assert!(text.contains("access to queue 'amq.gen-"), "{text}");
        }
        Ok(q) => panic!("server-named queue allowed: {q:?}"),
    }
    // Passive declare needs no permission.
    let ch = channel(&conn).await;
    within(
        "passive",
        ch.queue_declare(
            "q-by-guest".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive declare allowed");
    // queue.delete is configure too.
    assert_refused(
        within(
            "queue.delete",
            ch.queue_delete("q-by-guest".into(), QueueDeleteOptions::default()),
        )
        .await,
        &refused("queue", "q-by-guest", "limited"),
    );
    let ch = channel(&conn).await;
    within(
        "queue.delete",
        ch.queue_delete("cfg-q".into(), QueueDeleteOptions::default()),
    )
    .await
    .expect("delete cfg-q");
    // The refused queue was never created, the guest's one never deleted.
    let res = within(
        "passive",
        gch.queue_declare(
            "q".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    let gch = channel(&gconn).await;
    assert_eq!(message_count(&gch, "q-by-guest").await, 0);
    let _ = conn.close(200, "bye".into()).await;
    let _ = gconn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn configure_permission_on_exchanges() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (gconn, gch) = connect_channel(&broker).await;
    declare_x(&gch, "x-by-guest", FieldTable::default())
        .await
        .expect("guest declares");
    let (conn, ch) = login(&broker, "limited").await;
    declare_x(&ch, "cfg-x", FieldTable::default())
        .await
        .expect("cfg-x allowed");
    assert_refused(
        declare_x(&ch, "x", FieldTable::default()).await,
        &refused("exchange", "x", "limited"),
    );
    let ch = channel(&conn).await;
    within(
        "passive",
        ch.exchange_declare(
            "x-by-guest".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive exchange.declare allowed");
    assert_refused(
        within(
            "exchange.delete",
            ch.exchange_delete("x-by-guest".into(), ExchangeDeleteOptions::default()),
        )
        .await,
        &refused("exchange", "x-by-guest", "limited"),
    );
    let ch = channel(&conn).await;
    within(
        "exchange.delete",
        ch.exchange_delete("cfg-x".into(), ExchangeDeleteOptions::default()),
    )
    .await
    .expect("delete cfg-x");
    let _ = conn.close(200, "bye".into()).await;
    let _ = gconn.close(200, "bye".into()).await;
}

// ---- write ----

#[tokio::test]
async fn write_permission_on_publish() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (gconn, gch) = connect_channel(&broker).await;
    for x in ["wr-x", "x2"] {
        declare_x(&gch, x, FieldTable::default()).await.expect("x");
    }
    let (conn, ch) = login(&broker, "limited").await;
    confirm_select(&ch).await;
    assert!(publish(&ch, "wr-x", "k").await.expect("publish").is_ack());
    assert_refused(
        publish(&ch, "x2", "k").await,
        &refused("exchange", "x2", "limited"),
    );
    // The default exchange is checked as amq.default.
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    assert_refused(
        publish(&ch, "", "some-queue").await,
        &refused("exchange", "amq.default", "limited"),
    );
    let _ = conn.close(200, "bye".into()).await;
    let _ = gconn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn write_on_destination_and_read_on_source_for_bindings() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (gconn, gch) = connect_channel(&broker).await;
    for q in ["wr-q", "q"] {
        declare_q(&gch, q).await.expect("q");
    }
    for x in ["rd-x", "x2", "wr-x"] {
        declare_x(&gch, x, FieldTable::default()).await.expect("x");
    }
    let (conn, ch) = login(&broker, "limited").await;
    let qbind = |ch: Channel, q: &'static str, x: &'static str| async move {
        within(
            "queue.bind",
            ch.queue_bind(
                q.into(),
                x.into(),
                "k".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
    };
    qbind(ch.clone(), "wr-q", "rd-x")
        .await
        .expect("bind allowed");
    within(
        "queue.unbind",
        ch.queue_unbind(
            "wr-q".into(),
            "rd-x".into(),
            "k".into(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("unbind allowed");
    assert_refused(
        qbind(channel(&conn).await, "q", "rd-x").await,
        &refused("queue", "q", "limited"),
    );
    assert_refused(
        qbind(channel(&conn).await, "wr-q", "x2").await,
        &refused("exchange", "x2", "limited"),
    );
    // Unbind is checked the same way.
    gch.queue_bind(
        "q".into(),
        "rd-x".into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("guest binds");
    assert_refused(
        within(
            "queue.unbind",
            channel(&conn).await.queue_unbind(
                "q".into(),
                "rd-x".into(),
                "k".into(),
                FieldTable::default(),
            ),
        )
        .await,
        &refused("queue", "q", "limited"),
    );
    // exchange.bind: write on the destination, read on the source.
    let ch = channel(&conn).await;
    within(
        "exchange.bind",
        ch.exchange_bind(
            "wr-x".into(),
            "rd-x".into(),
            "k".into(),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.bind allowed");
    assert_refused(
        within(
            "exchange.bind",
            ch.exchange_bind(
                "wr-x".into(),
                "x2".into(),
                "k".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        &refused("exchange", "x2", "limited"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        within(
            "exchange.bind",
            ch.exchange_bind(
                "x2".into(),
                "rd-x".into(),
                "k".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        &refused("exchange", "x2", "limited"),
    );
    let _ = conn.close(200, "bye".into()).await;
    let _ = gconn.close(200, "bye".into()).await;
}

// ---- read ----

#[tokio::test]
async fn read_permission_on_get_consume_purge() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (gconn, gch) = connect_channel(&broker).await;
    for q in ["rd-q", "q"] {
        declare_q(&gch, q).await.expect("q");
    }
    fill_queue(&gconn, "rd-q", &[b"a", b"b"]).await;
    fill_queue(&gconn, "q", &[b"c"]).await;
    let (conn, ch) = login(&broker, "limited").await;
    let m = get(&ch, "rd-q", true).await.expect("a message");
    assert_eq!(m.delivery.data, b"a");
    within(
        "queue.purge",
        ch.queue_purge("rd-q".into(), QueuePurgeOptions::default()),
    )
    .await
    .expect("purge allowed");
    within(
        "consume",
        ch.basic_consume(
            "rd-q".into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("consume allowed");
    assert_refused(
        within(
            "basic.get",
            ch.basic_get("q".into(), BasicGetOptions { no_ack: true }),
        )
        .await,
        &refused("queue", "q", "limited"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        within(
            "consume",
            ch.basic_consume(
                "q".into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await,
        &refused("queue", "q", "limited"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        within(
            "queue.purge",
            ch.queue_purge("q".into(), QueuePurgeOptions::default()),
        )
        .await,
        &refused("queue", "q", "limited"),
    );
    // Nothing was taken from the refused queue.
    let gch = channel(&gconn).await;
    assert_eq!(message_count(&gch, "q").await, 1);
    let _ = conn.close(200, "bye".into()).await;
    let _ = gconn.close(200, "bye".into()).await;
}

// ---- arguments that make messages flow ----

#[tokio::test]
async fn dead_letter_and_alternate_exchanges_need_write_on_them() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (conn, ch) = login(&broker, "flows").await;
    within(
        "queue.declare",
        ch.queue_declare(
            "dl-ok".into(),
            QueueDeclareOptions::default(),
            text_arg("x-dead-letter-exchange", "allowed"),
        ),
    )
    .await
    .expect("DLX with write allowed");
    assert_refused(
        within(
            "queue.declare",
            ch.queue_declare(
                "dl-refused".into(),
                QueueDeclareOptions::default(),
                text_arg("x-dead-letter-exchange", "elsewhere"),
            ),
        )
        .await,
        &refused("exchange", "elsewhere", "flows"),
    );
    let ch = channel(&conn).await;
    declare_x(&ch, "ae-ok", text_arg("alternate-exchange", "allowed"))
        .await
        .expect("AE with write allowed");
    assert_refused(
        declare_x(&ch, "ae-refused", text_arg("alternate-exchange", "")).await,
        &refused("exchange", "amq.default", "flows"),
    );
    let _ = conn.close(200, "bye".into()).await;
}

// ---- regular expressions as RabbitMQ reads them ----

#[tokio::test]
async fn patterns_match_anywhere_and_empty_matches_nothing() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (conn, ch) = login(&broker, "sub").await;
    // configure "a": an unanchored search, as RabbitMQ's re:run.
    declare_q(&ch, "xay").await.expect("'a' matches 'xay'");
    let q = declare_q(&ch, "").await.expect("amq.gen-* contains an 'a'");
    assert!(q.name().as_str().starts_with("amq.gen-"));
    assert_refused(declare_q(&ch, "bob").await, &refused("queue", "bob", "sub"));
    // write "" and read "": nothing, not even the default exchange.
    let ch = channel(&conn).await;
    confirm_select(&ch).await;
    assert_refused(
        publish(&ch, "", "xay").await,
        &refused("exchange", "amq.default", "sub"),
    );
    let ch = channel(&conn).await;
    assert_refused(
        within(
            "basic.get",
            ch.basic_get("xay".into(), BasicGetOptions { no_ack: true }),
        )
        .await,
        &refused("queue", "xay", "sub"),
    );
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn reserved_queue_prefix_is_refused_before_permissions_and_on_redeclare() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    // RabbitMQ refuses a non-passive declare of any amq.* name, even of a
    // server-named queue that exists (checked against RabbitMQ 3.10.8).
    let (gconn, gch) = connect_channel(&broker).await;
    let q = declare_q(&gch, "").await.expect("server-named");
    let name = q.name().as_str().to_string();
    assert_refused(
        declare_q(&gch, &name).await,
        &format!("queue name '{name}' contains reserved prefix 'amq.*'"),
    );
    let gch = channel(&gconn).await;
    within(
        "passive",
        gch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("a passive declare is fine");
    // The prefix is refused first, whatever the user's permissions.
    let (conn, ch) = login(&broker, "limited").await;
    assert_refused(
        declare_q(&ch, "amq.mine").await,
        "queue name 'amq.mine' contains reserved prefix 'amq.*'",
    );
    let _ = conn.close(200, "bye".into()).await;
    let _ = gconn.close(200, "bye".into()).await;
}

/// Unbinding from or to something missing is ok (RabbitMQ 3.x), but only after
/// the permission checks, which look at names, not at what exists (checked
/// against RabbitMQ 3.10.8 with the same permissions).
#[tokio::test]
async fn unbind_of_missing_resources_still_checks_permissions() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let (conn, _ch) = login(&broker, "limited").await;
    let qunbind = |q: &'static str, x: &'static str| {
        let conn = &conn;
        async move {
            within(
                "queue.unbind",
                channel(conn).await.queue_unbind(
                    q.into(),
                    x.into(),
                    "k".into(),
                    FieldTable::default(),
                ),
            )
            .await
        }
    };
    let xunbind = |dest: &'static str, src: &'static str| {
        let conn = &conn;
        async move {
            within(
                "exchange.unbind",
                channel(conn).await.exchange_unbind(
                    dest.into(),
                    src.into(),
                    "k".into(),
                    ExchangeUnbindOptions::default(),
                    FieldTable::default(),
                ),
            )
            .await
        }
    };
    assert_refused(
        qunbind("missing-q", "rd-missing").await,
        &refused("queue", "missing-q", "limited"),
    );
    assert_refused(
        qunbind("wr-missing", "x-missing").await,
        &refused("exchange", "x-missing", "limited"),
    );
    qunbind("wr-missing", "rd-missing")
        .await
        .expect("allowed unbind of missing ends is ok");
    assert_refused(
        xunbind("x-missing", "rd-missing").await,
        &refused("exchange", "x-missing", "limited"),
    );
    xunbind("wr-missing", "rd-missing")
        .await
        .expect("allowed exchange.unbind of missing ends is ok");
    let _ = conn.close(200, "bye".into()).await;
}
