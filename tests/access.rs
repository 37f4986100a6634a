//! Access control over TCP: hashed passwords, vhost access (530), per-resource
//! configure / write / read permissions (403 with RabbitMQ's texts), the
//! refusal of clear-text passwords in the config, and `hopper hash-password`.
//!
//! These tests configure their own users, so they only run against a hopper
//! they start (never against `HOPPER_TEST_EXTERNAL_URI`).

mod common;

use common::*;
use hopper::auth::hashing::{HashingAlgorithm, PasswordHash};
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::protocol::{connection, AMQPClass};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ErrorKind, ExchangeKind};
use std::io::Write;
use std::process::{Command, Stdio};

const HOPPER: &str = env!("CARGO_BIN_EXE_hopper");

fn hash(password: &str) -> String {
    PasswordHash::new(password.as_bytes(), HashingAlgorithm::Sha256).encode()
}

/// The default config with a second vhost and these users appended to guest.
fn config_text(users: &str) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/broker.toml"))
        .expect("read conf/broker.toml");
    assert!(text.contains("vhosts = [\"/\"]"));
    format!(
        "{}\n{users}",
        text.replace("vhosts = [\"/\"]", "vhosts = [\"/\", \"other\"]")
    )
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp config");
    std::fs::write(file.path(), text).expect("write config");
    file
}

/// A broker with the users every test here uses:
/// - `limited`: on "/", configure `^cfg-`, write `^wr-`, read `^rd-`;
/// - `elsewhere`: full access to vhost "other" only;
/// - `flows`: configure and read everything, write only `^allowed$`;
/// - `sub`: configure "a" (unanchored), write and read "" (nothing).
fn broker() -> Option<(Broker, tempfile::NamedTempFile)> {
    if std::env::var(EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return None;
    }
    let users = format!(
        r#"
[[users]]
name = "limited"
password_hash = "{}"
permissions = [{{ vhost = "/", configure = "^cfg-", write = "^wr-", read = "^rd-" }}]

[[users]]
name = "elsewhere"
password_hash = "{}"
vhosts = ["other"]

[[users]]
name = "flows"
password_hash = "{}"
hashing_algorithm = "rabbit_password_hashing_sha512"
permissions = [{{ vhost = "/", configure = ".*", write = "^allowed$", read = ".*" }}]

[[users]]
name = "sub"
password_hash = "{}"
permissions = [{{ vhost = "/", configure = "a", write = "", read = "" }}]
"#,
        hash("limited-pw"),
        hash("elsewhere-pw"),
        PasswordHash::new(b"flows-pw", HashingAlgorithm::Sha512).encode(),
        hash("sub-pw"),
    );
    let file = write_config(&config_text(&users));
    let path = file.path().to_string_lossy().into_owned();
    Some((Broker::start_with_args(&["--config", &path]), file))
}

async fn login(broker: &Broker, user: &str) -> (Connection, Channel) {
    let conn = connect_uri(&broker.uri_with(user, &format!("{user}-pw"), "%2f"))
        .await
        .unwrap_or_else(|e| panic!("{user} login: {e:?}"));
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    (conn, ch)
}

async fn channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel")
}

/// Assert a 403 ACCESS_REFUSED with exactly RabbitMQ's text.
#[track_caller]
fn assert_refused<T: std::fmt::Debug>(res: lapin::Result<T>, text: &str) {
    match res {
        Ok(v) => panic!("expected 403 '{text}', got success: {v:?}"),
        Err(e) => match e.kind() {
            ErrorKind::ProtocolError(p) => {
                assert_eq!(p.get_id(), 403, "{e:?}");
                assert_eq!(p.get_message().as_str(), format!("ACCESS_REFUSED - {text}"));
            }
            _ => panic!("expected 403 '{text}', got {e:?}"),
        },
    }
}

fn refused(kind: &str, name: &str, user: &str) -> String {
    format!("access to {kind} '{name}' in vhost '/' refused for user '{user}'")
}

async fn declare_q(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    within(
        "queue.declare",
        ch.queue_declare(
            name.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
}

async fn declare_x(ch: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(
            name.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            args,
        ),
    )
    .await
}

async fn publish(ch: &Channel, exchange: &str, rk: &str) -> lapin::Result<lapin::Confirmation> {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            rk.into(),
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        ),
    )
    .await?;
    within("confirm", confirm).await
}

fn text_arg(k: &str, v: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        k.into(),
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
    );
    t
}

