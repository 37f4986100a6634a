//! A queue: ready messages in order, its consumers, round-robin delivery within
//! each consumer's credit, requeue to the original position.
//!
//! All state is behind one short lock. Consumers are `Subscriber`s: the
//! queue offers its head and a subscriber that has credit takes the entry by
//! value (its own lock is taken inside the queue's: queue lock first). This
//! module never names a channel, never encodes frames and never touches
//! sockets; it pages stored bodies out and back in (`paging`), never reading
//! the store under its lock.

mod consumers;
mod entry;
mod limits;
mod paging;
mod replica;
mod runtime;
pub mod subscriber;
mod views;

pub use entry::{now_ms, QueueEntry, Reason, Slot};
use entry::{Ready, NEVER_ENQUEUED};
pub use limits::{as_u64, Limits, Overflow, PolicyLimits};
use paging::LOAD_BATCH;
pub use replica::{Replica, ReplicaInfo};
use runtime::over_limit;
pub use subscriber::Subscriber;
pub use views::{Peek, Peeked};

use amq_protocol::types::FieldTable;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::message::Message;
use crate::store::{IndexMeta, QueueKey, Store};

/// What `Queue::enqueue` did with a message.
#[derive(Debug, Clone)]
pub enum Enqueued {
    /// In the queue; its index entry records this.
    Accepted(IndexMeta),
    /// Refused (queue deleted, or full with reject-publish): nack.
    Refused,
    /// A message with the same deduplication key is in the queue: dropped.
    /// Confirmed, but only once that original is: it is given when its store
    /// write is still pending.
    Duplicate(Option<Arc<Message>>),
}

/// Queue-level deduplication: the keys of the messages in the queue.
#[derive(Debug)]
struct QueueDedup {
    header: Option<String>,
    keys: Mutex<DedupKeys>,
}

#[derive(Debug, Default)]
struct DedupKeys {
    keys: std::collections::HashSet<Arc<str>>,
    /// Originals whose store write is still pending, by key: a duplicate's
    /// confirm waits for them. Pruned when the queue is kicked after a write.
    pending: HashMap<Arc<str>, Arc<Message>>,
}

impl DedupKeys {
    fn remove(&mut self, k: &Arc<str>) {
        self.keys.remove(k);
        self.pending.remove(k);
    }
}

#[derive(Debug)]
struct QueueState {
    ready: Ready,
    /// Messages leaving for the dead-letter exchange, routed by whoever holds
    /// the vhost next (a channel, or the expiry sweeper).
    dead: Vec<(QueueEntry, Reason)>,
    /// Bytes of message bodies and properties held in memory by `ready`.
    mem_bytes: usize,
    next_seq: u64,
    consumers: Vec<Arc<dyn Subscriber>>,
    /// Round-robin cursor into `consumers`.
    rr: usize,
    had_consumer: bool,
    deleted: bool,
    /// A read of stored bodies for the head is on its way (`paging`).
    loading: bool,
    /// The limits in force: the arguments' with the matching policy laid
    /// over them (`set_policy` replaces them at run time).
    limits: Arc<Limits>,
    /// `message_stats` counts, under the lock the queue takes anyway.
    counts: crate::stats::QueueCounts,
    /// Whether this queue delivers its messages: always, unless it is the
    /// view of a replicated queue on a node that does not lead it (`replica`).
    leading: bool,
    /// A replicated queue's messages as restored at boot, set aside when it
    /// became a view, for its group's machine (`replica`).
    restored: Vec<(u64, IndexMeta)>,
}

#[derive(Debug)]
pub struct Queue {
    pub name: String,
    pub vhost: String,
    pub durable: bool,
    /// Connection id owning an exclusive queue.
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    store: Arc<dyn Store>,
    /// (vhost, name), built once: acks of stored messages need it.
    store_key: QueueKey,
    /// Past this many bytes in memory, stored messages are paged out.
    memory_limit: usize,
    /// The limits the arguments alone set; `QueueState::limits` is what applies.
    arg_limits: Limits,
    /// `x-queue-type: quorum` (single node: the same queue with quorum
    /// semantics: delivery counts and `x-delivery-limit`).
    pub quorum: bool,
    /// Set once deleted; read without the state lock (acks of deliveries that
    /// outlive their queue must not touch the store: the queue's entries are gone).
    gone: AtomicBool,
    dedup: Option<QueueDedup>,
    /// Last use (declare, basic.get, consumer coming or going), for `x-expires`.
    last_used: std::sync::atomic::AtomicU64,
    /// Flow control: set while consumers are attached but the ready backlog
    /// is past `FLOW_HIGH`; publishers pause (bounded) until it drains below
    /// `FLOW_LOW` (see `connection`'s flow wait).
    flow: AtomicBool,
    flow_cleared: tokio::sync::Notify,
    /// basic.get deliveries held unacknowledged (`QueueEntry::got`), for
    /// `messages_unacknowledged`.
    got_unacked: std::sync::atomic::AtomicU64,
    /// Set when the queue is a quorum queue replicated by a cluster group.
    replica: std::sync::OnceLock<Arc<dyn Replica>>,
    /// A replicated queue's deliveries not settled yet (`replica`); taken
    /// inside the state lock, never the other way round.
    out: Mutex<HashMap<u64, replica::Out>>,
    state: Mutex<QueueState>,
}

