//! The part of a channel that other tasks touch: queues deliver to its
//! consumers, the store's committer completes its publisher confirms. Everything
//! here is behind short `parking_lot` locks with no `.await` inside.
//!
//! Lock order: a queue's lock may be held while taking a channel's `delivery`
//! lock (that is how a queue delivers), never the other way round.

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::mpsc;

use crate::batch::Batch;
use crate::protocol::encode;
use crate::queue::subscriber::Take;
use crate::queue::{Queue, QueueEntry, Subscriber};

/// What the connection's writer task is asked to do.
#[derive(Debug)]
pub enum Outbound {
    /// Bytes of one or more whole frames.
    Frames(Bytes),
    /// Start sending heartbeats every this many seconds.
    Heartbeat(u16),
    /// Flush everything queued so far, then close the socket.
    Close,
}

/// Bytes queued for a connection's socket but not yet written. Past
/// `WRITE_HIGH` queues stop delivering to the connection's consumers; the
/// writer kicks them again once it has caught up. This bounds the memory a
/// slow consumer (or one in no-ack mode) can pin.
pub const WRITE_HIGH: usize = 2 * 1024 * 1024;

/// Past this much pending the connection stops reading its client until the
/// writer catches up: a client that floods requests (channel.open/close,
/// queue.declare, ...) and never reads the replies would otherwise make the
/// broker queue replies without bound. Twice `WRITE_HIGH`, so deliveries
/// (admitted only below `WRITE_HIGH`) alone rarely pause reading.
pub const READ_PAUSE: usize = 2 * WRITE_HIGH;

/// What one queued outbound message costs beyond its bytes (allocation and
/// queue slot), counted in `pending` so that a flood of tiny replies is
/// bounded by memory, not by payload bytes.
pub const MESSAGE_OVERHEAD: usize = 64;

#[derive(Debug, Default)]
pub struct WriteFlow {
    pending: AtomicUsize,
    blocked: Mutex<Vec<Weak<Queue>>>,
    /// Wakes the connection's reader paused at `READ_PAUSE`.
    drained: tokio::sync::Notify,
    /// The writer has stopped: nothing will drain any more.
    writer_gone: AtomicBool,
    gone: tokio::sync::Notify,
    /// Socket byte and read/write counts: the reader task writes `recv_*`,
    /// the writer task `send_*`; the broker's registry reads them.
    pub io: Arc<crate::stats::IoCounters>,
}

impl WriteFlow {
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// The writer wrote `n` bytes: wake the queues that held back.
    pub fn written(&self, n: usize) {
        self.pending.fetch_sub(n, Ordering::AcqRel);
        if self.pending() <= READ_PAUSE {
            // One stored permit at most: a reader that was not waiting yet
            // finds it and looks at `pending` again.
            self.drained.notify_one();
        }
        if self.pending() > WRITE_HIGH {
            return;
        }
        let blocked = std::mem::take(&mut *self.blocked.lock());
        for q in blocked.iter().filter_map(Weak::upgrade) {
            q.kick();
        }
    }

    /// Wait until the writer has brought `pending` down to `READ_PAUSE`.
    pub async fn wait_drained(&self) {
        while self.pending() > READ_PAUSE && !self.writer_gone.load(Ordering::Acquire) {
            self.drained.notified().await;
        }
    }

    /// The writer task ended (socket gone): release a paused reader.
    pub fn writer_stopped(&self) {
        self.writer_gone.store(true, Ordering::Release);
        self.drained.notify_one();
        self.gone.notify_waiters();
    }

    pub fn writer_is_gone(&self) -> bool {
        self.writer_gone.load(Ordering::Acquire)
    }

    /// Completes once the writer task has ended (write error or send timeout):
    /// the connection cannot answer any more and must end.
    pub async fn writer_gone(&self) {
        let gone = self.gone.notified();
        if self.writer_is_gone() {
            return;
        }
        gone.await;
    }

    /// Whether a delivery may be queued now; when not, `queue` is kicked later.
    fn admit(&self, queue: &Arc<Queue>) -> bool {
        if self.pending() <= WRITE_HIGH {
            return true;
        }
        self.blocked.lock().push(Arc::downgrade(queue));
        // The writer may have caught up before we registered: look again.
        self.pending() <= WRITE_HIGH
    }
}

