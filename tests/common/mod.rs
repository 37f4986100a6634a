//! Shared helpers for hopper's integration tests.
//!
//! * [`Broker`] starts the `hopper` binary on a free port with a fresh data
//!   directory (or, when `HOPPER_TEST_EXTERNAL_URI` is set, points at an
//!   already running broker such as a real RabbitMQ).
//! * [`raw`] is a tiny hand-rolled AMQP 0-9-1 client that works on bytes, for
//!   the tests that need to see or send exactly what is on the wire.
//! * The rest are small lapin conveniences.

#![allow(dead_code)]

pub mod metrics;
pub mod mgmt;
pub mod policy;

use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// The environment variable that points the suite at an external broker.
pub const EXTERNAL_ENV: &str = "HOPPER_TEST_EXTERNAL_URI";

/// A broker under test: either a `hopper` child process or an external broker.
pub struct Broker {
    child: Option<Child>,
    addr: SocketAddr,
    vhost_path: String,
    external: bool,
    data_dir: Option<tempfile::TempDir>,
    log_path: Option<PathBuf>,
    extra_args: Vec<String>,
    /// stdout lines after "hopper listening on", for `tls_addr` and `mgmt_addr`.
    stdout_rest: Option<mpsc::Receiver<String>>,
    /// Lines already read from `stdout_rest`.
    stdout_seen: Vec<String>,
    tls_addr: Option<SocketAddr>,
}

impl Broker {
    /// Start a broker (or attach to the external one).
    pub fn start() -> Broker {
        Self::start_with_args(&[])
    }

