//! The producer and consumer tasks, each on its own connection, and the
//! counters they share with the main task.
//!
//! A producer is two tasks: the writer publishes in bursts (as many messages
//! as the confirm window, the rate cap and a 128 KiB buffer allow, one socket
//! write per burst) and the reader takes confirms off the socket, frees window
//! slots and records publish-to-confirm latency. A consumer is one task that
//! parses deliveries straight out of its receive buffer, records end-to-end
//! latency from the timestamp in the first 8 body bytes, and acks every N
//! deliveries (multiple) with one write per receive burst.

use anyhow::{bail, Context, Result};
use bytes::Buf;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::client::Conn;
use crate::confirms::ConfirmTracker;
use crate::uri::AmqpUri;
use crate::wire::{self, Publisher, FRAME_BODY, FRAME_HEADER, FRAME_METHOD};

/// Bytes buffered before one socket write.
const BURST_BYTES: usize = 128 * 1024;
/// How long a consumer holds back a partial ack batch when nothing arrives.
const ACK_FLUSH: Duration = Duration::from_millis(100);
/// How long a stopping producer waits for its outstanding confirms.
const CONFIRM_DRAIN: Duration = Duration::from_secs(10);

/// Nanoseconds since the Unix epoch: the timestamp in message bodies, so a
/// publisher and a consumer in different processes still agree.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A latency histogram in microseconds (1 µs to 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's rules
    // (low >= 1, high >= 2 * low, sigfig <= 5), so this cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

fn record_nanos(h: &mut Histogram<u64>, nanos: u64) {
    h.saturating_record((nanos / 1000).max(1));
}

#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub confirmed: AtomicU64,
    pub nacked: AtomicU64,
    pub consumed: AtomicU64,
    /// connection.blocked notifications received (the broker's memory alarm).
    pub blocked: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub published: u64,
    pub confirmed: u64,
    pub nacked: u64,
    pub consumed: u64,
}

impl Counters {
    pub fn snapshot(&self) -> Snapshot {
        // Effects before causes: a message is counted published before it
        // can be confirmed or consumed, so reading those first keeps
        // consumed <= published in every snapshot.
        let consumed = self.consumed.load(Ordering::SeqCst);
        let confirmed = self.confirmed.load(Ordering::SeqCst);
        let nacked = self.nacked.load(Ordering::SeqCst);
        let published = self.published.load(Ordering::SeqCst);
        Snapshot {
            published,
            confirmed,
            nacked,
            consumed,
        }
    }
}

/// Shared by all tasks of a run.
pub struct Ctx {
    pub counters: Counters,
    /// Set to true to make every task stop.
    pub stop: watch::Sender<bool>,
    /// Drain target: when `consumed` reaches it, `drained_at` is set and
    /// `drained` notified.
    pub drain_target: AtomicU64,
    pub drained_at: Mutex<Option<Instant>>,
    pub drained: Notify,
}

impl Ctx {
    pub fn new() -> Arc<Ctx> {
        Arc::new(Ctx {
            counters: Counters::default(),
            stop: watch::channel(false).0,
            drain_target: AtomicU64::new(u64::MAX),
            drained_at: Mutex::new(None),
            drained: Notify::new(),
        })
    }
}

/// Resolves once the run is told to stop (or the sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

pub struct ProducerSpec {
    pub exchange: String,
    pub routing_key: String,
    pub persistent: bool,
    pub size: usize,
    /// Confirm window (0: no confirms).
    pub confirm: usize,
    /// Messages per second (0: unlimited).
    pub rate: u64,
    /// Publish this many then stop (backlog mode).
    pub limit: Option<u64>,
}

/// What a finished producer hands back.
pub struct ProducerResult {
    pub confirm_latency: Histogram<u64>,
}

/// The confirm window: free slots, and the publish time of each in-flight
/// sequence number at `times[seq % len]` (a slot is reused only after its
/// confirm has freed it).
struct Window {
    slots: Semaphore,
    times: Vec<AtomicU64>,
}

/// A producer connected and ready; `start` begins publishing.
pub struct Producer {
    conn: Conn,
    spec: ProducerSpec,
}

impl Producer {
    pub async fn connect(uri: &AmqpUri, spec: ProducerSpec) -> Result<Producer> {
        let mut conn = Conn::open(uri).await?;
        if spec.confirm > 0 {
            conn.confirm_select().await?;
        }
        Ok(Producer { conn, spec })
    }

