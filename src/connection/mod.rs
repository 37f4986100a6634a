//! One client connection: the protocol header, the handshake (start, auth,
//! tune, open), the read loop that cuts frames and hands them to channels,
//! heartbeats, and connection-level errors. The writer task (`writer`) owns the
//! socket's write half; everything else here runs in the reader task.

mod close;
mod handshake;
mod writer;

use amq_protocol::protocol::{channel as ch, connection as conn, AMQPClass};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;

use crate::broker::connections::ChannelView;
use crate::broker::{Broker, VHost};
use crate::channel::handle::{ConnHandle, Outbound, WriteFlow, READ_PAUSE};
use crate::channel::{Channel, ConnCtx};
use crate::error::AmqpError;
use crate::protocol::{codes, encode, read_frame, Frame, FrameError};
use crate::queue::Queue;

/// Why the read loop ended.
#[derive(Debug)]
enum End {
    /// The peer closed the socket or it failed.
    Gone,
    /// Closing handshake done (either side), or the connection was dropped on purpose.
    Closed,
}

enum Slot {
    Open(Box<Channel>),
    /// We sent channel.close and wait for close-ok; other frames are dropped.
    Closing,
}

pub struct Connection<R> {
    broker: Arc<Broker>,
    handle: Arc<ConnHandle>,
    reader: R,
    buf: BytesMut,
    peer: SocketAddr,
    user: String,
    vhost: Option<Arc<VHost>>,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    channels: HashMap<u16, Slot>,
    exclusive_queues: Vec<Arc<Queue>>,
    /// Channels with publisher confirms to flush after this read burst.
    confirm_dirty: Vec<u16>,
    /// Confirms settled during the current read burst, sent at its end.
    batch: crate::batch::Batch,
    /// Counted against the user's connection limit.
    user_counted: bool,
    /// The client understands connection.blocked / unblocked.
    blocked_notify: bool,
    /// This connection has published: resource alarms block it.
    published: bool,
    /// How much free buffer space the next read asks for: grows while reads
    /// fill it (a busy publisher), shrinks back when they don't, so an idle
    /// connection holds a few KiB instead of a large read buffer.
    read_hint: usize,
    /// Queues this read burst published to that asked for flow control.
    flow: Vec<Arc<Queue>>,
    /// The client's properties from connection.start-ok.
    client_properties: amq_protocol::types::FieldTable,
    /// This connection in the broker's registry (after the handshake).
    info: Option<Arc<crate::broker::connections::ConnectionInfo>>,
    /// A channel opened or closed since the registry last heard.
    channels_changed: bool,
    /// Channels closed since the registry last heard (their counts are
    /// folded into the totals, see `ConnectionInfo::retire_channels`).
    closed_channels: Vec<Arc<dyn ChannelView>>,
}

/// Smallest and largest read reservation (see `Connection::read_hint`).
const READ_MIN: usize = 4 * 1024;
const READ_MAX: usize = 128 * 1024;
/// A read burst with this many frames yields to other tasks before reading more.
const YIELD_AFTER_FRAMES: usize = 64;

/// Resolves when the management API asks this connection to close; never
/// without a registry entry.
/// How often the unacknowledged deliveries are checked against
/// `consumer_timeout`: a quarter of it, between 50 ms and 15 s (RabbitMQ
/// checks on its channel tick), so a channel closes within 25% past it.
fn ack_check_period(timeout_ms: u64) -> Duration {
    Duration::from_millis((timeout_ms / 4).clamp(50, 15_000))
}

async fn close_requested(info: &Option<Arc<crate::broker::connections::ConnectionInfo>>) -> String {
    match info {
        Some(i) => i.close_requested().await,
        None => std::future::pending().await,
    }
}