    /// Start a broker with extra command line arguments (ignored in external mode).
    pub fn start_with_args(extra: &[&str]) -> Broker {
        if let Ok(uri) = std::env::var(EXTERNAL_ENV) {
            if !uri.trim().is_empty() {
                let (addr, vhost_path) = parse_uri(uri.trim());
                return Broker {
                    child: None,
                    addr,
                    vhost_path,
                    external: true,
                    data_dir: None,
                    log_path: None,
                    extra_args: Vec::new(),
                    stdout_rest: None,
                    stdout_seen: Vec::new(),
                    tls_addr: None,
                };
            }
        }
        let data_dir = tempfile::Builder::new()
            .prefix("hopper-test-")
            .tempdir()
            .expect("create temp data dir");
        let mut broker = Broker {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            vhost_path: "%2f".to_string(),
            external: false,
            log_path: Some(data_dir.path().with_extension("log")),
            data_dir: Some(data_dir),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            stdout_rest: None,
            stdout_seen: Vec::new(),
            tls_addr: None,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let data_dir = self.data_dir.as_ref().unwrap().path().to_path_buf();
        let log_path = self.log_path.clone().unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open broker log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_hopper"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            // Never the default 15672 (RabbitMQ's, and shared by parallel tests).
            .arg("--management-listen")
            .arg("127.0.0.1:0")
            // Never the default 15692 (RabbitMQ's Prometheus port) either.
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn hopper binary");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        // Keep draining stdout after the first line so the
                        // child can never block on a full pipe.
                        let _ = tx.send(line.trim_end().to_string());
                    }
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("hopper listening on ") {
                        break rest
                            .trim()
                            .parse::<SocketAddr>()
                            .unwrap_or_else(|e| panic!("bad listen line {line:?}: {e}"));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!(
                        "hopper did not print 'hopper listening on ADDR' within 30s; stderr:\n{}",
                        tail(&log, 4000)
                    );
                }
            }
        };
        self.addr = addr;
        self.child = Some(child);
        self.stdout_rest = Some(rx);
        self.stdout_seen.clear();
        self.tls_addr = None;
    }

    /// The rest of the first stdout line (after the AMQP listen line) that
    /// starts with `prefix`, waiting up to 30 s for it.
    fn stdout_value(&mut self, prefix: &str) -> Option<String> {
        if let Some(l) = self.stdout_seen.iter().find(|l| l.starts_with(prefix)) {
            return Some(l[prefix.len()..].trim().to_string());
        }
        let rx = self.stdout_rest.as_ref()?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).ok()?;
            self.stdout_seen.push(line.clone());
            if let Some(rest) = line.strip_prefix(prefix) {
                return Some(rest.trim().to_string());
            }
        }
    }

    /// The management API's address, from the "hopper management listening
    /// on ADDR" line; for an external broker, its host with port 15672.
    pub fn mgmt_addr(&mut self) -> SocketAddr {
        if self.external {
            return SocketAddr::new(self.addr.ip(), 15672);
        }
        let line = self.stdout_value("hopper management listening on ");
        match line.and_then(|l| l.parse().ok()) {
            Some(a) => a,
            None => panic!(
                "hopper printed no 'hopper management listening on ADDR' line; stderr:\n{}",
                tail(&self.log(), 4000)
            ),
        }
    }

    /// The Prometheus listener's address, from the "hopper metrics listening
    /// on ADDR" line; for an external broker, its host with port 15692.
    pub fn metrics_addr(&mut self) -> SocketAddr {
        if self.external {
            return SocketAddr::new(self.addr.ip(), 15692);
        }
        let line = self.stdout_value("hopper metrics listening on ");
        match line.and_then(|l| l.parse().ok()) {
            Some(a) => a,
            None => panic!(
                "hopper printed no 'hopper metrics listening on ADDR' line; stderr:\n{}",
                tail(&self.log(), 4000)
            ),
        }
    }

    /// `http://HOST:PORT` of the management API.
    pub fn mgmt_url(&mut self) -> String {
        format!("http://{}", self.mgmt_addr())
    }

    /// The amqps listener's address, from the "hopper amqps listening on ADDR"
    /// line (the broker must have been started with a `[tls]` config).
    pub fn tls_addr(&mut self) -> SocketAddr {
        assert!(
            !self.external,
            "the amqps address of an external broker is unknown"
        );
        if let Some(a) = self.tls_addr {
            return a;
        }
        let line = self.stdout_value("hopper amqps listening on ");
        match line.and_then(|l| l.parse().ok()) {
            Some(a) => {
                self.tls_addr = Some(a);
                a
            }
            None => panic!(
                "hopper printed no 'hopper amqps listening on ADDR' line; stderr:\n{}",
                tail(&self.log(), 4000)
            ),
        }
    }

    /// True when the suite runs against an external broker.
    pub fn is_external(&self) -> bool {
        self.external
    }

    /// The TCP address of the AMQP listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `amqp://guest:guest@HOST:PORT/%2f`
    pub fn uri(&self) -> String {
        self.uri_with("guest", "guest", &self.vhost_path.clone())
    }

    /// A URI with the given credentials and (already percent-encoded) vhost path.
    pub fn uri_with(&self, user: &str, pass: &str, vhost_path: &str) -> String {
        format!("amqp://{user}:{pass}@{}/{vhost_path}", self.addr)
    }

    /// The process id of a spawned broker (None in external mode).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The data directory of a spawned broker.
    pub fn data_dir(&self) -> Option<&Path> {
        self.data_dir.as_ref().map(|d| d.path())
    }

    /// The broker's stderr so far (empty in external mode).
    pub fn log(&self) -> String {
        self.log_path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// SIGKILL the broker process and reap it.
    pub fn kill9(&mut self) {
        assert!(!self.external, "kill9 is impossible on an external broker");
        if let Some(mut child) = self.child.take() {
            // std's Child::kill sends SIGKILL on unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM the broker and wait (up to 15 s) for it to exit; returns
    /// whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        assert!(
            !self.external,
            "terminate is impossible on an external broker"
        );
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start the broker again on the same data directory after `terminate`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "broker still running");
        self.spawn();
    }

    /// SIGKILL the broker (if running) and start it again on the same data
    /// directory. The new process listens on a new free port: call `uri()` again.
    pub fn restart(&mut self) {
        assert!(
            !self.external,
            "restart is impossible on an external broker"
        );
        self.kill9();
        self.spawn();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(p) = self.log_path.take() {
            if std::thread::panicking() {
                if let Ok(log) = std::fs::read_to_string(&p) {
                    eprintln!("---- hopper stderr (tail) ----\n{}", tail(&log, 6000));
                }
            }
            let _ = std::fs::remove_file(p);
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        s
    } else {
        let mut start = s.len() - n;
        while !s.is_char_boundary(start) {
            start += 1;
        }
        &s[start..]
    }
}

