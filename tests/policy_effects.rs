//! What policies do to queues and exchanges over AMQP (lapin): applied to
//! existing queues at once and to new ones at declare, RabbitMQ's precedence
//! against queue arguments, dead-lettering of dropped heads, message TTL for
//! new messages, alternate exchanges. With HOPPER_TEST_EXTERNAL_URI set the
//! same tests run against RabbitMQ (checked with 3.10), where policies apply
//! asynchronously: every effect is awaited.

mod common;

use common::mgmt::{client, http, name, GUEST};
use common::policy::*;
use common::Broker;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_http_client::commons::PolicyTarget;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[test]
fn a_policy_applies_to_existing_and_new_queues_and_shows_on_them() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let rt = rt();
    let uri = b.uri();
    let conn = rt.block_on(common::connect_uri(&uri)).unwrap();
    let ch = rt.block_on(conn.create_channel()).unwrap();
    let q = name("existing");
    declare(&rt, &ch, &q, FieldTable::default());
    fill(&rt, &conn, &q, 5);
    let p = name("len2");
    let pattern = format!("^{q}");
    set_policy(
        &c,
        &p,
        &pattern,
        PolicyTarget::Queues,
        json!({"max-length": 2}),
        0,
    );
    // A lower max-length drops the heads at once, as RabbitMQ does.
    wait_ready(&rt, &ch, &q, 2);
    let head = rt.block_on(common::get(&ch, &q, true)).expect("a message");
    assert_eq!(head.delivery.data, b"3");
    // A queue declared afterwards gets it at declare.
    let q2 = format!("{q}-new");
    declare(&rt, &ch, &q2, FieldTable::default());
    fill(&rt, &conn, &q2, 4);
    wait_ready(&rt, &ch, &q2, 2);
    let info = wait_json(&mut b, &format!("/api/queues/%2F/{q2}"), |j| {
        j["policy"] == json!(p)
    });
    assert_eq!(
        info["effective_policy_definition"],
        json!({"max-length": 2})
    );
    // Deleting the policy lifts the limit.
    c.delete_policy("/", &p, false).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info = c.get_queue_info("/", &q2).unwrap();
        if info.policy.as_deref().unwrap_or("").is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "policy still shown");
        std::thread::sleep(Duration::from_millis(100));
    }
    fill(&rt, &conn, &q2, 3);
    wait_ready(&rt, &ch, &q2, 5);
    for q in [&q, &q2] {
        rt.block_on(common::delete_queue(&conn, q));
    }
}

