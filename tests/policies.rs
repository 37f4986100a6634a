//! Policies through the management API (`rabbitmq_http_client` as the
//! oracle, raw HTTP for status codes and texts): create, list, replace,
//! delete, RabbitMQ's validation texts, the policymaker's rights, operator
//! policies, durability and definitions. Their effect on queues and
//! exchanges is tests/policy_effects.rs. With HOPPER_TEST_EXTERNAL_URI set
//! the same tests run against RabbitMQ (checked with 3.10).

mod common;

use common::mgmt::{client, http, name, GUEST};
use common::policy::*;
use common::Broker;
use lapin::types::FieldTable;
use rabbitmq_http_client::commons::PolicyTarget;
use rabbitmq_http_client::requests::PolicyParams;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

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
