//! The management HTTP API's access side: authentication and tags, users,
//! vhosts and permissions (durable across restarts), definitions export,
//! import and `load_definitions`, connections and consumers. Same oracle and
//! external mode as tests/management.rs.

mod common;

use common::mgmt::{client, http, name, GUEST};
use common::Broker;
use rabbitmq_http_client::requests::{ExchangeParams, QueueParams};
use serde_json::{json, Value};
use std::time::Duration;

#[test]
fn auth_failures_answer_401_with_rabbitmq_texts() {
    let mut b = Broker::start();
    let a = b.mgmt_addr();
    let r = http(a, "GET", "/api/overview", None, None);
    assert_eq!(r.status, 401);
    assert!(r
        .headers
        .contains("www-authenticate: basic realm=\"rabbitmq management\""));
    let r = http(a, "GET", "/api/overview", Some(("guest", "wrong")), None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "not_authorized");
    // A user without tags may use AMQP but not the API.
    let c = client(&mut b);
    let u = name("notags");
    let status = http(
        a,
        "PUT",
        &format!("/api/users/{u}"),
        GUEST,
        Some(r#"{"password":"pw","tags":""}"#),
    )
    .status;
    assert_eq!(status, 201);
    let r = http(a, "GET", "/api/overview", Some((&u, "pw")), None);
    assert_eq!(
        (r.status, r.json()),
        (
            401,
            json!({"error": "not_authorised", "reason": "Not management user"})
        )
    );
    // With `management` it may, but not list users.
    assert_eq!(
        http(
            a,
            "PUT",
            &format!("/api/users/{u}"),
            GUEST,
            Some(r#"{"password":"pw","tags":"management"}"#)
        )
        .status,
        204
    );
    assert_eq!(
        http(a, "GET", "/api/overview", Some((&u, "pw")), None).status,
        200
    );
    assert_eq!(
        http(a, "GET", "/api/users", Some((&u, "pw")), None).status,
        401
    );
    // Not in a vhost it has no permissions in (RabbitMQ 3.10's answer).
    let r = http(a, "GET", "/api/queues/%2F", Some((&u, "pw")), None);
    assert_eq!(
        (r.status, r.json()),
        (
            401,
            json!({"error": "not_authorised", "reason": "User not authorised to access virtual host"})
        )
    );
    let r = http(
        a,
        "GET",
        "/api/queues/no-such-vhost",
        Some((&u, "pw")),
        None,
    );
    assert_eq!(r.status, 404);
    c.delete_user(&u, false).expect("delete user");
}

#[test]
fn users_vhosts_permissions_survive_a_restart() {
    let mut b = Broker::start();
    if b.is_external() {
        return; // restarts need our own broker
    }
    let a = b.mgmt_addr();
    assert_eq!(http(a, "PUT", "/api/vhosts/app", GUEST, None).status, 201);
    assert_eq!(http(a, "PUT", "/api/vhosts/app", GUEST, None).status, 204);
    let r = http(
        a,
        "PUT",
        "/api/users/alice",
        GUEST,
        Some(r#"{"password":"s3cret","tags":"monitoring"}"#),
    );
    assert_eq!(r.status, 201);
    let r = http(
        a,
        "PUT",
        "/api/permissions/app/alice",
        GUEST,
        Some(r#"{"configure":"^a-","write":".*","read":".*"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    // The new user logs in over AMQP into the new vhost at once.
    let uri = b.uri_with("alice", "s3cret", "app");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = common::connect_uri(&uri).await.expect("alice connects");
        conn.close(200, "bye".into()).await.unwrap();
    });
    // A durable queue in the new vhost, and the per-vhost definitions form.
    let r = http(
        a,
        "PUT",
        "/api/queues/app/a-q",
        Some(("alice", "s3cret")),
        Some(r#"{"durable":true}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let defs = http(a, "GET", "/api/definitions/app", GUEST, None).json();
    assert_eq!(
        defs["queues"],
        json!([{"name": "a-q", "durable": true, "auto_delete": false, "arguments": {}}])
    );
    assert!(
        defs.get("users").is_none(),
        "per-vhost definitions have no users"
    );
    b.terminate();
    b.start_again();
    let a = b.mgmt_addr();
    let c = client(&mut b);
    assert!(c.list_vhosts().unwrap().iter().any(|v| v.name == "app"));
    let u = c.get_user("alice").expect("alice survived");
    assert_eq!(u.tags.0, vec!["monitoring".to_string()]);
    let p = c
        .get_permissions("app", "alice")
        .expect("permissions survived");
    assert_eq!(p.configure, "^a-");
    assert!(
        c.get_queue_info("app", "a-q")
            .expect("durable queue survived")
            .durable
    );
    let uri = b.uri_with("alice", "s3cret", "app");
    rt.block_on(async {
        let conn = common::connect_uri(&uri).await.expect("alice connects");
        conn.close(200, "bye".into()).await.unwrap();
    });
    // Monitoring sees everything but changes nothing.
    assert_eq!(
        http(a, "GET", "/api/nodes", Some(("alice", "s3cret")), None).status,
        200
    );
    assert_eq!(
        http(
            a,
            "PUT",
            "/api/vhosts/other",
            Some(("alice", "s3cret")),
            None
        )
        .status,
        401
    );
    // Deleting the vhost removes its permissions; deleting the user, the login.
    assert_eq!(
        http(a, "DELETE", "/api/vhosts/app", GUEST, None).status,
        204
    );
    assert_eq!(
        http(a, "DELETE", "/api/vhosts/app", GUEST, None).status,
        404
    );
    assert_eq!(
        http(a, "DELETE", "/api/users/alice", GUEST, None).status,
        204
    );
    b.terminate();
    b.start_again();
    let a = b.mgmt_addr();
    assert_eq!(http(a, "GET", "/api/users/alice", GUEST, None).status, 404);
    assert_eq!(http(a, "GET", "/api/vhosts/app", GUEST, None).status, 404);
    assert_eq!(
        http(a, "GET", "/api/queues/app/a-q", GUEST, None).status,
        404
    );
}

#[test]
fn definitions_round_trip() {
    let mut b = Broker::start();
    if b.is_external() {
        return;
    }
    let c = client(&mut b);
    c.declare_exchange("/", &ExchangeParams::durable_direct("d-x", None))
        .unwrap();
    c.declare_queue("/", &QueueParams::new_durable_classic_queue("d-q", None))
        .unwrap();
    c.bind_queue("/", "d-q", "d-x", Some("k"), None).unwrap();
    let defs = c
        .export_cluster_wide_definitions_as_data()
        .expect("export parses");
    assert!(defs.queues.iter().any(|q| q.name == "d-q"));
    let text = c.export_cluster_wide_definitions().unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    for k in [
        "users",
        "vhosts",
        "permissions",
        "parameters",
        "policies",
        "queues",
        "exchanges",
        "bindings",
    ] {
        assert!(doc[k].is_array(), "{k} missing");
    }
    assert!(!doc["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .any(|x| x["name"] == "amq.direct"));
    // Into a fresh broker.
    let mut fresh = Broker::start();
    let c2 = client(&mut fresh);
    c2.import_definitions(doc).expect("import");
    assert!(c2.get_queue_info("/", "d-q").unwrap().durable);
    let bs = c2.list_queue_bindings("/", "d-q").unwrap();
    assert!(bs.iter().any(|b| b.source == "d-x" && b.routing_key == "k"));
    // Importing again merges: nothing changes, no error.
    let again: Value =
        serde_json::from_str(&c2.export_cluster_wide_definitions().unwrap()).unwrap();
    c2.import_definitions(again).expect("re-import");
}

#[test]
fn connections_are_listed_and_closed_with_320() {
    let mut b = Broker::start();
    let c = client(&mut b);
    let uri = b.uri();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = rt.block_on(async { common::connect_uri(&uri).await.unwrap() });
    let _ch = rt.block_on(async {
        let ch = conn.create_channel().await.unwrap();
        common::confirm_select(&ch).await;
        ch.basic_qos(7, Default::default()).await.unwrap();
        ch
    });
    // RabbitMQ registers connections in its stats with a delay; Hopper at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let ours = loop {
        let list = c.list_connections().expect("connections");
        if let Some(x) = list
            .into_iter()
            .find(|x| x.client_properties.product.contains("lapin"))
        {
            break x;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lapin connection is not listed"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ours.username, "guest");
    assert_eq!(ours.protocol, "AMQP 0-9-1");
    c.get_connection_info(&ours.name).expect("one connection");
    // A consumer on it is listed with its channel (the client wants 3.13's
    // consumer_timeout, which 3.10 lacks).
    if !b.is_external() {
        let q = name("consumed");
        let _consuming = rt.block_on(async {
            let ch = conn.create_channel().await.unwrap();
            let opts = lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            };
            ch.queue_declare(q.as_str().into(), opts, Default::default())
                .await
                .unwrap();
            let consumer = common::consume(&ch, &q, false).await;
            (ch, consumer)
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let consumer = loop {
            let list = c.list_consumers().expect("consumers");
            if let Some(x) = list.into_iter().find(|x| x.queue.name == q) {
                break x;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the consumer is not listed"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(consumer.manual_ack);
        let details = consumer.channel_details.expect("channel details");
        assert_eq!(details.connection_name, ours.name);
        // Its channels, with their modes and counts.
        let chans: Vec<_> = c
            .list_channels()
            .expect("channels")
            .into_iter()
            .filter(|x| x.connection_details.name == ours.name)
            .collect();
        assert_eq!(chans.len(), 2, "{chans:?}");
        assert!(chans
            .iter()
            .any(|x| x.has_publisher_confirms_enabled && x.prefetch_count == 7));
        assert!(chans
            .iter()
            .any(|x| x.consumer_count == 1 && !x.has_publisher_confirms_enabled));
        c.get_channel_info(&chans[0].name).expect("one channel");
        let on_conn = c
            .list_channels_on(&ours.name)
            .expect("channels of the connection");
        assert_eq!(on_conn.len(), 2);
        assert_eq!(c.overview().unwrap().object_totals.channels, 2);
    }
    let mut events = conn.events_listener();
    c.close_connection(&ours.name, Some("test says bye"), false)
        .expect("close");
    let err = rt.block_on(common::within("the broker closes the connection", async {
        use futures::StreamExt;
        loop {
            match events.next().await {
                Some(lapin::Event::Error(e)) => break e,
                Some(_) => continue,
                None => panic!("connection events ended without an error"),
            }
        }
    }));
    assert_eq!(common::reply_code(&err), Some(320), "{err:?}");
    assert!(format!("{err}").contains("test says bye"), "{err}");
    // Gone from the list once it has closed; closing it again is a 404.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while c
        .list_connections()
        .unwrap()
        .iter()
        .any(|x| x.name == ours.name)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed connection is still listed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = b.mgmt_addr();
    let path = format!(
        "/api/connections/{}",
        ours.name.replace(' ', "%20").replace('>', "%3E")
    );
    assert_eq!(http(a, "DELETE", &path, GUEST, None).status, 404);
}

#[test]
fn load_definitions_at_boot() {
    if std::env::var(common::EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let defs = dir.path().join("definitions.json");
    // The shape RabbitMQ 3.10 exports (`rabbitmqctl export_definitions`).
    std::fs::write(
        &defs,
        r#"{"rabbit_version":"3.10.8","rabbitmq_version":"3.10.8","product_name":"RabbitMQ",
            "product_version":"3.10.8",
            "users":[{"name":"app","password_hash":"8IOEQFuDLyeFN56e3XpEo+uN0Q/OYRjYm9wZXPx4GjQY1INn",
                      "hashing_algorithm":"rabbit_password_hashing_sha256","tags":["management"],"limits":{}}],
            "vhosts":[{"name":"/"},{"name":"apps"}],
            "permissions":[{"user":"app","vhost":"apps","configure":".*","write":".*","read":".*"}],
            "topic_permissions":[],"parameters":[],"global_parameters":[],"policies":[],
            "queues":[{"name":"jobs","vhost":"apps","durable":true,"auto_delete":false,
                       "arguments":{"x-queue-type":"classic","x-max-length":10}}],
            "exchanges":[{"name":"work","vhost":"apps","type":"topic","durable":true,
                          "auto_delete":false,"internal":false,"arguments":{}}],
            "bindings":[{"source":"work","vhost":"apps","destination":"jobs",
                         "destination_type":"queue","routing_key":"job.*","arguments":{}}]}"#,
    )
    .unwrap();
    let config = dir.path().join("broker.toml");
    let text = format!(
        "load_definitions = {:?}\n{}",
        defs.to_str().unwrap(),
        include_str!("../conf/broker.toml")
    );
    std::fs::write(&config, text).unwrap();
    let mut b = Broker::start_with_args(&["--config", config.to_str().unwrap()]);
    let a = b.mgmt_addr();
    let q = http(a, "GET", "/api/queues/apps/jobs", GUEST, None);
    assert_eq!(q.status, 200, "{}", q.body);
    assert_eq!(q.json()["arguments"], json!({"x-max-length": 10}));
    let bs = http(a, "GET", "/api/bindings/apps/e/work/q/jobs", GUEST, None).json();
    assert_eq!(bs[0]["routing_key"], "job.*");
    // The user from the file logs in (password "secret") with its tag.
    let me = http(a, "GET", "/api/whoami", Some(("app", "secret")), None);
    assert_eq!(
        (me.status, me.json()["tags"].clone()),
        (200, json!(["management"]))
    );
    let uri = b.uri_with("app", "secret", "apps");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let conn = common::connect_uri(&uri)
            .await
            .expect("app logs in to apps");
        conn.close(200, "bye".into()).await.unwrap();
    });
}
