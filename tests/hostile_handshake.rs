//! Hostile clients during the handshake and slowloris clients, each case
//! while the bystander of tests/common/hostile.rs keeps publishing and
//! consuming: bad frames before connection.open-ok, bytes trickled so slowly
//! that the handshake timeout or the heartbeat timeout must end them.
//!
//! Run against RabbitMQ with `HOPPER_TEST_EXTERNAL_URI=amqp://guest:guest@127.0.0.1:5672/%2f`.

mod common;

use common::hostile::*;
use common::inproc::{self, InProc};
use common::raw::{self, RawClient};
use common::*;
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::FieldTable;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

// ------------------------------------------------------- during the handshake

#[tokio::test]
async fn bad_frames_during_the_handshake_close_the_connection() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let big_start_ok = {
        // Client properties of ~5000 bytes: over the 4096-byte frame limit
        // in force until tune-ok.
        let mut props = FieldTable::default();
        props.insert(
            "padding".into(),
            lapin::types::AMQPValue::LongString("x".repeat(5000).into()),
        );
        raw::method_frame(
            0,
            &AMQPClass::Connection(proto::connection::AMQPMethod::StartOk(
                proto::connection::StartOk {
                    client_properties: props,
                    mechanism: "PLAIN".into(),
                    response: "\0guest\0guest".into(),
                    locale: "en_US".into(),
                },
            )),
        )
    };
    let mut bad_end = start_ok_bytes();
    let last = bad_end.len() - 1;
    bad_end[last] = 0;
    // (what is sent instead of start-ok, the code RabbitMQ 3.10 logs)
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("HTTP", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 501),
        ("start-ok over 4096 bytes", big_start_ok, 501),
        (
            "size 200000",
            header_only(raw::FRAME_METHOD, 0, 200_000),
            501,
        ),
        ("bad frame end", bad_end, 501),
        (
            "channel.open on 1",
            raw::method_frame(1, &raw::channel_open()),
            505,
        ),
        (
            "heartbeat on 1",
            raw::frame(raw::FRAME_HEARTBEAT, 1, &[]),
            505,
        ),
        ("content header on 0", raw::header_frame(0, 3), 505),
        (
            "queue.declare on 0",
            raw::method_frame(0, &declare("q", false)),
            504,
        ),
        ("tune-ok before start-ok", tune_ok_bytes(0), 504),
    ];
    let mut tasks = Vec::new();
    for (name, bytes, code) in cases {
        let addr = broker.addr();
        tasks.push(tokio::spawn(async move {
            let mut c = RawClient::connect(addr).await;
            c.send(raw::PROTOCOL_HEADER).await;
            c.expect_method(0).await;
            c.send(&bytes).await;
            // RabbitMQ sends nothing before connection.open: it logs the
            // code, waits 3 s (so failed handshakes cannot be retried in a
            // tight loop) and drops the socket. We send connection.close
            // with that code; either way the socket must close.
            if let Some(close) = c.close_or_drop().await {
                assert_eq!(close.code, code, "{name}: {close:?}");
            }
            c.expect_closed(CLOSE_TIMEOUT).await;
        }));
    }
    // connection.open before tune-ok.
    let addr = broker.addr();
    tasks.push(tokio::spawn(async move {
        let mut c = RawClient::connect(addr).await;
        c.start_and_tune_begin(raw::Auth::Plain("guest", "guest"))
            .await;
        c.expect_method(0).await;
        c.send_method(
            0,
            &AMQPClass::Connection(proto::connection::AMQPMethod::Open(
                proto::connection::Open {
                    virtual_host: "/".into(),
                },
            )),
        )
        .await;
        if let Some(close) = c.close_or_drop().await {
            assert_eq!(close.code, 504, "open before tune-ok: {close:?}");
        }
        c.expect_closed(CLOSE_TIMEOUT).await;
    }));
    for t in tasks {
        within_for(CLOSE_TIMEOUT * 2, "a bad handshake", t)
            .await
            .expect("task");
    }
    by.finish().await;
}

// --------------------------------------------------------------- slowloris

