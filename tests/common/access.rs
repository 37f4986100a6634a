//! Shared by the access-control tests (tests/access.rs, tests/access_login.rs):
//! configs with users, logins, and the refusal checks.

use super::*;
use hopper::auth::hashing::{HashingAlgorithm, PasswordHash};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ErrorKind, ExchangeKind};

pub const HOPPER: &str = env!("CARGO_BIN_EXE_hopper");

pub fn hash(password: &str) -> String {
    PasswordHash::new(password.as_bytes(), HashingAlgorithm::Sha256).encode()
}

/// The default config with a second vhost and these users appended to guest.
pub fn config_text(users: &str) -> String {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/broker.toml"))
        .expect("read conf/broker.toml");
    assert!(text.contains("vhosts = [\"/\"]"));
    format!(
        "{}\n{users}",
        text.replace("vhosts = [\"/\"]", "vhosts = [\"/\", \"other\"]")
    )
}

pub fn write_config(text: &str) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().expect("temp config");
    std::fs::write(file.path(), text).expect("write config");
    file
}

/// A broker with the users every test here uses:
/// - `limited`: on "/", configure `^cfg-`, write `^wr-`, read `^rd-`;
/// - `elsewhere`: full access to vhost "other" only;
/// - `flows`: configure and read everything, write only `^allowed$`;
/// - `sub`: configure "a" (unanchored), write and read "" (nothing).
pub fn broker() -> Option<(Broker, tempfile::NamedTempFile)> {
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

pub async fn login(broker: &Broker, user: &str) -> (Connection, Channel) {
    let conn = connect_uri(&broker.uri_with(user, &format!("{user}-pw"), "%2f"))
        .await
        .unwrap_or_else(|e| panic!("{user} login: {e:?}"));
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("channel");
    (conn, ch)
}

pub async fn channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("channel")
}

/// Assert a 403 ACCESS_REFUSED with exactly RabbitMQ's text.
#[track_caller]
pub fn assert_refused<T: std::fmt::Debug>(res: lapin::Result<T>, text: &str) {
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

pub fn refused(kind: &str, name: &str, user: &str) -> String {
    format!("access to {kind} '{name}' in vhost '/' refused for user '{user}'")
}

pub async fn declare_q(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
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

pub async fn declare_x(ch: &Channel, name: &str, args: FieldTable) -> lapin::Result<()> {
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

pub async fn publish(ch: &Channel, exchange: &str, rk: &str) -> lapin::Result<lapin::Confirmation> {
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

pub fn text_arg(k: &str, v: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        k.into(),
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec())),
    );
    t
}