/// Parse `amqp://user:pass@host:port/vhost` into a socket address and the raw
/// (still percent-encoded) vhost path.
fn parse_uri(uri: &str) -> (SocketAddr, String) {
    let rest = uri
        .strip_prefix("amqp://")
        .unwrap_or_else(|| panic!("{EXTERNAL_ENV} must start with amqp://"));
    let rest = match rest.rfind('@') {
        Some(i) => &rest[i + 1..],
        None => rest,
    };
    let (hostport, vhost) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i + 1..].to_string()),
        None => (rest, "%2f".to_string()),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)
        .expect("resolve external broker address")
        .next()
        .expect("external broker address");
    (addr, vhost)
}

/// Skip (return early from) a test that must kill or restart the broker.
#[macro_export]
macro_rules! skip_if_external {
    ($broker:expr) => {
        if $broker.is_external() {
            eprintln!(
                "skipped: needs to kill/restart the broker, which an external broker forbids"
            );
            return;
        }
    };
}

/// A name unique across tests and runs, so tests can share an external broker.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "hopper-test.{prefix}.{:x}.{:x}.{n}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// Await `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    within_for(WAIT, what, fut).await
}

/// Await `fut`, failing the test if it takes longer than `dur`.
pub async fn within_for<F: Future>(dur: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(dur, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {dur:?} waiting for: {what}"),
    }
}

/// Connect with lapin to the broker's default vhost as guest.
pub async fn connect(broker: &Broker) -> Connection {
    connect_uri(&broker.uri()).await.expect("connect to broker")
}

/// Connect with lapin to an arbitrary URI.
pub async fn connect_uri(uri: &str) -> lapin::Result<Connection> {
    within(
        "lapin connect",
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
}

/// A connection plus one open channel.
pub async fn connect_channel(broker: &Broker) -> (Connection, Channel) {
    let conn = connect(broker).await;
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("open channel");
    (conn, ch)
}

/// The AMQP reply code carried by a lapin error, if it is a protocol error.
pub fn reply_code(err: &lapin::Error) -> Option<u16> {
    match err.kind() {
        ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}

/// Assert that `res` failed with the AMQP reply code `code`.
#[track_caller]
pub fn assert_code<T: std::fmt::Debug>(res: lapin::Result<T>, code: u16) {
    match res {
        Ok(v) => panic!("expected AMQP error {code}, got success: {v:?}"),
        Err(e) => assert_eq!(
            reply_code(&e),
            Some(code),
            "expected AMQP error {code}, got {e:?}"
        ),
    }
}

/// Declare a fresh, non-durable, auto-delete-free queue with a unique name.
pub async fn declare_queue(ch: &Channel, prefix: &str) -> String {
    let name = unique(prefix);
    within(
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("queue.declare");
    name
}

/// Declare a fresh durable queue with `arguments` and a unique name.
pub async fn declare_durable_queue(ch: &Channel, prefix: &str, arguments: FieldTable) -> String {
    let name = unique(prefix);
    within(
        "queue.declare",
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("declare durable {name}: {e:?}"));
    name
}

/// Delete a queue, ignoring errors (cleanup).
pub async fn delete_queue(conn: &Connection, name: &str) {
    if let Ok(ch) = conn.create_channel().await {
        let _ = tokio::time::timeout(WAIT, ch.queue_delete(name.into(), Default::default())).await;
        let _ = tokio::time::timeout(WAIT, ch.close(200, "bye".into())).await;
    }
}

/// Delete an exchange, ignoring errors (cleanup).
pub async fn delete_exchange(conn: &Connection, name: &str) {
    if let Ok(ch) = conn.create_channel().await {
        let _ =
            tokio::time::timeout(WAIT, ch.exchange_delete(name.into(), Default::default())).await;
        let _ = tokio::time::timeout(WAIT, ch.close(200, "bye".into())).await;
    }
}

/// Put the channel in confirm mode.
pub async fn confirm_select(ch: &Channel) {
    within(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await
    .expect("confirm.select");
}

/// Publish and wait for the broker's confirm (channel must be in confirm mode).
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    props: BasicProperties,
) -> Confirmation {
    let confirm = within(
        "basic.publish",
        ch.basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        ),
    )
    .await
    .expect("basic.publish");
    within("publisher confirm", confirm)
        .await
        .expect("publisher confirm")
}

/// Publish `bodies` to the default exchange for `queue` with confirms on a
/// throw-away channel and assert every one was acked.
pub async fn fill_queue(conn: &Connection, queue: &str, bodies: &[&[u8]]) {
    let ch = within("channel.open", conn.create_channel())
        .await
        .expect("open channel");
    confirm_select(&ch).await;
    for body in bodies {
        let c = publish_confirmed(&ch, "", queue, body, BasicProperties::default()).await;
        assert!(c.is_ack(), "publish to {queue} not acked: {c:?}");
    }
    let _ = within("channel.close", ch.close(200, "bye".into())).await;
}

/// basic.get (with ack) one message, failing on timeout.
pub async fn get(
    ch: &Channel,
    queue: &str,
    no_ack: bool,
) -> Option<lapin::message::BasicGetMessage> {
    within(
        "basic.get",
        ch.basic_get(queue.into(), BasicGetOptions { no_ack }),
    )
    .await
    .expect("basic.get")
}

/// Drain a queue with no-ack basic.get and return the bodies in order.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(m.delivery.data.clone());
        assert!(out.len() < 10_000, "queue {queue} never runs dry");
    }
    out
}

