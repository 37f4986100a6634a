//! Shared by the hostile-input tests (tests/hostile.rs,
//! tests/hostile_handshake.rs): the bystander that must survive every case,
//! and small raw-frame helpers.

use super::raw::{self, RawClient};
use super::*;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::protocol::{self as proto, AMQPClass};
use lapin::types::FieldTable;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A lapin publisher (confirms) and a lapin consumer (acks) on two other
/// connections, running for the whole case.
pub struct Bystander {
    pconn: lapin::Connection,
    cconn: lapin::Connection,
    queue: String,
    stop: Arc<AtomicBool>,
    confirmed: Arc<AtomicU64>,
    publisher: tokio::task::JoinHandle<Result<Vec<u64>, String>>,
    received: Arc<Mutex<Vec<(u64, bool)>>>,
    consumer: tokio::task::JoinHandle<Result<(), String>>,
}

impl Bystander {
    /// Start both connections and wait until some messages went round.
    pub async fn start(broker: &Broker) -> Bystander {
        let (pconn, pch) = connect_channel(broker).await;
        let queue = declare_queue(&pch, "bystander").await;
        confirm_select(&pch).await;
        let (cconn, cch) = connect_channel(broker).await;
        within("basic.qos", cch.basic_qos(50, BasicQosOptions::default()))
            .await
            .expect("basic.qos");
        let mut consumer = within(
            "basic.consume",
            cch.basic_consume(
                queue.as_str().into(),
                "bystander".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ),
        )
        .await
        .expect("basic.consume");
        let received = Arc::new(Mutex::new(Vec::new()));
        let got = received.clone();
        let consumer = tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                let d = d.map_err(|e| format!("consumer: {e:?}"))?;
                let id = std::str::from_utf8(&d.data)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| format!("foreign body {:?}", d.data))?;
                got.lock().unwrap().push((id, d.redelivered));
                d.acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| format!("ack: {e:?}"))?;
            }
            Ok(())
        });
        let stop = Arc::new(AtomicBool::new(false));
        let confirmed = Arc::new(AtomicU64::new(0));
        let (s, c, q) = (stop.clone(), confirmed.clone(), queue.clone());
        let publisher = tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut n = 0u64;
            while !s.load(Ordering::Acquire) {
                n += 1;
                let confirm = pch
                    .basic_publish(
                        "".into(),
                        q.as_str().into(),
                        Default::default(),
                        n.to_string().as_bytes(),
                        lapin::BasicProperties::default(),
                    )
                    .await
                    .map_err(|e| format!("publish {n}: {e:?}"))?;
                let confirm = tokio::time::timeout(WAIT, confirm)
                    .await
                    .map_err(|_| format!("no confirm for {n} within {WAIT:?}"))?
                    .map_err(|e| format!("confirm {n}: {e:?}"))?;
                if !confirm.is_ack() {
                    return Err(format!("publish {n} nacked"));
                }
                ids.push(n);
                c.store(n, Ordering::Release);
            }
            Ok(ids)
        });
        let b = Bystander {
            pconn,
            cconn,
            queue,
            stop,
            confirmed,
            publisher,
            received,
            consumer,
        };
        b.wait_for_confirms(10).await;
        b
    }

    pub async fn wait_for_confirms(&self, more: u64) {
        let target = self.confirmed.load(Ordering::Acquire) + more;
        within("the bystander to keep publishing", async {
            while self.confirmed.load(Ordering::Acquire) < target {
                assert!(!self.publisher.is_finished(), "bystander publisher stopped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// After the hostile case: the bystander still publishes, then every
    /// confirmed message was consumed exactly once, and both connections are
    /// still open.
    pub async fn finish(self) {
        self.wait_for_confirms(20).await;
        self.stop.store(true, Ordering::Release);
        let ids = within("the bystander publisher", self.publisher)
            .await
            .expect("publisher task")
            .unwrap_or_else(|e| panic!("bystander publisher failed: {e}"));
        within("the bystander consumer to catch up", async {
            while self.received.lock().unwrap().len() < ids.len() {
                assert!(!self.consumer.is_finished(), "bystander consumer stopped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        let mut got = self.received.lock().unwrap().clone();
        assert!(
            got.iter().all(|(_, redelivered)| !redelivered),
            "bystander saw redeliveries"
        );
        got.sort_unstable();
        let got: Vec<u64> = got.into_iter().map(|(id, _)| id).collect();
        assert_eq!(got, ids, "every confirmed message exactly once");
        assert!(
            self.pconn.status().connected(),
            "bystander publisher closed"
        );
        assert!(self.cconn.status().connected(), "bystander consumer closed");
        within("close publisher", self.pconn.close(200, "bye".into()))
            .await
            .expect("close bystander publisher");
        within("close consumer", self.cconn.close(200, "bye".into()))
            .await
            .expect("close bystander consumer");
        self.consumer.abort();
        let _ = self.queue;
    }
}

/// RabbitMQ answers a frame it cannot delimit with connection.close but then
/// cannot parse our close-ok (it is still "inside" the bogus frame), so it
/// drops the socket after its 3 s closing timeout.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn opened(broker: &Broker) -> RawClient {
    let mut c = RawClient::open(broker.addr()).await;
    c.open_channel(1).await;
    c
}

/// Expect connection.close with `code` (answered with close-ok), then EOF.
pub async fn expect_close(c: &mut RawClient, code: u16) -> raw::CloseInfo {
    let close = c.read_connection_close().await;
    assert_eq!(close.code, code, "{close:?}");
    assert!(
        close.text.starts_with(proto_name(code)),
        "reply text should start with the code's name: {close:?}"
    );
    c.expect_closed(CLOSE_TIMEOUT).await;
    close
}

pub fn proto_name(code: u16) -> &'static str {
    match code {
        501 => "FRAME_ERROR",
        403 => "ACCESS_REFUSED",
        503 => "COMMAND_INVALID",
        504 => "CHANNEL_ERROR",
        505 => "UNEXPECTED_FRAME",
        530 => "NOT_ALLOWED",
        _ => "",
    }
}

pub fn qos() -> AMQPClass {
    AMQPClass::Basic(proto::basic::AMQPMethod::Qos(proto::basic::Qos {
        prefetch_count: 1,
        global: false,
    }))
}

pub fn declare(name: &str, exclusive: bool) -> AMQPClass {
    AMQPClass::Queue(proto::queue::AMQPMethod::Declare(proto::queue::Declare {
        queue: name.into(),
        passive: false,
        durable: false,
        exclusive,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    }))
}

/// A frame header (type, channel, size) with no payload behind it.
pub fn header_only(typ: u8, channel: u16, size: u32) -> Vec<u8> {
    let mut b = vec![typ];
    b.extend_from_slice(&channel.to_be_bytes());
    b.extend_from_slice(&size.to_be_bytes());
    b
}

/// Resident and peak virtual memory of a spawned broker, in KiB.
pub fn memory_kib(broker: &Broker) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", broker.pid()?)).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmPeak:")?))
}

/// Cuts frames out of a read half (the raw client owns its socket whole).
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
}

impl FrameReader {
    /// The next non-heartbeat frame, or None at EOF.
    pub async fn next(
        &mut self,
        rd: &mut (impl tokio::io::AsyncRead + Unpin),
    ) -> Option<raw::Frame> {
        loop {
            let b = &self.buf[self.pos..];
            if b.len() >= 7 {
                let size = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize;
                assert!(size < 1 << 20, "frame size {size}");
                if b.len() >= size + 8 {
                    assert_eq!(b[size + 7], raw::FRAME_END, "frame end");
                    let f = raw::Frame {
                        typ: b[0],
                        channel: u16::from_be_bytes([b[1], b[2]]),
                        payload: b[7..7 + size].to_vec(),
                    };
                    self.pos += size + 8;
                    if f.typ == raw::FRAME_HEARTBEAT {
                        continue;
                    }
                    return Some(f);
                }
            }
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.reserve(65536);
            match rd.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Discard everything until the peer closes.
    pub async fn until_eof(&mut self, rd: &mut (impl tokio::io::AsyncRead + Unpin)) {
        self.buf.clear();
        self.pos = 0;
        while let Ok(n) = rd.read_buf(&mut self.buf).await {
            if n == 0 {
                return;
            }
            self.buf.clear();
        }
    }
}

/// Message count of a queue via a fresh lapin channel.
pub async fn count(broker: &Broker, queue: &str) -> u32 {
    let (conn, ch) = connect_channel(broker).await;
    let n = message_count(&ch, queue).await;
    let _ = conn.close(200, "bye".into()).await;
    n
}
