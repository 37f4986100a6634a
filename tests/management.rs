//! The management HTTP API's objects, driven by `rabbitmq_http_client` (the
//! library under rabbitmqadmin v2, whose strict response types are the
//! conformance oracle) and by raw HTTP for status codes and bad input:
//! overview, nodes, health, queues, exchanges, bindings, lists, publish.
//! With HOPPER_TEST_EXTERNAL_URI set, the same tests run against RabbitMQ's
//! management API on port 15672 of that host (checked with 3.10).

mod common;

use common::mgmt::{client, http, name, wait_count, GUEST};
use common::Broker;
use rabbitmq_http_client::commons::QueueType;
use rabbitmq_http_client::requests::{ExchangeParams, QueueParams};
use serde_json::json;

#[test]
fn overview_whoami_nodes_vhosts_parse_in_the_client() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let o = c.overview().expect("overview");
    assert!(!o.rabbitmq_version.is_empty());
    assert!(o.listeners.iter().any(|l| l.protocol == "amqp"));
    let me = c.current_user().expect("whoami");
    assert_eq!(me.name, "guest");
    assert!(me.tags.contains("administrator"));
    if !b.is_external() {
        // The client wants 3.13's node fields (being_drained); 3.10 lacks them.
        let nodes = c.list_nodes().expect("nodes");
        assert_eq!(nodes.len(), 1);
        assert!(!nodes[0].rabbitmq_version().is_empty());
    }
    let vhosts = c.list_vhosts().expect("vhosts");
    assert!(vhosts.iter().any(|v| v.name == "/"));
    c.health_check_cluster_wide_alarms().expect("no alarms");
    c.health_check_local_alarms().expect("no local alarms");
    c.health_check_port_listener(b.addr().port())
        .expect("AMQP port listens");
    assert!(
        c.health_check_port_listener(1).is_err(),
        "nothing listens on port 1"
    );
    let a = http(b.mgmt_addr(), "GET", "/api/aliveness-test/%2F", GUEST, None);
    assert_eq!((a.status, a.json()), (200, json!({"status": "ok"})));
    let a = http(b.mgmt_addr(), "GET", "/api/healthchecks/node/", GUEST, None);
    assert_eq!((a.status, a.json()), (200, json!({"status": "ok"})));
}

#[test]
fn queue_declare_list_get_purge_delete() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let q = name("q");
    c.declare_queue("/", &QueueParams::new_durable_classic_queue(&q, None))
        .expect("declare");
    let info = c.get_queue_info("/", &q).expect("queue info");
    assert!(info.durable && !info.auto_delete && !info.exclusive);
    assert_eq!(info.vhost, "/");
    assert!(c.list_queues().expect("list").iter().any(|i| i.name == q));
    assert!(c
        .list_queues_in("/")
        .expect("list in")
        .iter()
        .any(|i| i.name == q));

    // Publish over AMQP, see it through the API, get it back.
    let uri = b.uri();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = common::connect_uri(&uri).await.unwrap();
        common::fill_queue(&conn, &q, &[b"hello"]).await;
        conn.close(200, "bye".into()).await.unwrap();
    });
    wait_count(&c, &q, 1);
    let got = c.get_messages("/", &q, 5, "ack_requeue_true").expect("get");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, "hello");
    assert_eq!(got[0].routing_key, q);
    assert!(!got[0].redelivered);
    // Requeued: still there, now redelivered.
    let again = c
        .get_messages("/", &q, 5, "ack_requeue_false")
        .expect("get");
    assert_eq!(again.len(), 1);
    assert!(again[0].redelivered);
    wait_count(&c, &q, 0);

    rt.block_on(async {
        let conn = common::connect_uri(&uri).await.unwrap();
        common::fill_queue(&conn, &q, &[b"x"]).await;
        conn.close(200, "bye".into()).await.unwrap();
    });
    c.purge_queue("/", &q).expect("purge");
    wait_count(&c, &q, 0);
    c.delete_queue("/", &q, false).expect("delete");
    assert!(c.get_queue_info("/", &q).is_err());
    c.delete_queue("/", &q, true).expect("idempotent delete");
}

