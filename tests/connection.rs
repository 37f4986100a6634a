//! Connection-level behaviour: handshake, authentication, tuning, heartbeats.

mod common;

use common::raw::{self, Auth, RawClient, ReadError};
use common::*;
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::AMQPValue;
use std::time::{Duration, Instant};

#[tokio::test]
async fn lapin_connect_open_channel_and_close() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    assert!(conn.status().connected());
    let ch = within("channel.open", conn.create_channel()).await.unwrap();
    assert!(ch.status().connected());
    within("channel.close", ch.close(200, "bye".into()))
        .await
        .unwrap();
    within("connection.close", conn.close(200, "bye".into()))
        .await
        .unwrap();
    assert!(!conn.status().connected());
}

#[tokio::test]
async fn wrong_password_is_refused_with_403() {
    let broker = Broker::start();
    let res = connect_uri(&broker.uri_with("guest", "not-the-password", "%2f")).await;
    // lapin advertises authentication_failure_close, so RabbitMQ answers with
    // connection.close ACCESS_REFUSED instead of just dropping the socket.
    assert_code(res.map(|_| ()), 403);
}

#[tokio::test]
async fn unknown_user_is_refused_with_403() {
    let broker = Broker::start();
    let res = connect_uri(&broker.uri_with("nobody-here", "guest", "%2f")).await;
    assert_code(res.map(|_| ()), 403);
}

#[tokio::test]
async fn unknown_vhost_is_not_allowed_530() {
    let broker = Broker::start();
    let vhost = unique("no-such-vhost");
    let res = connect_uri(&broker.uri_with("guest", "guest", &vhost)).await;
    assert_code(res.map(|_| ()), 530);
}

async fn assert_header_refused(broker: &Broker, bytes: &[u8]) {
    let mut c = RawClient::connect(broker.addr()).await;
    c.send(bytes).await;
    let got = c
        .read_bytes(8, WAIT)
        .await
        .unwrap_or_else(|e| panic!("no protocol header reply to {bytes:?}: {e:?}"));
    assert_eq!(
        got,
        raw::PROTOCOL_HEADER.to_vec(),
        "reply to a bad protocol header must be AMQP 0-9-1's header"
    );
    match c.read_frame(WAIT).await {
        Err(ReadError::Closed) => {}
        other => panic!("socket should be closed after the header reply, got {other:?}"),
    }
}

#[tokio::test]
async fn unsupported_protocol_version_gets_0_9_1_header_and_close() {
    let broker = Broker::start();
    assert_header_refused(&broker, b"AMQP\x00\x00\x09\x02").await;
}

#[tokio::test]
async fn garbage_instead_of_protocol_header_gets_0_9_1_header_and_close() {
    let broker = Broker::start();
    assert_header_refused(&broker, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
}

#[tokio::test]
async fn amqp_0_10_header_gets_0_9_1_header_and_close() {
    let broker = Broker::start();
    assert_header_refused(&broker, b"AMQP\x01\x01\x00\x0a").await;
}

#[tokio::test]
async fn amqp_1_0_header_gets_0_9_1_header_and_close() {
    let broker = Broker::start();
    assert_header_refused(&broker, b"AMQP\x00\x01\x00\x00").await;
}

fn caps_of(start: &proto::connection::Start) -> lapin::types::FieldTable {
    match start.server_properties.inner().get("capabilities") {
        Some(AMQPValue::FieldTable(t)) => t.clone(),
        other => panic!("server-properties has no capabilities table: {other:?}"),
    }
}

#[tokio::test]
async fn raw_handshake_plain_and_start_contents() {
    let broker = Broker::start();
    let (mut c, hs) = RawClient::handshake(broker.addr(), Auth::Plain("guest", "guest"), 0).await;
    assert_eq!((hs.start.version_major, hs.start.version_minor), (0, 9));
    let mechs = String::from_utf8_lossy(hs.start.mechanisms.as_bytes()).to_string();
    let mechs: Vec<&str> = mechs.split_whitespace().collect();
    assert!(mechs.contains(&"PLAIN"), "mechanisms {mechs:?}");
    assert!(mechs.contains(&"AMQPLAIN"), "mechanisms {mechs:?}");
    let locales = String::from_utf8_lossy(hs.start.locales.as_bytes()).to_string();
    assert!(
        locales.split_whitespace().any(|l| l == "en_US"),
        "locales {locales:?}"
    );
    for key in ["product", "version", "platform", "capabilities"] {
        assert!(
            hs.start.server_properties.contains_key(key),
            "server-properties lacks {key}: {:?}",
            hs.start.server_properties
        );
    }
    let caps = caps_of(&hs.start);
    for cap in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "per_consumer_qos",
        "authentication_failure_close",
    ] {
        assert_eq!(
            caps.inner().get(cap),
            Some(&AMQPValue::Boolean(true)),
            "capability {cap} must be true; capabilities = {caps:?}"
        );
    }
    // The connection is usable: open a channel and declare a server-named queue.
    c.open_channel(1).await;
    c.send_method(1, &raw::queue_declare("", false)).await;
    match c.expect_method(1).await {
        AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(ok)) => {
            assert!(ok.queue.as_str().starts_with("amq.gen-"), "{:?}", ok.queue)
        }
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
    c.close().await;
}