/// Serve one accepted socket until it closes.
pub async fn serve<S>(stream: S, peer: SocketAddr, broker: Arc<Broker>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    broker.connection_started();
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let id = broker.next_connection_id();
    let frame_max = broker.config.limits.frame_max;
    let flow = Arc::new(WriteFlow::default());
    let handle = Arc::new(ConnHandle::new(id, tx, frame_max, flow.clone()));
    let send_timeout = match broker.config.limits.write_timeout {
        0 => None,
        secs => Some(Duration::from_secs(secs)),
    };
    let writer = tokio::spawn(writer::run(wr, rx, flow, send_timeout));
    let mut c = Connection {
        broker,
        handle: handle.clone(),
        reader: rd,
        buf: BytesMut::with_capacity(READ_MIN),
        peer,
        user: String::new(),
        vhost: None,
        // Until tune-ok the client may send frames of at most 4096 bytes (the
        // spec's frame-min-size, RabbitMQ's limit too): an unauthenticated
        // peer cannot make us buffer more.
        frame_max: handshake::FRAME_MIN_SIZE,
        channel_max: 0,
        heartbeat: 0,
        channels: HashMap::new(),
        exclusive_queues: Vec::new(),
        confirm_dirty: Vec::new(),
        batch: crate::batch::Batch::new(),
        user_counted: false,
        blocked_notify: false,
        published: false,
        read_hint: READ_MIN,
        flow: Vec::new(),
        client_properties: Default::default(),
        info: None,
        channels_changed: false,
        closed_channels: Vec::new(),
    };
    let end = c.run().await;
    tracing::debug!(conn = id, peer = %peer, ?end, "connection ended");
    c.teardown();
    if c.info.is_some() {
        c.broker.unregister_connection(id);
    }
    if c.user_counted {
        c.broker.user_disconnected(&c.user);
    }
    handle.control(Outbound::Close);
    let broker = c.broker.clone();
    drop(c);
    drop(handle);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    broker.connection_ended();
}

impl<R: AsyncRead + Unpin> Connection<R> {
    async fn run(&mut self) -> End {
        match self.handshake().await {
            Ok(true) => {}
            Ok(false) => return End::Closed,
            Err(end) => return end,
        }
        tracing::info!(conn = self.handle.id, peer = %self.peer, user = %self.user, "connection open");
        self.info = Some(
            self.broker
                .register_connection(crate::broker::connections::NewConnection {
                    id: self.handle.id,
                    peer: self.peer,
                    user: self.user.clone(),
                    vhost: self
                        .vhost
                        .as_ref()
                        .map(|v| v.name.clone())
                        .unwrap_or_default(),
                    client_properties: std::mem::take(&mut self.client_properties),
                    frame_max: self.frame_max,
                    channel_max: self.channel_max,
                    heartbeat: self.heartbeat,
                    io: self.handle.flow.io.clone(),
                }),
        );
        let end = self.main_loop().await;
        tracing::info!(conn = self.handle.id, peer = %self.peer, "connection closed");
        end
    }