/// The ready-message count of a queue, by passive declare.
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    within(
        "passive queue.declare",
        ch.queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("passive queue.declare")
    .message_count()
}

/// Start a consumer with default options and a server-generated tag.
pub async fn consume(ch: &Channel, queue: &str, no_ack: bool) -> lapin::Consumer {
    within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume")
}

/// The next delivery of a consumer, failing on timeout, error or cancel.
pub async fn next_delivery(consumer: &mut lapin::Consumer) -> lapin::message::Delivery {
    use futures::StreamExt;
    match within("a delivery", consumer.next()).await {
        Some(Ok(d)) => d,
        Some(Err(e)) => panic!("consumer error: {e:?}"),
        None => panic!("consumer was cancelled while waiting for a delivery"),
    }
}

/// Assert that a consumer receives nothing for `quiet`.
pub async fn assert_no_delivery(consumer: &mut lapin::Consumer, quiet: Duration) {
    use futures::StreamExt;
    if let Ok(item) = tokio::time::timeout(quiet, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!(
                "unexpected delivery tag={} body={:?}",
                d.delivery_tag,
                String::from_utf8_lossy(&d.data)
            ),
            other => panic!("unexpected consumer event: {other:?}"),
        }
    }
}

/// A new connection publishes to and consumes from a fresh queue: proves the
/// broker is still healthy after some other connection misbehaved.
pub async fn assert_broker_healthy(broker: &Broker) {
    let (conn, ch) = connect_channel(broker).await;
    let q = declare_queue(&ch, "healthy").await;
    confirm_select(&ch).await;
    let c = publish_confirmed(&ch, "", &q, b"still alive", BasicProperties::default()).await;
    assert!(c.is_ack(), "health publish not acked: {c:?}");
    let mut consumer = consume(&ch, &q, false).await;
    let d = next_delivery(&mut consumer).await;
    assert_eq!(d.data, b"still alive");
    within("ack", d.acker.ack(Default::default()))
        .await
        .expect("ack");
    within(
        "queue.delete",
        ch.queue_delete(q.as_str().into(), Default::default()),
    )
    .await
    .expect("queue.delete");
    let _ = within("connection.close", conn.close(200, "bye".into())).await;
}

/// A raw, byte-level AMQP 0-9-1 client.
pub mod durable;