#[tokio::test]
async fn tune_offers_rabbitmq_defaults() {
    let broker = Broker::start();
    let (mut c, hs) = RawClient::handshake(broker.addr(), Auth::Plain("guest", "guest"), 0).await;
    assert_eq!(hs.tune.frame_max, 131072, "frame_max");
    assert_eq!(hs.tune.channel_max, 2047, "channel_max");
    assert_eq!(hs.tune.heartbeat, 60, "heartbeat");
    c.close().await;
}

#[tokio::test]
async fn raw_handshake_amqplain() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::handshake(broker.addr(), Auth::AmqPlain("guest", "guest"), 0).await;
    c.open_channel(1).await;
    c.close().await;
}

#[tokio::test]
async fn raw_amqplain_wrong_password_gets_403_close() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr()).await;
    c.start_and_tune_begin(Auth::AmqPlain("guest", "wrong"))
        .await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 403, "{close:?}");
}

#[tokio::test]
async fn raw_plain_wrong_password_gets_403_close() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr()).await;
    c.start_and_tune_begin(Auth::Plain("guest", "wrong")).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 403, "{close:?}");
    assert!(close.text.starts_with("ACCESS_REFUSED"), "{close:?}");
}

#[tokio::test]
async fn unknown_sasl_mechanism_is_refused() {
    let broker = Broker::start();
    let mut c = RawClient::connect(broker.addr()).await;
    c.send(raw::PROTOCOL_HEADER).await;
    let _start = c.expect_method(0).await;
    c.send_method(
        0,
        &AMQPClass::Connection(proto::connection::AMQPMethod::StartOk(
            proto::connection::StartOk {
                client_properties: Default::default(),
                mechanism: "NO-SUCH-MECH".into(),
                response: "x".into(),
                locale: "en_US".into(),
            },
        )),
    )
    .await;
    // RabbitMQ closes the socket without a connection.close here (the
    // connection is not tuned yet); a close with an error code is fine too.
    if let Some(close) = c.close_or_drop().await {
        assert!(close.code >= 500, "{close:?}");
    }
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn client_connection_close_gets_close_ok() {
    let broker = Broker::start();
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.open_channel(2).await;
    c.send_method(0, &raw::connection_close()).await;
    match c.expect_method(0).await {
        AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(_)) => {}
        other => panic!("expected connection.close-ok, got {other:?}"),
    }
    // (RabbitMQ then waits for the client to close the socket.)
}