    /// Read more bytes, with a deadline. `Ok(false)` on end of stream.
    async fn fill(&mut self, deadline: Option<Duration>) -> Result<bool, End> {
        if self.buf.capacity() - self.buf.len() < self.read_hint / 2 {
            self.buf.reserve(self.read_hint);
        }
        let room = self.buf.capacity() - self.buf.len();
        let before = self.buf.len();
        let read = self.reader.read_buf(&mut self.buf);
        let n = match deadline {
            Some(d) => match tokio::time::timeout(d, read).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(conn = self.handle.id, peer = %self.peer, "no data from client within {d:?}, closing");
                    return Err(End::Closed);
                }
            },
            None => read.await,
        };
        match n {
            Ok(0) => Ok(false),
            Ok(_) => {
                let got = self.buf.len() - before;
                let io = &self.handle.flow.io;
                io.recv_oct.add(got as u64);
                io.recv_cnt.add(1);
                self.read_hint = if got >= room {
                    (self.read_hint * 2).min(READ_MAX)
                } else if got < self.read_hint / 4 {
                    (self.read_hint / 2).max(READ_MIN)
                } else {
                    self.read_hint
                };
                Ok(true)
            }
            Err(e) => {
                tracing::debug!(conn = self.handle.id, error = %e, "read failed");
                Err(End::Gone)
            }
        }
    }

    fn heartbeat_deadline(&self) -> Option<Duration> {
        // A peer silent for two heartbeat intervals is gone.
        (self.heartbeat > 0).then(|| Duration::from_secs(2 * self.heartbeat as u64))
    }

    async fn main_loop(&mut self) -> End {
        let mut shutdown = self.broker.shutdown_signal();
        let mut alarm = self.broker.alarm();
        let flow = self.handle.flow.clone();
        // When the last whole frame arrived. The heartbeat deadline runs from
        // here, not from the last byte: a client trickling a byte at a time
        // into a frame it never finishes is never silent, yet must not hold
        // the connection forever. (RabbitMQ counts any byte as liveness.)
        let mut last_frame = tokio::time::Instant::now();
        let info = self.info.clone();
        let handle = self.handle.clone();
        let ack_timeout = self.broker.config.limits.consumer_timeout;
        let mut ack_check = tokio::time::interval(ack_check_period(ack_timeout));
        ack_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut frames = 0usize;
            loop {
                match read_frame(&mut self.buf, self.frame_max) {
                    Ok(Some(frame)) => {
                        frames += 1;
                        last_frame = tokio::time::Instant::now();
                        if let Err(e) = self.handle_frame(frame) {
                            return self.close_with(e).await;
                        }
                        if self.closing_done() {
                            return End::Closed;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return self.close_with(frame_error(e)).await,
                }
            }
            self.flush_confirms();
            if self.channels_changed {
                self.channels_changed = false;
                let closed = std::mem::take(&mut self.closed_channels);
                if let Some(info) = &info {
                    if !closed.is_empty() {
                        info.retire_channels(&self.broker, closed);
                    }
                    info.set_channels(
                        &self.broker,
                        self.channels
                            .values()
                            .filter_map(|s| match s {
                                Slot::Open(c) => Some(c.handle.clone() as Arc<dyn ChannelView>),
                                Slot::Closing => None,
                            })
                            .collect(),
                    );
                }
            }
            self.flow_wait().await;
            if frames >= YIELD_AFTER_FRAMES {
                // A publisher whose socket always has data would otherwise
                // run until tokio's coop budget runs out (128 reads: hundreds
                // of thousands of small frames). Meanwhile the writer tasks it
                // woke (consumers' deliveries) sit in this worker's LIFO slot,
                // which other workers cannot steal: deliveries stalled for
                // seconds. Yielding after each big burst lets them run.
                tokio::task::yield_now().await;
            }
            if self.published && *alarm.borrow_and_update() {
                if self.wait_out_alarm(&mut alarm, &mut shutdown).await {
                    return self
                        .close_with(AmqpError::connection(
                            codes::CONNECTION_FORCED,
                            "broker shutdown",
                        ))
                        .await;
                }
                // We did not read meanwhile: the client was not silent.
                last_frame = tokio::time::Instant::now();
            }
            if self.handle.flow.pending() > READ_PAUSE {
                // The client does not read its replies: stop reading its
                // requests until the writer catches up.
                tokio::select! {
                    _ = self.handle.flow.wait_drained() => {}
                    _ = shutdown.changed() => {}
                }
                if self.handle.flow.writer_is_gone() {
                    return End::Gone;
                }
                last_frame = tokio::time::Instant::now();
            }
            let deadline = match self.heartbeat_deadline() {
                Some(d) => {
                    let left = d.saturating_sub(last_frame.elapsed());
                    if left.is_zero() {
                        tracing::warn!(conn = self.handle.id, peer = %self.peer, "no whole frame from client within {d:?}, closing");
                        return End::Closed;
                    }
                    Some(left)
                }
                None => None,
            };
            let down = *shutdown.borrow_and_update();
            let mut forced = None;
            let filled = if down {
                None
            } else {
                tokio::select! {
                    r = self.fill(deadline) => Some(r),
                    // The writer gave up (write error, or the client stopped
                    // reading for write_timeout): nothing more can be answered,
                    // so end the connection and return its unacked deliveries.
                    _ = flow.writer_gone() => return End::Gone,
                    _ = shutdown.changed() => None,
                    // A publisher stops being read as soon as the alarm goes
                    // off, not only after its next publish.
                    _ = alarm.changed(), if self.published => continue,
                    // The management API closes this connection.
                    reason = close_requested(&info) => {
                        forced = Some(reason);
                        None
                    }
                    // A connection error raised off this task (tx.commit's write failed).
                    e = handle.failure() => return self.close_with(e).await,
                    _ = ack_check.tick(), if ack_timeout > 0 => {
                        self.close_timed_out_channels(ack_timeout);
                        continue;
                    }
                }
            };
            match filled {
                Some(Ok(true)) => {}
                Some(Ok(false)) => return End::Gone,
                Some(Err(end)) => return end,
                None => {
                    let text = forced.unwrap_or_else(|| "broker shutdown".to_string());
                    return self
                        .close_with(AmqpError::connection(codes::CONNECTION_FORCED, text))
                        .await;
                }
            }
        }
    }

    /// A resource alarm is on and this connection publishes: tell the client
    /// (if it understands) and stop reading until the alarm clears. Returns
    /// true if the broker shuts down meanwhile.
    async fn wait_out_alarm(
        &mut self,
        alarm: &mut tokio::sync::watch::Receiver<bool>,
        shutdown: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let reason = self.broker.alarms().reason();
        tracing::info!(conn = self.handle.id, peer = %self.peer, reason, "blocking publisher: resource alarm");
        if self.blocked_notify {
            self.send_method(
                0,
                AMQPClass::Connection(conn::AMQPMethod::Blocked(conn::Blocked {
                    reason: reason.into(),
                })),
            );
        }
        loop {
            if !*alarm.borrow_and_update() {
                break;
            }
            tokio::select! {
                r = alarm.changed() => if r.is_err() { break },
                _ = shutdown.changed() => return true,
            }
        }
        if self.blocked_notify {
            self.send_method(
                0,
                AMQPClass::Connection(conn::AMQPMethod::Unblocked(conn::Unblocked {})),
            );
        }
        tracing::info!(conn = self.handle.id, peer = %self.peer, "unblocking publisher");
        false
    }

    /// Pause before reading more when this burst published into queues under
    /// flow control, so their consumers get a turn. Bounded: a queue whose
    /// consumers are slow (or on this very connection) costs a publisher at
    /// most `FLOW_WAIT` per read burst.
    async fn flow_wait(&mut self) {
        const FLOW_WAIT: Duration = Duration::from_millis(10);
        if self.flow.is_empty() {
            return;
        }
        let start = tokio::time::Instant::now();
        for q in std::mem::take(&mut self.flow) {
            let left = FLOW_WAIT.saturating_sub(start.elapsed());
            if left.is_zero() {
                break;
            }
            q.flow_wait(left).await;
        }
    }

    /// Close (406) every channel holding a delivery unacknowledged for
    /// longer than `consumer_timeout` ms, with RabbitMQ's text; its
    /// deliveries go back to their queues as on any channel close.
    fn close_timed_out_channels(&mut self, timeout_ms: u64) {
        let limit = Duration::from_millis(timeout_ms);
        let late: Vec<u16> = self
            .channels
            .iter()
            .filter_map(|(id, s)| match s {
                Slot::Open(c) if c.handle.oldest_unacked_age().is_some_and(|a| a > limit) => {
                    Some(*id)
                }
                _ => None,
            })
            .collect();
        for id in late {
            let e = AmqpError::precondition(format!(
                "delivery acknowledgement on channel {id} timed out. Timeout value used: {timeout_ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
            ));
            // A channel error never becomes a connection error here.
            let _ = self.channel_result(id, Err(e));
        }
    }

    fn closing_done(&self) -> bool {
        self.vhost.is_none()
    }

    fn flush_confirms(&mut self) {
        self.batch.flush();
        for id in self.confirm_dirty.drain(..) {
            if let Some(Slot::Open(c)) = self.channels.get(&id) {
                c.handle.flush_confirms();
            }
        }
    }

    fn send_method(&self, channel: u16, method: AMQPClass) {
        let mut out = BytesMut::new();
        encode::method(&mut out, channel, &method);
        self.handle.send(out.freeze());
    }

    /// Handle one frame after the handshake. A returned error is a connection
    /// error; channel errors are dealt with here.
    fn handle_frame(&mut self, frame: Frame) -> Result<(), AmqpError> {
        let channel = frame.channel();
        if channel == 0 {
            return match frame {
                Frame::Heartbeat(_) => Ok(()),
                Frame::Method(_, m) => self.connection_method(*m),
                Frame::Header(..) | Frame::Body(..) => Err(AmqpError::connection(
                    codes::UNEXPECTED_FRAME,
                    "content frame on channel 0",
                )),
            };
        }
        let method = match frame {
            Frame::Heartbeat(_) => {
                return Err(AmqpError::connection(
                    codes::UNEXPECTED_FRAME,
                    "heartbeat frame on a non-zero channel",
                ))
            }
            Frame::Method(_, m) => m,
            other => return self.content_frame(channel, other),
        };
        match (self.channels.get_mut(&channel), *method) {
            (None, AMQPClass::Channel(ch::AMQPMethod::Open(_))) => {
                if channel > self.channel_max {
                    return Err(AmqpError::connection(
                        codes::NOT_ALLOWED,
                        format!(
                            "channel id {channel} exceeds the negotiated channel_max {}",
                            self.channel_max
                        ),
                    )
                    .caused_by(20, 10));
                }
                self.channels.insert(
                    channel,
                    Slot::Open(Box::new(Channel::new(channel, self.handle.clone()))),
                );
                self.channels_changed = true;
                self.send_method(
                    channel,
                    AMQPClass::Channel(ch::AMQPMethod::OpenOk(ch::OpenOk {})),
                );
                Ok(())
            }
            (None, m) => Err(AmqpError::connection(
                codes::CHANNEL_ERROR,
                format!("expected 'channel.open' on channel {channel}"),
            )
            .caused_by(m.get_amqp_class_id(), m.get_amqp_method_id())),
            (Some(Slot::Closing), AMQPClass::Channel(ch::AMQPMethod::CloseOk(_))) => {
                self.channels.remove(&channel);
                Ok(())
            }
            (Some(Slot::Closing), AMQPClass::Channel(ch::AMQPMethod::Close(_))) => {
                // Both sides closed at once: answer, and keep waiting for our close-ok.
                self.send_method(
                    channel,
                    AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                );
                Ok(())
            }
            (Some(Slot::Closing), _) => Ok(()),
            (Some(Slot::Open(_)), AMQPClass::Channel(ch::AMQPMethod::Close(_))) => {
                self.channels_changed = true;
                if let Some(Slot::Open(mut c)) = self.channels.remove(&channel) {
                    c.teardown(&self.broker, self.vhost.as_ref());
                    self.closed_channels
                        .push(c.handle.clone() as Arc<dyn ChannelView>);
                }
                self.send_method(
                    channel,
                    AMQPClass::Channel(ch::AMQPMethod::CloseOk(ch::CloseOk {})),
                );
                Ok(())
            }
            (Some(Slot::Open(_)), AMQPClass::Channel(ch::AMQPMethod::CloseOk(_))) => {
                // close-ok for a close we never sent: ignore, as RabbitMQ does.
                Ok(())
            }
            (Some(Slot::Open(c)), m) => {
                let Some(vhost) = self.vhost.as_ref() else {
                    return Ok(());
                };
                let mut ctx = ConnCtx {
                    broker: &self.broker,
                    vhost,
                    conn: &self.handle,
                    user: &self.user,
                    exclusive_queues: &mut self.exclusive_queues,
                    flow: &mut self.flow,
                    batch: &mut self.batch,
                };
                let is_publish = matches!(
                    m,
                    AMQPClass::Basic(amq_protocol::protocol::basic::AMQPMethod::Publish(_))
                );
                let r = c.handle_method(&mut ctx, m);
                if is_publish {
                    self.published = true;
                    self.mark_confirm(channel);
                }
                self.channel_result(channel, r)
            }
        }
    }

    fn mark_confirm(&mut self, channel: u16) {
        if self.confirm_dirty.last() != Some(&channel) {
            self.confirm_dirty.push(channel);
        }
    }

    fn content_frame(&mut self, channel: u16, frame: Frame) -> Result<(), AmqpError> {
        let Some(slot) = self.channels.get_mut(&channel) else {
            // RabbitMQ 3.10 refuses content before any method on a channel it
            // has not seen as UNEXPECTED_FRAME, like content without a method
            // on an open channel, not as "expected 'channel.open'".
            return Err(AmqpError::connection(
                codes::UNEXPECTED_FRAME,
                format!("expected method frame, got non method frame instead (channel {channel} is not open)"),
            ));
        };
        let Slot::Open(c) = slot else {
            return Ok(());
        };
        let Some(vhost) = self.vhost.as_ref() else {
            return Ok(());
        };
        let mut ctx = ConnCtx {
            broker: &self.broker,
            vhost,
            conn: &self.handle,
            user: &self.user,
            exclusive_queues: &mut self.exclusive_queues,
            flow: &mut self.flow,
            batch: &mut self.batch,
        };
        let r = match frame {
            Frame::Header(_, h) => c.handle_header(&mut ctx, *h),
            Frame::Body(_, b) => c.handle_body(&mut ctx, b),
            _ => Ok(()),
        };
        self.mark_confirm(channel);
        self.channel_result(channel, r)
    }

    /// Turn a channel error into channel.close; pass connection errors up.
    fn channel_result(&mut self, channel: u16, r: Result<(), AmqpError>) -> Result<(), AmqpError> {
        match r {
            Ok(()) => Ok(()),
            Err(AmqpError::Channel {
                code,
                text,
                class_id,
                method_id,
            }) => {
                tracing::info!(conn = self.handle.id, channel, code, %text, "closing channel");
                self.channels_changed = true;
                if let Some(Slot::Open(mut c)) = self.channels.insert(channel, Slot::Closing) {
                    // Confirms for publishes completed before the error still go out.
                    c.handle.flush_confirms();
                    c.teardown(&self.broker, self.vhost.as_ref());
                    self.closed_channels
                        .push(c.handle.clone() as Arc<dyn ChannelView>);
                }
                self.send_method(
                    channel,
                    AMQPClass::Channel(ch::AMQPMethod::Close(ch::Close {
                        reply_code: code,
                        reply_text: crate::protocol::short(&text),
                        class_id,
                        method_id,
                    })),
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn connection_method(&mut self, m: AMQPClass) -> Result<(), AmqpError> {
        let (class_id, method_id) = (m.get_amqp_class_id(), m.get_amqp_method_id());
        match m {
            AMQPClass::Connection(conn::AMQPMethod::Close(_)) => {
                self.send_method(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::CloseOk(conn::CloseOk {})),
                );
                // Marks the loop done.
                self.teardown();
                Ok(())
            }
            AMQPClass::Connection(conn::AMQPMethod::CloseOk(_)) => {
                self.teardown();
                Ok(())
            }
            AMQPClass::Connection(conn::AMQPMethod::Blocked(_))
            | AMQPClass::Connection(conn::AMQPMethod::Unblocked(_)) => Ok(()),
            AMQPClass::Connection(conn::AMQPMethod::UpdateSecret(u)) => {
                // RabbitMQ 3.x hands the new secret to the auth backends whose
                // state can expire (OAuth 2 tokens); its internal user database
                // cannot expire, so the secret is not checked and the
                // connection goes on as the user it logged in as. Ours is that
                // internal database. The secret itself is never logged.
                tracing::info!(
                    conn = self.handle.id,
                    peer = %self.peer,
                    user = %self.user,
                    reason = ?u.reason.as_str(),
                    "connection.update-secret: nothing to refresh for an internal user"
                );
                self.send_method(
                    0,
                    AMQPClass::Connection(conn::AMQPMethod::UpdateSecretOk(
                        conn::UpdateSecretOk {},
                    )),
                );
                Ok(())
            }
            AMQPClass::Connection(_) => Err(AmqpError::connection(
                codes::COMMAND_INVALID,
                "unexpected connection method after the handshake",
            )
            .caused_by(class_id, method_id)),
            // RabbitMQ 3.10: CHANNEL_ERROR "unexpected method in connection
            // state running" (not COMMAND_INVALID).
            _ => Err(AmqpError::connection(
                codes::CHANNEL_ERROR,
                "unexpected method in connection state running (channel method on channel 0)",
            )
            .caused_by(class_id, method_id)),
        }
    }
}

fn frame_error(e: FrameError) -> AmqpError {
    let (class_id, method_id) = e.class_method();
    AmqpError::connection(e.reply_code(), e.to_string()).caused_by(class_id, method_id)
}

/// Bytes to send before closing when the protocol header is wrong.
pub fn header_reply() -> Bytes {
    Bytes::from_static(crate::protocol::PROTOCOL_HEADER)
}