    pub fn start(self, ctx: Arc<Ctx>) -> Result<JoinHandle<Result<ProducerResult>>> {
        let Producer { conn, spec } = self;
        let publisher = Publisher::new(
            &spec.exchange,
            &spec.routing_key,
            spec.persistent,
            spec.size,
            conn.frame_max,
        )?;
        let window = (spec.confirm > 0).then(|| {
            Arc::new(Window {
                slots: Semaphore::new(spec.confirm),
                times: (0..spec.confirm).map(|_| AtomicU64::new(0)).collect(),
            })
        });
        let Conn { stream, rbuf, .. } = conn;
        let (r, w) = stream.into_split();
        let reader = tokio::spawn(confirm_reader(r, rbuf, window.clone(), ctx.clone()));
        Ok(tokio::spawn(async move {
            let mut w = w;
            let written = publish_loop(&mut w, &spec, &publisher, window.as_deref(), &ctx).await;
            if written.is_err() {
                reader.abort();
            }
            // The write half lives until close-ok has been read: dropping it
            // sends FIN, and RabbitMQ treats a half-closed socket as a client
            // gone without connection.close.
            let confirm_latency = match reader.await {
                Ok(r) => r?,
                Err(_) => new_histogram(),
            };
            drop(w);
            written?;
            Ok(ProducerResult { confirm_latency })
        }))
    }
}

async fn publish_loop(
    w: &mut OwnedWriteHalf,
    spec: &ProducerSpec,
    publisher: &Publisher,
    window: Option<&Window>,
    ctx: &Ctx,
) -> Result<()> {
    let mut stop = ctx.stop.subscribe();
    let burst_max = (BURST_BYTES / publisher.wire_size()).clamp(1, 1024) as u64;
    let mut out = Vec::with_capacity(BURST_BYTES + publisher.wire_size());
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        if *stop.borrow() {
            break;
        }
        let mut n = burst_max;
        if let Some(limit) = spec.limit {
            if sent >= limit {
                break;
            }
            n = n.min(limit - sent);
        }
        if spec.rate > 0 {
            let due = (start.elapsed().as_secs_f64() * spec.rate as f64) as u64 + 1;
            if due <= sent {
                let next = start + Duration::from_secs_f64(sent as f64 / spec.rate as f64);
                tokio::select! {
                    _ = tokio::time::sleep_until(next.into()) => {}
                    _ = stopped(&mut stop) => {}
                }
                continue;
            }
            n = n.min(due - sent);
        }
        if let Some(win) = window {
            let free = win.slots.available_permits() as u64;
            let mut take = n.min(free).max(1);
            tokio::select! {
                permit = win.slots.acquire_many(take as u32) => match permit {
                    Ok(p) => p.forget(),
                    // The confirm reader closed the window: it failed.
                    Err(_) => break,
                },
                _ = stopped(&mut stop) => continue,
            }
            // Woken by a confirm that freed several slots: fill them all in
            // this burst rather than one write per slot.
            let more = (n - take).min(win.slots.available_permits() as u64);
            if more > 0 {
                if let Ok(p) = win.slots.try_acquire_many(more as u32) {
                    p.forget();
                    take += more;
                }
            }
            n = take;
        }
        let ts = now_nanos();
        for _ in 0..n {
            sent += 1;
            if let Some(win) = window {
                win.times[(sent % win.times.len() as u64) as usize].store(ts, Ordering::Relaxed);
            }
            publisher.append(&mut out, ts);
        }
        // Counted before the write: a message can be confirmed or consumed
        // as soon as it is written, and counts must never show more
        // consumed than published.
        ctx.counters.published.fetch_add(n, Ordering::SeqCst);
        w.write_all(&out).await.context("publishing")?;
        out.clear();
    }
    if let Some(win) = window {
        // Every slot back means every publish confirmed (or nacked).
        let all = win.times.len() as u32;
        let wait = if spec.limit.is_some() {
            // Backlog mode: the publish phase is not over until it is confirmed.
            Duration::from_secs(600)
        } else {
            CONFIRM_DRAIN
        };
        match tokio::time::timeout(wait, win.slots.acquire_many(all)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {} // reader failed; its error is reported
            Err(_) if spec.limit.is_some() => {
                bail!("confirms still outstanding {wait:?} after the last publish")
            }
            Err(_) => {}
        }
    }
    let mut close = Vec::new();
    wire::put_method(&mut close, 0, wire::close_method())?;
    // The reader ends on close-ok.
    let _ = w.write_all(&close).await;
    Ok(())
}