#[tokio::test]
async fn silent_client_is_disconnected_after_missed_heartbeats() {
    let Some(broker) =
        external_only("timing.rs: silent_client_is_disconnected_after_two_missed_heartbeats")
    else {
        return;
    };
    let (mut c, _) = RawClient::handshake(broker.addr(), Auth::Plain("guest", "guest"), 1).await;
    let started = Instant::now();
    let mut heartbeats = 0;
    // Send nothing from now on. The broker must give up after ~2 missed
    // intervals of 1 s; allow generous slack but not forever.
    loop {
        match c.read_frame(Duration::from_secs(8)).await {
            Ok(f) if f.typ == raw::FRAME_HEARTBEAT => {
                assert_eq!(f.channel, 0, "heartbeat on non-zero channel");
                assert!(f.payload.is_empty(), "heartbeat with payload");
                heartbeats += 1;
            }
            Ok(f) => {
                // A connection.close before the socket goes away is tolerated.
                assert_eq!(f.ids(), Some((10, 50)), "unexpected frame {f:?}");
            }
            Err(ReadError::Closed) => break,
            Err(e) => panic!(
                "broker kept a silent heartbeat=1 client for {:?}: {e:?}",
                started.elapsed()
            ),
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900),
        "disconnected too early: {elapsed:?}"
    );
    assert!(
        elapsed <= Duration::from_secs(6),
        "disconnected too late: {elapsed:?}"
    );
    assert!(heartbeats >= 1, "broker sent no heartbeat before giving up");
}

#[tokio::test]
async fn broker_sends_heartbeats_and_keeps_a_live_client() {
    let Some(broker) = external_only("timing.rs: broker_sends_heartbeats_and_keeps_a_live_client")
    else {
        return;
    };
    let (mut c, _) = RawClient::handshake(broker.addr(), Auth::Plain("guest", "guest"), 1).await;
    let started = Instant::now();
    let mut heartbeats = 0;
    let mut last_sent = Instant::now();
    c.send(&raw::heartbeat_frame()).await;
    while started.elapsed() < Duration::from_millis(3500) {
        if last_sent.elapsed() >= Duration::from_millis(400) {
            c.send(&raw::heartbeat_frame()).await;
            last_sent = Instant::now();
        }
        match c.read_frame(Duration::from_millis(200)).await {
            Ok(f) if f.typ == raw::FRAME_HEARTBEAT => heartbeats += 1,
            Ok(f) => panic!("unexpected frame {f:?}"),
            Err(ReadError::Timeout) => {}
            Err(e) => panic!("connection lost while heartbeating: {e:?}"),
        }
    }
    assert!(
        heartbeats >= 2,
        "expected >= 2 heartbeats from the broker in 3.5 s at heartbeat=1, got {heartbeats}"
    );
    // Still alive and usable.
    c.open_channel(1).await;
    c.close().await;
}

#[tokio::test]
async fn lapin_negotiates_server_tuning() {
    let broker = Broker::start();
    let conn = connect(&broker).await;
    assert_eq!(conn.configuration().frame_max(), 131072);
    assert_eq!(conn.configuration().channel_max(), 2047);
    assert_eq!(conn.configuration().heartbeat(), 60);
    let _ = conn.close(200, "bye".into()).await;
}

/// Handshake that answers tune with the given tune-ok values.
async fn handshake_with_tune_ok(
    broker: &Broker,
    channel_max: u16,
    frame_max: u32,
    heartbeat: u16,
) -> RawClient {
    let mut c = RawClient::connect(broker.addr()).await;
    c.start_and_tune_begin(Auth::Plain("guest", "guest")).await;
    match c.expect_method(0).await {
        AMQPClass::Connection(proto::connection::AMQPMethod::Tune(_)) => {}
        other => panic!("expected connection.tune, got {other:?}"),
    }
    c.send_method(
        0,
        &AMQPClass::Connection(proto::connection::AMQPMethod::TuneOk(
            proto::connection::TuneOk {
                channel_max,
                frame_max,
                heartbeat,
            },
        )),
    )
    .await;
    c.send_method(
        0,
        &AMQPClass::Connection(proto::connection::AMQPMethod::Open(
            proto::connection::Open {
                virtual_host: "/".into(),
            },
        )),
    )
    .await;
    c
}