/// Write one byte every `every` (from `bytes`, then heartbeat frames forever)
/// until the broker closes the socket; panics if that takes over `limit`.
/// `bytes` empty: send nothing at all.
async fn trickle_until_closed<S>(stream: S, bytes: Vec<u8>, every: Duration, limit: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let silent = bytes.is_empty();
    let writer = tokio::spawn(async move {
        let forever = raw::heartbeat_frame()
            .into_iter()
            .cycle()
            .take_while(move |_| !silent);
        for b in bytes.into_iter().chain(forever) {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
    // The broker may talk (connection.start, heartbeats); we only wait for EOF.
    within_for(limit, "the broker to drop a trickling client", async {
        let mut sink = Vec::with_capacity(4096);
        loop {
            sink.clear();
            match rd.read_buf(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    writer.abort();
}

fn start_ok_bytes() -> Vec<u8> {
    let mut caps = FieldTable::default();
    caps.insert(
        "connection.blocked".into(),
        lapin::types::AMQPValue::Boolean(true),
    );
    let mut props = FieldTable::default();
    props.insert(
        "capabilities".into(),
        lapin::types::AMQPValue::FieldTable(caps),
    );
    raw::method_frame(
        0,
        &AMQPClass::Connection(proto::connection::AMQPMethod::StartOk(
            proto::connection::StartOk {
                client_properties: props,
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            },
        )),
    )
}

fn tune_ok_bytes(heartbeat: u16) -> Vec<u8> {
    raw::method_frame(
        0,
        &AMQPClass::Connection(proto::connection::AMQPMethod::TuneOk(
            proto::connection::TuneOk {
                channel_max: 2047,
                frame_max: 131072,
                heartbeat,
            },
        )),
    )
}

/// (sent at once, then trickled): trickled protocol header; header then
/// trickled start-ok; start-ok then trickled tune-ok.
fn slowloris_scripts() -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (Vec::new(), raw::PROTOCOL_HEADER.to_vec()),
        (raw::PROTOCOL_HEADER.to_vec(), start_ok_bytes()),
        (
            [raw::PROTOCOL_HEADER.to_vec(), start_ok_bytes()].concat(),
            tune_ok_bytes(0),
        ),
    ]
}

#[tokio::test]
async fn slowloris_before_the_handshake_ends_hits_handshake_timeout() {
    // Against hopper (handshake_timeout = 1 in its config) the twin below.
    let Some(broker) = external_only(
        "hostile_handshake.rs: paused_slowloris_before_the_handshake_ends_hits_handshake_timeout",
    ) else {
        return;
    };
    let by = Bystander::start(&broker).await;
    // RabbitMQ's handshake_timeout is 10 s by default.
    let limit = Duration::from_secs(30);
    let mut tasks = Vec::new();
    // Trickled protocol header; header then trickled start-ok; start-ok then
    // trickled tune-ok. Each is a byte every 100 ms: never idle, never done.
    let scripts = slowloris_scripts();
    for _ in 0..5 {
        for (at_once, trickled) in scripts.clone() {
            let addr = broker.addr();
            tasks.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(&at_once).await.expect("write");
                trickle_until_closed(s, trickled, Duration::from_millis(100), limit).await;
            }));
        }
    }
    for t in tasks {
        t.await.expect("slowloris task");
    }
    by.finish().await;
}

/// The slowloris scripts of the test above against hopper in-process, with
/// `handshake_timeout = 1`, under paused time: each client is dropped one
/// second after it connected, however it trickles.
#[test]
fn paused_slowloris_before_the_handshake_ends_hits_handshake_timeout() {
    if inproc::skip_in_external_mode() {
        return;
    }
    inproc::paused(async {
        let broker = InProc::start_with(|c| c.limits.handshake_timeout = 1).await;
        let mut tasks = Vec::new();
        for (at_once, trickled) in slowloris_scripts() {
            let mut c = broker.raw();
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                c.send(&at_once).await;
                let limit = Duration::from_secs(30);
                trickle_until_closed(c.into_stream(), trickled, Duration::from_millis(100), limit)
                    .await;
                started.elapsed()
            }));
        }
        for t in tasks {
            let elapsed = t.await.expect("slowloris task");
            assert!(
                elapsed >= Duration::from_secs(1),
                "dropped before handshake_timeout: {elapsed:?}"
            );
            assert!(
                elapsed <= Duration::from_millis(1100),
                "kept past handshake_timeout: {elapsed:?}"
            );
        }
        assert_healthy(&broker).await;
        broker.stop().await;
    });
}

/// In-process, paused time: after the handshake (heartbeat 1 s), a body
/// frame whose payload trickles in a byte every 200 ms (or stalls) is never
/// a whole frame, so the connection is dropped two heartbeat intervals after
/// the last whole frame, though bytes keep coming.
#[test]
fn trickle_after_the_handshake_hits_the_heartbeat_timeout() {
    if inproc::skip_in_external_mode() {
        return;
    }
    inproc::paused(async {
        let broker = InProc::start().await;
        let mut tasks = Vec::new();
        for stall in [false, true] {
            let mut c = broker.raw_open(1).await;
            c.open_channel(1).await;
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                // A body frame header announcing 100000 bytes, then its
                // payload a byte at a time: it would take hours to complete.
                c.send(&header_only(raw::FRAME_BODY, 1, 100_000)).await;
                let trickled = if stall {
                    Vec::new()
                } else {
                    vec![b'x'; 100_000]
                };
                let limit = Duration::from_secs(60);
                trickle_until_closed(c.into_stream(), trickled, Duration::from_millis(200), limit)
                    .await;
                started.elapsed()
            }));
        }
        for t in tasks {
            let elapsed = t.await.expect("trickle task");
            assert!(
                elapsed >= Duration::from_secs(2),
                "dropped before two heartbeat intervals: {elapsed:?}"
            );
            assert!(
                elapsed <= Duration::from_secs(3),
                "kept past two heartbeat intervals: {elapsed:?}"
            );
        }
        assert_healthy(&broker).await;
        broker.stop().await;
    });
}

/// A new in-process client declares, publishes and gets: the broker survived.
async fn assert_healthy(broker: &InProc) {
    let mut c = broker.raw_open(0).await;
    c.open_channel(1).await;
    c.declare(1, "healthy", FieldTable::default()).await;
    c.publish(1, "", "healthy", b"still alive", None).await;
    assert_eq!(c.get(1, "healthy").await, Some(b"still alive".to_vec()));
    c.close().await;
}