/// Shared facts about a connection.
#[derive(Debug)]
pub struct ConnHandle {
    pub id: u64,
    out: mpsc::UnboundedSender<Outbound>,
    pub flow: Arc<WriteFlow>,
    frame_max: AtomicU32,
    cancel_notify: AtomicBool,
    /// A connection error raised from outside the reader task (a
    /// transaction whose write failed): the reader closes the connection
    /// with it through its usual close handshake.
    failure: Mutex<Option<crate::error::AmqpError>>,
    failed: tokio::sync::Notify,
}

impl ConnHandle {
    pub fn new(
        id: u64,
        out: mpsc::UnboundedSender<Outbound>,
        frame_max: u32,
        flow: Arc<WriteFlow>,
    ) -> Self {
        ConnHandle {
            id,
            out,
            flow,
            frame_max: AtomicU32::new(frame_max),
            cancel_notify: AtomicBool::new(false),
            failure: Mutex::new(None),
            failed: tokio::sync::Notify::new(),
        }
    }

    /// Ask the connection's reader to close the connection with `e` (a
    /// connection error), from any thread. The first failure wins.
    pub fn fail(&self, e: crate::error::AmqpError) {
        self.failure.lock().get_or_insert(e);
        // notify_one keeps a permit if the reader is not waiting yet.
        self.failed.notify_one();
    }

    /// Resolves with the error once `fail` was called.
    pub async fn failure(&self) -> crate::error::AmqpError {
        loop {
            if let Some(e) = self.failure.lock().take() {
                return e;
            }
            self.failed.notified().await;
        }
    }

    /// Queue frames for the writer. A closed writer means the socket is gone:
    /// the frames are dropped, and the connection's own teardown returns any
    /// unacked deliveries to their queues.
    pub fn send(&self, frames: Bytes) {
        let n = frames.len() + MESSAGE_OVERHEAD;
        self.flow.pending.fetch_add(n, Ordering::AcqRel);
        if self.out.send(Outbound::Frames(frames)).is_err() {
            self.flow.pending.fetch_sub(n, Ordering::AcqRel);
        }
    }

    pub fn control(&self, msg: Outbound) {
        let _ = self.out.send(msg);
    }

    pub fn frame_max(&self) -> u32 {
        self.frame_max.load(Ordering::Relaxed)
    }

    pub fn set_frame_max(&self, v: u32) {
        self.frame_max.store(v, Ordering::Relaxed)
    }

    pub fn cancel_notify(&self) -> bool {
        self.cancel_notify.load(Ordering::Relaxed)
    }

    pub fn set_cancel_notify(&self, v: bool) {
        self.cancel_notify.store(v, Ordering::Relaxed)
    }
}

/// A delivery the client has not acked yet.
#[derive(Debug)]
pub struct Unacked {
    pub queue: Arc<Queue>,
    pub entry: QueueEntry,
    /// `None` for basic.get deliveries.
    pub consumer: Option<Arc<Consumer>>,
    /// When it was delivered, for `limits.consumer_timeout`.
    pub at: std::time::Instant,
}

#[derive(Debug)]
pub struct DeliveryState {
    pub next_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
    /// basic.qos with global=true: limit shared by the channel's consumers.
    pub prefetch_global: u16,
    /// basic.qos with global=false: limit for consumers created afterwards.
    pub prefetch_consumer: u16,
    /// channel.flow: when false, nothing is delivered to this channel.
    pub flow_active: bool,
    pub closed: bool,
    pub consumers: HashMap<String, Arc<Consumer>>,
    /// The direct reply-to consumer of this channel, if any.
    pub reply_consumer: Option<super::reply_to::ReplyConsumer>,
}

/// Publisher confirm bookkeeping for one channel.
#[derive(Debug, Default)]
pub struct ConfirmState {
    pub enabled: bool,
    /// Sequence number of the last publish (the first is 1).
    pub last_seq: u64,
    /// Publishes not yet completed.
    pending: BTreeSet<u64>,
    /// Everything up to here has been confirmed to the client.
    confirmed_upto: u64,
    /// Completed with failure, nack not yet sent.
    nacks_to_send: Vec<u64>,
    /// Nacked, inside the range not yet covered by an ack.
    nacked: BTreeSet<u64>,
    /// Publishes acked to the client so far (`message_stats.confirm`).
    pub confirmed: u64,
}