// ---- logins ----

#[tokio::test]
async fn hashed_logins_succeed_sha256_and_sha512() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    // guest's hash in conf/broker.toml, and the test users (flows is SHA-512).
    for user in ["limited", "flows", "sub"] {
        let (conn, _ch) = login(&broker, user).await;
        let _ = conn.close(200, "bye".into()).await;
    }
    let conn = connect(&broker).await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test]
async fn wrong_password_is_403_and_logged_without_the_password() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let res = connect_uri(&broker.uri_with("limited", "Wrong-Pw-1234", "%2f")).await;
    assert_code(res.map(|_| ()), 403);
    // Raw PLAIN: RabbitMQ's authentication_failure_close text.
    let mut c = raw::RawClient::connect(broker.addr()).await;
    c.start_and_tune_begin(raw::Auth::Plain("limited", "Other-Wrong-5678"))
        .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 403, "{close:?}");
    assert_eq!(
        close.text,
        "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
    );
    assert_eq!((close.class_id, close.method_id), (10, 11));
    // The right password with AMQPLAIN still works afterwards.
    let (c2, _) = raw::RawClient::handshake(
        broker.addr(),
        raw::Auth::AmqPlain("limited", "limited-pw"),
        0,
    )
    .await;
    drop(c2);
    let log = broker.log();
    assert!(
        log.contains("authentication failed for user \"limited\""),
        "{log}"
    );
    assert!(log.contains("invalid credentials"), "{log}");
    for secret in ["Wrong-Pw-1234", "Other-Wrong-5678", "limited-pw"] {
        assert!(
            !log.contains(secret),
            "password {secret} in the log:\n{log}"
        );
    }
}

#[tokio::test]
async fn unknown_user_is_403() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let res = connect_uri(&broker.uri_with("nobody", "nobody-pw", "%2f")).await;
    assert_code(res.map(|_| ()), 403);
    let log = broker.log();
    assert!(
        log.contains("authentication failed for user \"nobody\""),
        "{log}"
    );
    assert!(!log.contains("nobody-pw"), "{log}");
}

#[tokio::test]
async fn user_without_permissions_on_the_vhost_gets_530() {
    let Some((broker, _cfg)) = broker() else {
        return;
    };
    let mut c = raw::RawClient::connect(broker.addr()).await;
    c.start_and_tune_begin(raw::Auth::Plain("elsewhere", "elsewhere-pw"))
        .await;
    let tune = match c.expect_method(0).await {
        AMQPClass::Connection(connection::AMQPMethod::Tune(t)) => t,
        other => panic!("expected connection.tune, got {other:?}"),
    };
    c.send_method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: 0,
        })),
    )
    .await;
    c.send_method(
        0,
        &AMQPClass::Connection(connection::AMQPMethod::Open(connection::Open {
            virtual_host: "/".into(),
        })),
    )
    .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 530, "{close:?}");
    assert_eq!(
        close.text,
        "NOT_ALLOWED - access to vhost '/' refused for user 'elsewhere'"
    );
    assert_eq!((close.class_id, close.method_id), (10, 40));
    // lapin sees the same; the vhost it may use opens.
    let res = connect_uri(&broker.uri_with("elsewhere", "elsewhere-pw", "%2f")).await;
    assert_code(res.map(|_| ()), 530);
    let conn = connect_uri(&broker.uri_with("elsewhere", "elsewhere-pw", "other"))
        .await
        .expect("elsewhere opens 'other'");
    let _ = conn.close(200, "bye".into()).await;
    // guest's permissions name only "/".
    let res = connect_uri(&broker.uri_with("guest", "guest", "other")).await;
    assert_code(res.map(|_| ()), 530);
}

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

// ---- config and the hash-password subcommand ----

