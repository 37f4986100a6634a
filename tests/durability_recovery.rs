//! Crash durability, part 2: what comes back after a kill -9 besides
//! confirmed messages under load (tests/durability.rs): unacked messages in
//! order and marked redelivered, acked messages gone, every kind of
//! definition with its arguments, transient messages gone, and one broker per
//! data directory. Every test kills the broker, so all skip themselves when
//! `HOPPER_TEST_EXTERNAL_URI` points the suite elsewhere.

mod common;

use common::*;
use lapin::options::{
    BasicAckOptions, BasicPublishOptions, BasicQosOptions, ExchangeDeclareOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use std::path::Path;
use std::time::{Duration, Instant};

use common::durable::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_survive_kill9_in_order() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("unacked-q");
    let barrier_q = unique("unacked-barrier");
    let (conn, ch) = connect_channel(&broker).await;
    durable_queue(&ch, &q, FieldTable::default()).await;
    durable_queue(&ch, &barrier_q, FieldTable::default()).await;
    confirm_select(&ch).await;
    let mut confirms = Vec::new();
    for i in 0..100 {
        let body = format!("m{i:03}");
        let c = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            ),
        )
        .await
        .expect("basic.publish");
        confirms.push(c);
    }
    for (i, c) in confirms.into_iter().enumerate() {
        let c = within("publisher confirm", c).await.expect("confirm");
        assert!(c.is_ack(), "message {i} not confirmed: {c:?}");
    }

    // Take 60 with manual ack; ack only the first 30.
    let cch = open_channel(&conn).await;
    within("basic.qos", cch.basic_qos(60, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut consumer = consume(&cch, &q, false).await;
    let mut deliveries = Vec::new();
    for i in 0..60 {
        let d = next_delivery(&mut consumer).await;
        assert_eq!(
            String::from_utf8_lossy(&d.data),
            format!("m{i:03}"),
            "delivery {i} out of order"
        );
        deliveries.push(d);
    }
    for d in &deliveries[..30] {
        within("basic.ack", d.acker.ack(BasicAckOptions::default()))
            .await
            .expect("basic.ack");
    }
    // Make the acks durable before the kill, without closing anything (the
    // other 30 must stay delivered-but-unacked when the broker dies): a
    // persistent, confirmed publish on the same channel comes after the acks,
    // and its synced write carries the (unsynced) removals with it.
    confirm_select(&cch).await;
    let c = publish_confirmed(&cch, "", &barrier_q, b"barrier", persistent()).await;
    assert!(c.is_ack(), "barrier publish not confirmed: {c:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.kill9();
    drop(deliveries);
    drop(consumer);
    drop(conn);

    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    let count = passive_queue(&ch, &q).await.expect("queue recovered");
    let got = get_all(&ch, &q).await;
    let bodies: Vec<&str> = got.iter().map(|g| g.body.as_str()).collect();
    let expected: Vec<String> = (30..100).map(|i| format!("m{i:03}")).collect();
    assert_eq!(
        bodies, expected,
        "after kill -9 exactly the 70 un-acked messages (m030..m099, in order) must come back; \
         passive declare said {count}"
    );
    assert_eq!(count, 70, "message_count after recovery");
    let not_redelivered: Vec<&str> = got
        .iter()
        .filter(|g| !g.redelivered)
        .map(|g| g.body.as_str())
        .collect();
    assert!(
        not_redelivered.is_empty(),
        "recovered messages without redelivered=true: {not_redelivered:?}"
    );
    println!(
        "unacked: recovered {} of 100 (30 acked before the kill)",
        got.len()
    );
    let _ = within("connection.close", conn.close(200, "bye".into())).await;
}

// ---------------------------------------------------------------------------
// 3. acked messages stay gone
// ---------------------------------------------------------------------------

/// Acks are not fsynced (by design: a lost ack is a redelivery, never a loss),
/// so a SIGKILL landing while an ack is still queued inside the broker may
/// legitimately bring that message back. This test therefore (1) syncs on the
/// channel after the acks (basic.get answers after the acks before it were
/// processed), (2) closes the connection cleanly and (3) waits 200 ms before
/// the kill, so the broker has handed the removals to RocksDB, whose WAL writes
/// survive a process kill (the page cache does). It deliberately does NOT
/// publish anything afterwards: acks must reach disk even without a later
/// synced write to carry them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_are_gone_after_kill9() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("acked-q");
    {
        let (conn, ch) = connect_channel(&broker).await;
        durable_queue(&ch, &q, FieldTable::default()).await;
        confirm_select(&ch).await;
        for i in 0..50 {
            let c = publish_confirmed(&ch, "", &q, format!("a{i}").as_bytes(), persistent()).await;
            assert!(c.is_ack(), "message {i} not confirmed: {c:?}");
        }
        let cch = open_channel(&conn).await;
        let mut consumer = consume(&cch, &q, false).await;
        for i in 0..50 {
            let d = next_delivery(&mut consumer).await;
            assert_eq!(String::from_utf8_lossy(&d.data), format!("a{i}"));
            within("basic.ack", d.acker.ack(BasicAckOptions::default()))
                .await
                .expect("basic.ack");
        }
        assert!(
            get(&cch, &q, true).await.is_none(),
            "queue not empty after consuming all 50"
        );
        assert_eq!(message_count(&cch, &q).await, 0);
        within("connection.close", conn.close(200, "bye".into()))
            .await
            .expect("clean connection.close");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    let count = passive_queue(&ch, &q)
        .await
        .expect("durable queue recovered");
    let back = get_all(&ch, &q).await;
    assert!(
        count == 0 && back.is_empty(),
        "acked messages came back after kill -9: message_count {count}, bodies {}",
        sample(
            &back.iter().map(|g| g.body.as_str()).collect::<Vec<_>>(),
            10
        )
    );
    let _ = within("connection.close", conn.close(200, "bye".into())).await;
}

// ---------------------------------------------------------------------------
// 4. definitions round trip
// ---------------------------------------------------------------------------

struct Defs {
    ae: String,
    direct: String,
    fanout: String,
    topic: String,
    headers: String,
    transient_x: String,
    q_direct: String,
    q_fanout: String,
    q_topic: String,
    q_headers: String,
    transient_q: String,
}

impl Defs {
    fn new() -> Defs {
        Defs {
            ae: unique("defs-ae"),
            direct: unique("defs-direct"),
            fanout: unique("defs-fanout"),
            topic: unique("defs-topic"),
            headers: unique("defs-headers"),
            transient_x: unique("defs-transient-x"),
            q_direct: unique("defs-q-direct"),
            q_fanout: unique("defs-q-fanout"),
            q_topic: unique("defs-q-topic"),
            q_headers: unique("defs-q-headers"),
            transient_q: unique("defs-transient-q"),
        }
    }

    fn exchange_args(&self) -> FieldTable {
        table(&[("alternate-exchange", long_str(&self.ae))])
    }

    fn exchanges(&self) -> Vec<(&str, ExchangeKind)> {
        vec![
            (self.direct.as_str(), ExchangeKind::Direct),
            (self.fanout.as_str(), ExchangeKind::Fanout),
            (self.topic.as_str(), ExchangeKind::Topic),
            (self.headers.as_str(), ExchangeKind::Headers),
        ]
    }

    fn queues(&self) -> Vec<&str> {
        vec![
            self.q_direct.as_str(),
            self.q_fanout.as_str(),
            self.q_topic.as_str(),
            self.q_headers.as_str(),
        ]
    }
}

fn queue_args(ttl: i32) -> FieldTable {
    table(&[
        ("x-message-ttl", AMQPValue::LongInt(ttl)),
        ("x-max-length", AMQPValue::LongInt(1000)),
        ("x-foo", long_str("bar")),
    ])
}

fn headers_binding_args() -> FieldTable {
    table(&[
        ("x-match", long_str("any")),
        ("h1", long_str("v1")),
        ("h2", long_str("v2")),
    ])
}

const TTL: i32 = 600_000;

async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &str,
    headers: Option<FieldTable>,
) {
    let mut props = persistent();
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
    let c = publish_confirmed(ch, exchange, key, body.as_bytes(), props).await;
    assert!(
        c.is_ack(),
        "publish {body} to {exchange:?} not confirmed: {c:?}"
    );
}

/// Publish through every binding and check each message lands exactly where
/// its binding sends it (and a non-matching headers message nowhere). With
/// `transient`, the non-durable queue and exchange still exist and their
/// bindings are checked too.
async fn check_routing(conn: &Connection, d: &Defs, tag: &str, transient: bool) {
    let ch = open_channel(conn).await;
    confirm_select(&ch).await;
    publish_with(&ch, &d.direct, "rk", &format!("{tag}-direct"), None).await;
    publish_with(&ch, &d.fanout, "ignored", &format!("{tag}-fanout"), None).await;
    publish_with(&ch, &d.topic, "any.deep.key", &format!("{tag}-topic"), None).await;
    publish_with(
        &ch,
        &d.headers,
        "",
        &format!("{tag}-headers"),
        Some(table(&[("h2", long_str("v2"))])),
    )
    .await;
    // Matches neither h1=v1 nor h2=v2: routed nowhere.
    publish_with(
        &ch,
        &d.headers,
        "",
        &format!("{tag}-headers-nomatch"),
        Some(table(&[("h1", long_str("other")), ("h3", long_str("v3"))])),
    )
    .await;
    for (q, want) in [
        (&d.q_direct, "direct"),
        (&d.q_fanout, "fanout"),
        (&d.q_topic, "topic"),
        (&d.q_headers, "headers"),
    ] {
        let got: Vec<String> = get_all(&ch, q).await.into_iter().map(|g| g.body).collect();
        assert_eq!(
            got,
            vec![format!("{tag}-{want}")],
            "{tag}: routing through the {want} binding into {q}"
        );
    }
    if transient {
        let got: Vec<String> = get_all(&ch, &d.transient_q)
            .await
            .into_iter()
            .map(|g| g.body)
            .collect();
        assert_eq!(
            got,
            vec![format!("{tag}-direct")],
            "{tag}: direct -> non-durable queue"
        );
        let body = format!("{tag}-via-transient-x");
        publish_with(&ch, &d.transient_x, "rk", &body, None).await;
        let got: Vec<String> = get_all(&ch, &d.q_direct)
            .await
            .into_iter()
            .map(|g| g.body)
            .collect();
        assert_eq!(
            got,
            vec![body],
            "{tag}: non-durable exchange -> durable queue"
        );
    }
    let _ = within("channel.close", ch.close(200, "bye".into())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_round_trip_kill9() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let d = Defs::new();
    {
        let (conn, ch) = connect_channel(&broker).await;
        declare_exchange(
            &ch,
            &d.ae,
            ExchangeKind::Fanout,
            durable_exchange_opts(),
            FieldTable::default(),
        )
        .await
        .expect("declare the alternate exchange");
        for (x, kind) in d.exchanges() {
            declare_exchange(&ch, x, kind, durable_exchange_opts(), d.exchange_args())
                .await
                .unwrap_or_else(|e| panic!("declare durable exchange {x}: {e:?}"));
        }
        declare_exchange(
            &ch,
            &d.transient_x,
            ExchangeKind::Direct,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare non-durable exchange");
        for q in d.queues() {
            durable_queue(&ch, q, queue_args(TTL)).await;
        }
        within(
            "non-durable queue.declare",
            ch.queue_declare(
                d.transient_q.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("declare non-durable queue");
        bind(&ch, &d.q_direct, &d.direct, "rk", FieldTable::default()).await;
        bind(&ch, &d.q_fanout, &d.fanout, "", FieldTable::default()).await;
        bind(&ch, &d.q_topic, &d.topic, "#", FieldTable::default()).await;
        bind(&ch, &d.q_headers, &d.headers, "", headers_binding_args()).await;
        // Bindings that involve a non-durable side vanish with it.
        bind(&ch, &d.transient_q, &d.direct, "rk", FieldTable::default()).await;
        bind(
            &ch,
            &d.q_direct,
            &d.transient_x,
            "rk",
            FieldTable::default(),
        )
        .await;
        check_routing(&conn, &d, "before", true).await;
        let _ = conn.close(200, "bye".into()).await;
    }
    // check_routing consumed what it published; those removals are written
    // without an fsync of their own (a lost one is a redelivery, not a loss),
    // so let them reach the store before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.kill9();
    broker.restart();

    let (conn, ch) = connect_channel(&broker).await;
    // Durable ones exist.
    for (x, _) in d.exchanges() {
        passive_exchange(&ch, x)
            .await
            .unwrap_or_else(|e| panic!("durable exchange {x} lost: {e:?}"));
    }
    passive_exchange(&ch, &d.ae)
        .await
        .unwrap_or_else(|e| panic!("durable exchange {} lost: {e:?}", d.ae));
    for q in d.queues() {
        let n = passive_queue(&ch, q)
            .await
            .unwrap_or_else(|e| panic!("durable queue {q} lost: {e:?}"));
        assert_eq!(n, 0, "queue {q} should be empty after recovery");
    }
    // Redeclaring with the same arguments succeeds (the stored arguments are
    // the ones declared).
    for (x, kind) in d.exchanges() {
        declare_exchange(&ch, x, kind, durable_exchange_opts(), d.exchange_args())
            .await
            .unwrap_or_else(|e| panic!("redeclare exchange {x} with the same arguments: {e:?}"));
    }
    for q in d.queues() {
        within(
            "queue.declare",
            ch.queue_declare(q.into(), durable_queue_opts(), queue_args(TTL)),
        )
        .await
        .unwrap_or_else(|e| panic!("redeclare queue {q} with the same arguments: {e:?}"));
    }
    // ... and with a different x-message-ttl fails with 406.
    for q in d.queues() {
        let c2 = open_channel(&conn).await;
        let res = within(
            "queue.declare",
            c2.queue_declare(q.into(), durable_queue_opts(), queue_args(1000)),
        )
        .await;
        assert_code(res, 406);
    }
    // A different alternate-exchange is inequivalent too.
    {
        let c2 = open_channel(&conn).await;
        let res = declare_exchange(
            &c2,
            &d.direct,
            ExchangeKind::Direct,
            durable_exchange_opts(),
            table(&[("alternate-exchange", long_str("some-other-ae"))]),
        )
        .await;
        assert_code(res, 406);
    }
    // Every durable binding still routes (and the ones to/from non-durable
    // things are gone: the direct message lands only in the durable queue).
    check_routing(&conn, &d, "after", false).await;
    // Non-durable ones are gone.
    {
        let c2 = open_channel(&conn).await;
        assert_code(passive_queue(&c2, &d.transient_q).await, 404);
        let c3 = open_channel(&conn).await;
        assert_code(passive_exchange(&c3, &d.transient_x).await, 404);
    }
    let _ = within("connection.close", conn.close(200, "bye".into())).await;
    drop(ch);
}

// ---------------------------------------------------------------------------
// 5. transient messages in a durable queue
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_messages_vanish_persistent_remain() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("mixed-q");
    {
        let (conn, ch) = connect_channel(&broker).await;
        durable_queue(&ch, &q, FieldTable::default()).await;
        confirm_select(&ch).await;
        for i in 0..10 {
            for (body, props) in [
                (format!("p{i}"), persistent()),
                (format!("t{i}"), transient()),
                // No delivery mode at all is transient as well.
                (format!("n{i}"), BasicProperties::default()),
            ] {
                let c = publish_confirmed(&ch, "", &q, body.as_bytes(), props).await;
                assert!(c.is_ack(), "{body} not confirmed: {c:?}");
            }
        }
        assert_eq!(message_count(&ch, &q).await, 30);
        drop(conn);
    }
    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    let count = passive_queue(&ch, &q)
        .await
        .expect("durable queue recovered");
    let got = get_all(&ch, &q).await;
    let bodies: Vec<&str> = got.iter().map(|g| g.body.as_str()).collect();
    let expected: Vec<String> = (0..10).map(|i| format!("p{i}")).collect();
    assert_eq!(
        bodies, expected,
        "only the persistent messages, in order, survive (message_count was {count})"
    );
    assert_eq!(count, 10, "message_count after recovery");
    assert!(
        got.iter().all(|g| g.redelivered),
        "recovered messages must be redelivered: {got:?}"
    );
    let _ = within("connection.close", conn.close(200, "bye".into())).await;
}

// ---------------------------------------------------------------------------
// 6. one broker per data directory
// ---------------------------------------------------------------------------

/// Run a second `hopper` on `data_dir`; returns (exit status or None if it
/// was still running after `limit` and had to be killed, stdout, stderr).
fn run_second_broker(
    data_dir: &Path,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    let tmp = tempfile::tempdir().expect("tempdir for the second broker's output");
    let out_path = tmp.path().join("stdout");
    let err_path = tmp.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_hopper"))
        .arg("--listen")
        .arg("127.0.0.1:0")
        .args(["--management-listen", "off", "--metrics-listen", "off"])
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&out_path).expect("stdout file"))
        .stderr(std::fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn the second hopper");
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(s) => break Some(s),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    (status, out, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_broker_on_same_data_dir_is_refused() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("locked-q");
    let (conn, ch) = connect_channel(&broker).await;
    durable_queue(&ch, &q, FieldTable::default()).await;
    confirm_select(&ch).await;
    for i in 0..5 {
        let c = publish_confirmed(&ch, "", &q, format!("before{i}").as_bytes(), persistent()).await;
        assert!(c.is_ack());
    }

    let data_dir = broker.data_dir().expect("data dir").to_path_buf();
    let (status, out, err) =
        tokio::task::spawn_blocking(move || run_second_broker(&data_dir, Duration::from_secs(20)))
            .await
            .expect("second broker runner");
    match status {
        None => panic!(
            "a second broker on the same data directory kept running (killed after 20s); \
             stdout: {out:?}; stderr tail: {:?}",
            &err[err.len().saturating_sub(2000)..]
        ),
        Some(s) => assert!(
            !s.success(),
            "a second broker on the same data directory exited successfully ({s}); \
             stdout {out:?}, stderr {err:?}"
        ),
    }
    assert!(
        !out.contains("hopper listening on"),
        "the second broker claimed to listen: {out:?}"
    );
    assert!(
        err.to_lowercase().contains("data directory"),
        "the second broker's error should mention the data directory; stderr: {err:?}"
    );
    // Just the error, not the backtrace anyhow may append (RUST_BACKTRACE).
    let error: Vec<&str> = err
        .lines()
        .take_while(|l| !l.contains("backtrace"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    println!(
        "second broker refused ({}): {}",
        status.unwrap(),
        error.join(" | ")
    );

    // The first broker is unharmed: it keeps serving, including persistent
    // writes to the store the second one tried to open...
    for i in 0..5 {
        let c = publish_confirmed(&ch, "", &q, format!("after{i}").as_bytes(), persistent()).await;
        assert!(
            c.is_ack(),
            "first broker stopped confirming after the second start: {c:?}"
        );
    }
    assert_broker_healthy(&broker).await;
    assert_eq!(message_count(&ch, &q).await, 10);
    drop(conn);
    // ... and its data directory is intact.
    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    let got: Vec<String> = get_all(&ch, &q).await.into_iter().map(|g| g.body).collect();
    let expected: Vec<String> = (0..5)
        .map(|i| format!("before{i}"))
        .chain((0..5).map(|i| format!("after{i}")))
        .collect();
    assert_eq!(got, expected, "the first broker's messages after a restart");
    let _ = within("connection.close", conn.close(200, "bye".into())).await;
}
