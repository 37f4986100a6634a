//! Crash durability: the broker is killed with SIGKILL (no shutdown code runs,
//! nothing is flushed on the way out) and restarted on the same data directory.
//!
//! What the broker promises (and these tests hold it to):
//! * a persistent message (delivery_mode 2) routed to durable queues is on disk
//!   (synced) before its publisher confirm goes out, so no confirmed message is
//!   ever lost, and it comes back in each queue it was routed to, in order,
//!   marked redelivered;
//! * durable exchanges, queues (with their arguments) and bindings (with theirs)
//!   come back; transient messages, non-durable queues and exchanges do not;
//! * acks are written without a sync of their own: they ride along with the next
//!   synced write. A SIGKILL does not lose what the broker already handed to the
//!   kernel (the page cache survives a process crash), so an ack that the broker
//!   processed and wrote is not lost; one still queued inside the broker when the
//!   SIGKILL lands may legitimately come back as a redelivery (at-least-once).
//!   The tests that check acked messages stay gone therefore make sure the acks
//!   were processed (and give the broker a moment) before killing it.
//! * only one broker may use a data directory at a time.
//!
//! Every test needs to kill and restart the broker, so all of them skip
//! themselves when `HOPPER_TEST_EXTERNAL_URI` points the suite elsewhere.
//! Run with `cargo test --test durability -- --nocapture` to see the counts.

mod common;

use common::*;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ExchangeKind};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn transient() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(1)
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

fn long_str(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn durable_queue_opts() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn passive_queue_opts() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
}

fn durable_exchange_opts() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn open_channel(conn: &Connection) -> Channel {
    within("channel.open", conn.create_channel())
        .await
        .expect("open channel")
}

async fn declare_durable_queue(ch: &Channel, name: &str, args: FieldTable) {
    within(
        "durable queue.declare",
        ch.queue_declare(name.into(), durable_queue_opts(), args),
    )
    .await
    .unwrap_or_else(|e| panic!("declare durable queue {name}: {e:?}"));
}

