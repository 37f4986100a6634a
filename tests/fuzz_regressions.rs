//! Inputs found by the fuzz targets in `fuzz/` (see fuzz/README.md), replayed
//! over TCP against the real broker. Each failed before its fix.

mod common;

use common::raw::{self, RawClient};
use common::*;

/// A field table nesting `levels` tables inside each other, as wire bytes
/// (length prefix first): each level is a length, an empty key and type 'F'.
fn nested_table(levels: usize) -> Vec<u8> {
    let mut t = Vec::with_capacity(6 * levels);
    for k in (2..=levels).rev() {
        t.extend_from_slice(&(6 * (k as u32 - 1)).to_be_bytes());
        t.extend_from_slice(&[0, b'F']);
    }
    t.extend_from_slice(&0u32.to_be_bytes());
    t
}

/// As deep as fits in one 128 KiB frame: six bytes per level.
const DEEP: usize = 21_000;

fn short(s: &str) -> Vec<u8> {
    let mut v = vec![s.len() as u8];
    v.extend_from_slice(s.as_bytes());
    v
}

/// queue.declare whose arguments nest ~21,000 tables: amq-protocol's recursive
/// parser overflowed the stack of the tokio worker and aborted the whole broker.
/// Now a 501 FRAME_ERROR for this connection only.
#[tokio::test]
async fn deeply_nested_queue_arguments_close_the_connection_not_the_broker() {
    let broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    let mut p = Vec::new();
    p.extend_from_slice(&50u16.to_be_bytes()); // queue
    p.extend_from_slice(&10u16.to_be_bytes()); // declare
    p.extend_from_slice(&0u16.to_be_bytes()); // ticket
    p.extend_from_slice(&short("deep"));
    p.push(0); // flags
    p.extend_from_slice(&nested_table(DEEP));
    c.send(&raw::frame(raw::FRAME_METHOD, 1, &p)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert_eq!((close.class_id, close.method_id), (50, 10), "{close:?}");
    assert_broker_healthy(&broker).await;
}

/// The same in connection.start-ok's client properties: before authentication.
#[tokio::test]
async fn deeply_nested_client_properties_before_login_are_refused() {
    let broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let mut c = RawClient::connect(broker.addr()).await;
    c.send(raw::PROTOCOL_HEADER).await;
    c.expect_method(0).await; // connection.start
    let mut p = Vec::new();
    p.extend_from_slice(&10u16.to_be_bytes());
    p.extend_from_slice(&11u16.to_be_bytes());
    p.extend_from_slice(&nested_table(DEEP));
    p.extend_from_slice(&short("PLAIN"));
    let response = b"\0guest\0guest";
    p.extend_from_slice(&(response.len() as u32).to_be_bytes());
    p.extend_from_slice(response);
    p.extend_from_slice(&short("en_US"));
    c.send(&raw::frame(raw::FRAME_METHOD, 0, &p)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert_broker_healthy(&broker).await;
}

/// Deep enough to overflow a debug build's worker stack without the nesting
/// guard (~250 levels do), small enough for the 4096-byte frames allowed
/// before tune-ok (six bytes per level).
const DEEP_HANDSHAKE: usize = 600;

/// An AMQPLAIN response is a field table too (parsed by the broker itself).
#[tokio::test]
async fn deeply_nested_amqplain_response_is_refused() {
    let broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let mut c = RawClient::connect(broker.addr()).await;
    c.send(raw::PROTOCOL_HEADER).await;
    c.expect_method(0).await; // connection.start
                              // The response is a table without its length prefix.
    let response = nested_table(DEEP_HANDSHAKE)[4..].to_vec();
    let mut p = Vec::new();
    p.extend_from_slice(&10u16.to_be_bytes());
    p.extend_from_slice(&11u16.to_be_bytes());
    p.extend_from_slice(&0u32.to_be_bytes()); // client properties: empty
    p.extend_from_slice(&short("AMQPLAIN"));
    p.extend_from_slice(&(response.len() as u32).to_be_bytes());
    p.extend_from_slice(&response);
    p.extend_from_slice(&short("en_US"));
    c.send(&raw::frame(raw::FRAME_METHOD, 0, &p)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 403, "{close:?}");
    assert_broker_healthy(&broker).await;
}

/// A content header whose `headers` property nests ~21,000 tables.
#[tokio::test]
async fn deeply_nested_message_headers_close_the_connection_not_the_broker() {
    let broker = Broker::start();
    if broker.is_external() {
        return;
    }
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c.send_method(1, &raw::basic_publish("", "nowhere")).await;
    let mut p = Vec::new();
    p.extend_from_slice(&60u16.to_be_bytes()); // class basic
    p.extend_from_slice(&0u16.to_be_bytes()); // weight
    p.extend_from_slice(&0u64.to_be_bytes()); // body size
    p.extend_from_slice(&0x2000u16.to_be_bytes()); // flags: headers
    p.extend_from_slice(&nested_table(DEEP));
    c.send(&raw::frame(raw::FRAME_HEADER, 1, &p)).await;
    let close = c.expect_connection_close().await;
    assert_eq!(close.code, 501, "{close:?}");
    assert_broker_healthy(&broker).await;
}
