//! Shared helpers for hopper's integration tests.
//!
//! * [`Broker`] starts the `hopper` binary on a free port with a fresh data
//!   directory (or, when `HOPPER_TEST_EXTERNAL_URI` is set, points at an
//!   already running broker such as a real RabbitMQ).
//! * [`inproc`] starts the broker inside the test's own runtime with
//!   `hopper::run`, for tests of the broker's timing under paused tokio time.
//! * [`raw`] is a tiny hand-rolled AMQP 0-9-1 client that works on bytes, for
//!   the tests that need to see or send exactly what is on the wire.
//! * The rest are small lapin conveniences.

#![allow(dead_code)]

pub mod access;
pub mod cluster;
pub mod consume;
pub mod durable;
pub mod hostile;
pub mod inproc;
pub mod metrics;
pub mod mgmt;
pub mod policy;
pub mod raw;

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

/// For a TCP test whose hopper side runs in-process under paused time
/// (`twin`: its file and name): the broker when the suite runs against an
/// external broker, to keep comparing with RabbitMQ; otherwise None, after
/// printing why the test is skipped.
pub fn external_only(twin: &str) -> Option<Broker> {
    let external = std::env::var(EXTERNAL_ENV).is_ok_and(|u| !u.trim().is_empty());
    if !external {
        eprintln!("skipped against hopper: {twin} covers it in-process under paused time");
        return None;
    }
    Some(Broker::start())
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

/// Arguments declaring a quorum queue, with `extra` ones.
pub fn quorum_args(extra: &[(&str, lapin::types::AMQPValue)]) -> lapin::types::FieldTable {
    let mut t = lapin::types::FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    t
}