/// Reads confirms until close-ok; frees window slots and times each confirm.
async fn confirm_reader(
    mut r: OwnedReadHalf,
    mut rbuf: bytes::BytesMut,
    window: Option<Arc<Window>>,
    ctx: Arc<Ctx>,
) -> Result<Histogram<u64>> {
    let result = confirm_reader_inner(&mut r, &mut rbuf, window.as_deref(), &ctx).await;
    if let Some(win) = &window {
        // Wake a writer waiting for slots that will never come.
        if result.is_err() {
            win.slots.close();
        }
    }
    result
}

async fn confirm_reader_inner(
    r: &mut OwnedReadHalf,
    rbuf: &mut bytes::BytesMut,
    window: Option<&Window>,
    ctx: &Ctx,
) -> Result<Histogram<u64>> {
    let mut hist = new_histogram();
    let cap = window.map(|w| w.times.len() as u64).unwrap_or(1);
    let mut tracker = ConfirmTracker::new(cap);
    loop {
        while let Some((kind, _, len)) = wire::frame_at(rbuf)? {
            let payload = &rbuf[7..7 + len];
            if kind == FRAME_METHOD {
                match wire::method_ids(payload) {
                    ids @ ((60, 80) | (60, 120)) => {
                        let Some(win) = window else {
                            bail!("the broker sent a confirm without confirm.select");
                        };
                        let (tag, multiple) = wire::ack_fields(payload)?;
                        let ok = ids == (60, 80);
                        let now = now_nanos();
                        let freed = tracker.settle(tag, multiple, |seq| {
                            if ok {
                                let t = win.times[(seq % cap) as usize].load(Ordering::Relaxed);
                                record_nanos(&mut hist, now.saturating_sub(t));
                            }
                        })?;
                        let counter = if ok {
                            &ctx.counters.confirmed
                        } else {
                            &ctx.counters.nacked
                        };
                        counter.fetch_add(freed, Ordering::SeqCst);
                        win.slots.add_permits(freed as usize);
                    }
                    (10, 51) => return Ok(hist),
                    (10, 60) => {
                        ctx.counters.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    (10, 61) | (60, 50) => {} // unblocked; basic.return (no mandatory flag)
                    _ => control_frame(&rbuf[..len + 8])?,
                }
            }
            rbuf.advance(len + 8);
        }
        rbuf.reserve(64 * 1024);
        if r.read_buf(rbuf).await.context("reading from the broker")? == 0 {
            bail!("the broker closed the socket");
        }
    }
}

/// An unexpected method frame: a close from the broker is an error, anything
/// else is ignored.
fn control_frame(frame: &[u8]) -> Result<()> {
    if let Ok((_, amq_protocol::frame::AMQPFrame::Method(_, class))) =
        amq_protocol::frame::parse_frame(frame)
    {
        if let Some(err) = wire::closed_error(&class) {
            return Err(err);
        }
        if let amq_protocol::protocol::AMQPClass::Basic(
            amq_protocol::protocol::basic::AMQPMethod::Cancel(_),
        ) = class
        {
            bail!("the broker cancelled the consumer (queue deleted?)");
        }
    }
    Ok(())
}

pub struct ConsumerSpec {
    pub queue: String,
    pub prefetch: u16,
    pub autoack: bool,
    pub ack_every: u64,
}

pub struct ConsumerResult {
    pub latency: Histogram<u64>,
}

/// A consumer connected (qos set) but not consuming yet.
pub struct Consumer {
    conn: Conn,
    spec: ConsumerSpec,
}

impl Consumer {
    pub async fn connect(uri: &AmqpUri, spec: ConsumerSpec) -> Result<Consumer> {
        let mut conn = Conn::open(uri).await?;
        if spec.prefetch > 0 {
            conn.basic_qos(spec.prefetch).await?;
        }
        Ok(Consumer { conn, spec })
    }

    /// basic.consume, then run the delivery loop in a task until stopped.
    pub async fn start(mut self, ctx: Arc<Ctx>) -> Result<JoinHandle<Result<ConsumerResult>>> {
        self.conn
            .basic_consume(&self.spec.queue, self.spec.autoack)
            .await?;
        Ok(tokio::spawn(async move {
            let Consumer { mut conn, spec } = self;
            let latency = consume_loop(&mut conn, &spec, &ctx).await?;
            conn.close().await?;
            Ok(ConsumerResult { latency })
        }))
    }
}

enum Expect {
    Method,
    Header(u64),
    Body {
        tag: u64,
        left: u64,
        ts: Option<u64>,
    },
}

async fn consume_loop(conn: &mut Conn, spec: &ConsumerSpec, ctx: &Ctx) -> Result<Histogram<u64>> {
    let mut stop = ctx.stop.subscribe();
    let mut hist = new_histogram();
    let mut state = Expect::Method;
    let mut unacked = 0u64;
    let mut last_tag = 0u64;
    let ack_every = spec.ack_every.max(1);
    let mut acks = Vec::with_capacity(4096);
    loop {
        let now = now_nanos();
        let mut got = 0u64;
        while let Some((kind, _, len)) = wire::frame_at(&conn.rbuf)? {
            let payload = &conn.rbuf[7..7 + len];
            let mut complete = None;
            match (kind, &mut state) {
                (FRAME_METHOD, _) => match wire::method_ids(payload) {
                    (60, 60) => state = Expect::Header(wire::deliver_tag(payload)?),
                    (10, 60) => {
                        ctx.counters.blocked.fetch_add(1, Ordering::Relaxed);
                    }
                    (10, 61) => {}
                    _ => control_frame(&conn.rbuf[..len + 8])?,
                },
                (FRAME_HEADER, Expect::Header(tag)) => {
                    let tag = *tag;
                    let left = wire::header_body_size(payload)?;
                    if left == 0 {
                        complete = Some((tag, None));
                        state = Expect::Method;
                    } else {
                        state = Expect::Body {
                            tag,
                            left,
                            ts: None,
                        };
                    }
                }
                (FRAME_BODY, Expect::Body { tag, left, ts }) => {
                    if ts.is_none() && payload.len() >= 8 {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&payload[..8]);
                        *ts = Some(u64::from_be_bytes(b));
                    }
                    *left = left.saturating_sub(len as u64);
                    if *left == 0 {
                        complete = Some((*tag, *ts));
                        state = Expect::Method;
                    }
                }
                (wire::FRAME_HEARTBEAT, _) => {}
                (kind, _) => bail!("unexpected frame type {kind} in a delivery"),
            }
            conn.rbuf.advance(len + 8);
            if let Some((tag, ts)) = complete {
                got += 1;
                if let Some(ts) = ts {
                    record_nanos(&mut hist, now.saturating_sub(ts));
                }
                if !spec.autoack {
                    unacked += 1;
                    last_tag = tag;
                    if unacked >= ack_every {
                        wire::put_ack(&mut acks, tag, ack_every > 1);
                        unacked = 0;
                    }
                }
            }
        }
        if got > 0 {
            let total = ctx.counters.consumed.fetch_add(got, Ordering::SeqCst) + got;
            let target = ctx.drain_target.load(Ordering::Relaxed);
            if total >= target && total - got < target {
                *ctx.drained_at.lock() = Some(Instant::now());
                ctx.drained.notify_waiters();
            }
        }
        if !acks.is_empty() {
            conn.stream.write_all(&acks).await.context("acking")?;
            acks.clear();
        }
        conn.rbuf.reserve(64 * 1024);
        tokio::select! {
            r = conn.stream.read_buf(&mut conn.rbuf) => {
                if r.context("reading deliveries")? == 0 {
                    bail!("the broker closed the socket");
                }
            }
            // Nothing more is coming for now: ack the partial batch so a
            // prefetch window smaller than the batch cannot stall.
            _ = tokio::time::sleep(ACK_FLUSH), if unacked > 0 => {
                wire::put_ack(&mut acks, last_tag, true);
                conn.stream.write_all(&acks).await.context("acking")?;
                acks.clear();
                unacked = 0;
            }
            _ = stopped(&mut stop) => return Ok(hist),
        }
    }
}