pub mod raw {
    use super::WAIT;
    use lapin::protocol::{self as proto, AMQPClass};
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub const FRAME_METHOD: u8 = 1;
    pub const FRAME_HEADER: u8 = 2;
    pub const FRAME_BODY: u8 = 3;
    pub const FRAME_HEARTBEAT: u8 = 8;
    pub const FRAME_END: u8 = 0xCE;
    pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

    /// One frame as read from the wire.
    #[derive(Debug, Clone)]
    pub struct Frame {
        pub typ: u8,
        pub channel: u16,
        pub payload: Vec<u8>,
    }

    impl Frame {
        /// Decode a method frame's payload.
        pub fn method(&self) -> Option<AMQPClass> {
            if self.typ != FRAME_METHOD {
                return None;
            }
            proto::parse_class(&self.payload[..]).ok().map(|(_, m)| m)
        }

        /// (class id, method id) of a method frame.
        pub fn ids(&self) -> Option<(u16, u16)> {
            if self.typ != FRAME_METHOD || self.payload.len() < 4 {
                return None;
            }
            Some((
                u16::from_be_bytes([self.payload[0], self.payload[1]]),
                u16::from_be_bytes([self.payload[2], self.payload[3]]),
            ))
        }
    }

    /// Why reading a frame stopped.
    #[derive(Debug)]
    pub enum ReadError {
        /// The peer closed the socket (EOF or reset).
        Closed,
        /// Nothing arrived in time.
        Timeout,
        /// The bytes were not a frame.
        Garbage(String),
    }

    /// A close (connection.close or channel.close) as received.
    #[derive(Debug, Clone, PartialEq)]
    pub struct CloseInfo {
        pub code: u16,
        pub text: String,
        pub class_id: u16,
        pub method_id: u16,
    }

    /// What the server offered during the handshake.
    #[derive(Debug, Clone)]
    pub struct Handshake {
        pub start: proto::connection::Start,
        pub tune: proto::connection::Tune,
    }

