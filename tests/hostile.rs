//! Hostile input over TCP, each case while a well-behaved bystander keeps
//! publishing (with confirms) and consuming (with acks) on other connections
//! of the same broker. For every case: the exact reply code RabbitMQ 3.10
//! answers with (or, where RabbitMQ just drops the socket, no close at all),
//! the offending socket closed afterwards, and the bystander still connected
//! with every confirmed message consumed exactly once.
//!
//! The handshake and slowloris cases are in tests/hostile_handshake.rs; the
//! bystander and helpers in tests/common/hostile.rs.
//!
//! Run against RabbitMQ with `HOPPER_TEST_EXTERNAL_URI=amqp://guest:guest@127.0.0.1:5672/%2f`;
//! cases that need a configured limit or the broker's pid are skipped there.

mod common;

use common::hostile::*;
use common::raw::{self, RawClient};
use common::*;
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::FieldTable;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------- truncation

#[tokio::test]
async fn truncated_frame_then_eof_releases_the_connection() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let mut c = opened(&broker).await;
    let q = unique("trunc-excl");
    c.send_method(1, &declare(&q, true)).await;
    c.expect_method(1).await;
    let f = raw::method_frame(1, &raw::queue_declare("", false));
    c.send(&f[..f.len() / 2]).await;
    // Half-close: the broker sees EOF in the middle of a frame. RabbitMQ
    // closes without a word; so do we.
    c.stream.shutdown().await.expect("shutdown write half");
    assert_eq!(c.close_or_drop().await, None, "no close expected on EOF");
    // The exclusive queue went with its connection.
    let (conn, ch) = connect_channel(&broker).await;
    let res = within(
        "passive declare",
        ch.queue_declare(
            q.as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await;
    assert_code(res, 404);
    drop(conn);
    by.finish().await;
}

#[tokio::test]
async fn frame_shorter_than_its_size_field_is_501() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let mut c = opened(&broker).await;
    // A qos frame whose size field claims 5 more bytes than it has: the
    // broker reads into the next frame and finds no frame-end octet there.
    let payload = raw::method_payload(&qos());
    let mut bytes = header_only(raw::FRAME_METHOD, 1, payload.len() as u32 + 5);
    bytes.extend_from_slice(&payload);
    bytes.push(raw::FRAME_END);
    bytes.extend_from_slice(&raw::heartbeat_frame());
    c.send(&bytes).await;
    expect_close(&mut c, 501).await;
    by.finish().await;
}

// ------------------------------------------------------------- size fields

#[tokio::test]
async fn size_fields_up_to_4_gib_are_501_without_allocation() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let before = memory_kib(&broker);
    // RabbitMQ 3.10 refuses a payload larger than frame_max (it accepts up to
    // 8 bytes more than frame_max allows, overhead included; we do not);
    // from frame_max + 1 on both answer at once.
    let frame_max = 131_072u32;
    let mut tasks = Vec::new();
    for size in [frame_max + 1, 1 << 20, 1 << 31, u32::MAX - 1, u32::MAX] {
        for (typ, channel) in [
            (raw::FRAME_METHOD, 1),
            (raw::FRAME_HEADER, 1),
            (raw::FRAME_BODY, 1),
            (raw::FRAME_HEARTBEAT, 0),
        ] {
            let addr = broker.addr();
            tasks.push(tokio::spawn(async move {
                let mut c = RawClient::open(addr).await;
                c.open_channel(1).await;
                // Only the 7-byte header: the broker must judge the size
                // field alone, without waiting for (or reserving) a payload.
                c.send(&header_only(typ, channel, size)).await;
                let close = expect_close(&mut c, 501).await;
                (typ, size, close)
            }));
        }
    }
    for t in tasks {
        let (typ, size, close) = within_for(CLOSE_TIMEOUT * 2, "a bad client", t)
            .await
            .expect("task");
        assert_eq!(close.code, 501, "type {typ} size {size}: {close:?}");
    }
    if let (Some((_, peak0)), Some((_, peak1))) = (before, memory_kib(&broker)) {
        // 20 connections announced up to 4 GiB each: had any of it been
        // reserved, peak virtual memory would have grown by tens of GiB.
        // (New threads' malloc arenas reserve 64 MiB each: leave room.)
        assert!(
            peak1 - peak0 < 2 * 1024 * 1024,
            "peak virtual memory grew from {peak0} KiB to {peak1} KiB"
        );
    }
    by.finish().await;
}

