//! The deduplication promise under real crashes: confirming publishers that
//! re-publish every message they never saw confirmed (same `message-id`, the
//! at-least-once rule), consumers that ack after processing, and kill -9 of
//! the broker at random moments. Nothing confirmed may be lost, and a retry
//! must never create a second copy on the deduplicating exchange
//! (redeliveries of unacked messages are allowed: they are the same copy).

mod common;

use common::*;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, ExchangeKind};
use rand::Rng;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;

const PUBLISHERS: usize = 3;
const CONSUMERS: usize = 2;
const WINDOW: usize = 64;
/// New messages a publisher sends per 5 ms while the broker is being killed
/// (paced, so publishing spans every kill).
const BURST: usize = 16;

/// Kills per run: `DEDUP_CRASH_KILLS` (default 6; the scenario is 10).
fn kills() -> usize {
    std::env::var("DEDUP_CRASH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

#[derive(Default)]
struct PubState {
    confirmed: BTreeSet<u64>,
    /// Ids below this were published at least once.
    sent_upto: u64,
    /// Which attempt (1, 2, ...) the next publish of an id is.
    attempts: HashMap<u64, u32>,
}

/// One delivery as a consumer saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    attempt: u32,
}

fn table(items: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in items {
        t.insert((*k).into(), v.clone());
    }
    t
}

async fn topology(uri: &str, x: &str, q: &str) {
    let conn = connect_uri(uri).await.expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        x.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        table(&[
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-cache-size", AMQPValue::LongInt(1_000_000)),
        ]),
    )
    .await
    .expect("exchange.declare");
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.queue_bind(
        q.into(),
        x.into(),
        "k".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
    let _ = conn.close(200, "bye".into()).await;
}

/// Publish until the connection dies: first every id sent before and not
/// confirmed, then (with `new_ids`) new ones, paced. Without `new_ids` it
/// returns true once every id sent so far is confirmed.
async fn publisher(
    uri: String,
    x: String,
    p: usize,
    state: Arc<Mutex<PubState>>,
    new_ids: bool,
) -> bool {
    let Ok(conn) = connect_uri(&uri).await else {
        return false;
    };
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    if ch.confirm_select(Default::default()).await.is_err() {
        return false;
    }
    let mut todo: Vec<u64> = {
        let s = state.lock().await;
        (0..s.sent_upto)
            .filter(|i| !s.confirmed.contains(i))
            .rev()
            .collect()
    };
    let mut inflight = futures::stream::FuturesUnordered::new();
    let mut burst = 0;
    loop {
        while inflight.len() < WINDOW {
            let next = match todo.pop() {
                Some(i) => Some(i),
                None if new_ids => {
                    burst += 1;
                    if burst % BURST == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    let mut s = state.lock().await;
                    s.sent_upto += 1;
                    Some(s.sent_upto - 1)
                }
                None => None,
            };
            let Some(i) = next else { break };
            let attempt = {
                let mut s = state.lock().await;
                let a = s.attempts.entry(i).or_insert(0);
                *a += 1;
                *a
            };
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("p{p}-{i}").into())
                .with_headers(table(&[("attempt", AMQPValue::LongUInt(attempt))]));
            let Ok(confirm) = ch
                .basic_publish(
                    x.as_str().into(),
                    "k".into(),
                    BasicPublishOptions::default(),
                    format!("p{p}-{i}").as_bytes(),
                    props,
                )
                .await
            else {
                return false;
            };
            inflight.push(async move { (i, confirm.await) });
        }
        let Some((i, res)) = inflight.next().await else {
            return true;
        };
        match res {
            Ok(Confirmation::Ack(_)) => {
                state.lock().await.confirmed.insert(i);
            }
            Ok(_) => todo.push(i), // nacked: publish again
            Err(_) => return false,
        }
    }
}