async fn declare_exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    opts: ExchangeDeclareOptions,
    args: FieldTable,
) -> lapin::Result<()> {
    within(
        "exchange.declare",
        ch.exchange_declare(name.into(), kind, opts, args),
    )
    .await
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, args: FieldTable) {
    within(
        "queue.bind",
        ch.queue_bind(
            queue.into(),
            exchange.into(),
            key.into(),
            QueueBindOptions::default(),
            args,
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with {key:?}: {e:?}"));
}

/// Passive queue.declare: Ok(message count) or the error.
async fn passive_queue(ch: &Channel, name: &str) -> lapin::Result<u32> {
    within(
        "passive queue.declare",
        ch.queue_declare(name.into(), passive_queue_opts(), FieldTable::default()),
    )
    .await
    .map(|q| q.message_count())
}

/// Passive exchange.declare.
async fn passive_exchange(ch: &Channel, name: &str) -> lapin::Result<()> {
    declare_exchange(
        ch,
        name,
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// One message read back after a restart.
#[derive(Debug, Clone)]
struct Got {
    body: String,
    redelivered: bool,
}

/// Empty a queue with no-ack basic.get (a definite end: get-empty) and return
/// what came out, in order.
async fn get_all(ch: &Channel, queue: &str) -> Vec<Got> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(Got {
            body: String::from_utf8_lossy(&m.delivery.data).into_owned(),
            redelivered: m.delivery.redelivered,
        });
        assert!(out.len() <= 100_000, "queue {queue} never runs dry");
    }
    out
}

/// Consume everything a recovered queue holds (its count by passive declare
/// first: nothing else publishes to it), acking as it goes, and return it in
/// delivery order. Afterwards the queue must be empty and stay quiet.
async fn consume_all(conn: &Connection, queue: &str) -> Vec<Got> {
    let ch = open_channel(conn).await;
    let expected = passive_queue(&ch, queue)
        .await
        .unwrap_or_else(|e| panic!("recovered queue {queue} is missing: {e:?}"));
    within("basic.qos", ch.basic_qos(1000, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let mut consumer = within(
        "basic.consume",
        ch.basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ),
    )
    .await
    .expect("basic.consume");
    let mut out = Vec::with_capacity(expected as usize);
    let mut last_tag = 0;
    let mut unacked = 0;
    while out.len() < expected as usize {
        let d = match tokio::time::timeout(Duration::from_secs(10), consumer.next()).await {
            Ok(Some(Ok(d))) => d,
            Ok(other) => panic!(
                "queue {queue}: consumer ended after {} of {expected} deliveries: {other:?}",
                out.len()
            ),
            Err(_) => panic!(
                "queue {queue}: passive declare reported {expected} messages but only {} \
                 were delivered (nothing more within 10s)",
                out.len()
            ),
        };
        out.push(Got {
            body: String::from_utf8_lossy(&d.data).into_owned(),
            redelivered: d.redelivered,
        });
        last_tag = d.delivery_tag;
        unacked += 1;
        if unacked >= 250 {
            within(
                "basic.ack",
                ch.basic_ack(last_tag, BasicAckOptions { multiple: true }),
            )
            .await
            .expect("basic.ack");
            unacked = 0;
        }
    }
    // Nothing beyond what the passive declare counted.
    assert_no_delivery(&mut consumer, Duration::from_millis(300)).await;
    if unacked > 0 {
        within(
            "basic.ack",
            ch.basic_ack(last_tag, BasicAckOptions { multiple: true }),
        )
        .await
        .expect("basic.ack");
    }
    // A synchronous round trip on the same channel: the acks are processed.
    let left = passive_queue(&ch, queue).await.expect("passive declare");
    assert_eq!(left, 0, "queue {queue} not empty after consuming it");
    let _ = within("channel.close", ch.close(200, "done".into())).await;
    out
}

/// A small deterministic generator (splitmix64) for the kill delays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn range(&mut self, lo: u64, hi_inclusive: u64) -> u64 {
        lo + self.next() % (hi_inclusive - lo + 1)
    }
}

/// Up to `n` items of a list, for failure messages.
fn sample<T: std::fmt::Debug>(items: &[T], n: usize) -> String {
    if items.len() <= n {
        format!("{items:?}")
    } else {
        format!("{:?} ... ({} in all)", &items[..n], items.len())
    }
}

// ---------------------------------------------------------------------------
// 1. concurrent publishers, random SIGKILL, three rounds
// ---------------------------------------------------------------------------

const PUBLISHERS: u32 = 4;
const IN_FLIGHT: usize = 50;
const ROUNDS: u32 = 3;
/// A publisher stops on its own after this many messages in one round (keeps a
/// very fast broker from producing more than the test can check in time).
const MAX_PER_PUBLISHER: u64 = 25_000;

/// Where message `n` of a publisher goes: (label, routes to queue A, to queue B).
/// a: direct exchange, key "a" -> A; b: key "b" -> B; ab: key "ab" -> A and B
/// (one message in two queues); d: default exchange -> B.
fn route_of(n: u64) -> &'static str {
    ["a", "b", "ab", "d"][(n % 4) as usize]
}

fn label_targets(label: &str) -> (bool, bool) {
    match label {
        "a" => (true, false),
        "b" | "d" => (false, true),
        "ab" => (true, true),
        other => panic!("unknown route label {other:?}"),
    }
}

/// `r{round}-p{publisher}-{n}-{label}`
fn parse_body(body: &str) -> Option<(u32, u32, u64, String)> {
    let mut it = body.split('-');
    let r = it.next()?.strip_prefix('r')?.parse().ok()?;
    let p = it.next()?.strip_prefix('p')?.parse().ok()?;
    let n = it.next()?.parse().ok()?;
    let label = it.next()?.to_string();
    if it.next().is_some() {
        return None;
    }
    Some((r, p, n, label))
}