// ------------------------------------------------------------ frame end

#[tokio::test]
async fn bad_frame_end_octets_are_501() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    for end in [0x00u8, 0xCD, 0xCF, 0xFF] {
        for frame in [
            raw::method_frame(1, &qos()),
            raw::header_frame(1, 3),
            raw::body_frame(1, b"abc"),
            raw::heartbeat_frame(),
        ] {
            let mut f = frame;
            let last = f.len() - 1;
            f[last] = end;
            let mut c = opened(&broker).await;
            c.send(&f).await;
            // The frame end is checked before the frame is looked at, so
            // even an out-of-place header or body is a frame error.
            expect_close(&mut c, 501).await;
        }
    }
    by.finish().await;
}

// ----------------------------------------------------------- content frames

#[tokio::test]
async fn content_without_method_is_505() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    for frame in [raw::header_frame(1, 3), raw::body_frame(1, b"abc")] {
        let mut c = opened(&broker).await;
        c.send(&frame).await;
        // RabbitMQ: UNEXPECTED_FRAME "expected method frame, got non method frame instead".
        expect_close(&mut c, 505).await;
    }
    by.finish().await;
}

#[tokio::test]
async fn content_on_a_channel_never_opened_is_505() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    for frame in [raw::header_frame(7, 3), raw::body_frame(7, b"abc")] {
        let mut c = opened(&broker).await;
        c.send(&frame).await;
        // RabbitMQ starts a channel process for any frame on a new channel
        // number; its frame assembler then refuses content before a method.
        expect_close(&mut c, 505).await;
    }
    by.finish().await;
}

#[tokio::test]
async fn body_larger_than_declared_is_505_and_nothing_is_routed() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let mut c = opened(&broker).await;
    let q = unique("oversize-body");
    c.send_method(1, &declare(&q, false)).await;
    c.expect_method(1).await;
    c.send_method(1, &raw::basic_publish("", &q)).await;
    c.send(&raw::header_frame(1, 3)).await;
    c.send(&raw::body_frame(1, b"abcde")).await;
    // RabbitMQ 3.10 notices nothing here: its frame assembler subtracts and
    // waits for "-2 more bytes" forever, then refuses the channel's next
    // method with UNEXPECTED_FRAME. We refuse the oversized body frame itself,
    // with the same code.
    c.send_method(1, &qos()).await;
    expect_close(&mut c, 505).await;
    assert_eq!(count(&broker, &q).await, 0);
    by.finish().await;
}

#[tokio::test]
async fn body_after_a_complete_message_is_505() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let mut c = opened(&broker).await;
    let q = unique("extra-body");
    c.send_method(1, &declare(&q, false)).await;
    c.expect_method(1).await;
    // A header declaring 3 bytes, the 3 bytes, then one body frame too many.
    c.send_method(1, &raw::basic_publish("", &q)).await;
    c.send(&raw::header_frame(1, 3)).await;
    c.send(&raw::body_frame(1, b"abc")).await;
    c.send(&raw::body_frame(1, b"def")).await;
    expect_close(&mut c, 505).await;
    by.finish().await;
}

// --------------------------------------------------------------- channel 0

#[tokio::test]
async fn channel_methods_on_channel_zero_are_refused() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    for (method, ids) in [
        (raw::queue_declare("", false), (50, 10)),
        (raw::basic_publish("", "x"), (60, 40)),
        (raw::channel_open(), (20, 10)),
        (qos(), (60, 10)),
    ] {
        let mut c = opened(&broker).await;
        c.send_method(0, &method).await;
        // RabbitMQ 3.10: CHANNEL_ERROR "unexpected method in connection
        // state running", naming the method.
        let close = expect_close(&mut c, 504).await;
        assert_eq!((close.class_id, close.method_id), ids, "{close:?}");
    }
    by.finish().await;
}

// ------------------------------------------------------------- channel_max

#[tokio::test]
async fn channel_number_above_channel_max_is_refused() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    // RabbitMQ 3.10 only counts open channels against channel_max and would
    // open channel 2048 here; we hold to the spec ("usable channel numbers
    // are in the range 1..channel-max"), which every client's channel
    // allocator respects, and refuse it as RabbitMQ refuses channel 2048 of
    // 2047: NOT_ALLOWED.
    skip_if_external!(broker);
    let mut c = RawClient::open(broker.addr()).await;
    c.send_method(2048, &raw::channel_open()).await;
    expect_close(&mut c, 530).await;
    let mut c = RawClient::open(broker.addr()).await;
    c.send_method(u16::MAX, &raw::channel_open()).await;
    expect_close(&mut c, 530).await;
    by.finish().await;
}

