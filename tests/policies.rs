//! Policies through the management API (`rabbitmq_http_client` as the
//! oracle, raw HTTP for status codes and texts) and their effect on queues
//! and exchanges over AMQP (lapin): applied to existing queues at once and
//! to new ones at declare, RabbitMQ's precedence against queue arguments,
//! durability, definitions, the policymaker's rights. With
//! HOPPER_TEST_EXTERNAL_URI set the same tests run against RabbitMQ (checked
//! with 3.10), where policies apply asynchronously: every effect is awaited.

mod common;

use common::mgmt::{client, http, name, Api, GUEST};
use common::Broker;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use rabbitmq_http_client::commons::PolicyTarget;
use rabbitmq_http_client::requests::{PolicyDefinition, PolicyParams};
use serde_json::{json, Map, Value};
use std::time::{Duration, Instant};

fn definition(v: Value) -> PolicyDefinition {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn set_policy(c: &Api, pname: &str, pattern: &str, target: PolicyTarget, def: Value, prio: i32) {
    c.declare_policy(
        &PolicyParams::new("/", pname, pattern, definition(def))
            .apply_to(target)
            .priority(prio),
    )
    .unwrap_or_else(|e| panic!("declare policy {pname}: {e:?}"));
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// Poll the queue's ready count over AMQP until it is `n` (RabbitMQ applies
/// a policy after answering the PUT).
fn wait_ready(rt: &tokio::runtime::Runtime, ch: &lapin::Channel, q: &str, n: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = rt.block_on(common::message_count(ch, q));
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{q}: {got} ready, not {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn declare(rt: &tokio::runtime::Runtime, ch: &lapin::Channel, q: &str, args: FieldTable) {
    rt.block_on(ch.queue_declare(q.into(), QueueDeclareOptions::default(), args))
        .unwrap_or_else(|e| panic!("declare {q}: {e:?}"));
}

fn bodies(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| i.to_string().into_bytes()).collect()
}

fn fill(rt: &tokio::runtime::Runtime, conn: &lapin::Connection, q: &str, n: usize) {
    let b = bodies(n);
    let refs: Vec<&[u8]> = b.iter().map(|x| x.as_slice()).collect();
    rt.block_on(common::fill_queue(conn, q, &refs));
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// GET `path` until `done` holds for its JSON (RabbitMQ's management
/// shows queue fields from its stats, refreshed every 5 s).
fn wait_json(b: &mut Broker, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http(b.mgmt_addr(), "GET", path, GUEST, None);
        if r.status == 200 {
            let j = r.json();
            if done(&j) {
                return j;
            }
        }
        assert!(Instant::now() < deadline, "{path}: {} {}", r.status, r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn policy_crud_through_the_client_and_validation_texts() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let a = b.mgmt_addr();
    let p = name("crud");
    set_policy(
        &c,
        &p,
        "^nothing-matches-this$",
        PolicyTarget::Queues,
        json!({"max-length": 5}),
        3,
    );
    let got = c.get_policy("/", &p).expect("get policy");
    assert_eq!(
        (got.pattern.as_str(), got.apply_to, got.priority),
        ("^nothing-matches-this$", PolicyTarget::Queues, 3)
    );
    assert_eq!(got.definition.0.as_ref().unwrap()["max-length"], json!(5));
    assert!(c.list_policies().unwrap().iter().any(|x| x.name == p));
    assert!(c.list_policies_in("/").unwrap().iter().any(|x| x.name == p));
    // Replacing answers 204, a new one 201.
    let body = r#"{"pattern":"^nothing$","definition":{"max-length":6}}"#;
    let path = format!("/api/policies/%2F/{p}");
    assert_eq!(http(a, "PUT", &path, GUEST, Some(body)).status, 204);
    assert_eq!(
        c.get_policy("/", &p).unwrap().apply_to,
        PolicyTarget::All,
        "apply-to defaults to all"
    );
    // RabbitMQ's validation answers (3.10, checked side by side).
    for (body, reason) in [
        (
            r#"{"pattern":"^x","definition":{"max-length":"x"}}"#,
            "Validation failed\n\n&lt;&lt;\"x\"&gt;&gt; is not a valid maximum length\n",
        ),
        (
            r#"{"pattern":"^x","definition":{"foo":1,"bar":"x"}}"#,
            "Validation failed\n\n[{&lt;&lt;\"bar\"&gt;&gt;,&lt;&lt;\"x\"&gt;&gt;},{&lt;&lt;\"foo\"&gt;&gt;,1}] are not recognised policy settings\n",
        ),
        (
            r#"{"pattern":"^x","definition":{"max-length":1},"apply-to":"bogus"}"#,
            "Validation failed\n\napply-to 'bogus' unrecognised; should be 'queues', 'exchanges' or 'all'\n",
        ),
        (
            r#"{"pattern":"^x","definition":{}}"#,
            "Validation failed\n\nno policy provided\n",
        ),
        (
            r#"{"definition":{"max-length":1}}"#,
            "[{key_missing,pattern}]",
        ),
        (
            r#"{"pattern":"^x","definition":{"expires":0}}"#,
            "Validation failed\n\n0 is not a valid queue expiry\n",
        ),
        (
            r#"{"pattern":"^x","definition":{"message-ttl":-1}}"#,
            "Validation failed\n\n-1 is not a valid message TTL\n",
        ),
        (
            r#"{"pattern":"^x","definition":{"overflow":"zz"}}"#,
            "Validation failed\n\n&lt;&lt;\"zz\"&gt;&gt; is not a valid overflow value\n",
        ),
        (
            r#"{"pattern":"^x","definition":{"dead-letter-exchange":1}}"#,
            "Validation failed\n\n1 is not a valid dead letter exchange name\n",
        ),
        (
            r#"{"pattern":"^x","definition":{"max-priority":1}}"#,
            "Validation failed\n\n[{&lt;&lt;\"max-priority\"&gt;&gt;,1}] are not recognised policy settings\n",
        ),
        (
            r#"{"pattern":"^x","definition":{"max-length":1},"priority":"3"}"#,
            "Validation failed\n\npriority should be a number, actually was &lt;&lt;\"3\"&gt;&gt;\n",
        ),
        ("notjson", "not_json"),
    ] {
        let r = http(a, "PUT", &format!("/api/policies/%2F/{p}-bad"), GUEST, Some(body));
        assert_eq!(
            (r.status, r.json()),
            (400, json!({"error": "bad_request", "reason": reason})),
            "{body}"
        );
    }
    let r = http(
        a,
        "PUT",
        "/api/policies/no-such-vhost/p",
        GUEST,
        Some(r#"{"pattern":"^x","definition":{"max-length":1}}"#),
    );
    assert_eq!(
        (r.status, r.json()),
        (
            404,
            json!({"error": "not_found", "reason": "vhost_not_found"})
        )
    );
    assert_eq!(
        http(a, "GET", &format!("{path}-none"), GUEST, None).status,
        404
    );
    c.delete_policy("/", &p, false).expect("delete");
    assert_eq!(http(a, "DELETE", &path, GUEST, None).status, 404);
    assert!(!c.list_policies().unwrap().iter().any(|x| x.name == p));
}

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

#[test]
fn policymaker_may_set_policies_management_may_not_operator_policies_need_admin() {
    let mut b = Broker::start();
    let a = b.mgmt_addr();
    let c = client(&mut b);
    let pm = name("pm");
    let mg = name("mg");
    for (u, tags) in [(&pm, "policymaker"), (&mg, "management")] {
        let body = format!(r#"{{"password":"pw","tags":"{tags}"}}"#);
        assert_eq!(
            http(a, "PUT", &format!("/api/users/{u}"), GUEST, Some(&body)).status,
            201
        );
        let perms = r#"{"configure":".*","write":".*","read":".*"}"#;
        assert_eq!(
            http(
                a,
                "PUT",
                &format!("/api/permissions/%2F/{u}"),
                GUEST,
                Some(perms)
            )
            .status,
            201
        );
    }
    let p = name("byp");
    let path = format!("/api/policies/%2F/{p}");
    let body = r#"{"pattern":"^nothing-here$","definition":{"max-length":1}}"#;
    let refused =
        json!({"error": "not_authorised", "reason": "User not authorised to access object"});
    let r = http(a, "PUT", &path, Some((&mg, "pw")), Some(body));
    assert_eq!((r.status, r.json()), (401, refused.clone()));
    assert_eq!(
        http(a, "PUT", &path, Some((&pm, "pw")), Some(body)).status,
        201
    );
    // management users list them, but may not read one.
    let r = http(a, "GET", "/api/policies", Some((&mg, "pw")), None);
    assert!(r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == json!(p)));
    let r = http(a, "GET", &path, Some((&mg, "pw")), None);
    assert_eq!((r.status, r.json()), (401, refused));
    // Without permissions in a vhost, its list is refused.
    let mon = name("mon");
    let body_mon = r#"{"password":"pw","tags":"monitoring"}"#;
    assert_eq!(
        http(
            a,
            "PUT",
            &format!("/api/users/{mon}"),
            GUEST,
            Some(body_mon)
        )
        .status,
        201
    );
    let r = http(a, "GET", "/api/policies/%2F", Some((&mon, "pw")), None);
    assert_eq!(
        (r.status, r.json()),
        (
            401,
            json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"})
        )
    );
    let _ = c.delete_user(&mon, true);
    let r = http(
        a,
        "PUT",
        &format!("/api/operator-policies/%2F/{p}"),
        Some((&pm, "pw")),
        Some(body),
    );
    assert_eq!(
        (r.status, r.json()),
        (
            401,
            json!({"error": "not_authorised", "reason": "Not administrator user"})
        )
    );
    assert_eq!(
        http(a, "DELETE", &path, Some((&pm, "pw")), None).status,
        204
    );
    for u in [&pm, &mg] {
        let _ = c.delete_user(u, true);
    }
}

#[test]
fn operator_policy_limits_merge_with_the_lower_value() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let rt = rt();
    let uri = b.uri();
    let conn = rt.block_on(common::connect_uri(&uri)).unwrap();
    let ch = rt.block_on(conn.create_channel()).unwrap();
    let q = name("op");
    declare(&rt, &ch, &q, FieldTable::default());
    let p = name("op-user");
    let op = name("op-op");
    set_policy(
        &c,
        &p,
        &format!("^{q}$"),
        PolicyTarget::Queues,
        json!({"max-length": 5, "overflow": "drop-head"}),
        0,
    );
    c.declare_operator_policy(
        &PolicyParams::new(
            "/",
            &op,
            &format!("^{q}$"),
            definition(json!({"max-length": 2})),
        )
        .apply_to(PolicyTarget::Queues),
    )
    .expect("operator policy");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: Value = serde_json::from_str(
            &http(
                b.mgmt_addr(),
                "GET",
                &format!("/api/queues/%2F/{q}"),
                GUEST,
                None,
            )
            .body,
        )
        .unwrap();
        if info["effective_policy_definition"]["max-length"] == json!(2) {
            assert_eq!(info["operator_policy"], json!(op));
            assert_eq!(info["policy"], json!(p));
            break;
        }
        assert!(Instant::now() < deadline, "not merged: {info}");
        std::thread::sleep(Duration::from_millis(100));
    }
    fill(&rt, &conn, &q, 4);
    wait_ready(&rt, &ch, &q, 2);
    c.delete_operator_policy("/", &op, false).unwrap();
    c.delete_policy("/", &p, false).unwrap();
    rt.block_on(common::delete_queue(&conn, &q));
}

#[test]
fn policies_survive_a_restart_and_round_trip_through_definitions() {
    let mut b = Broker::start();
    if b.is_external() {
        return; // restarts need our own process
    }
    let c = client(&mut b);
    let rt = rt();
    set_policy(
        &c,
        "keep",
        "^kept",
        PolicyTarget::Queues,
        json!({"max-length": 1}),
        7,
    );
    // A policy of a deleted vhost goes with it, also from the store.
    let a = b.mgmt_addr();
    assert_eq!(http(a, "PUT", "/api/vhosts/pv", GUEST, None).status, 201);
    let body = r#"{"pattern":".","definition":{"max-length":1}}"#;
    assert_eq!(
        http(a, "PUT", "/api/policies/pv/gone", GUEST, Some(body)).status,
        201
    );
    assert_eq!(http(a, "DELETE", "/api/vhosts/pv", GUEST, None).status, 204);
    assert_eq!(http(a, "PUT", "/api/vhosts/pv", GUEST, None).status, 201);
    b.restart();
    let c = client(&mut b);
    let got = c.get_policy("/", "keep").expect("policy after restart");
    assert_eq!(got.priority, 7);
    let r = http(b.mgmt_addr(), "GET", "/api/policies/pv", GUEST, None);
    assert_eq!((r.status, r.json()), (200, json!([])));
    let uri = b.uri();
    let conn = rt.block_on(common::connect_uri(&uri)).unwrap();
    let ch = rt.block_on(conn.create_channel()).unwrap();
    declare(&rt, &ch, "kept-q", FieldTable::default());
    fill(&rt, &conn, "kept-q", 3);
    wait_ready(&rt, &ch, "kept-q", 1);
    let text = c.export_cluster_wide_definitions().unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        doc["policies"],
        json!([{"vhost": "/", "name": "keep", "pattern": "^kept", "apply-to": "queues",
                "definition": {"max-length": 1}, "priority": 7}])
    );
    let mut fresh = Broker::start();
    let c2 = client(&mut fresh);
    c2.import_definitions(doc).expect("import");
    assert_eq!(c2.get_policy("/", "keep").unwrap().priority, 7);
    // A definitions file with a bad policy is refused.
    let bad = json!({"policies": [{"vhost": "/", "name": "bad", "pattern": "^x",
                                    "definition": {"max-length": "x"}}]});
    let r = http(
        fresh.mgmt_addr(),
        "POST",
        "/api/definitions",
        GUEST,
        Some(&bad.to_string()),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}
