//! Logins over TCP: hashed passwords, vhost access (530), guest only from
//! loopback, the refusal of clear-text passwords in the config, and
//! `hopper hash-password`. Permissions are in tests/access.rs.
//!
//! These tests configure their own users, so they only run against a hopper
//! they start (never against `HOPPER_TEST_EXTERNAL_URI`).

mod common;

use common::access::*;
use common::*;
use hopper::auth::hashing::{HashingAlgorithm, PasswordHash};
use lapin::protocol::{connection, AMQPClass};
use std::io::Write;
use std::process::{Command, Stdio};

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
