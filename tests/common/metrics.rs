//! Helpers for the counter, rate and Prometheus tests (tests/metrics.rs,
//! tests/prometheus.rs): JSON reads of the management API with waits for a
//! condition, raw scrapes, and one connection's worth of mixed traffic.

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::BasicProperties;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::mgmt::{http, GUEST};

pub fn get_json(addr: SocketAddr, path: &str) -> Value {
    let a = http(addr, "GET", path, GUEST, None);
    assert_eq!(a.status, 200, "{path}: {}", a.body);
    a.json()
}

/// Poll `path` until `done` holds (15 s at most), returning the last answer.
pub fn wait_json(addr: SocketAddr, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = get_json(addr, path);
        if done(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: last answer {v:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn n(v: &Value, path: &str) -> f64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number in {v:#}"))
}

/// Traffic on one connection: 20 persistent confirmed publishes to a
/// durable queue, 3 unroutable ones to amq.direct, one get-no-ack, one
/// get-with-ack (acked), one get on the emptied queue after purging it.
/// Returns the connection and channel (left open: their counts are read
/// while they live) and the queue's name.
pub async fn traffic(uri: &str, prefix: &str) -> (lapin::Connection, lapin::Channel, String) {
    let conn = super::connect_uri(uri).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    super::confirm_select(&ch).await;
    let queue = super::declare_durable_queue(&ch, prefix, Default::default()).await;
    let queue = queue.as_str();
    let persistent = BasicProperties::default().with_delivery_mode(2);
    for _ in 0..20 {
        super::publish_confirmed(&ch, "", queue, &[7u8; 1500], persistent.clone()).await;
    }
    for _ in 0..3 {
        super::publish_confirmed(&ch, "amq.direct", "nowhere", b"lost", Default::default()).await;
    }
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    let got = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    got.ack(BasicAckOptions::default()).await.unwrap();
    ch.queue_purge(queue.into(), Default::default())
        .await
        .unwrap();
    let empty = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(empty.is_none());
    (conn, ch, queue.to_string())
}

/// A raw GET, optionally asking for gzip: (status, headers lowercased, body).
pub fn get_raw(addr: SocketAddr, path: &str, gzip: bool) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let enc = if gzip {
        "Accept-Encoding: gzip\r\n"
    } else {
        ""
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{enc}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, raw[split + 4..].to_vec())
}

pub fn scrape(addr: SocketAddr, path: &str) -> String {
    let (status, head, body) = get_raw(addr, path, false);
    assert_eq!(status, 200, "{path}: {head}");
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    String::from_utf8(body).unwrap()
}

/// The value of the sample line that starts with `series` (name and labels).
pub fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
        .parse()
        .unwrap()
}
