//! A queue: ready messages in order, its consumers, round-robin delivery within
//! each consumer's credit, requeue to the original position.
//!
//! All state is behind one short lock. Delivering takes the consumer's channel
//! lock while the queue lock is held (see `channel::handle` for the lock order).
//! This module never touches sockets: it hands encoded frames to the channel's
//! connection writer.

use amq_protocol::types::FieldTable;
use bytes::BytesMut;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::channel::handle::{ChannelHandle, Consumer, Unacked};
use crate::message::Message;
use crate::protocol::encode;
use crate::store::{QueueKey, Store};

/// A message's place in one queue.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub msg: Arc<Message>,
    /// Position in this queue; requeued entries go back by it.
    pub seq: u64,
    pub redelivered: bool,
}

#[derive(Debug)]
struct QueueState {
    ready: VecDeque<QueueEntry>,
    next_seq: u64,
    consumers: Vec<Arc<Consumer>>,
    /// Round-robin cursor into `consumers`.
    rr: usize,
    had_consumer: bool,
    deleted: bool,
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
    state: Mutex<QueueState>,
}

/// What `Queue::delete` leaves for the caller to clean up.
pub struct Deleted {
    pub messages: u32,
    pub consumers: Vec<Arc<Consumer>>,
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
        Queue {
            name,
            vhost,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            store,
            state: Mutex::new(QueueState {
                ready: VecDeque::new(),
                next_seq: 1,
                consumers: Vec::new(),
                rr: 0,
                had_consumer: false,
                deleted: false,
            }),
        }
    }

    pub fn key(&self) -> QueueKey {
        QueueKey {
            vhost: self.vhost.clone(),
            name: self.name.clone(),
        }
    }

    /// Whether a persistent message in this queue lives in the store.
    fn stores(&self, msg: &Message) -> bool {
        self.durable && msg.is_persistent()
    }

    pub fn message_count(&self) -> u32 {
        self.state.lock().ready.len() as u32
    }

    pub fn consumer_count(&self) -> u32 {
        self.state.lock().consumers.len() as u32
    }

    pub fn is_deleted(&self) -> bool {
        self.state.lock().deleted
    }

    /// Append a message and deliver what can be delivered.
    pub fn enqueue(self: &Arc<Self>, msg: Arc<Message>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        let seq = st.next_seq;
        st.next_seq += 1;
        st.ready.push_back(QueueEntry {
            msg,
            seq,
            redelivered: false,
        });
        self.pump(&mut st);
    }

    /// Append recovered messages at boot (they count as delivered before).
    pub fn recover(&self, msgs: impl IntoIterator<Item = Arc<Message>>) {
        let mut st = self.state.lock();
        for msg in msgs {
            let seq = st.next_seq;
            st.next_seq += 1;
            st.ready.push_back(QueueEntry {
                msg,
                seq,
                redelivered: true,
            });
        }
    }

    /// Put deliveries back at their original positions, marked redelivered.
    pub fn requeue(self: &Arc<Self>, entries: impl IntoIterator<Item = QueueEntry>) {
        let mut st = self.state.lock();
        if st.deleted {
            return;
        }
        for mut e in entries {
            e.redelivered = true;
            let at = st.ready.partition_point(|x| x.seq < e.seq);
            st.ready.insert(at, e);
        }
        self.pump(&mut st);
    }

    /// Deliver again after consumers gained credit or a store write completed.
    pub fn kick(self: &Arc<Self>) {
        let mut st = self.state.lock();
        self.pump(&mut st);
    }

    /// A message left this queue for good (acked, rejected, delivered no-ack).
    pub fn settled(&self, entry: &QueueEntry) {
        if self.stores(&entry.msg) {
            self.store.remove(&self.key(), entry.msg.id);
        }
    }

    /// Take back a message whose store write failed.
    pub fn withdraw(self: &Arc<Self>, msg_id: u64) {
        let mut st = self.state.lock();
        st.ready.retain(|e| e.msg.id != msg_id);
        self.pump(&mut st);
    }

    fn pump(self: &Arc<Self>, st: &mut QueueState) {
        let QueueState {
            ready,
            consumers,
            rr,
            ..
        } = st;
        while !consumers.is_empty() {
            match ready.front() {
                Some(head) if head.msg.is_deliverable() => {}
                _ => break,
            }
            let n = consumers.len();
            let mut delivered = false;
            for i in 0..n {
                let idx = (*rr + i) % n;
                if consumers[idx].try_deliver(self, ready) {
                    *rr = (idx + 1) % n;
                    delivered = true;
                    break;
                }
            }
            if !delivered {
                break;
            }
        }
    }

    /// basic.get: the head message, delivered on `channel`.
    pub fn get(self: &Arc<Self>, channel: &Arc<ChannelHandle>, no_ack: bool) -> bool {
        let mut st = self.state.lock();
        match st.ready.front() {
            Some(head) if head.msg.is_deliverable() => {}
            _ => return false,
        }
        let Some(entry) = st.ready.pop_front() else {
            return false;
        };
        let remaining = st.ready.len() as u32;
        let mut d = channel.delivery.lock();
        let tag = d.next_tag;
        d.next_tag += 1;
        let msg = &entry.msg;
        let mut out = BytesMut::with_capacity(msg.body.len() + 128);
        encode::get_ok_method(
            &mut out,
            channel.id,
            tag,
            entry.redelivered,
            &msg.exchange,
            &msg.routing_key,
            remaining,
        );
        encode::content(
            &mut out,
            channel.id,
            &msg.raw_properties,
            &msg.body,
            channel.conn.frame_max(),
        );
        if no_ack {
            self.settled(&entry);
        } else {
            d.unacked.insert(
                tag,
                Unacked {
                    queue: self.clone(),
                    entry,
                    consumer: None,
                },
            );
        }
        channel.conn.send(out.freeze());
        true
    }

    /// Whether an exclusive consumer holds the queue, or (for `exclusive`) any.
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<Consumer>) -> Result<(), ()> {
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive) || (consumer.exclusive && !st.consumers.is_empty())
        {
            return Err(());
        }
        st.consumers.push(consumer);
        st.had_consumer = true;
        self.pump(&mut st);
        Ok(())
    }

    /// Remove a consumer; returns true when an auto-delete queue lost its last
    /// consumer and should now be deleted.
    pub fn remove_consumer(&self, consumer: &Arc<Consumer>) -> bool {
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| !Arc::ptr_eq(c, consumer));
        if st.consumers.len() != before && st.rr >= st.consumers.len() {
            st.rr = 0;
        }
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    pub fn has_exclusive_consumer(&self) -> bool {
        self.state.lock().consumers.iter().any(|c| c.exclusive)
    }

    /// Drop all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        let mut st = self.state.lock();
        let n = st.ready.len() as u32;
        for e in st.ready.drain(..) {
            if self.stores(&e.msg) {
                self.store.remove(&self.key(), e.msg.id);
            }
        }
        n
    }

    /// Mark deleted, drop messages, hand back the consumers to cancel.
    pub fn delete(&self) -> Deleted {
        let mut st = self.state.lock();
        st.deleted = true;
        let messages = st.ready.len() as u32;
        st.ready.clear();
        Deleted {
            messages,
            consumers: std::mem::take(&mut st.consumers),
        }
    }

    /// Consumers' unacked counter bookkeeping when their delivery settles.
    pub fn release_credit(consumer: &Option<Arc<Consumer>>) {
        if let Some(c) = consumer {
            c.unacked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