/// Ready messages past which a queue with consumers asks its publishers to
/// pause, and the level at which it lets them go again. Without this, N
/// publishers with confirm windows outrun one consumer with a prefetch window
/// of the same size N to 1 (the tokio scheduler is fair per connection, not
/// per queue), and the backlog pages out to disk. RabbitMQ's credit flow
/// does the same job.
pub const FLOW_HIGH: usize = 2000;
pub const FLOW_LOW: usize = 1000;

pub use crate::protocol::table::as_text;

/// A queue's counts as the management API shows them.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub ready_bytes: u64,
    /// Deliveries to consumers and basic.get ones not yet acknowledged.
    pub unacked: u64,
    pub consumers: u64,
    /// Bytes of messages held in memory.
    pub memory: u64,
    /// Body bytes of ready messages paged out to the store.
    pub paged_out_bytes: u64,
    pub counts: crate::stats::QueueCounts,
}

/// Bytes of messages a queue keeps in memory before paging stored ones out.
pub const DEFAULT_MEMORY_LIMIT: usize = 8 * 1024 * 1024;

/// What `Queue::delete` leaves for the caller to clean up.
pub struct Deleted {
    pub messages: u32,
    pub consumers: Vec<Arc<dyn Subscriber>>,
}

impl Queue {
    pub fn new(
        name: String,
        vhost: String,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        store: Arc<dyn Store>,
    ) -> Self {
        let mut arg_limits = Limits::from_arguments(&arguments);
        let quorum = arguments
            .inner()
            .get("x-queue-type")
            .and_then(as_text)
            .is_some_and(|t| t == "quorum");
        if quorum {
            arg_limits.quorum_overflow();
        }
        let dedup = crate::message::dedup::enabled(&arguments).then(|| QueueDedup {
            header: crate::message::dedup::key_header(&arguments),
            keys: Mutex::new(Default::default()),
        });
        let limits_init = arg_limits.clone();
        let store_key = QueueKey {
            vhost: vhost.clone(),
            name: name.clone(),
        };
        Queue {
            store_key,
            name,
            vhost,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            store,
            memory_limit: DEFAULT_MEMORY_LIMIT,
            arg_limits,
            quorum,
            gone: AtomicBool::new(false),
            dedup,
            last_used: std::sync::atomic::AtomicU64::new(now_ms()),
            flow: AtomicBool::new(false),
            flow_cleared: tokio::sync::Notify::new(),
            got_unacked: std::sync::atomic::AtomicU64::new(0),
            replica: std::sync::OnceLock::new(),
            out: Mutex::new(HashMap::new()),
            state: Mutex::new(QueueState {
                ready: Ready::default(),
                dead: Vec::new(),
                mem_bytes: 0,
                next_seq: 1,
                consumers: Vec::new(),
                rr: 0,
                had_consumer: false,
                deleted: false,
                loading: false,
                limits: Arc::new(limits_init),
                counts: Default::default(),
                leading: true,
                restored: Vec::new(),
            }),
        }
    }

    pub fn key(&self) -> QueueKey {
        self.store_key.clone()
    }

    /// Whether this entry's message lives in the store.
    fn stores(&self, e: &QueueEntry) -> bool {
        if e.seq == NEVER_ENQUEUED {
            return false;
        }
        match &e.slot {
            Slot::Mem(m) => self.stores_message(m),
            Slot::Stored(_) => true,
        }
    }

    /// Whether this queue keeps `m` in the store: a durable queue keeps
    /// persistent messages; a quorum queue keeps every message, whatever its
    /// delivery mode (as RabbitMQ's quorum queues do). Exclusive queues
    /// keep nothing.
    pub fn stores_message(&self, m: &Message) -> bool {
        self.durable && self.exclusive_owner.is_none() && (m.is_persistent() || self.quorum)
    }