#[tokio::test]
async fn flood_of_channel_open_is_530_past_channel_max_with_bounded_memory() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let before = memory_kib(&broker);
    let c = RawClient::open(broker.addr()).await;
    let frames = |chs: std::ops::RangeInclusive<u16>| -> Vec<u8> {
        chs.flat_map(|ch| raw::method_frame(ch, &raw::channel_open()))
            .collect()
    };
    let (first, rest) = (frames(1..=2047), frames(2048..=5000));
    let (mut rd, mut wr) = tokio::io::split(c.into_stream());
    let (go, go_rx) = tokio::sync::oneshot::channel::<()>();
    // Written from another task: the broker may stop reading before all of
    // it is in, and must not deadlock us.
    let writer = tokio::spawn(async move {
        let _ = wr.write_all(&first).await;
        let _ = go_rx.await;
        let _ = wr.write_all(&rest).await;
        wr
    });
    let mut reader = FrameReader::default();
    for i in 0..2047 {
        let f = within("open-ok", reader.next(&mut rd))
            .await
            .expect("frame");
        assert_eq!(f.ids(), Some((20, 11)), "reply {i}");
    }
    if let (Some((rss0, _)), Some((rss1, _))) = (before, memory_kib(&broker)) {
        eprintln!("2047 open channels: broker RSS {rss0} -> {rss1} KiB");
        assert!(
            rss1.saturating_sub(rss0) < 64 * 1024,
            "RSS grew from {rss0} KiB to {rss1} KiB"
        );
    }
    let _ = go.send(());
    // RabbitMQ and we both refuse the channel past channel_max (2047).
    let f = within("close", reader.next(&mut rd)).await.expect("frame");
    match f.method() {
        Some(AMQPClass::Connection(proto::connection::AMQPMethod::Close(close))) => {
            assert_eq!(close.reply_code, 530, "{close:?}");
        }
        other => panic!("{other:?}"),
    }
    let mut wr = within("writer", writer).await.expect("writer task");
    let _ = wr
        .write_all(&raw::method_frame(
            0,
            &AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(
                proto::connection::CloseOk {},
            )),
        ))
        .await;
    within("EOF", reader.until_eof(&mut rd)).await;
    by.finish().await;
}