impl ConfirmState {
    /// Publishes not yet confirmed.
    pub fn unconfirmed(&self) -> usize {
        self.pending.len()
    }

    /// Register the next publish; returns its sequence number.
    pub fn register(&mut self) -> u64 {
        self.last_seq += 1;
        self.pending.insert(self.last_seq);
        self.last_seq
    }

    pub fn complete(&mut self, seq: u64, ok: bool) {
        if self.pending.remove(&seq) && !ok {
            self.nacks_to_send.push(seq);
            self.nacked.insert(seq);
        }
    }

    /// Frames for everything completed since the last flush: nacks one by one,
    /// then one ack (multiple=true when it covers several) for the longest run
    /// of completed publishes.
    pub fn flush(&mut self, channel: u16, out: &mut BytesMut) {
        use amq_protocol::protocol::{basic, AMQPClass};
        self.nacks_to_send.sort_unstable();
        for seq in self.nacks_to_send.drain(..) {
            encode::method(
                out,
                channel,
                &AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                    delivery_tag: seq,
                    multiple: false,
                    requeue: false,
                })),
            );
        }
        let upto = match self.pending.first() {
            Some(first) => first - 1,
            None => self.last_seq,
        };
        if upto <= self.confirmed_upto {
            return;
        }
        let nacked_in_range = self.nacked.range(..=upto).count() as u64;
        let ackable = upto - self.confirmed_upto - nacked_in_range;
        self.confirmed += ackable;
        if ackable > 0 {
            let mut tag = upto;
            while self.nacked.contains(&tag) {
                tag -= 1;
            }
            encode::method(
                out,
                channel,
                &AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                    delivery_tag: tag,
                    multiple: ackable > 1,
                })),
            );
        }
        self.confirmed_upto = upto;
        self.nacked = self.nacked.split_off(&(upto + 1));
    }
}

/// The shared half of an open channel.
#[derive(Debug)]
pub struct ChannelHandle {
    pub id: u16,
    pub conn: Arc<ConnHandle>,
    pub delivery: Mutex<DeliveryState>,
    pub confirms: Mutex<ConfirmState>,
    /// Message counts for the management API and Prometheus.
    pub stats: crate::stats::ChannelCounters,
}

impl ChannelHandle {
    /// How long the oldest unacknowledged delivery has waited (tags grow
    /// with delivery time, so it is the first), for `consumer_timeout`.
    pub fn oldest_unacked_age(&self) -> Option<std::time::Duration> {
        let d = self.delivery.lock();
        d.unacked.values().next().map(|u| u.at.elapsed())
    }

    pub fn new(id: u16, conn: Arc<ConnHandle>) -> Self {
        ChannelHandle {
            id,
            conn,
            delivery: Mutex::new(DeliveryState {
                next_tag: 1,
                unacked: BTreeMap::new(),
                prefetch_global: 0,
                prefetch_consumer: 0,
                flow_active: true,
                closed: false,
                consumers: HashMap::new(),
                reply_consumer: None,
            }),
            confirms: Mutex::new(ConfirmState::default()),
            stats: Default::default(),
        }
    }

    /// Complete a publish (from any task); what that releases is sent at
    /// the end of `batch` (the store's batch of completions, or the
    /// connection's read burst).
    pub fn complete_confirm(self: &Arc<Self>, seq: u64, ok: bool, batch: &mut Batch) {
        self.confirms.lock().complete(seq, ok);
        batch.defer(self.clone());
    }

    /// Send acks for publishes completed so far (called once per read burst).
    pub fn flush_confirms(&self) {
        let mut out = BytesMut::new();
        self.confirms.lock().flush(self.id, &mut out);
        if !out.is_empty() {
            self.conn.send(out.freeze());
        }
    }
}

impl crate::broker::publish::PublishSink for ChannelHandle {
    fn confirm(self: Arc<Self>, seq: u64, ack: bool, batch: &mut Batch) {
        self.complete_confirm(seq, ack, batch);
    }