    /// Bytes of messages this queue holds in memory.
    pub fn memory(&self) -> usize {
        self.state.lock().mem_bytes
    }

    pub fn message_count(&self) -> u32 {
        if let Some(r) = self.replica.get() {
            // Every node answers for the whole replicated queue: what no
            // consumer of any node holds, as RabbitMQ counts a quorum queue.
            return r.counts().0.min(u64::from(u32::MAX)) as u32;
        }
        self.state.lock().ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Append a message and deliver what can be delivered.
    pub fn enqueue(self: &Arc<Self>, msg: Arc<Message>) -> Enqueued {
        let mut st = self.state.lock();
        if st.deleted {
            return Enqueued::Refused;
        }
        // Read what this needs of the limits (no Arc traffic on the hot path).
        let overflow = st.limits.overflow;
        let (message_ttl, max_priority) = (st.limits.message_ttl, st.limits.max_priority);
        if overflow != Overflow::DropHead
            && over_limit(&st.limits, &st.ready, 1, msg.body.len() as u64)
        {
            if overflow == Overflow::RejectPublishDlx && st.limits.dlx.is_some() {
                let size = msg.body.len() as u32;
                st.dead.push((
                    QueueEntry {
                        slot: Slot::Mem(msg),
                        seq: NEVER_ENQUEUED,
                        redelivered: false,
                        expires_at: 0,
                        priority: 0,
                        size,
                        dedup_key: None,
                        delivery_count: 0,
                        got: false,
                    },
                    "maxlen",
                ));
            }
            return Enqueued::Refused;
        }
        let mut dedup_key = None;
        if let Some(d) = &self.dedup {
            if let Some(k) =
                crate::message::dedup::message_key(d.header.as_deref(), &msg.properties)
            {
                let k: Arc<str> = Arc::from(k);
                let mut keys = d.keys.lock();
                if !keys.keys.insert(k.clone()) {
                    let original = keys.pending.get(&k).filter(|m| !m.is_deliverable());
                    return Enqueued::Duplicate(original.cloned());
                }
                if !msg.is_deliverable() {
                    keys.pending.insert(k.clone(), msg.clone());
                }
                dedup_key = Some(k);
            }
        }
        let ttl = match (message_ttl, msg.ttl) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at = ttl.map_or(0, |t| now_ms().saturating_add(t).max(1));
        let priority = match max_priority {
            Some(max) => msg.properties.priority().unwrap_or(0).min(max),
            None => 0,
        };
        let seq = st.next_seq;
        st.next_seq += 1;
        let size = msg.body.len() as u32;
        let e = QueueEntry {
            slot: Slot::Mem(msg),
            dedup_key,
            delivery_count: 0,
            got: false,
            size,
            seq,
            redelivered: false,
            expires_at,
            priority,
        };
        let meta = e.meta();
        st.counts.publish += 1;
        st.mem_bytes += e.mem_bytes();
        if priority == 0 {
            st.ready.push_back(e);
        } else {
            let at = st.ready.partition_point(|x| x.order() < e.order());
            st.ready.insert(at, e);
        }
        self.pump(&mut st);
        if st.ready.len() > FLOW_HIGH && !st.consumers.is_empty() {
            self.flow.store(true, Ordering::Release);
        }
        self.drop_over_limit(&mut st);
        Enqueued::Accepted(meta)
    }

    /// A message leaves the queue without being delivered: to the dead-letter
    /// exchange when there is one.
    fn discard(&self, st: &mut QueueState, e: QueueEntry, reason: Reason) {
        if st.limits.dlx.is_some() {
            // The store record goes once the dead-lettered copy is routed.
            st.dead.push((e, reason));
        } else {
            self.settled(&e);
        }
    }

    /// Drop (or dead-letter) expired messages at the head, as RabbitMQ does:
    /// a message expires when it reaches the head, or when the sweeper looks.
    fn expire_head(&self, st: &mut QueueState, now: u64) {
        while let Some(head) = st.ready.front() {
            if head.expires_at == 0 || head.expires_at >= now {
                return;
            }
            let Some(e) = st.ready.pop_front() else {
                return;
            };
            st.mem_bytes = st.mem_bytes.saturating_sub(e.mem_bytes());
            self.discard(st, e, "expired");
        }
    }

    /// Renew the `x-expires` lease.
    pub fn touch(&self) {
        self.last_used.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether an `x-expires` queue has gone unused for its whole lease.
    pub fn unused_expired(&self, now: u64) -> bool {
        let st = self.state.lock();
        let Some(expires) = st.limits.expires else {
            return false;
        };
        st.consumers.is_empty()
            && !st.deleted
            && now.saturating_sub(self.last_used.load(Ordering::Relaxed)) >= expires
    }

    /// Run by the expiry sweeper; returns whether dead letters are waiting.
    pub fn expire(&self) -> bool {
        let mut st = self.state.lock();
        self.expire_head(&mut st, now_ms());
        !st.dead.is_empty()
    }

    /// Messages waiting to be dead-lettered.
    pub fn take_dead(&self) -> Vec<(QueueEntry, Reason)> {
        std::mem::take(&mut self.state.lock().dead)
    }

    /// Rejected or nacked deliveries (requeue=false): dead-letter them when the
    /// queue has a dead-letter exchange, else they are gone.
    pub fn reject(&self, entries: impl IntoIterator<Item = QueueEntry>) {
        let entries: Vec<QueueEntry> = entries
            .into_iter()
            .map(|mut e| {
                self.release_got(&mut e);
                e
            })
            .collect();
        let mut st = self.state.lock();
        if st.limits.dlx.is_none() {
            drop(st);
            for e in entries {
                self.settled(&e);
            }
            return;
        }
        st.dead.extend(entries.into_iter().map(|e| (e, "rejected")));
    }

    /// Append recovered messages (by id; bodies stay in the store until a
    /// consumer reaches them). They may have been delivered before the restart.
    pub fn recover(&self, ids: impl IntoIterator<Item = (u64, IndexMeta)>) {
        let mut st = self.state.lock();
        for (id, meta) in ids {
            let seq = st.next_seq;
            st.next_seq += 1;
            st.ready.push_back(QueueEntry {
                slot: Slot::Stored(id),
                dedup_key: None,
                delivery_count: 0,
                got: false,
                size: meta.size,
                seq,
                redelivered: true,
                expires_at: meta.expires_at,
                priority: meta.priority,
            });
        }
        if self.arg_limits.max_priority.is_some() {
            st.ready.sort_by_order();
        }
        if let Some(d) = &self.dedup {
            // Rebuild the keys of the messages in the queue (only deduplicating
            // queues read their messages back at boot).
            let ids: Vec<u64> = st.ready.iter().map(|e| e.msg_id()).collect();
            let mut keys = d.keys.lock();
            for (chunk_no, chunk) in ids.chunks(LOAD_BATCH).enumerate() {
                let Ok(loaded) = self.store.load(chunk) else {
                    tracing::error!(queue = %self.name, "cannot read messages back to rebuild deduplication keys");
                    break;
                };
                for (i, m) in loaded.into_iter().enumerate() {
                    let Some(m) = m else { continue };
                    let Some(k) =
                        crate::message::dedup::message_key(d.header.as_deref(), &m.properties)
                    else {
                        continue;
                    };
                    let k: Arc<str> = Arc::from(k);
                    keys.keys.insert(k.clone());
                    if let Some(e) = st.ready.get_mut(chunk_no * LOAD_BATCH + i) {
                        e.dedup_key = Some(k);
                    }
                }
            }
        }
    }

    /// Put deliveries back at their original positions, marked redelivered
    /// (a quorum queue dead-letters those past its delivery limit: the
    /// caller or the sweeper flushes them).
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = QueueEntry>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let mut returned = Vec::new();
        for mut e in entries {
            if self.replica.get().is_some() {
                self.out.lock().remove(&e.msg_id());
                returned.push(e.msg_id());
            }
            e.redelivered = true;
            self.release_got(&mut e);
            if self.quorum {
                // RabbitMQ's quorum queues count every return; past the
                // delivery limit the message is dead-lettered or dropped.
                e.delivery_count = e.delivery_count.saturating_add(1);
                if st
                    .limits
                    .delivery_limit
                    .is_some_and(|max| u64::from(e.delivery_count) > max)
                {
                    self.discard(&mut st, e, "delivery_limit");
                    continue;
                }
            }
            st.mem_bytes += e.mem_bytes();
            let at = st.ready.partition_point(|x| x.order() < e.order());
            st.ready.insert(at, e);
        }
        self.pump(&mut st);
        if let (Some(r), false) = (self.replica.get(), returned.is_empty()) {
            r.returned(&returned);
        }
    }

    /// Deliver again after consumers gained credit or a store write completed.
    pub fn kick(self: &Arc<Self>) {
        self.kick_acked(0);
    }

    /// `kick` after a channel settled deliveries, `acks` of them acked:
    /// counted under the lock the kick takes anyway.
    pub fn kick_acked(self: &Arc<Self>, acks: u64) {
        if let Some(d) = &self.dedup {
            let mut keys = d.keys.lock();
            if !keys.pending.is_empty() {
                keys.pending
                    .retain(|_, m| !m.is_deliverable() && !m.is_failed());
            }
        }
        let mut st = self.state.lock();
        st.counts.ack += acks;
        self.pump(&mut st);
        if st.mem_bytes > self.memory_limit {
            self.page_out(&mut st);
        }
    }

    /// A message left this queue for good (acked, rejected, delivered no-ack).
    pub fn settled(&self, entry: &QueueEntry) {
        if entry.got {
            self.got_unacked.fetch_sub(1, Ordering::Relaxed);
        }
        if let (Some(d), Some(k)) = (&self.dedup, &entry.dedup_key) {
            d.keys.lock().remove(k);
        }
        if let Some(r) = self.replica.get() {
            // The group's apply removes it from every node's store.
            self.out.lock().remove(&entry.msg_id());
            r.settle(entry.msg_id());
            return;
        }
        if self.stores(entry) && !self.gone.load(Ordering::Acquire) {
            self.store.remove(&self.store_key, entry.msg_id());
        }
    }

    /// Take back a message whose store write failed.
    pub fn withdraw(self: &Arc<Self>, msg_id: u64) {
        let mut st = self.state.lock();
        if let Some(at) = st.ready.iter().position(|e| e.msg_id() == msg_id) {
            if let Some(e) = st.ready.remove(at) {
                st.mem_bytes = st.mem_bytes.saturating_sub(e.mem_bytes());
                // A message that was never stored leaves no key: a retry is new.
                if let (Some(d), Some(k)) = (&self.dedup, &e.dedup_key) {
                    d.keys.lock().remove(k);
                }
            }
        }
        self.pump(&mut st);
    }

    fn pump(self: &Arc<Self>, st: &mut QueueState) {
        let now = now_ms();
        while !st.consumers.is_empty() {
            self.expire_head(st, now);
            // A stored head waits for the prefetch below to read it back.
            let (bytes, redelivered) = match st.ready.front() {
                Some(
                    head @ QueueEntry {
                        slot: Slot::Mem(m), ..
                    },
                ) if m.is_deliverable() => (head.mem_bytes(), head.redelivered),
                _ => break,
            };
            // Consumers are kept by priority, highest first: try each group of
            // equal priority in turn, round-robin within it. With a single
            // active consumer only the first (oldest) one receives.
            let n = if st.limits.single_active {
                1
            } else {
                st.consumers.len()
            };
            let mut delivered = false;
            let mut start = 0;
            while start < n && !delivered {
                let prio = st.consumers[start].priority();
                let mut end = start + 1;
                while end < n && st.consumers[end].priority() == prio {
                    end += 1;
                }
                let len = end - start;
                for i in 0..len {
                    let idx = start + (st.rr + i) % len;
                    let sub = st.consumers[idx].clone();
                    let ready = &mut st.ready;
                    let mut take = || {
                        let e = ready.pop_front()?;
                        if let Slot::Mem(m) = &e.slot {
                            let m = m.clone();
                            self.taken(m.id);
                            return Some((e, m));
                        }
                        // pump offers only an in-memory head; never reached
                        ready.insert(0, e);
                        None
                    };
                    let no_ack = sub.no_ack();
                    if sub.offer(self, &mut take) {
                        if no_ack {
                            st.counts.deliver_no_ack += 1;
                        } else {
                            st.counts.deliver += 1;
                        }
                        st.counts.redeliver += u64::from(redelivered);
                        st.rr = (idx - start + 1) % len;
                        st.mem_bytes = st.mem_bytes.saturating_sub(bytes);
                        delivered = true;
                        break;
                    }
                }
                start = end;
            }
            if !delivered {
                break;
            }
        }
        if !st.consumers.is_empty() {
            self.prefetch(st);
        }
        if st.ready.len() <= FLOW_LOW || st.consumers.is_empty() {
            self.clear_flow();
        }
    }

    /// Whether publishers to this queue should pause (see `FLOW_HIGH`).
    pub fn in_flow(&self) -> bool {
        self.flow.load(Ordering::Acquire)
    }

    /// Wait until the queue leaves flow control or `max` passes.
    pub async fn flow_wait(&self, max: std::time::Duration) {
        let cleared = self.flow_cleared.notified();
        if !self.in_flow() {
            return;
        }
        let _ = tokio::time::timeout(max, cleared).await;
    }

    fn clear_flow(&self) {
        if self.flow.swap(false, Ordering::AcqRel) {
            self.flow_cleared.notify_waiters();
        }
    }
}

#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod tests;