/// A client that floods requests and never reads the replies: the broker
/// must stop reading it rather than queue replies without bound.
#[tokio::test]
async fn flood_of_channel_open_close_without_reading_is_bounded() {
    let broker = Broker::start();
    skip_if_external!(broker);
    let by = Bystander::start(&broker).await;
    let Some((rss0, _)) = memory_kib(&broker) else {
        panic!("no /proc/PID/status for the broker");
    };
    let c = RawClient::open(broker.addr()).await;
    let (mut rd, mut wr) = tokio::io::split(c.into_stream());
    const PAIRS: usize = 1_000_000;
    let mut pair = raw::method_frame(1, &raw::channel_open());
    pair.extend(raw::method_frame(
        1,
        &AMQPClass::Channel(proto::channel::AMQPMethod::Close(proto::channel::Close {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        })),
    ));
    let chunk: Vec<u8> = pair.repeat(1000);
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..PAIRS / 1000 {
            wr.write_all(&chunk).await.expect("write");
            w.fetch_add(1000, Ordering::Release);
        }
        wr
    });
    // Let the writer run until it has sent everything or stalls (the
    // broker stopped reading), watching the broker's memory meanwhile. A
    // slow broker can only make this pass wrongly, never fail wrongly.
    let mut last = (u64::MAX, tokio::time::Instant::now());
    let mut rss1 = rss0;
    while !writer.is_finished() {
        let n = written.load(Ordering::Acquire);
        if n != last.0 {
            last = (n, tokio::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        rss1 = rss1.max(memory_kib(&broker).expect("broker memory").0);
        // Unread replies are 12-16 bytes each: two million of them queued
        // one by one cost well over 100 MiB.
        assert!(
            rss1.saturating_sub(rss0) < 32 * 1024,
            "RSS grew from {rss0} KiB to {rss1} KiB with {n} pairs sent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "flood: {} pairs sent, broker RSS {rss0} -> {rss1} KiB",
        written.load(Ordering::Acquire)
    );
    // Now read everything: every request was answered, in order.
    let mut reader = FrameReader::default();
    for i in 0..PAIRS {
        let f = within("open-ok", reader.next(&mut rd))
            .await
            .expect("frame");
        assert_eq!(f.ids(), Some((20, 11)), "reply {i}");
        let f = within("close-ok", reader.next(&mut rd))
            .await
            .expect("frame");
        assert_eq!(f.ids(), Some((20, 41)), "reply {i}");
    }
    let mut wr = within("writer", writer).await.expect("writer task");
    wr.write_all(&raw::method_frame(0, &raw::connection_close()))
        .await
        .expect("close");
    let f = within("close-ok", reader.next(&mut rd))
        .await
        .expect("frame");
    assert_eq!(f.ids(), Some((10, 51)));
    within("EOF", reader.until_eof(&mut rd)).await;
    by.finish().await;
}

// ------------------------------------------------- frames after close

#[tokio::test]
async fn frames_after_client_connection_close_are_ignored() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let mut c = opened(&broker).await;
    let q = unique("after-close");
    c.send_method(1, &declare(&q, false)).await;
    c.expect_method(1).await;
    let mut bytes = raw::method_frame(0, &raw::connection_close());
    for _ in 0..100 {
        bytes.extend(raw::method_frame(1, &raw::basic_publish("", &q)));
        bytes.extend(raw::header_frame(1, 3));
        bytes.extend(raw::body_frame(1, b"abc"));
    }
    bytes.extend(raw::method_frame(2, &raw::channel_open()));
    bytes.extend(raw::method_frame(
        1,
        &declare(&unique("after-close"), false),
    ));
    c.send(&bytes).await;
    match c.expect_method(0).await {
        AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(_)) => {}
        other => panic!("expected close-ok, got {other:?}"),
    }
    // RabbitMQ leaves closing the socket after close-ok to the client; we
    // close it at once.
    if !broker.is_external() {
        c.expect_closed(CLOSE_TIMEOUT).await;
    }
    assert_eq!(count(&broker, &q).await, 0, "publishes after close routed");
    by.finish().await;
}

#[tokio::test]
async fn frames_after_server_connection_close_are_ignored() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    let mut c = opened(&broker).await;
    let q = unique("after-server-close");
    c.send_method(1, &declare(&q, false)).await;
    c.expect_method(1).await;
    // A 505, then, instead of close-ok, more work.
    c.send(&raw::body_frame(1, b"abc")).await;
    let close = match c.next_method(WAIT).await {
        Ok((0, f)) => f.method(),
        other => panic!("{other:?}"),
    };
    assert!(
        matches!(&close, Some(AMQPClass::Connection(proto::connection::AMQPMethod::Close(c))) if c.reply_code == 505),
        "{close:?}"
    );
    let mut bytes = Vec::new();
    for _ in 0..100 {
        bytes.extend(raw::method_frame(1, &raw::basic_publish("", &q)));
        bytes.extend(raw::header_frame(1, 3));
        bytes.extend(raw::body_frame(1, b"abc"));
    }
    bytes.extend(raw::method_frame(2, &raw::channel_open()));
    bytes.extend(raw::method_frame(
        0,
        &AMQPClass::Connection(proto::connection::AMQPMethod::CloseOk(
            proto::connection::CloseOk {},
        )),
    ));
    c.send(&bytes).await;
    c.expect_closed(CLOSE_TIMEOUT).await;
    assert_eq!(count(&broker, &q).await, 0, "publishes after close routed");
    by.finish().await;
}

// ------------------------------------------------------- before the header

#[tokio::test]
async fn garbage_before_the_protocol_header_gets_the_header_and_eof() {
    let broker = Broker::start();
    let by = Bystander::start(&broker).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        &b"xAMQP\x00\x00\x09\x01"[..],
        &b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"[..],
        &b"AMQP\x01\x01\x00\x0a"[..],
    ] {
        let mut c = RawClient::connect(broker.addr()).await;
        c.send(garbage).await;
        let reply = c.read_bytes(8, WAIT).await.expect("a protocol header");
        assert_eq!(&reply[..], raw::PROTOCOL_HEADER, "for {garbage:?}");
        c.expect_closed(WAIT).await;
    }
    by.finish().await;
}

// ------------------------------------------------------------ deep tables