    fn returned(&self, exchange: &str, routing_key: &str, raw_properties: &Bytes, body: &Bytes) {
        use amq_protocol::protocol::{basic, AMQPClass};
        self.stats.return_unroutable.add_shared(1);
        let mut out = BytesMut::with_capacity(body.len() + 128);
        encode::method(
            &mut out,
            self.id,
            &AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                reply_code: crate::protocol::codes::NO_ROUTE,
                reply_text: "NO_ROUTE".into(),
                exchange: crate::protocol::short(exchange),
                routing_key: crate::protocol::short(routing_key),
            })),
        );
        encode::content(
            &mut out,
            self.id,
            raw_properties,
            body,
            self.conn.frame_max(),
        );
        self.conn.send(out.freeze());
    }
}

impl crate::batch::Flush for ChannelHandle {
    fn flush(&self) {
        self.flush_confirms();
    }
}

/// A basic.consume subscription.
#[derive(Debug)]
pub struct Consumer {
    pub tag: String,
    pub channel: Arc<ChannelHandle>,
    pub queue: Arc<Queue>,
    pub no_ack: bool,
    pub exclusive: bool,
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch: u16,
    /// `x-priority` consumer argument: higher gets messages first.
    pub priority: i64,
    pub unacked: AtomicU32,
}

impl Consumer {
    /// Bookkeeping when one of this consumer's deliveries settles (ack,
    /// reject, requeue): one more message of credit. basic.get deliveries
    /// have no consumer.
    pub fn release_credit(consumer: &Option<Arc<Consumer>>) {
        if let Some(c) = consumer {
            c.unacked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn as_subscriber(self: &Arc<Self>) -> Arc<dyn Subscriber> {
        self.clone()
    }

    /// Register with the queue; false when an exclusive consumer holds it.
    pub fn subscribe(self: &Arc<Self>) -> bool {
        self.queue.add_consumer(self.as_subscriber())
    }

    /// Leave the queue; true when an auto-delete queue lost its last consumer.
    pub fn unsubscribe(self: &Arc<Self>) -> bool {
        self.queue.remove_consumer(&self.as_subscriber())
    }
}

impl Subscriber for Consumer {
    fn priority(&self) -> i64 {
        self.priority
    }

    fn exclusive(&self) -> bool {
        self.exclusive
    }

    fn no_ack(&self) -> bool {
        self.no_ack
    }

    /// Take the queue's head if credit, flow and the connection's write
    /// backlog allow; the frames go out under the channel's lock so delivery
    /// tags reach the client in order.
    fn offer(self: Arc<Self>, queue: &Arc<Queue>, take: &mut Take<'_>) -> bool {
        let mut st = self.channel.delivery.lock();
        if st.closed || !st.flow_active {
            return false;
        }
        if !self.channel.conn.flow.admit(queue) {
            return false;
        }
        if !self.no_ack {
            if self.prefetch > 0 && self.unacked.load(Ordering::Relaxed) >= self.prefetch as u32 {
                return false;
            }
            if st.prefetch_global > 0 && st.unacked.len() >= st.prefetch_global as usize {
                return false;
            }
        }
        let Some((entry, msg)) = take() else {
            return false;
        };
        let tag = st.next_tag;
        st.next_tag += 1;
        // Under the channel's delivery lock: the one writer of these.
        let stats = &self.channel.stats;
        if self.no_ack {
            stats.deliver_no_ack.add(1);
        } else {
            stats.deliver.add(1);
        }
        if entry.redelivered {
            stats.redeliver.add(1);
        }
        let mut out = BytesMut::with_capacity(msg.body.len() + msg.raw_properties.len() + 128);
        encode::deliver_method(
            &mut out,
            self.channel.id,
            &self.tag,
            tag,
            entry.redelivered,
            &msg.exchange,
            &msg.routing_key,
        );
        encode::content(
            &mut out,
            self.channel.id,
            &entry.delivery_properties(&msg, queue.quorum),
            &msg.body,
            self.channel.conn.frame_max(),
        );
        if self.no_ack {
            queue.settled(&entry);
        } else {
            self.unacked.fetch_add(1, Ordering::Relaxed);
            st.unacked.insert(
                tag,
                Unacked {
                    queue: queue.clone(),
                    entry,
                    consumer: Some(self.clone()),
                    at: std::time::Instant::now(),
                },
            );
        }
        self.channel.conn.send(out.freeze());
        true
    }

    fn info(&self) -> crate::queue::subscriber::SubscriberInfo {
        crate::queue::subscriber::SubscriberInfo {
            tag: self.tag.clone(),
            ack_required: !self.no_ack,
            prefetch: self.prefetch,
            exclusive: self.exclusive,
            priority: self.priority,
            unacked: self.unacked.load(Ordering::Relaxed),
            connection: self.channel.conn.id,
            channel: self.channel.id,
        }
    }

    /// basic.cancel to the client (when it announced consumer_cancel_notify).
    fn cancelled(&self) {
        self.channel.delivery.lock().consumers.remove(&self.tag);
        if self.channel.conn.cancel_notify() {
            use amq_protocol::protocol::{basic, AMQPClass};
            let mut out = BytesMut::new();
            encode::method(
                &mut out,
                self.channel.id,
                &AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                    consumer_tag: crate::protocol::short(&self.tag),
                    nowait: true,
                })),
            );
            self.channel.conn.send(out.freeze());
        }
    }
}

