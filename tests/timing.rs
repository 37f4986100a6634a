//! The broker's own timing, in-process under paused tokio time
//! (`common::inproc`): heartbeats, TTLs, `x-message-ttl`, expiration and
//! dead-lettering by the sweeper. A virtual second costs nothing, so these
//! assert the exact moments (2 missed heartbeat intervals, a TTL of 150 ms)
//! without real sleeps. Their TCP twins (lapin, real time) still run against
//! an external broker (`HOPPER_TEST_EXTERNAL_URI`) to compare with RabbitMQ.

mod common;

use common::inproc::{self, InProc};
use common::raw::{self, ReadError};
use lapin::types::{AMQPValue, FieldTable, LongString};
use std::time::Duration;
use tokio::time::Instant;

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v))
}

/// A client that sends nothing after the handshake (heartbeat 1 s) is
/// dropped once two intervals have passed without a frame, not before, and
/// gets the broker's heartbeats meanwhile.
#[test]
fn silent_client_is_disconnected_after_two_missed_heartbeats() {
    if inproc::skip_in_external_mode() {
        return;
    }
    inproc::paused(async {
        let broker = InProc::start().await;
        let mut c = broker.raw_open(1).await;
        let started = Instant::now();
        let mut heartbeats = 0;
        loop {
            match c.read_frame(Duration::from_secs(60)).await {
                Ok(f) if f.typ == raw::FRAME_HEARTBEAT => {
                    assert_eq!(f.channel, 0, "heartbeat on non-zero channel");
                    assert!(f.payload.is_empty(), "heartbeat with payload");
                    heartbeats += 1;
                }
                // A connection.close before the socket goes away is tolerated.
                Ok(f) => assert_eq!(f.ids(), Some((10, 50)), "unexpected frame {f:?}"),
                Err(ReadError::Closed) => break,
                Err(e) => panic!("broker kept a silent heartbeat=1 client: {e:?}"),
            }
        }
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_secs(2),
            "disconnected before two missed intervals: {elapsed:?}"
        );
        assert!(
            elapsed <= Duration::from_secs(3),
            "disconnected late: {elapsed:?}"
        );
        assert!(heartbeats >= 1, "broker sent no heartbeat before giving up");
        broker.stop().await;
    });
}

/// A client that heartbeats every 500 ms stays connected for a minute and
/// receives the broker's heartbeats.
#[test]
fn broker_sends_heartbeats_and_keeps_a_live_client() {
    if inproc::skip_in_external_mode() {
        return;
    }
    inproc::paused(async {
        let broker = InProc::start().await;
        let mut c = broker.raw_open(1).await;
        let started = Instant::now();
        let mut heartbeats = 0;
        while started.elapsed() < Duration::from_secs(60) {
            c.send(&raw::heartbeat_frame()).await;
            let until = Instant::now() + Duration::from_millis(500);
            loop {
                let left = until.saturating_duration_since(Instant::now());
                match c.read_frame(left).await {
                    Ok(f) if f.typ == raw::FRAME_HEARTBEAT => heartbeats += 1,
                    Ok(f) => panic!("unexpected frame {f:?}"),
                    Err(ReadError::Timeout) => break,
                    Err(e) => panic!("connection lost while heartbeating: {e:?}"),
                }
            }
        }
        assert!(
            heartbeats >= 30,
            "expected a heartbeat about every second for 60 s, got {heartbeats}"
        );
        // Still alive and usable.
        c.open_channel(1).await;
        c.close().await;
        broker.stop().await;
    });
}

/// `x-message-ttl`: the message is there until its TTL, gone after it.
#[test]
fn queue_message_ttl_expires_messages() {
    if inproc::skip_in_external_mode() {
        return;
    }
    inproc::paused(async {
        let broker = InProc::start().await;
        let mut c = broker.raw_open(0).await;
        c.open_channel(1).await;
        let q = "ttl";
        c.declare(1, q, args(&[("x-message-ttl", AMQPValue::LongInt(150))]))
            .await;
        c.publish(1, "", q, b"short-lived", None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.count(1, q).await, 1, "expired before its x-message-ttl");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.get(1, q).await, None, "message outlived x-message-ttl");
        c.close().await;
        broker.stop().await;
    });
}

/// A message's `expiration` expires it alone; the one without stays.
#[test]
fn per_message_expiration_expires_messages() {
    if inproc::skip_in_external_mode() {
        return;
    }
    inproc::paused(async {
        let broker = InProc::start().await;
        let mut c = broker.raw_open(0).await;
        c.open_channel(1).await;
        let q = "expiration";
        c.declare(1, q, FieldTable::default()).await;
        c.publish(1, "", q, b"expiring", Some("150")).await;
        c.publish(1, "", q, b"staying", None).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.count(1, q).await, 2, "expired before its expiration");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(c.drain(1, q).await, vec![b"staying".to_vec()]);
        c.close().await;
        broker.stop().await;
    });
}

/// Two queues dead-lettering expired messages into each other: the message
/// is dropped when it comes round (no rejection in the cycle), never loops.
#[test]
fn dead_letter_cycle_without_rejection_is_dropped() {
    if inproc::skip_in_external_mode() {
        return;
    }
    inproc::paused(async {
        let broker = InProc::start().await;
        let mut c = broker.raw_open(0).await;
        c.open_channel(1).await;
        for (q, next) in [("cycle-a", "cycle-b"), ("cycle-b", "cycle-a")] {
            c.declare(
                1,
                q,
                args(&[
                    ("x-message-ttl", AMQPValue::LongInt(50)),
                    ("x-dead-letter-exchange", s("")),
                    ("x-dead-letter-routing-key", s(next)),
                ]),
            )
            .await;
        }
        c.publish(1, "", "cycle-a", b"round and round", None).await;
        // Expired from a at 50 ms (sweeper: every 100 ms), into b, expired
        // there 50 ms later, dropped when it would come back to a.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(c.count(1, "cycle-a").await, 0);
        assert_eq!(c.count(1, "cycle-b").await, 0);
        // The broker is still healthy.
        c.declare(1, "after", FieldTable::default()).await;
        c.publish(1, "", "after", b"still alive", None).await;
        assert_eq!(c.get(1, "after").await, Some(b"still alive".to_vec()));
        c.close().await;
        broker.stop().await;
    });
}
