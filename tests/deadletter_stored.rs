//! Dead letters whose bodies are only in the store (here: messages recovered
//! after a restart, of which only the index is in memory) are read back off
//! the async workers and routed in their queue's order, for a length limit
//! and for an expiry. Both restart the broker, so they skip themselves when
//! `HOPPER_TEST_EXTERNAL_URI` points the suite elsewhere.

mod common;

use common::durable::*;
use common::*;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use std::time::{Duration, Instant};

async fn publish_confirmed(ch: &Channel, queue: &str, bodies: &[String]) {
    let mut confirms = Vec::new();
    for body in bodies {
        let c = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            ),
        )
        .await
        .expect("basic.publish");
        confirms.push(c);
    }
    for c in confirms {
        let c = within("publisher confirm", c).await.expect("confirm");
        assert!(c.is_ack(), "not confirmed: {c:?}");
    }
}

/// Take `n` messages with no-ack basic.get, waiting (bounded) for those
/// still being written: a persistent dead letter is counted in its queue
/// before its write is synced, but handed out only after.
async fn get_n(ch: &Channel, queue: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        match get(ch, queue, true).await {
            Some(m) => out.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
            None => {
                assert!(Instant::now() < deadline, "{queue} gave only {out:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(
        get(ch, queue, true).await.is_none(),
        "{queue} holds more than {n}"
    );
    out
}

fn bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:02}")).collect()
}

fn dead_letter_args(target: &str, extra: (&str, AMQPValue)) -> FieldTable {
    table(&[
        ("x-dead-letter-exchange", long_str("")),
        ("x-dead-letter-routing-key", long_str(target)),
        extra,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_heads_dropped_by_a_length_limit_dead_letter_in_order() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let src = unique("dl-stored-src");
    let dlq = unique("dl-stored-dlq");
    {
        let (_conn, ch) = connect_channel(&broker).await;
        durable_queue(&ch, &dlq, FieldTable::default()).await;
        let args = dead_letter_args(&dlq, ("x-max-length", AMQPValue::LongInt(10)));
        durable_queue(&ch, &src, args).await;
        confirm_select(&ch).await;
        publish_confirmed(&ch, &src, &bodies("a", 10)).await;
    }
    broker.restart();

    let (_conn, ch) = connect_channel(&broker).await;
    confirm_select(&ch).await;
    // Each of these drops one recovered (stored-only) head to the DLQ.
    publish_confirmed(&ch, &src, &bodies("b", 10)).await;
    let dead = get_n(&ch, &dlq, 10).await;
    assert_eq!(dead, bodies("a", 10), "dead letters, in order");
    let left: Vec<String> = get_all(&ch, &src)
        .await
        .into_iter()
        .map(|g| g.body)
        .collect();
    assert_eq!(left, bodies("b", 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_that_expire_dead_letter_in_order() {
    let mut broker = Broker::start();
    skip_if_external!(broker);
    let src = unique("dl-ttl-src");
    let dlq = unique("dl-ttl-dlq");
    {
        let (_conn, ch) = connect_channel(&broker).await;
        durable_queue(&ch, &dlq, FieldTable::default()).await;
        let args = dead_letter_args(&dlq, ("x-message-ttl", AMQPValue::LongInt(1500)));
        durable_queue(&ch, &src, args).await;
        confirm_select(&ch).await;
        publish_confirmed(&ch, &src, &bodies("t", 30)).await;
    }
    broker.restart();

    let (_conn, ch) = connect_channel(&broker).await;
    let dead = get_n(&ch, &dlq, 30).await;
    assert_eq!(dead, bodies("t", 30), "expired dead letters, in order");
    assert_eq!(passive_queue(&ch, &src).await.expect("passive"), 0);
}