/// What the management API reads of a channel (through the broker's registry).
impl crate::broker::connections::ChannelView for ChannelHandle {
    fn snapshot(&self) -> crate::broker::connections::ChannelSnapshot {
        let (prefetch_count, global_prefetch_count, consumer_count, unacked) = {
            let d = self.delivery.lock();
            (
                d.prefetch_consumer,
                d.prefetch_global,
                d.consumers.len(),
                d.unacked.len(),
            )
        };
        let (confirm, unconfirmed) = {
            let c = self.confirms.lock();
            (c.enabled, c.unconfirmed())
        };
        crate::broker::connections::ChannelSnapshot {
            number: self.id,
            prefetch_count,
            global_prefetch_count,
            confirm,
            consumer_count,
            unacked,
            unconfirmed,
            counts: self.counters(),
        }
    }

    fn counters(&self) -> crate::stats::MsgCounts {
        let mut m = self.stats.snapshot();
        m.confirm = self.confirms.lock().confirmed;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frame::{read_frame, Frame};
    use amq_protocol::protocol::{basic, AMQPClass};

    fn acks(out: &mut BytesMut) -> Vec<(bool, u64, bool)> {
        let mut v = Vec::new();
        while let Some(Frame::Method(_, m)) = read_frame(out, 131072).unwrap() {
            match *m {
                AMQPClass::Basic(basic::AMQPMethod::Ack(a)) => {
                    v.push((true, a.delivery_tag, a.multiple))
                }
                AMQPClass::Basic(basic::AMQPMethod::Nack(n)) => {
                    v.push((false, n.delivery_tag, n.multiple))
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        v
    }

    #[test]
    fn runs_merge_into_multiple() {
        let mut c = ConfirmState::default();
        for _ in 0..5 {
            c.register();
        }
        for s in 1..=5 {
            c.complete(s, true);
        }
        let mut out = BytesMut::new();
        c.flush(1, &mut out);
        assert_eq!(acks(&mut out), vec![(true, 5, true)]);
    }

    #[test]
    fn out_of_order_completion_waits_for_the_gap() {
        let mut c = ConfirmState::default();
        for _ in 0..3 {
            c.register();
        }
        c.complete(2, true);
        c.complete(3, true);
        let mut out = BytesMut::new();
        c.flush(1, &mut out);
        assert!(acks(&mut out).is_empty());
        c.complete(1, true);
        c.flush(1, &mut out);
        assert_eq!(acks(&mut out), vec![(true, 3, true)]);
        c.register();
        c.complete(4, true);
        c.flush(1, &mut out);
        assert_eq!(acks(&mut out), vec![(true, 4, false)]);
    }

    #[test]
    fn nacks_go_first_and_are_not_acked() {
        let mut c = ConfirmState::default();
        for _ in 0..3 {
            c.register();
        }
        c.complete(1, true);
        c.complete(2, true);
        c.complete(3, false);
        let mut out = BytesMut::new();
        c.flush(1, &mut out);
        assert_eq!(acks(&mut out), vec![(false, 3, false), (true, 2, true)]);
        c.register();
        c.complete(4, false);
        c.flush(1, &mut out);
        assert_eq!(acks(&mut out), vec![(false, 4, false)]);
    }
}