/// Consume and ack after recording, until the connection dies or `stop`.
async fn consumer(uri: String, q: String, seen: Arc<Mutex<Vec<Seen>>>) {
    let Ok(conn) = connect_uri(&uri).await else {
        return;
    };
    let Ok(ch) = conn.create_channel().await else {
        return;
    };
    if ch.basic_qos(50, BasicQosOptions::default()).await.is_err() {
        return;
    }
    let Ok(mut consumer) = ch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
    else {
        return;
    };
    while let Some(Ok(d)) = consumer.next().await {
        let id = d
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        let attempt = d
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("attempt").cloned())
            .and_then(|v| match v {
                AMQPValue::LongUInt(n) => Some(n),
                _ => None,
            })
            .unwrap_or(0);
        seen.lock().await.push(Seen { id, attempt });
        if d.acker.ack(BasicAckOptions::default()).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_kill9_with_retries_and_no_retry_duplicates() {
    let mut broker = Broker::start();
    if broker.is_external() {
        return; // kills the broker; needs the deduplication extension
    }
    let (x, q) = (unique("crash-dedup-x"), unique("crash-dedup-q"));
    topology(&broker.uri(), &x, &q).await;
    let states: Vec<Arc<Mutex<PubState>>> = (0..PUBLISHERS)
        .map(|_| Arc::new(Mutex::new(PubState::default())))
        .collect();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let kills = kills();
    for _round in 0..kills {
        let mut tasks = Vec::new();
        for (p, s) in states.iter().enumerate() {
            tasks.push(tokio::spawn({
                let (uri, x, s) = (broker.uri(), x.clone(), s.clone());
                async move {
                    publisher(uri, x, p, s, true).await;
                }
            }));
        }
        for _ in 0..CONSUMERS {
            tasks.push(tokio::spawn(consumer(
                broker.uri(),
                q.clone(),
                seen.clone(),
            )));
        }
        let wait = rand::rng().random_range(300..1200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        broker.kill9();
        // The clients' connections are dead: stop them (state only changes on
        // a confirm, so nothing half-done is left behind).
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        broker.restart();
    }
    // No more kills: every publisher finishes, the consumers drain.
    let consumers: Vec<_> = (0..CONSUMERS)
        .map(|_| tokio::spawn(consumer(broker.uri(), q.clone(), seen.clone())))
        .collect();
    for (p, s) in states.iter().enumerate() {
        let done = within_for(
            Duration::from_secs(120),
            "final publish",
            publisher(broker.uri(), x.clone(), p, s.clone(), false),
        )
        .await;
        assert!(done, "publisher {p} could not finish");
    }
    // Drain: done when every id arrived and nothing new came for 0.5 s, or
    // (something is missing) nothing new came for 3 s.
    let mut total = 0;
    for s in &states {
        total += s.lock().await.sent_upto;
    }
    let (mut last, mut quiet) = (usize::MAX, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen = seen.lock().await;
        let distinct: HashSet<&str> = seen.iter().map(|s| s.id.as_str()).collect();
        quiet = if seen.len() == last { quiet + 1 } else { 0 };
        last = seen.len();
        if (distinct.len() as u64 >= total && quiet >= 1) || quiet >= 6 {
            break;
        }
    }
    for c in consumers {
        c.abort();
    }
    let seen = seen.lock().await;
    let mut confirmed = 0usize;
    let mut lost = Vec::new();
    for (p, s) in states.iter().enumerate() {
        let s = s.lock().await;
        confirmed += s.confirmed.len();
        for i in &s.confirmed {
            let id = format!("p{p}-{i}");
            if !seen.iter().any(|d| d.id == id) {
                lost.push(id);
            }
        }
    }
    let mut by_id: HashMap<&str, Vec<u32>> = HashMap::new();
    for d in seen.iter() {
        by_id.entry(d.id.as_str()).or_default().push(d.attempt);
    }
    let retry_dups: Vec<_> = by_id
        .iter()
        .filter(|(_, attempts)| attempts.iter().collect::<HashSet<_>>().len() > 1)
        .map(|(id, a)| format!("{id}: attempts {a:?}"))
        .collect();
    let redeliveries: usize = by_id
        .values()
        .map(|a| a.len() - a.iter().collect::<HashSet<_>>().len())
        .sum();
    let retries: u32 = {
        let mut n = 0;
        for s in &states {
            n += s.lock().await.attempts.values().map(|a| a - 1).sum::<u32>();
        }
        n
    };
    eprintln!(
        "dedup crash test: {kills} kills, confirmed {confirmed}, retries published {retries}, \
         lost {}, duplicates from redelivery {redeliveries}, duplicates from retries {}",
        lost.len(),
        retry_dups.len()
    );
    assert!(lost.is_empty(), "confirmed but never delivered: {lost:?}");
    assert!(
        retry_dups.is_empty(),
        "retries created second copies: {retry_dups:?}"
    );
}