/// A field table nesting `depth` levels (tables in tables, or arrays in
/// arrays inside one table), as wire bytes with its length prefix.
fn nested_table(depth: usize, arrays: bool) -> Vec<u8> {
    let inner = if arrays { b'A' } else { b'F' };
    let mut value = 0u32.to_be_bytes().to_vec();
    for level in 1..depth {
        let outer_is_table = level == depth - 1 || !arrays;
        let mut entry = if outer_is_table {
            vec![1, b'k']
        } else {
            Vec::new()
        };
        entry.push(inner);
        entry.extend_from_slice(&value);
        value = (entry.len() as u32).to_be_bytes().to_vec();
        value.extend(entry);
    }
    value
}

/// Field tables nested thousands deep used to overflow the parser's stack
/// and abort the whole broker. RabbitMQ (Erlang) parses any depth and
/// accepts them; we refuse past 64 levels with FRAME_ERROR, like any frame
/// we cannot decode.
#[tokio::test]
async fn deeply_nested_field_tables_are_501_and_the_broker_survives() {
    let broker = Broker::start();
    skip_if_external!(broker);
    let by = Bystander::start(&broker).await;
    let mut frames = Vec::new();
    for (depth, arrays) in [(65, false), (15_000, false), (20_000, true)] {
        // queue.declare "deep" with nested arguments.
        let mut p = Vec::new();
        p.extend_from_slice(&50u16.to_be_bytes());
        p.extend_from_slice(&10u16.to_be_bytes());
        p.extend_from_slice(&[0, 0, 4]);
        p.extend_from_slice(b"deep");
        p.push(0);
        p.extend(nested_table(depth, arrays));
        frames.push((
            "queue.declare",
            raw::frame(raw::FRAME_METHOD, 1, &p),
            (50, 10),
        ));
    }
    // basic.publish, then a content header whose headers nest 15000 deep.
    let mut h = Vec::new();
    h.extend_from_slice(&60u16.to_be_bytes());
    h.extend_from_slice(&0u16.to_be_bytes());
    h.extend_from_slice(&3u64.to_be_bytes());
    h.extend_from_slice(&0x2000u16.to_be_bytes());
    h.extend(nested_table(15_000, false));
    let mut publish = raw::method_frame(1, &raw::basic_publish("", "nowhere"));
    publish.extend(raw::frame(raw::FRAME_HEADER, 1, &h));
    frames.push(("content header", publish, (0, 0)));
    for (what, bytes, ids) in frames {
        let mut c = opened(&broker).await;
        c.send(&bytes).await;
        let close = expect_close(&mut c, 501).await;
        assert_eq!((close.class_id, close.method_id), ids, "{what}: {close:?}");
    }
    // Before login: client properties nested 500 deep (3.5 KiB, under the
    // 4096-byte limit of the handshake), and an AMQPLAIN response likewise.
    let mut start_ok = Vec::new();
    start_ok.extend_from_slice(&10u16.to_be_bytes());
    start_ok.extend_from_slice(&11u16.to_be_bytes());
    start_ok.extend(nested_table(500, false));
    start_ok.extend_from_slice(&[5]);
    start_ok.extend_from_slice(b"PLAIN");
    start_ok.extend_from_slice(&12u32.to_be_bytes());
    start_ok.extend_from_slice(b"\0guest\0guest");
    start_ok.extend_from_slice(&[5]);
    start_ok.extend_from_slice(b"en_US");
    let mut c = RawClient::connect(broker.addr()).await;
    c.send(raw::PROTOCOL_HEADER).await;
    c.expect_method(0).await;
    c.send(&raw::frame(raw::FRAME_METHOD, 0, &start_ok)).await;
    let close = expect_close(&mut c, 501).await;
    assert_eq!((close.class_id, close.method_id), (10, 11), "{close:?}");
    let response = nested_table(500, false)[4..].to_vec();
    let mut c = RawClient::connect(broker.addr()).await;
    c.send(raw::PROTOCOL_HEADER).await;
    c.expect_method(0).await;
    c.send_method(
        0,
        &AMQPClass::Connection(proto::connection::AMQPMethod::StartOk(
            proto::connection::StartOk {
                client_properties: FieldTable::default(),
                mechanism: "AMQPLAIN".into(),
                response: response.into(),
                locale: "en_US".into(),
            },
        )),
    )
    .await;
    expect_close(&mut c, 403).await;
    by.finish().await;
}