#[test]
fn put_answers_201_then_204_and_400_when_inequivalent() {
    let mut b = Broker::start();
    let a = b.mgmt_addr();
    let q = name("put");
    let path = format!("/api/queues/%2F/{q}");
    let r = http(a, "PUT", &path, GUEST, Some(r#"{"durable":true}"#));
    assert_eq!(r.status, 201, "{}", r.body);
    // python rabbitmqadmin sends booleans as strings.
    let r = http(
        a,
        "PUT",
        &path,
        GUEST,
        Some(r#"{"durable":"true","auto_delete":"false"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = http(a, "PUT", &path, GUEST, Some(r#"{"durable":false}"#));
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        json!({"error": "bad_request", "reason": format!(
            "inequivalent arg 'durable' for queue '{q}' in vhost '/': received 'false' but current is 'true'"
        )})
    );
    // The same queue through AMQP is the same object.
    let uri = b.uri();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conn = common::connect_uri(&uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let opts = lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(q.as_str().into(), opts, Default::default())
            .await
            .expect("AMQP redeclare is equivalent");
        let _ = conn.close(200, "bye".into()).await;
    });
    let x = name("x");
    let xpath = format!("/api/exchanges/%2F/{x}");
    assert_eq!(
        http(
            a,
            "PUT",
            &xpath,
            GUEST,
            Some(r#"{"type":"topic","durable":true}"#)
        )
        .status,
        201
    );
    assert_eq!(
        http(
            a,
            "PUT",
            &xpath,
            GUEST,
            Some(r#"{"type":"topic","durable":true}"#)
        )
        .status,
        204
    );
    let r = http(
        a,
        "PUT",
        &xpath,
        GUEST,
        Some(r#"{"type":"fanout","durable":true}"#),
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["reason"]
        .as_str()
        .unwrap()
        .contains("inequivalent arg 'type'"));
    let r = http(
        a,
        "PUT",
        "/api/exchanges/%2F/mgmt-bogus",
        GUEST,
        Some(r#"{"type":"bogus"}"#),
    );
    assert_eq!(
        (r.status, r.json()["reason"].clone()),
        (400, json!("unknown exchange type 'bogus'"))
    );
    assert_eq!(http(a, "DELETE", &xpath, GUEST, None).status, 204);
    assert_eq!(http(a, "DELETE", &xpath, GUEST, None).status, 404);
    assert_eq!(http(a, "DELETE", &path, GUEST, None).status, 204);
}

#[test]
fn exchanges_and_bindings_through_the_client() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let x = name("bx");
    let q = name("bq");
    c.declare_exchange("/", &ExchangeParams::durable_direct(&x, None))
        .expect("exchange");
    c.declare_queue(
        "/",
        &QueueParams::new(&q, QueueType::Classic, false, false, None),
    )
    .expect("queue");
    assert!(c
        .list_exchanges_in("/")
        .unwrap()
        .iter()
        .any(|e| e.name == x));
    assert!(c
        .list_exchanges_in("/")
        .unwrap()
        .iter()
        .any(|e| e.name.is_empty()));
    c.bind_queue("/", &q, &x, Some("rk"), None).expect("bind");
    let bs = c.list_queue_bindings("/", &q).expect("queue bindings");
    assert!(bs.iter().any(|b| b.source == x && b.routing_key == "rk"));
    assert!(
        bs.iter().any(|b| b.source.is_empty() && b.routing_key == q),
        "default binding"
    );
    let from = c
        .list_exchange_bindings_with_source("/", &x)
        .expect("source");
    assert_eq!(from.len(), 1);
    // Delete by properties_key, as the client does.
    let a = b.mgmt_addr();
    let key = from[0].properties_key.clone().expect("properties_key");
    let path = format!("/api/bindings/%2F/e/{x}/q/{q}/{key}");
    assert_eq!(http(a, "GET", &path, GUEST, None).status, 200);
    assert_eq!(http(a, "DELETE", &path, GUEST, None).status, 204);
    assert_eq!(http(a, "DELETE", &path, GUEST, None).status, 404);
    assert!(c
        .list_exchange_bindings_with_source("/", &x)
        .unwrap()
        .is_empty());
    // Create over raw HTTP: 201 with the properties key in Location.
    let r = http(
        a,
        "POST",
        &format!("/api/bindings/%2F/e/{x}/q/{q}"),
        GUEST,
        Some(r#"{"routing_key":""}"#),
    );
    assert_eq!(r.status, 201);
    assert!(
        r.headers.contains("location: ") && r.headers.contains("/~"),
        "{}",
        r.headers
    );
    let r = http(
        a,
        "POST",
        &format!("/api/bindings/%2F/e/nope/q/{q}"),
        GUEST,
        Some("{}"),
    );
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["reason"], "no exchange 'nope' in vhost '/'");
    c.delete_exchange("/", &x, false).unwrap();
    c.delete_queue("/", &q, false).unwrap();
}

#[test]
fn bad_input_never_500() {
    let mut b = Broker::start();
    let a = b.mgmt_addr();
    let long = "x".repeat(256);
    let cases: &[(&str, String, Option<&str>, u16)] = &[
        (
            "PUT",
            "/api/queues/%2F/badjson".into(),
            Some("{not json"),
            400,
        ),
        ("PUT", "/api/queues/%2F/badjson".into(), Some("[1,2]"), 400),
        (
            "PUT",
            "/api/queues/%2F/badbool".into(),
            Some(r#"{"durable":"maybe"}"#),
            400,
        ),
        ("PUT", format!("/api/queues/%2F/{long}"), Some("{}"), 400),
        ("PUT", "/api/queues/no-such-vhost/q".into(), Some("{}"), 404),
        ("GET", "/api/queues/no-such-vhost".into(), None, 404),
        ("GET", "/api/queues/%2F/no-such-queue".into(), None, 404),
        ("GET", "/api/queues?page=99".into(), None, 400),
        ("GET", "/api/queues?page=1&page_size=501".into(), None, 400),
        ("GET", "/api/queues/%zz".into(), None, 400),
        (
            "POST",
            "/api/queues/%2F/no-such-queue/get".into(),
            Some(r#"{"count":1,"ackmode":"ack_requeue_true","encoding":"auto"}"#),
            404,
        ),
        (
            "PUT",
            "/api/queues/%2F/amq.reserved".into(),
            Some("{}"),
            401,
        ),
        ("DELETE", "/api/exchanges/%2F/amq.direct".into(), None, 401),
        (
            "PUT",
            "/api/queues/%2F/args".into(),
            Some(r#"{"arguments":{"x-max-length":-1}}"#),
            400,
        ),
        (
            "PUT",
            "/api/permissions/%2F/nobody".into(),
            Some(r#"{"configure":".*","write":".*","read":".*"}"#),
            400,
        ),
        (
            "PUT",
            "/api/permissions/%2F/guest".into(),
            Some(r#"{"configure":"(","write":".*","read":".*"}"#),
            400,
        ),
        ("GET", "/api/nothing-here".into(), None, 404),
        ("DELETE", "/api/overview".into(), None, 405),
    ];
    for (method, path, body, want) in cases {
        let r = http(a, method, path, GUEST, *body);
        assert_eq!(r.status, *want, "{method} {path}: {}", r.body);
        if b.is_external() {
            // RabbitMQ sometimes sends no body, or an Erlang term as the reason.
            continue;
        }
        let j = r.json();
        assert!(
            j["error"].is_string() && j["reason"].is_string(),
            "{method} {path}: {j}"
        );
    }
    // Deep nesting is refused (over 64 levels, as on the AMQP side), not a
    // stack overflow. RabbitMQ accepts it.
    let deep = format!(
        "{{\"arguments\":{{\"a\":{}1{}}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    if !b.is_external() {
        assert_eq!(
            http(a, "PUT", "/api/queues/%2F/deep", GUEST, Some(&deep)).status,
            400
        );
    }
    if !b.is_external() {
        // A definitions file with a name AMQP cannot carry is refused whole.
        let defs = json!({"queues": [{"name": "q".repeat(256), "vhost": "/", "durable": true}]});
        let r = http(
            a,
            "POST",
            "/api/definitions",
            GUEST,
            Some(&defs.to_string()),
        );
        assert_eq!(r.status, 400, "{}", r.body);
        // Runtime parameters are not there yet: said so, not a 404.
        let body = r#"{"value":{}}"#;
        let r = http(a, "PUT", "/api/parameters/shovel/%2F/p", GUEST, Some(body));
        assert_eq!(
            (r.status, r.json()["error"].clone()),
            (501, json!("not_implemented"))
        );
    }
    // Still serving.
    assert_eq!(http(a, "GET", "/api/overview", GUEST, None).status, 200);
}

#[test]
fn lists_page_sort_filter_and_columns() {
    let mut b = Broker::start();
    let a = b.mgmt_addr();
    let base = name("page");
    let other = name("other");
    assert_eq!(
        http(
            a,
            "PUT",
            &format!("/api/queues/%2F/{other}"),
            GUEST,
            Some("{}")
        )
        .status,
        201
    );
    for i in 0..5 {
        let r = http(
            a,
            "PUT",
            &format!("/api/queues/%2F/{base}-{i}"),
            GUEST,
            Some("{}"),
        );
        assert_eq!(r.status, 201);
    }
    let filter = format!("name=^{base}-&use_regex=true");
    let r = http(
        a,
        "GET",
        &format!("/api/queues/%2F?{filter}&page=2&page_size=2&sort=name&sort_reverse=true"),
        GUEST,
        None,
    );
    let j = r.json();
    assert_eq!(j["filtered_count"], 5);
    // total_count counts what the name filter left out (the default queue
    // set of a fresh broker is empty; "other" below is one more).
    assert!(j["total_count"].as_u64().unwrap() > 5, "{j}");
    assert_eq!(j["page_count"], 3);
    assert_eq!(j["item_count"], 2);
    assert_eq!(j["items"][0]["name"], format!("{base}-2"));
    let r = http(
        a,
        "GET",
        &format!("/api/queues/%2F?{filter}&page=1&columns=name,durable&sort=name"),
        GUEST,
        None,
    );
    let items = r.json()["items"].clone();
    assert_eq!(items.as_array().unwrap().len(), 5);
    assert_eq!(
        items[0],
        json!({"name": format!("{base}-0"), "durable": false})
    );
    // Without `page`, `name` filters nothing (as RabbitMQ 3.10).
    let all = http(a, "GET", &format!("/api/queues/%2F?{filter}"), GUEST, None).json();
    assert!(all.as_array().unwrap().len() >= 5);
    if !b.is_external() {
        // Flower asks for vhost "/" as an empty segment; RabbitMQ 3.10
        // answers 404, Hopper reads it as "/".
        let r = http(a, "GET", "/api/queues//", GUEST, None);
        assert_eq!(r.status, 200);
        assert!(r
            .json()
            .as_array()
            .unwrap()
            .iter()
            .any(|q| q["name"] == format!("{base}-0")));
    }
    http(
        a,
        "DELETE",
        &format!("/api/queues/%2F/{other}"),
        GUEST,
        None,
    );
    for i in 0..5 {
        http(
            a,
            "DELETE",
            &format!("/api/queues/%2F/{base}-{i}"),
            GUEST,
            None,
        );
    }
}

#[test]
fn publish_through_the_api_reports_routed_and_the_message_arrives() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let q = name("pub");
    c.declare_queue("/", &QueueParams::new_durable_classic_queue(&q, None))
        .unwrap();
    let props = serde_json::Map::new();
    let routed = c
        .publish_message("/", "", &q, "hello api", props.clone())
        .expect("publish");
    assert!(routed.routed);
    let unrouted = c
        .publish_message("/", "amq.direct", "no-such-key", "lost", props)
        .expect("publish");
    assert!(!unrouted.routed);
    // Persistent, with properties and headers, base64 payload: as sent.
    let a = b.mgmt_addr();
    let body = json!({
        "routing_key": q,
        "payload": "AAEC/w==",
        "payload_encoding": "base64",
        "properties": {"delivery_mode": 2, "content_type": "application/x", "headers": {"h": "v", "n": 7}},
    });
    let r = http(
        a,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        GUEST,
        Some(&body.to_string()),
    );
    assert_eq!((r.status, r.json()), (200, json!({"routed": true})));
    let got = c
        .get_messages("/", &q, 2, "ack_requeue_false")
        .expect("get");
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].payload, "hello api");
    assert_eq!(got[1].payload_encoding, "base64");
    assert_eq!(got[1].payload, "AAEC/w==");
    // Over AMQP too: a message published through the API is an ordinary one.
    c.publish_message("/", "", &q, "for lapin", serde_json::Map::new())
        .unwrap();
    let uri = b.uri();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conn = common::connect_uri(&uri).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let bodies = common::drain(&ch, &q).await;
        assert_eq!(bodies, vec![b"for lapin".to_vec()]);
        conn.close(200, "bye".into()).await.unwrap();
    });
    let bad = http(
        a,
        "POST",
        "/api/exchanges/%2F/no-such-x/publish",
        GUEST,
        Some(r#"{"routing_key":"k","payload":"x","payload_encoding":"string","properties":{}}"#),
    );
    assert_eq!(
        (bad.status, bad.json()["reason"].clone()),
        (
            400,
            json!("404 NOT_FOUND - no exchange 'no-such-x' in vhost '/'")
        )
    );
    let bad = http(
        a,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        GUEST,
        Some(r#"{"routing_key":"k","payload":"!!","payload_encoding":"base64","properties":{}}"#),
    );
    assert_eq!(bad.status, 400);
    c.delete_queue("/", &q, false).unwrap();
}
