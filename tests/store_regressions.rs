//! Store bugs found in review, each with the test that failed before the fix.

mod common;

use common::*;
use lapin::options::{BasicAckOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn durable_queue(ch: &lapin::Channel, prefix: &str) -> String {
    declare_durable_queue(ch, prefix, FieldTable::default()).await
}

/// A message fanned out to two durable queues is stored once. Deleting one
/// queue while a delivery from it is unacked, then acking that delivery, must
/// not delete the body the other queue still needs (it used to count the
/// queue's reference twice).
#[tokio::test]
async fn ack_after_queue_delete_keeps_the_other_queues_copy() {
    let mut broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let x = unique("fan");
    within(
        "exchange.declare",
        ch.exchange_declare(
            x.as_str().into(),
            lapin::ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .expect("exchange.declare");
    let a = durable_queue(&ch, "a").await;
    let b = durable_queue(&ch, "b").await;
    for q in [&a, &b] {
        within(
            "queue.bind",
            ch.queue_bind(
                q.as_str().into(),
                x.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("queue.bind");
    }
    confirm_select(&ch).await;
    assert!(publish_confirmed(&ch, &x, "", b"shared", persistent())
        .await
        .is_ack());

    let cch = conn.create_channel().await.expect("channel");
    let msg = get(&cch, &a, false).await.expect("message in a");
    within(
        "queue.delete",
        ch.queue_delete(a.as_str().into(), Default::default()),
    )
    .await
    .expect("queue.delete");
    within("ack", msg.delivery.acker.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    // Close cleanly so the (unsynced) removal is written before the kill.
    let _ = within("close", conn.close(200, "bye".into())).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    broker.kill9();
    broker.restart();
    let (conn, ch) = connect_channel(&broker).await;
    let got = get(&ch, &b, true).await.expect("b still has its message");
    assert_eq!(got.delivery.data, b"shared");
    assert!(got.delivery.redelivered);
    let _ = conn.close(200, "bye".into()).await;
}

/// A durable queue deeper than its in-memory budget pages stored bodies out
/// and reads them back in order when a consumer reaches them.
#[tokio::test]
async fn deep_queue_reads_paged_out_messages_back_in_order() {
    let broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let (conn, ch) = connect_channel(&broker).await;
    let q = durable_queue(&ch, "deep").await;
    confirm_select(&ch).await;
    // 24 MiB of 64 KiB messages: well past the 8 MiB a queue keeps in memory.
    let n = 384usize;
    let mut pending = Vec::new();
    for i in 0..n {
        let mut body = vec![(i % 251) as u8; 64 * 1024];
        body[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let c = within(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                q.as_str().into(),
                Default::default(),
                &body,
                persistent(),
            ),
        )
        .await
        .expect("publish");
        pending.push(c);
    }
    for c in pending {
        assert!(within("confirm", c).await.expect("confirm").is_ack());
    }
    assert_eq!(message_count(&ch, &q).await, n as u32);
    for i in 0..n {
        let m = get(&ch, &q, true).await.expect("message");
        let d = &m.delivery.data;
        assert_eq!(d.len(), 64 * 1024);
        assert_eq!(
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes")),
            i as u64
        );
        assert!(
            d[8..].iter().all(|b| *b == (i % 251) as u8),
            "body {i} corrupted"
        );
    }
    assert!(get(&ch, &q, true).await.is_none());
    let _ = conn.close(200, "bye".into()).await;
}

/// Start the broker on `dir` and expect it to refuse: non-zero exit, no
/// listening line, and an error naming the data directory.
fn expect_refusal(dir: &std::path::Path) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_hopper"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--management-listen",
            "off",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hopper");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(_status) = child.try_wait().expect("wait") {
            break;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("broker kept running on a corrupt store");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "exit status {:?}", out.status);
    assert!(!stdout.contains("listening"), "it started: {stdout}");
    stderr
}

/// A store RocksDB cannot open is a clear error at start, never an empty broker.
#[test]
fn unreadable_store_refuses_to_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("CURRENT"), b"MANIFEST-999999\n").expect("write");
    let err = expect_refusal(dir.path());
    assert!(err.contains("data directory"), "{err}");
}