#[tokio::test]
async fn tune_ok_outside_the_offered_limits_is_refused() {
    // RabbitMQ refuses a frame_max above its own or below 4096, and a
    // channel_max of 0 ("unlimited") or above its own. It drops the socket
    // (after a silent-close delay of ~3 s) without opening the connection.
    let broker = Broker::start();
    let cases = [
        ("frame_max above the server's", 2047u16, 262_144u32),
        ("frame_max below 4096", 2047, 1000),
        ("frame_max 0", 2047, 0),
        ("channel_max 0", 0, 131_072),
        ("channel_max above the server's", 4000, 131_072),
    ];
    let mut tasks = Vec::new();
    for (what, channel_max, frame_max) in cases {
        let mut c = handshake_with_tune_ok(&broker, channel_max, frame_max, 0).await;
        tasks.push(tokio::spawn(async move {
            loop {
                match c.read_frame(Duration::from_secs(8)).await {
                    Ok(f) if f.ids() == Some((10, 41)) => {
                        return Err(format!("{what}: connection was opened"))
                    }
                    Ok(f) if f.ids() == Some((10, 50)) => {
                        let close = c.answer_close(&f).await;
                        if close.code < 500 {
                            return Err(format!("{what}: close code {}", close.code));
                        }
                        return Ok(());
                    }
                    Ok(_) => continue,
                    Err(ReadError::Closed) => return Ok(()),
                    Err(e) => return Err(format!("{what}: {e:?}")),
                }
            }
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = within_for(Duration::from_secs(10), "refusal", t)
            .await
            .unwrap()
        {
            failures.push(e);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_broker_healthy(&broker).await;
}

#[tokio::test]
async fn smaller_client_frame_max_is_respected() {
    let broker = Broker::start();
    let mut c = handshake_with_tune_ok(&broker, 100, 4096, 0).await;
    match c.expect_method(0).await {
        AMQPClass::Connection(proto::connection::AMQPMethod::OpenOk(_)) => {}
        other => panic!("expected open-ok, got {other:?}"),
    }
    c.open_channel(1).await;
    c.send_method(1, &raw::queue_declare("", false)).await;
    let q = match c.expect_method(1).await {
        AMQPClass::Queue(proto::queue::AMQPMethod::DeclareOk(ok)) => ok.queue.to_string(),
        other => panic!("{other:?}"),
    };
    let body: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
    c.send_method(1, &raw::basic_publish("", &q)).await;
    c.send(&raw::header_frame(1, body.len() as u64)).await;
    for chunk in body.chunks(4096 - 8) {
        c.send(&raw::body_frame(1, chunk)).await;
    }
    c.send_method(
        1,
        &AMQPClass::Basic(proto::basic::AMQPMethod::Get(proto::basic::Get {
            queue: q.as_str().into(),
            no_ack: true,
        })),
    )
    .await;
    match c.expect_method(1).await {
        AMQPClass::Basic(proto::basic::AMQPMethod::GetOk(_)) => {}
        other => panic!("expected get-ok, got {other:?}"),
    }
    let h = c.read_frame(WAIT).await.expect("content header");
    assert_eq!(h.typ, raw::FRAME_HEADER);
    let mut got = Vec::new();
    while got.len() < body.len() {
        let f = c.read_frame(WAIT).await.expect("body frame");
        assert_eq!(f.typ, raw::FRAME_BODY, "{f:?}");
        assert!(
            f.payload.len() + 8 <= 4096,
            "body frame of {} bytes exceeds the negotiated frame_max 4096",
            f.payload.len() + 8
        );
        got.extend_from_slice(&f.payload);
    }
    assert!(got == body, "body corrupted");
    c.close().await;
}

#[tokio::test]
async fn heartbeat_zero_means_no_heartbeats() {
    let broker = Broker::start();
    let (mut c, _) = RawClient::handshake(broker.addr(), Auth::Plain("guest", "guest"), 0).await;
    match c.read_frame(Duration::from_millis(2500)).await {
        Err(ReadError::Timeout) => {}
        other => panic!("expected silence with heartbeats off, got {other:?}"),
    }
    c.open_channel(1).await;
    c.close().await;
}
