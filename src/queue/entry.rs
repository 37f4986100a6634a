//! A message's place in a queue (`QueueEntry`, in memory or only in the
//! store) and the ordered list of ready entries with its byte count. Plain
//! data: no locks, no store access, no delivery.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::message::Message;
use crate::store::IndexMeta;

/// Where an entry's message is: in memory, or only in the store (deep queues
/// and recovered backlogs keep just the id, and load the body when a consumer
/// gets near it).
#[derive(Debug, Clone)]
pub enum Slot {
    Mem(Arc<Message>),
    Stored(u64),
}

/// A message's place in one queue.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub slot: Slot,
    /// Position in this queue; requeued entries go back by it.
    pub seq: u64,
    pub redelivered: bool,
    /// When the message expires here (ms since the Unix epoch), 0 for never.
    pub expires_at: u64,
    /// Priority here (0 unless the queue has `x-max-priority`).
    pub priority: u8,
    /// Body size, for `x-max-length-bytes`.
    pub size: u32,
    /// Deduplication key, in a queue with `x-message-deduplication`.
    pub dedup_key: Option<Arc<str>>,
    /// How many times a quorum queue got it back unacknowledged (reject or
    /// nack with requeue, channel closed): `x-delivery-count` on redelivery.
    pub delivery_count: u32,
    /// Taken by basic.get and held unacknowledged: counted in the queue's
    /// `got_unacked` until it is settled, requeued or rejected.
    pub got: bool,
}

/// The `seq` of an entry that was refused at the door (reject-publish-dlx):
/// it never had a place in the queue, nor an index entry in the store.
pub(super) const NEVER_ENQUEUED: u64 = u64::MAX;

impl QueueEntry {
    /// Order in a queue: higher priority first, then publish order.
    pub(super) fn order(&self) -> (std::cmp::Reverse<u8>, u64) {
        (std::cmp::Reverse(self.priority), self.seq)
    }

    pub fn meta(&self) -> IndexMeta {
        IndexMeta {
            expires_at: self.expires_at,
            priority: self.priority,
            size: self.size,
        }
    }
}

/// Milliseconds since the Unix epoch, the clock of every TTL, expiry and
/// `x-expires`: the wall clock read once, at the first call, plus tokio's
/// monotonic clock since then. Two reasons: a wall clock stepped back or
/// forth (NTP) cannot expire a whole backlog at once or keep it for ever,
/// and under paused tokio time (`tokio::time::pause`, the in-process test
/// harness) expiry follows the test's `advance` instead of real sleeps. A
/// runtime whose clock is paused must be created after the first call (the
/// harness calls this first), or its clock starts behind the base and reads
/// the base until it has advanced past it. Outside a runtime (store threads)
/// tokio's clock is the real monotonic one.
pub fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<(u64, tokio::time::Instant)> = std::sync::OnceLock::new();
    let (wall, at) = *BASE.get_or_init(|| {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        (wall, tokio::time::Instant::now())
    });
    let since = tokio::time::Instant::now().saturating_duration_since(at);
    wall.saturating_add(since.as_millis() as u64)
}

/// Why a message is dead-lettered (the `reason` in `x-death`).
pub type Reason = &'static str;

impl QueueEntry {
    pub fn msg_id(&self) -> u64 {
        match &self.slot {
            Slot::Mem(m) => m.id,
            Slot::Stored(id) => *id,
        }
    }