#[test]
fn numeric_limits_take_the_lower_others_the_argument() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let rt = rt();
    let uri = b.uri();
    let conn = rt.block_on(common::connect_uri(&uri)).unwrap();
    let ch = rt.block_on(conn.create_channel()).unwrap();
    let base = name("prec");
    // Argument 3, policy 10: 3 stay. Argument 10, policy 2: 2 stay.
    let low_arg = format!("{base}-a");
    let low_pol = format!("{base}-b");
    declare(
        &rt,
        &ch,
        &low_arg,
        args(&[("x-max-length", AMQPValue::LongInt(3))]),
    );
    declare(
        &rt,
        &ch,
        &low_pol,
        args(&[("x-max-length", AMQPValue::LongInt(10))]),
    );
    // Dead-lettering: the argument's exchange wins over the policy's.
    let dl_arg = format!("{base}-dl-arg");
    let dl_pol = format!("{base}-dl-pol");
    let victim = format!("{base}-c");
    for q in [&dl_arg, &dl_pol] {
        declare(&rt, &ch, q, FieldTable::default());
    }
    declare(
        &rt,
        &ch,
        &victim,
        args(&[
            ("x-dead-letter-exchange", AMQPValue::LongString("".into())),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(dl_arg.as_str().into()),
            ),
        ]),
    );
    let p10 = format!("{base}-p10");
    set_policy(
        &c,
        &p10,
        &format!("^{low_arg}$"),
        PolicyTarget::Queues,
        json!({"max-length": 10}),
        0,
    );
    let p2 = format!("{base}-p2");
    set_policy(
        &c,
        &p2,
        &format!("^{low_pol}$"),
        PolicyTarget::Queues,
        json!({"max-length": 2}),
        0,
    );
    let pdl = format!("{base}-pdl");
    set_policy(
        &c,
        &pdl,
        &format!("^{victim}$"),
        PolicyTarget::Queues,
        json!({"max-length": 1, "dead-letter-exchange": "", "dead-letter-routing-key": dl_pol}),
        0,
    );
    // Wait until the policies show on the queues before publishing.
    let deadline = Instant::now() + Duration::from_secs(10);
    while [&low_arg, &low_pol, &victim].iter().any(|q| {
        c.get_queue_info("/", q)
            .unwrap()
            .policy
            .as_deref()
            .unwrap_or("")
            .is_empty()
    }) {
        assert!(Instant::now() < deadline, "policies not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    fill(&rt, &conn, &low_arg, 5);
    fill(&rt, &conn, &low_pol, 5);
    fill(&rt, &conn, &victim, 2);
    wait_ready(&rt, &ch, &low_arg, 3);
    wait_ready(&rt, &ch, &low_pol, 2);
    // max-length 1 from the policy dropped the head to the argument's DLX.
    wait_ready(&rt, &ch, &victim, 1);
    wait_ready(&rt, &ch, &dl_arg, 1);
    assert_eq!(rt.block_on(common::message_count(&ch, &dl_pol)), 0);
    for p in [&p10, &p2, &pdl] {
        c.delete_policy("/", p, false).unwrap();
    }
    for q in [&low_arg, &low_pol, &dl_arg, &dl_pol, &victim] {
        rt.block_on(common::delete_queue(&conn, q));
    }
}

#[test]
fn lowering_max_length_dead_letters_heads_and_message_ttl_applies_to_new_messages() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let rt = rt();
    let uri = b.uri();
    let conn = rt.block_on(common::connect_uri(&uri)).unwrap();
    let ch = rt.block_on(conn.create_channel()).unwrap();
    let q = name("dlx-src");
    let dead = name("dlx-dst");
    declare(&rt, &ch, &dead, FieldTable::default());
    declare(&rt, &ch, &q, FieldTable::default());
    fill(&rt, &conn, &q, 4);
    let p = name("dlx-pol");
    set_policy(
        &c,
        &p,
        &format!("^{q}$"),
        PolicyTarget::Queues,
        json!({"max-length": 1, "dead-letter-exchange": "", "dead-letter-routing-key": dead}),
        0,
    );
    wait_ready(&rt, &ch, &q, 1);
    wait_ready(&rt, &ch, &dead, 3);
    let first = rt.block_on(common::get(&ch, &dead, true)).unwrap();
    assert_eq!(
        first.delivery.data, b"0",
        "the heads are dead-lettered in order"
    );

    // message-ttl from a policy: messages already queued keep living
    // (RabbitMQ fixes expiry at enqueue); new ones expire.
    let t = name("ttl");
    declare(&rt, &ch, &t, FieldTable::default());
    let pt = name("ttl-pol");
    set_policy(
        &c,
        &pt,
        &format!("^{t}$"),
        PolicyTarget::Queues,
        json!({"message-ttl": 1}),
        0,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .get_queue_info("/", &t)
        .unwrap()
        .policy
        .as_deref()
        .unwrap_or("")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "policy not applied");
        std::thread::sleep(Duration::from_millis(100));
    }
    fill(&rt, &conn, &t, 2);
    wait_ready(&rt, &ch, &t, 0);
    c.delete_policy("/", &pt, false).unwrap();
    c.delete_policy("/", &p, false).unwrap();
    for q in [&q, &dead, &t] {
        rt.block_on(common::delete_queue(&conn, q));
    }
}

#[test]
fn alternate_exchange_from_a_policy_unless_the_argument_names_one() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let rt = rt();
    let uri = b.uri();
    let conn = rt.block_on(common::connect_uri(&uri)).unwrap();
    let ch = rt.block_on(conn.create_channel()).unwrap();
    let x = name("ae-src");
    let ae = name("ae-alt");
    let caught = name("ae-caught");
    for (ex, kind) in [(&x, "direct"), (&ae, "fanout")] {
        rt.block_on(ch.exchange_declare(
            ex.as_str().into(),
            lapin::ExchangeKind::Custom(kind.into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        ))
        .unwrap();
    }
    declare(&rt, &ch, &caught, FieldTable::default());
    rt.block_on(ch.queue_bind(
        caught.as_str().into(),
        ae.as_str().into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .unwrap();
    let p = name("ae-pol");
    set_policy(
        &c,
        &p,
        &format!("^{x}$"),
        PolicyTarget::Exchanges,
        json!({"alternate-exchange": ae}),
        0,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: Value = serde_json::from_str(
            &http(
                b.mgmt_addr(),
                "GET",
                &format!("/api/exchanges/%2F/{x}"),
                GUEST,
                None,
            )
            .body,
        )
        .unwrap();
        if info["policy"] == json!(p) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "exchange policy not shown: {info}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    rt.block_on(async {
        let pch = conn.create_channel().await.unwrap();
        common::confirm_select(&pch).await;
        common::publish_confirmed(&pch, &x, "nowhere", b"lost", Default::default()).await;
    });
    wait_ready(&rt, &ch, &caught, 1);
    c.delete_policy("/", &p, false).unwrap();
    rt.block_on(async {
        common::delete_queue(&conn, &caught).await;
        common::delete_exchange(&conn, &x).await;
        common::delete_exchange(&conn, &ae).await;
    });
}
