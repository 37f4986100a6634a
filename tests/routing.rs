//! Routing through direct, fanout, topic, headers and the default exchange.

mod common;

use common::*;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use std::collections::BTreeSet;

async fn declare_exchange(ch: &Channel, kind: ExchangeKind) -> String {
    let name = unique("route-x");
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.as_str().into(),
            kind,
            ExchangeDeclareOptions {
                auto_delete: false,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    name
}

async fn bind(ch: &Channel, q: &str, x: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            q.into(),
            x.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {q} to {x} with {key:?}: {e:?}"));
}

fn strings(bodies: Vec<Vec<u8>>) -> BTreeSet<String> {
    bodies
        .into_iter()
        .map(|b| String::from_utf8(b).unwrap())
        .collect()
}

#[tokio::test]
async fn direct_exchange_routes_by_exact_key() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = declare_exchange(&ch, ExchangeKind::Direct).await;
    let q1 = declare_queue(&ch, "direct1").await;
    let q2 = declare_queue(&ch, "direct2").await;
    bind(&ch, &q1, &x, "red", FieldTable::default()).await;
    bind(&ch, &q1, &x, "green", FieldTable::default()).await;
    bind(&ch, &q2, &x, "green", FieldTable::default()).await;
    confirm_select(&ch).await;
    for key in ["red", "green", "blue", "Red", "red.x", ""] {
        let c = publish_confirmed(&ch, &x, key, key.as_bytes(), BasicProperties::default()).await;
        assert!(c.is_ack());
    }
    assert_eq!(
        drain(&ch, &q1).await,
        vec![b"red".to_vec(), b"green".to_vec()]
    );
    assert_eq!(drain(&ch, &q2).await, vec![b"green".to_vec()]);
    delete_exchange(&conn, &x).await;
    delete_queue(&conn, &q1).await;
    delete_queue(&conn, &q2).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn fanout_exchange_ignores_routing_key() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = declare_exchange(&ch, ExchangeKind::Fanout).await;
    let mut qs = Vec::new();
    for i in 0..3 {
        let q = declare_queue(&ch, &format!("fanout{i}")).await;
        bind(&ch, &q, &x, &format!("ignored-{i}"), FieldTable::default()).await;
        qs.push(q);
    }
    confirm_select(&ch).await;
    publish_confirmed(&ch, &x, "anything", b"m1", BasicProperties::default()).await;
    publish_confirmed(&ch, &x, "", b"m2", BasicProperties::default()).await;
    for q in &qs {
        assert_eq!(drain(&ch, q).await, vec![b"m1".to_vec(), b"m2".to_vec()]);
    }
    delete_exchange(&conn, &x).await;
    for q in &qs {
        delete_queue(&conn, q).await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn one_message_is_delivered_once_per_queue_even_with_several_matching_bindings() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = declare_exchange(&ch, ExchangeKind::Topic).await;
    let q = declare_queue(&ch, "dedupe").await;
    bind(&ch, &q, &x, "a.*", FieldTable::default()).await;
    bind(&ch, &q, &x, "*.b", FieldTable::default()).await;
    bind(&ch, &q, &x, "#", FieldTable::default()).await;
    confirm_select(&ch).await;
    publish_confirmed(&ch, &x, "a.b", b"once", BasicProperties::default()).await;
    assert_eq!(drain(&ch, &q).await, vec![b"once".to_vec()]);
    delete_exchange(&conn, &x).await;
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Reference topic matching, as RabbitMQ does it: words are separated by
/// dots, an empty routing key has no words at all (so `*` does not match ""),
/// but empty words between dots count (`*.*` matches "."), `*` is exactly one
/// word and `#` is zero or more words.
fn topic_matches(pattern: &str, key: &str) -> bool {
    fn words(s: &str) -> Vec<&str> {
        if s.is_empty() {
            Vec::new()
        } else {
            s.split('.').collect()
        }
    }
    fn m(p: &[&str], k: &[&str]) -> bool {
        match p.first() {
            None => k.is_empty(),
            Some(&"#") => (0..=k.len()).any(|i| m(&p[1..], &k[i..])),
            Some(&"*") => !k.is_empty() && m(&p[1..], &k[1..]),
            Some(w) => !k.is_empty() && k[0] == *w && m(&p[1..], &k[1..]),
        }
    }
    m(&words(pattern), &words(key))
}

/// (binding pattern, some routing keys that must match it). Every key in
/// TOPIC_KEYS is published; each queue must get exactly the keys that
/// `topic_matches` accepts, which includes the ones listed here.
const TOPIC_CASES: &[(&str, &[&str])] = &[
    ("a.b.c", &["a.b.c"]),
    ("a.*", &["a.b", "a.c", "a."]),
    ("*.b", &["a.b", "x.b", ".b"]),
    ("a.*.c", &["a.b.c", "a.x.c", "a..c"]),
    ("a.#", &["a", "a.b", "a.b.c", "a.", "a..c", "a.b.c.d.e"]),
    ("#.c", &["c", "a.c", "a.b.c", "a..c", "x.c"]),
    ("a.#.c", &["a.c", "a.b.c", "a.x.c", "a..c", "a.b.x.c"]),
    ("#", &["a", "a.b", "", "c", "x.y.z", "."]),
    ("*", &["a", "c", "x"]),
    ("a..c", &["a..c"]),
    ("*.*", &["a.b", "a.", ".b", "a.c", "x.c", "."]),
    ("#.#", &["a", "a.b", "", "c"]),
    ("", &[""]),
    ("a.*.#", &["a.b", "a.b.c", "a.", "a..c"]),
];

const TOPIC_KEYS: &[&str] = &[
    "a.b.c",
    "a.b",
    "a.c",
    "a.",
    "x.b",
    ".b",
    "a.x.c",
    "a..c",
    "a",
    "a.b.c.d.e",
    "c",
    "x.c",
    "a.b.x.c",
    "",
    "x.y.z",
    ".",
    "x",
    "b.a",
    "ab.c",
    "a.bc",
];

#[tokio::test]
async fn topic_exchange_wildcards() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = declare_exchange(&ch, ExchangeKind::Topic).await;
    let mut queues = Vec::new();
    for (pattern, _) in TOPIC_CASES {
        let q = declare_queue(&ch, "topic").await;
        bind(&ch, &q, &x, pattern, FieldTable::default()).await;
        queues.push(q);
    }
    confirm_select(&ch).await;
    for key in TOPIC_KEYS {
        let c = publish_confirmed(&ch, &x, key, key.as_bytes(), BasicProperties::default()).await;
        assert!(c.is_ack());
    }
    let mut failures = Vec::new();
    for ((pattern, expected), q) in TOPIC_CASES.iter().zip(&queues) {
        let got = strings(drain(&ch, q).await);
        let want: BTreeSet<String> = TOPIC_KEYS
            .iter()
            .filter(|k| topic_matches(pattern, k))
            .map(|s| s.to_string())
            .collect();
        for k in expected.iter() {
            assert!(
                want.contains(*k),
                "reference matcher disagrees on {pattern:?} ~ {k:?}"
            );
        }
        if got != want {
            failures.push(format!(
                "pattern {pattern:?}: matched {got:?}, expected {want:?}"
            ));
        }
    }
    for q in &queues {
        delete_queue(&conn, q).await;
    }
    delete_exchange(&conn, &x).await;
    let _ = conn.close(200, "bye".into()).await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn topic_routing_key_arrives_unchanged() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "topic-rk").await;
    bind(
        &ch,
        &q,
        "amq.topic",
        &format!("{q}.#"),
        FieldTable::default(),
    )
    .await;
    confirm_select(&ch).await;
    let rk = format!("{q}.some.key");
    publish_confirmed(&ch, "amq.topic", &rk, b"x", BasicProperties::default()).await;
    let m = get(&ch, &q, true).await.expect("message");
    assert_eq!(m.delivery.exchange.as_str(), "amq.topic");
    assert_eq!(m.delivery.routing_key.as_str(), rk);
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

#[tokio::test]
async fn headers_exchange_all_and_any() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = declare_exchange(&ch, ExchangeKind::Headers).await;
    let q_all = declare_queue(&ch, "hdr-all").await;
    let q_any = declare_queue(&ch, "hdr-any").await;
    let q_default = declare_queue(&ch, "hdr-default").await;
    let q_xprefix = declare_queue(&ch, "hdr-xprefix").await;
    let q_int = declare_queue(&ch, "hdr-int").await;
    bind(
        &ch,
        &q_all,
        &x,
        "ignored",
        table(&[
            ("x-match", s("all")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await;
    bind(
        &ch,
        &q_any,
        &x,
        "",
        table(&[
            ("x-match", s("any")),
            ("format", s("pdf")),
            ("type", s("report")),
        ]),
    )
    .await;
    // No x-match: the default is "all".
    bind(
        &ch,
        &q_default,
        &x,
        "",
        table(&[("format", s("pdf")), ("type", s("report"))]),
    )
    .await;
    // Binding arguments starting with "x-" take no part in matching.
    bind(
        &ch,
        &q_xprefix,
        &x,
        "",
        table(&[
            ("x-match", s("all")),
            ("x-extra", s("whatever")),
            ("format", s("pdf")),
        ]),
    )
    .await;
    bind(
        &ch,
        &q_int,
        &x,
        "",
        table(&[("x-match", s("all")), ("n", AMQPValue::LongInt(42))]),
    )
    .await;

    confirm_select(&ch).await;
    let messages: Vec<(&str, FieldTable)> = vec![
        (
            "both",
            table(&[("format", s("pdf")), ("type", s("report"))]),
        ),
        (
            "both+extra",
            table(&[
                ("format", s("pdf")),
                ("type", s("report")),
                ("extra", s("1")),
            ]),
        ),
        ("format-only", table(&[("format", s("pdf"))])),
        ("type-only", table(&[("type", s("report"))])),
        (
            "wrong-value",
            table(&[("format", s("zip")), ("type", s("log"))]),
        ),
        ("none", FieldTable::default()),
        ("n42", table(&[("n", AMQPValue::LongInt(42))])),
        ("n43", table(&[("n", AMQPValue::LongInt(43))])),
    ];
    for (body, headers) in &messages {
        let props = BasicProperties::default().with_headers(headers.clone());
        let c = publish_confirmed(&ch, &x, "rk", body.as_bytes(), props).await;
        assert!(c.is_ack());
    }
    // No headers property at all.
    publish_confirmed(&ch, &x, "rk", b"no-headers", BasicProperties::default()).await;

    let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        strings(drain(&ch, &q_all).await),
        set(&["both", "both+extra"]),
        "x-match=all"
    );
    assert_eq!(
        strings(drain(&ch, &q_any).await),
        set(&["both", "both+extra", "format-only", "type-only"]),
        "x-match=any"
    );
    assert_eq!(
        strings(drain(&ch, &q_default).await),
        set(&["both", "both+extra"]),
        "no x-match means all"
    );
    assert_eq!(
        strings(drain(&ch, &q_xprefix).await),
        set(&["both", "both+extra", "format-only"]),
        "x- binding arguments are ignored"
    );
    assert_eq!(
        strings(drain(&ch, &q_int).await),
        set(&["n42"]),
        "integer header"
    );
    for q in [&q_all, &q_any, &q_default, &q_xprefix, &q_int] {
        delete_queue(&conn, q).await;
    }
    delete_exchange(&conn, &x).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn headers_exchange_empty_all_binding_matches_everything() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let x = declare_exchange(&ch, ExchangeKind::Headers).await;
    let q = declare_queue(&ch, "hdr-empty").await;
    bind(&ch, &q, &x, "", table(&[("x-match", s("all"))])).await;
    confirm_select(&ch).await;
    publish_confirmed(&ch, &x, "", b"plain", BasicProperties::default()).await;
    let props = BasicProperties::default().with_headers(table(&[("k", s("v"))]));
    publish_confirmed(&ch, &x, "", b"with-headers", props).await;
    assert_eq!(
        drain(&ch, &q).await,
        vec![b"plain".to_vec(), b"with-headers".to_vec()]
    );
    delete_queue(&conn, &q).await;
    delete_exchange(&conn, &x).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q1 = declare_queue(&ch, "default1").await;
    let q2 = declare_queue(&ch, "default2").await;
    confirm_select(&ch).await;
    publish_confirmed(&ch, "", &q1, b"for q1", BasicProperties::default()).await;
    publish_confirmed(&ch, "", &q2, b"for q2", BasicProperties::default()).await;
    publish_confirmed(
        &ch,
        "",
        &unique("nobody"),
        b"lost",
        BasicProperties::default(),
    )
    .await;
    let m = get(&ch, &q1, true).await.expect("q1 message");
    assert_eq!(m.delivery.data, b"for q1");
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), q1);
    assert_eq!(drain(&ch, &q1).await, Vec::<Vec<u8>>::new());
    assert_eq!(drain(&ch, &q2).await, vec![b"for q2".to_vec()]);
    delete_queue(&conn, &q1).await;
    delete_queue(&conn, &q2).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn amq_direct_and_amq_fanout_route() {
    let broker = Broker::start();
    let (conn, ch) = connect_channel(&broker).await;
    let q = declare_queue(&ch, "amq-x").await;
    bind(&ch, &q, "amq.direct", &q, FieldTable::default()).await;
    bind(&ch, &q, "amq.fanout", "", FieldTable::default()).await;
    confirm_select(&ch).await;
    publish_confirmed(&ch, "amq.direct", &q, b"direct", BasicProperties::default()).await;
    publish_confirmed(
        &ch,
        "amq.fanout",
        "x",
        b"fanout",
        BasicProperties::default(),
    )
    .await;
    let got = drain(&ch, &q).await;
    // amq.fanout is shared with other tests on an external broker: only
    // look for ours.
    assert!(got.contains(&b"direct".to_vec()), "{got:?}");
    assert!(got.contains(&b"fanout".to_vec()), "{got:?}");
    delete_queue(&conn, &q).await;
    let _ = conn.close(200, "bye".into()).await;
}
