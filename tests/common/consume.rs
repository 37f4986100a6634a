//! Shared by the consumer tests (tests/consume.rs, tests/consume_acks.rs).

use super::raw::{self, RawClient};
use super::*;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicConsumeOptions;
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use std::time::Duration;

pub const QUIET: Duration = Duration::from_millis(400);

pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

pub async fn consume_with(
    ch: &Channel,
    q: &str,
    tag: &str,
    opts: BasicConsumeOptions,
) -> lapin::Result<Consumer> {
    within(
        "basic.consume",
        ch.basic_consume(q.into(), tag.into(), opts, FieldTable::default()),
    )
    .await
}

/// Wait until the queue holds `n` ready messages (requeues are asynchronous).
pub async fn wait_for_ready(ch: &Channel, q: &str, n: u32) {
    within_for(Duration::from_secs(5), "messages to be requeued", async {
        loop {
            if message_count(ch, q).await == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Gather deliveries from two consumers until neither receives anything for `QUIET`.
pub async fn gather_two(a: &mut Consumer, b: &mut Consumer) -> (Vec<Delivery>, Vec<Delivery>) {
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "deliveries never stop"
        );
        tokio::select! {
            d = a.next() => got_a.push(d.expect("consumer a cancelled").expect("consumer a error")),
            d = b.next() => got_b.push(d.expect("consumer b cancelled").expect("consumer b error")),
            _ = tokio::time::sleep(QUIET) => return (got_a, got_b),
        }
    }
}

pub async fn raw_channel_with_consumer(broker: &Broker) -> (RawClient, String) {
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_method(1, &raw::queue_declare("", false)).await;
    let q = match c.expect_method(1).await {
        AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(ok)) => ok.queue.to_string(),
        other => panic!("expected declare-ok, got {other:?}"),
    };
    (c, q)
}

pub fn ack(tag: u64, multiple: bool) -> AMQPClass {
    AMQPClass::Basic(proto::basic::AMQPMethod::Ack(proto::basic::Ack {
        delivery_tag: tag,
        multiple,
    }))
}