    /// The properties to deliver it with: the message's own, plus, from a
    /// quorum queue, the `x-delivery-count` header (a `long`, 0 on the first
    /// delivery, as RabbitMQ 3.10 sends it). Re-encoded only then.
    pub fn delivery_properties(&self, msg: &Message, quorum: bool) -> bytes::Bytes {
        if !quorum {
            return msg.raw_properties.clone();
        }
        use amq_protocol::frame::WriteContext;
        use amq_protocol::types::AMQPValue;
        let mut props = msg.properties.clone();
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            "x-delivery-count".into(),
            AMQPValue::LongLongInt(i64::from(self.delivery_count)),
        );
        props = props.with_headers(headers);
        let encoded =
            amq_protocol::protocol::basic::gen_properties(&props)(WriteContext::from(Vec::new()));
        match encoded {
            Ok(ctx) => bytes::Bytes::from(ctx.into_inner().0),
            // The original encoded fine; without the header it still does.
            Err(_) => msg.raw_properties.clone(),
        }
    }

    /// The message, when it is in memory.
    pub fn message(&self) -> Option<&Arc<Message>> {
        match &self.slot {
            Slot::Mem(m) => Some(m),
            Slot::Stored(_) => None,
        }
    }

    pub(super) fn mem_bytes(&self) -> usize {
        match &self.slot {
            Slot::Mem(m) => m.body.len() + m.raw_properties.len(),
            Slot::Stored(_) => 0,
        }
    }
}

/// The ready messages of a queue, with their total body size kept current
/// (for `x-max-length-bytes`). Reads go through `Deref`; every change goes
/// through a method that keeps `bytes` right.
#[derive(Debug, Default)]
pub(super) struct Ready {
    q: VecDeque<QueueEntry>,
    bytes: u64,
    /// Body bytes of entries paged out to the store (`Slot::Stored`).
    stored: u64,
}

fn stored_size(e: &QueueEntry) -> u64 {
    match e.slot {
        Slot::Stored(_) => e.size as u64,
        Slot::Mem(_) => 0,
    }
}

impl std::ops::Deref for Ready {
    type Target = VecDeque<QueueEntry>;
    fn deref(&self) -> &VecDeque<QueueEntry> {
        &self.q
    }
}

impl Ready {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
    /// Body bytes paged out to the store.
    pub fn stored_bytes(&self) -> u64 {
        self.stored
    }
    pub(super) fn push_back(&mut self, e: QueueEntry) {
        self.bytes += e.size as u64;
        self.stored += stored_size(&e);
        self.q.push_back(e);
    }
    pub(super) fn insert(&mut self, at: usize, e: QueueEntry) {
        self.bytes += e.size as u64;
        self.stored += stored_size(&e);
        self.q.insert(at, e);
    }
    pub(super) fn pop_front(&mut self) -> Option<QueueEntry> {
        let e = self.q.pop_front()?;
        self.bytes = self.bytes.saturating_sub(e.size as u64);
        self.stored = self.stored.saturating_sub(stored_size(&e));
        Some(e)
    }
    pub(super) fn remove(&mut self, at: usize) -> Option<QueueEntry> {
        let e = self.q.remove(at)?;
        self.bytes = self.bytes.saturating_sub(e.size as u64);
        self.stored = self.stored.saturating_sub(stored_size(&e));
        Some(e)
    }
    pub(super) fn retain(&mut self, keep: impl FnMut(&QueueEntry) -> bool) {
        self.q.retain(keep);
        self.bytes = self.q.iter().map(|e| e.size as u64).sum();
        self.stored = self.q.iter().map(stored_size).sum();
    }
    pub(super) fn take(&mut self) -> VecDeque<QueueEntry> {
        self.bytes = 0;
        self.stored = 0;
        std::mem::take(&mut self.q)
    }
    pub(super) fn get_mut(&mut self, i: usize) -> Option<&mut QueueEntry> {
        // Only the slot changes through this: sizes stay. Whoever pages an
        // entry out or back in says so with `paged`.
        self.q.get_mut(i)
    }
    /// `out` body bytes were paged out, `back` read back in.
    pub(super) fn paged(&mut self, out: u64, back: u64) {
        self.stored = (self.stored + out).saturating_sub(back);
    }
    pub(super) fn sort_by_order(&mut self) {
        self.q.make_contiguous().sort_by_key(|e| e.order());
    }
}