    /// SASL mechanism for the raw handshake.
    #[derive(Debug, Clone, Copy)]
    pub enum Auth<'a> {
        Plain(&'a str, &'a str),
        AmqPlain(&'a str, &'a str),
    }

    /// What a raw client talks over: a TCP socket, or a TLS stream on one.
    pub trait RawStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
    impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> RawStream for T {}

    pub struct RawClient {
        pub stream: Box<dyn RawStream>,
        buf: Vec<u8>,
    }

    /// Serialize a method (class id, method id, arguments) into a payload.
    pub fn method_payload(class: &AMQPClass) -> Vec<u8> {
        let ser = proto::gen_class::<Vec<u8>>(class);
        let ctx = ser(Vec::<u8>::new().into()).expect("serialize method");
        ctx.write
    }

    /// Build a frame from its parts.
    pub fn frame(typ: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        out.push(typ);
        out.extend_from_slice(&channel.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(FRAME_END);
        out
    }

    pub fn method_frame(channel: u16, class: &AMQPClass) -> Vec<u8> {
        frame(FRAME_METHOD, channel, &method_payload(class))
    }

    /// A basic content header with no properties set.
    pub fn header_frame(channel: u16, body_size: u64) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&60u16.to_be_bytes()); // class basic
        p.extend_from_slice(&0u16.to_be_bytes()); // weight
        p.extend_from_slice(&body_size.to_be_bytes());
        p.extend_from_slice(&0u16.to_be_bytes()); // property flags: none
        frame(FRAME_HEADER, channel, &p)
    }

    pub fn body_frame(channel: u16, body: &[u8]) -> Vec<u8> {
        frame(FRAME_BODY, channel, body)
    }

    pub fn heartbeat_frame() -> Vec<u8> {
        frame(FRAME_HEARTBEAT, 0, &[])
    }

    /// The body of a field table without its 4-byte length prefix, as the
    /// AMQPLAIN mechanism wants it.
    pub fn amqplain_response(user: &str, pass: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (k, v) in [("LOGIN", user), ("PASSWORD", pass)] {
            out.push(k.len() as u8);
            out.extend_from_slice(k.as_bytes());
            out.push(b'S');
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        out
    }

    pub fn basic_publish(exchange: &str, routing_key: &str) -> AMQPClass {
        AMQPClass::Basic(proto::basic::AMQPMethod::Publish(proto::basic::Publish {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            mandatory: false,
            immediate: false,
        }))
    }

    pub fn channel_open() -> AMQPClass {
        AMQPClass::Channel(proto::channel::AMQPMethod::Open(proto::channel::Open {}))
    }

    pub fn queue_declare(name: &str, passive: bool) -> AMQPClass {
        AMQPClass::Queue(proto::queue::AMQPMethod::Declare(proto::queue::Declare {
            queue: name.into(),
            passive,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        }))
    }

    pub fn connection_close() -> AMQPClass {
        AMQPClass::Connection(proto::connection::AMQPMethod::Close(
            proto::connection::Close {
                reply_code: 200,
                reply_text: "bye".into(),
                class_id: 0,
                method_id: 0,
            },
        ))
    }

    impl RawClient {
        pub async fn connect(addr: SocketAddr) -> RawClient {
            let stream = super::within("tcp connect", TcpStream::connect(addr))
                .await
                .expect("tcp connect");
            stream.set_nodelay(true).ok();
            RawClient::over(stream)
        }

        /// A client over an already connected stream (e.g. TLS).
        pub fn over(stream: impl RawStream + 'static) -> RawClient {
            RawClient {
                stream: Box::new(stream),
                buf: Vec::new(),
            }
        }

        /// Connect, send the protocol header and complete the handshake with
        /// the given credentials, heartbeat (0 = off) and vhost.
        pub async fn handshake(
            addr: SocketAddr,
            auth: Auth<'_>,
            heartbeat: u16,
        ) -> (RawClient, Handshake) {
            let mut c = RawClient::connect(addr).await;
            let hs = c.handshake_on(auth, heartbeat, "/").await;
            (c, hs)
        }

        /// Full handshake with PLAIN guest/guest, heartbeats off, vhost "/".
        pub async fn open(addr: SocketAddr) -> RawClient {
            Self::handshake(addr, Auth::Plain("guest", "guest"), 0)
                .await
                .0
        }

        /// Handshake on an already connected socket.
        pub async fn handshake_on(
            &mut self,
            auth: Auth<'_>,
            heartbeat: u16,
            vhost: &str,
        ) -> Handshake {
            let start = self.start_and_tune_begin(auth).await;
            let tune = match self.expect_method(0).await {
                AMQPClass::Connection(proto::connection::AMQPMethod::Tune(t)) => t,
                other => panic!("expected connection.tune, got {other:?}"),
            };
            self.send_method(
                0,
                &AMQPClass::Connection(proto::connection::AMQPMethod::TuneOk(
                    proto::connection::TuneOk {
                        channel_max: tune.channel_max,
                        frame_max: tune.frame_max,
                        heartbeat,
                    },
                )),
            )
            .await;
            self.send_method(
                0,
                &AMQPClass::Connection(proto::connection::AMQPMethod::Open(
                    proto::connection::Open {
                        virtual_host: vhost.into(),
                    },
                )),
            )
            .await;
            match self.expect_method(0).await {
                AMQPClass::Connection(proto::connection::AMQPMethod::OpenOk(_)) => {}
                other => panic!("expected connection.open-ok, got {other:?}"),
            }
            Handshake { start, tune }
        }

        /// Send the protocol header, read connection.start and answer start-ok.
        pub async fn start_and_tune_begin(&mut self, auth: Auth<'_>) -> proto::connection::Start {
            self.send(PROTOCOL_HEADER).await;
            let start = match self.expect_method(0).await {
                AMQPClass::Connection(proto::connection::AMQPMethod::Start(s)) => s,
                other => panic!("expected connection.start, got {other:?}"),
            };
            let (mechanism, response): (&str, Vec<u8>) = match auth {
                Auth::Plain(u, p) => ("PLAIN", format!("\0{u}\0{p}").into_bytes()),
                Auth::AmqPlain(u, p) => ("AMQPLAIN", amqplain_response(u, p)),
            };
            let mut client_properties = FieldTable::default();
            client_properties.insert(
                ShortString::from("product"),
                AMQPValue::LongString(LongString::from("hopper raw test client")),
            );
            let mut caps = FieldTable::default();
            caps.insert(
                "authentication_failure_close".into(),
                AMQPValue::Boolean(true),
            );
            caps.insert("consumer_cancel_notify".into(), AMQPValue::Boolean(true));
            client_properties.insert("capabilities".into(), AMQPValue::FieldTable(caps));
            self.send_method(
                0,
                &AMQPClass::Connection(proto::connection::AMQPMethod::StartOk(
                    proto::connection::StartOk {
                        client_properties,
                        mechanism: mechanism.into(),
                        response: LongString::from(response),
                        locale: "en_US".into(),
                    },
                )),
            )
            .await;
            start
        }

        /// The socket, once nothing read is left unparsed (for tests that
        /// drive both directions at once).
        pub fn into_stream(self) -> Box<dyn RawStream> {
            assert!(self.buf.is_empty(), "unread bytes: {:?}", self.buf);
            self.stream
        }

        /// Write bytes; write errors are ignored (the peer may have closed, and
        /// the tests then look at what was read).
        pub async fn send(&mut self, bytes: &[u8]) {
            let _ = super::within("socket write", self.stream.write_all(bytes)).await;
        }

        pub async fn send_method(&mut self, channel: u16, class: &AMQPClass) {
            let f = method_frame(channel, class);
            self.send(&f).await;
        }

        /// Read exactly `n` raw bytes (for the protocol-header reply).
        pub async fn read_bytes(&mut self, n: usize, dur: Duration) -> Result<Vec<u8>, ReadError> {
            let deadline = tokio::time::Instant::now() + dur;
            while self.buf.len() < n {
                self.fill(deadline).await?;
            }
            Ok(self.buf.drain(..n).collect())
        }

        async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), ReadError> {
            self.buf.reserve(65536);
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => Err(ReadError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => Err(ReadError::Closed),
                Ok(Ok(_)) => Ok(()),
            }
        }

        /// Read the next frame (heartbeats included).
        pub async fn read_frame(&mut self, dur: Duration) -> Result<Frame, ReadError> {
            let deadline = tokio::time::Instant::now() + dur;
            loop {
                if self.buf.len() >= 7 {
                    let size =
                        u32::from_be_bytes([self.buf[3], self.buf[4], self.buf[5], self.buf[6]])
                            as usize;
                    if size > 16 * 1024 * 1024 {
                        return Err(ReadError::Garbage(format!("frame size {size}")));
                    }
                    if self.buf.len() >= size + 8 {
                        let f: Vec<u8> = self.buf.drain(..size + 8).collect();
                        if f[size + 7] != FRAME_END {
                            return Err(ReadError::Garbage(format!(
                                "bad frame end {:#x} in {:?}",
                                f[size + 7],
                                &f[..f.len().min(64)]
                            )));
                        }
                        return Ok(Frame {
                            typ: f[0],
                            channel: u16::from_be_bytes([f[1], f[2]]),
                            payload: f[7..7 + size].to_vec(),
                        });
                    }
                }
                self.fill(deadline).await?;
            }
        }

        /// Read frames until a method frame arrives, skipping heartbeats.
        pub async fn next_method(&mut self, dur: Duration) -> Result<(u16, Frame), ReadError> {
            let deadline = tokio::time::Instant::now() + dur;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let f = self.read_frame(left).await?;
                match f.typ {
                    FRAME_HEARTBEAT => continue,
                    FRAME_METHOD => return Ok((f.channel, f)),
                    _ => continue, // content frames of deliveries: not what we wait for
                }
            }
        }

        /// Expect the next method on `channel` (skipping heartbeats); panics otherwise.
        pub async fn expect_method(&mut self, channel: u16) -> AMQPClass {
            match self.next_method(WAIT).await {
                Ok((ch, f)) => {
                    let m = f
                        .method()
                        .unwrap_or_else(|| panic!("undecodable method frame {:?}", f.payload));
                    assert_eq!(ch, channel, "method {m:?} arrived on an unexpected channel");
                    m
                }
                Err(e) => panic!("expected a method on channel {channel}, got {e:?}"),
            }
        }

        /// Open a channel and wait for open-ok.
        pub async fn open_channel(&mut self, channel: u16) {
            self.send_method(channel, &channel_open()).await;
            match self.expect_method(channel).await {
                AMQPClass::Channel(proto::channel::AMQPMethod::OpenOk(_)) => {}
                other => panic!("expected channel.open-ok, got {other:?}"),
            }
        }

        /// Read until connection.close arrives (panics on EOF/timeout first),
        /// answer close-ok, then expect the server to close the socket.
        pub async fn expect_connection_close(&mut self) -> CloseInfo {
            let info = self.read_connection_close().await;
            self.expect_closed(WAIT).await;
            info
        }

        /// Read until connection.close arrives (panics on EOF/timeout first)
        /// and answer close-ok; does not wait for the socket to close.
        pub async fn read_connection_close(&mut self) -> CloseInfo {
            match self.close_or_drop().await {
                Some(info) => info,
                None => panic!("expected connection.close, but the socket was closed without one"),
            }
        }

        /// The broker must end the connection: either with connection.close
        /// (answered with close-ok; returns it) or by closing the socket
        /// without a word (returns None). Panics on timeout.
        pub async fn close_or_drop(&mut self) -> Option<CloseInfo> {
            match self.next_method(WAIT).await {
                Ok((0, f)) => Some(self.answer_close(&f).await),
                Ok((ch, f)) => {
                    panic!(
                        "expected connection.close, got {:?} on channel {ch}",
                        f.method()
                    )
                }
                Err(ReadError::Closed) => None,
                Err(e) => panic!("expected the broker to end the connection, got {e:?}"),
            }
        }

        /// `f` must be a connection.close: answer it with close-ok.
        pub async fn answer_close(&mut self, f: &Frame) -> CloseInfo {
            match f.method() {
                Some(AMQPClass::Connection(proto::connection::AMQPMethod::Close(c))) => {
                    self.send_method(
                        0,
                        &AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(
                            proto::connection::CloseOk {},
                        )),
                    )
                    .await;
                    CloseInfo {
                        code: c.reply_code,
                        text: c.reply_text.to_string(),
                        class_id: c.class_id,
                        method_id: c.method_id,
                    }
                }
                other => panic!("expected connection.close, got {other:?}"),
            }
        }

        /// Expect channel.close on `channel`, answer close-ok.
        pub async fn expect_channel_close(&mut self, channel: u16) -> CloseInfo {
            match self.expect_method(channel).await {
                AMQPClass::Channel(proto::channel::AMQPMethod::Close(c)) => {
                    self.send_method(
                        channel,
                        &AMQPClass::Channel(proto::channel::AMQPMethod::CloseOk(
                            proto::channel::CloseOk {},
                        )),
                    )
                    .await;
                    CloseInfo {
                        code: c.reply_code,
                        text: c.reply_text.to_string(),
                        class_id: c.class_id,
                        method_id: c.method_id,
                    }
                }
                other => panic!("expected channel.close on channel {channel}, got {other:?}"),
            }
        }

        /// Expect the server to close the socket within `dur` (frames that
        /// arrive meanwhile are discarded).
        pub async fn expect_closed(&mut self, dur: Duration) {
            let deadline = tokio::time::Instant::now() + dur;
            loop {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match self.read_frame(left).await {
                    Ok(_) => continue,
                    Err(ReadError::Closed) => return,
                    Err(ReadError::Timeout) => {
                        panic!("server did not close the socket within {dur:?}")
                    }
                    Err(ReadError::Garbage(_)) => {
                        self.buf.clear();
                        continue;
                    }
                }
            }
        }

        /// Graceful client-initiated close: send close, expect close-ok.
        pub async fn close(&mut self) {
            self.send_method(0, &connection_close()).await;
            loop {
                match self.expect_method(0).await {
                    AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(_)) => return,
                    AMQPClass::Connection(proto::connection::AMQPMethod::Close(c)) => {
                        panic!("server closed the connection instead of close-ok: {c:?}")
                    }
                    _ => continue,
                }
            }
        }
    }
}