#[derive(Debug, Default)]
struct PubState {
    /// Sequence numbers handed to basic.publish (the message may or may not
    /// have reached the broker).
    attempted: BTreeSet<u64>,
    /// Sequence numbers the broker confirmed with basic.ack.
    confirmed: BTreeSet<u64>,
    nacked: u64,
    /// Confirms that neither arrived nor failed within the timeout.
    unresolved: u64,
    /// Why the publisher stopped.
    stopped: String,
}

struct Topology {
    exchange: String,
    queue_a: String,
    queue_b: String,
}

#[allow(clippy::too_many_arguments)]
async fn publisher(
    uri: String,
    round: u32,
    p: u32,
    top: Arc<Topology>,
    state: Arc<Mutex<PubState>>,
    ready: Arc<tokio::sync::Barrier>,
    first_confirm: Arc<tokio::sync::Notify>,
) {
    let conn = connect_uri(&uri)
        .await
        .unwrap_or_else(|e| panic!("publisher {p}: connect: {e:?}"));
    let ch = open_channel(&conn).await;
    confirm_select(&ch).await;
    ready.wait().await;

    type Outcome = (
        u64,
        Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    );
    let record = |(n, res): Outcome, dead: &mut bool| {
        let mut st = state.lock().unwrap();
        match res {
            Ok(Ok(Confirmation::Ack(_))) => {
                st.confirmed.insert(n);
                first_confirm.notify_one();
            }
            Ok(Ok(Confirmation::Nack(_))) => st.nacked += 1,
            Ok(Ok(Confirmation::NotRequested)) => {
                panic!("publisher {p}: channel is not in confirm mode")
            }
            Ok(Err(e)) => {
                if !*dead {
                    st.stopped = format!("confirm failed: {e}");
                }
                *dead = true;
            }
            Err(_) => {
                st.unresolved += 1;
                if !*dead {
                    st.stopped = "confirm timed out".into();
                }
                *dead = true;
            }
        }
    };

    let mut in_flight = FuturesUnordered::new();
    let mut dead = false;
    let mut n = 0u64;
    while !dead {
        while in_flight.len() >= IN_FLIGHT && !dead {
            let outcome = in_flight.next().await.expect("in-flight confirm");
            record(outcome, &mut dead);
        }
        if dead {
            break;
        }
        if n >= MAX_PER_PUBLISHER {
            state.lock().unwrap().stopped = format!("published its maximum of {n}");
            break;
        }
        let label = route_of(n);
        let (exchange, key) = match label {
            "d" => ("", top.queue_b.as_str()),
            l => (top.exchange.as_str(), l),
        };
        let body = format!("r{round}-p{p}-{n}-{label}");
        state.lock().unwrap().attempted.insert(n);
        let publish = tokio::time::timeout(
            WAIT,
            ch.basic_publish(
                exchange.into(),
                key.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            ),
        )
        .await;
        match publish {
            Ok(Ok(confirm)) => {
                in_flight.push(async move { (n, tokio::time::timeout(WAIT, confirm).await) });
            }
            Ok(Err(e)) => {
                state.lock().unwrap().stopped = format!("basic.publish failed: {e}");
                dead = true;
            }
            Err(_) => {
                state.lock().unwrap().stopped = "basic.publish timed out".into();
                dead = true;
            }
        }
        n += 1;
    }
    // Collect whatever is still in flight: confirms that arrived before the
    // kill count, the rest fail (or time out) once the connection is gone.
    while let Some(outcome) = in_flight.next().await {
        record(outcome, &mut dead);
    }
    drop(conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_survive_random_kill9() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let seed = std::env::var("HOPPER_DURABILITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("concurrent_publishers_survive_random_kill9: seed {seed} (set HOPPER_DURABILITY_SEED to repeat)");
    let started = Instant::now();
    within_for(
        Duration::from_secs(55),
        "the whole kill/restart test",
        kill_rounds(&mut broker, seed),
    )
    .await;
    println!(
        "concurrent_publishers_survive_random_kill9: {ROUNDS} rounds in {:?}",
        started.elapsed()
    );
}

async fn kill_rounds(broker: &mut Broker, seed: u64) {
    let mut rng = Rng(seed);
    let top = Arc::new(Topology {
        exchange: unique("kill-x"),
        queue_a: unique("kill-qa"),
        queue_b: unique("kill-qb"),
    });
    {
        let (conn, ch) = connect_channel(broker).await;
        declare_exchange(
            &ch,
            &top.exchange,
            ExchangeKind::Direct,
            durable_exchange_opts(),
            FieldTable::default(),
        )
        .await
        .expect("declare durable direct exchange");
        declare_durable_queue(&ch, &top.queue_a, FieldTable::default()).await;
        declare_durable_queue(&ch, &top.queue_b, FieldTable::default()).await;
        for (q, key) in [
            (&top.queue_a, "a"),
            (&top.queue_b, "b"),
            (&top.queue_a, "ab"),
            (&top.queue_b, "ab"),
        ] {
            bind(&ch, q, &top.exchange, key, FieldTable::default()).await;
        }
        let _ = within("connection.close", conn.close(200, "bye".into())).await;
    }

    for round in 0..ROUNDS {
        let delay = Duration::from_millis(rng.range(200, 800));
        let uri = broker.uri();
        let states: Vec<Arc<Mutex<PubState>>> = (0..PUBLISHERS)
            .map(|_| Arc::new(Mutex::new(PubState::default())))
            .collect();
        let ready = Arc::new(tokio::sync::Barrier::new(PUBLISHERS as usize + 1));
        let first_confirm = Arc::new(tokio::sync::Notify::new());
        let tasks: Vec<_> = (0..PUBLISHERS)
            .map(|p| {
                tokio::spawn(publisher(
                    uri.clone(),
                    round,
                    p,
                    top.clone(),
                    states[p as usize].clone(),
                    ready.clone(),
                    first_confirm.clone(),
                ))
            })
            .collect();
        within_for(
            Duration::from_secs(15),
            "all publishers connected and in confirm mode",
            ready.wait(),
        )
        .await;
        // Start the clock at the first confirm, so every round kills the
        // broker with publishes flowing (never before any was confirmed).
        within_for(
            Duration::from_secs(15),
            "the first publisher confirm",
            first_confirm.notified(),
        )
        .await;
        tokio::time::sleep(delay).await;
        broker.kill9();
        let killed_at = Instant::now();
        for (p, t) in tasks.into_iter().enumerate() {
            match tokio::time::timeout(Duration::from_secs(15), t).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => panic!("round {round}: publisher {p} failed: {e}"),
                Err(_) => {
                    panic!("round {round}: publisher {p} did not stop within 15s of the kill")
                }
            }
        }
        let settle = killed_at.elapsed();
        broker.restart();

        // What each publisher sent and had confirmed.
        let states: Vec<PubState> = states
            .iter()
            .map(|s| std::mem::take(&mut *s.lock().unwrap()))
            .collect();
        let attempted: usize = states.iter().map(|s| s.attempted.len()).sum();
        let confirmed: usize = states.iter().map(|s| s.confirmed.len()).sum();
        let nacked: u64 = states.iter().map(|s| s.nacked).sum();
        let unresolved: u64 = states.iter().map(|s| s.unresolved).sum();

        // Read everything back.
        let conn = connect(broker).await;
        {
            let ch = open_channel(&conn).await;
            passive_exchange(&ch, &top.exchange)
                .await
                .unwrap_or_else(|e| panic!("round {round}: durable exchange lost: {e:?}"));
        }
        let got_a = consume_all(&conn, &top.queue_a).await;
        let got_b = consume_all(&conn, &top.queue_b).await;

        let mut problems: Vec<String> = Vec::new();
        let mut extra = 0usize; // present but never confirmed (allowed)
        let mut expected_total = 0usize;
        for (qname, is_a, got) in [("A", true, &got_a), ("B", false, &got_b)] {
            let mut present: HashSet<(u32, u64)> = HashSet::new();
            let mut last: BTreeMap<u32, u64> = BTreeMap::new();
            let mut foreign = Vec::new();
            let mut misrouted = Vec::new();
            let mut out_of_order = Vec::new();
            let mut not_redelivered = Vec::new();
            for g in got.iter() {
                if !g.redelivered {
                    not_redelivered.push(g.body.clone());
                }
                let Some((r, p, n, label)) = parse_body(&g.body) else {
                    foreign.push(g.body.clone());
                    continue;
                };
                if r != round
                    || p >= PUBLISHERS
                    || !states[p as usize].attempted.contains(&n)
                    || label != route_of(n)
                {
                    // From an earlier (consumed and acked) round, or never sent.
                    foreign.push(g.body.clone());
                    continue;
                }
                let (to_a, to_b) = label_targets(&label);
                if (is_a && !to_a) || (!is_a && !to_b) {
                    misrouted.push(g.body.clone());
                }
                if let Some(prev) = last.get(&p) {
                    if n <= *prev {
                        out_of_order.push(format!("p{p}: {n} after {prev}"));
                    }
                }
                last.insert(p, n);
                present.insert((p, n));
                if !states[p as usize].confirmed.contains(&n) {
                    extra += 1;
                }
            }
            let mut missing = Vec::new();
            for (p, st) in states.iter().enumerate() {
                for &n in &st.confirmed {
                    let (to_a, to_b) = label_targets(route_of(n));
                    if (is_a && to_a) || (!is_a && to_b) {
                        expected_total += 1;
                        if !present.contains(&(p as u32, n)) {
                            missing.push(format!("r{round}-p{p}-{n}-{}", route_of(n)));
                        }
                    }
                }
            }
            let (a, b) = (got.len(), missing.len());
            println!("  round {round} queue {qname}: recovered {a}, confirmed-and-missing {b}");
            for (what, list) in [
                ("confirmed messages missing", &missing),
                (
                    "messages not published this round (old or unknown)",
                    &foreign,
                ),
                ("messages in a queue they were not routed to", &misrouted),
                ("per-publisher order violations", &out_of_order),
                ("messages without redelivered=true", &not_redelivered),
            ] {
                if !list.is_empty() {
                    problems.push(format!(
                        "round {round} queue {qname}: {} {what}: {}",
                        list.len(),
                        sample(list, 8)
                    ));
                }
            }
        }
        println!(
            "round {round}: killed {delay:?} after the first confirm; attempted {attempted}, \
             confirmed {confirmed} ({expected_total} queue copies), nacked {nacked}, \
             unresolved {unresolved}; recovered A={} B={}; present but unconfirmed {extra}; \
             publishers settled {settle:?} after the kill",
            got_a.len(),
            got_b.len()
        );
        for (p, st) in states.iter().enumerate() {
            println!(
                "  publisher {p}: attempted {}, confirmed {}, stopped: {}",
                st.attempted.len(),
                st.confirmed.len(),
                st.stopped
            );
        }
        assert!(confirmed > 0, "round {round}: nothing was confirmed");
        assert!(
            problems.is_empty(),
            "round {round} (seed {seed}):\n{}",
            problems.join("\n")
        );
        // Everything was consumed and acked: close cleanly so the acks are
        // processed before the next round's publishes (whose synced writes
        // then carry them to disk before the next kill).
        let _ = within("connection.close", conn.close(200, "bye".into())).await;
    }
}

// ---------------------------------------------------------------------------
// 2. delivered but unacked messages survive, acked ones do not
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_survive_kill9_in_order() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let q = unique("unacked-q");
    let barrier_q = unique("unacked-barrier");
    let (conn, ch) = connect_channel(&broker).await;
    declare_durable_queue(&ch, &q, FieldTable::default()).await;
    declare_durable_queue(&ch, &barrier_q, FieldTable::default()).await;
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
        declare_durable_queue(&ch, &q, FieldTable::default()).await;
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
            declare_durable_queue(&ch, q, queue_args(TTL)).await;
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
        declare_durable_queue(&ch, &q, FieldTable::default()).await;
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
        .args(["--management-listen", "off"])
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
    declare_durable_queue(&ch, &q, FieldTable::default()).await;
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