#[test]
fn clear_text_password_in_config_is_refused_at_start() {
    let text = config_text("[[users]]\nname = \"old\"\npassword = \"Clear-Secret-42\"\n");
    let file = write_config(&text);
    let data = tempfile::tempdir().expect("data dir");
    let out = Command::new(HOPPER)
        .arg("--config")
        .arg(file.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(["--management-listen", "off", "--metrics-listen", "off"])
        .arg("--data-dir")
        .arg(data.path())
        .stdin(Stdio::null())
        .output()
        .expect("run hopper");
    assert!(
        !out.status.success(),
        "hopper started with a clear password"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("user 'old'"), "{stderr}");
    assert!(
        stderr.contains("clear-text `password` is not accepted"),
        "{stderr}"
    );
    assert!(stderr.contains("hopper hash-password"), "{stderr}");
    assert!(!stderr.contains("Clear-Secret-42"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).is_empty());
}

fn hash_password(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(HOPPER)
        .arg("hash-password")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hopper hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

#[test]
fn hash_password_subcommand_output_verifies() {
    // From stdin, with and without a trailing newline.
    for input in [&b"s3cret pass"[..], b"s3cret pass\n", b"s3cret pass\r\n"] {
        let out = hash_password(&[], input);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let h = PasswordHash::parse(text.trim()).expect("a RabbitMQ hash");
        assert_eq!(h.algorithm(), HashingAlgorithm::Sha256);
        assert!(h.verify(b"s3cret pass"));
        assert!(!h.verify(b"s3cret pass\n"));
    }
    // As an argument, SHA-512.
    let out = hash_password(&["--algorithm", "sha512", "other"], b"");
    assert!(out.status.success(), "{out:?}");
    let h = PasswordHash::parse(String::from_utf8_lossy(&out.stdout).trim()).expect("hash");
    assert_eq!(h.algorithm(), HashingAlgorithm::Sha512);
    assert!(h.verify(b"other"));
    // An empty password is refused.
    let out = hash_password(&[], b"");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn a_hash_from_the_subcommand_logs_in() {
    if std::env::var(EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return;
    }
    let out = hash_password(&[], b"from-the-tool\n");
    assert!(out.status.success(), "{out:?}");
    let hash = String::from_utf8(out.stdout).expect("utf-8");
    let file = write_config(&config_text(&format!(
        "[[users]]\nname = \"tool\"\npassword_hash = \"{}\"\n",
        hash.trim()
    )));
    let path = file.path().to_string_lossy().into_owned();
    let broker = Broker::start_with_args(&["--config", &path]);
    let conn = connect_uri(&broker.uri_with("tool", "from-the-tool", "%2f"))
        .await
        .expect("login with the tool's hash");
    // No permissions and no vhosts: full access everywhere.
    let ch = channel(&conn).await;
    declare_q(&ch, "anything").await.expect("declare");
    let _ = conn.close(200, "bye".into()).await;
    let res = connect_uri(&broker.uri_with("tool", "from-the-tooL", "%2f")).await;
    assert_code(res.map(|_| ()), 403);
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

/// This machine's address on its default route, if it has one (no packet is
/// sent: connecting a UDP socket only picks the route).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9")
        .or_else(|_| s.connect("10.255.255.1:9"))
        .ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

/// `loopback_users` (guest by default) may log in only over loopback; other
/// users may come from anywhere; `loopback_users = []` lifts the rule.
#[tokio::test]
async fn guest_only_from_loopback_unless_configured() {
    if std::env::var(EXTERNAL_ENV).is_ok_and(|v| !v.trim().is_empty()) {
        return;
    }
    let Some(ip) = non_loopback_ip() else {
        eprintln!("skipped: no non-loopback address on this machine");
        return;
    };
    let users = format!(
        "[[users]]\nname = \"remote\"\npassword_hash = \"{}\"\n",
        hash("remote-pw")
    );
    let text = config_text(&users);
    for (lifted, config) in [
        (false, text.clone()),
        (
            true,
            text.replace("loopback_users = [\"guest\"]", "loopback_users = []"),
        ),
    ] {
        let file = write_config(&config);
        let path = file.path().to_string_lossy().into_owned();
        let broker = Broker::start_with_args(&["--config", &path, "--listen", "0.0.0.0:0"]);
        let port = broker.addr().port();
        let uri = |user: &str, pass: &str| format!("amqp://{user}:{pass}@{ip}:{port}/%2f");
        // Over loopback guest is always fine.
        let conn = connect_uri(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .await
            .expect("guest over loopback");
        let _ = conn.close(200, "bye".into()).await;
        let conn = connect_uri(&uri("remote", "remote-pw"))
            .await
            .expect("another user from a non-loopback address");
        let _ = conn.close(200, "bye".into()).await;
        let res = connect_uri(&uri("guest", "guest")).await;
        if lifted {
            let conn = res.expect("loopback_users = [] lets guest in from anywhere");
            let _ = conn.close(200, "bye".into()).await;
        } else {
            assert_code(res.map(|_| ()), 403);
            let log = broker.log();
            assert!(log.contains("user may only connect via localhost"), "{log}");
        }
    }
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
