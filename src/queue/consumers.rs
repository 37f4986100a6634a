//! A queue's consumers and the operations that take messages out other than
//! delivery: basic.get, purge, delete. Part of `Queue` (the state and its
//! lock are `mod.rs`'s); never names a channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{subscriber, Deleted, Queue, QueueEntry, Slot, Subscriber, FLOW_LOW};
use crate::message::Message;

impl Queue {
    /// basic.get: take the head message (by value), with how many stay
    /// ready after it. The caller delivers it, and settles it (no-ack) or
    /// holds it unacked.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<(QueueEntry, Arc<Message>, u32)> {
        self.touch();
        if let Some(r) = self.replica.get() {
            let empty = {
                let st = self.state.lock();
                !st.leading && st.ready.is_empty()
            };
            if empty {
                r.fetch();
            }
        }
        let st = self.head_in_memory(self.state.lock());
        let mut st = self.head_written(st);
        let msg = match st.ready.front() {
            Some(QueueEntry {
                slot: Slot::Mem(m), ..
            }) if m.is_deliverable() => m.clone(),
            _ => {
                st.counts.get_empty += 1;
                return None;
            }
        };
        let entry = st.ready.pop_front()?;
        self.taken(entry.msg_id());
        if no_ack {
            st.counts.get_no_ack += 1;
        } else {
            st.counts.get += 1;
        }
        st.counts.redeliver += u64::from(entry.redelivered);
        st.mem_bytes = st.mem_bytes.saturating_sub(entry.mem_bytes());
        let remaining = st.ready.len() as u32;
        if st.ready.len() <= FLOW_LOW {
            self.clear_flow();
        }
        Some((entry, msg, remaining))
    }

    /// Register a consumer; fails when an exclusive consumer holds the queue,
    /// or when `consumer` is exclusive and there are others.
    pub fn add_consumer(self: &Arc<Self>, consumer: Arc<dyn Subscriber>) -> bool {
        self.touch();
        let mut st = self.state.lock();
        if st.consumers.iter().any(|c| c.exclusive())
            || (consumer.exclusive() && !st.consumers.is_empty())
        {
            return false;
        }
        // Highest priority first; among equals, oldest first (the single
        // active consumer is the oldest of the highest priority).
        let at = st
            .consumers
            .partition_point(|c| c.priority() >= consumer.priority());
        st.consumers.insert(at, consumer);
        st.had_consumer = true;
        if let Some(r) = self.replica.get() {
            r.consumers_changed();
        }
        // No delivery yet: consume-ok must reach the client first (the caller kicks).
        true
    }

    /// Remove a consumer; returns true when an auto-delete queue lost its last
    /// consumer and should now be deleted.
    pub fn remove_consumer(&self, consumer: &Arc<dyn Subscriber>) -> bool {
        self.touch();
        let mut st = self.state.lock();
        let before = st.consumers.len();
        st.consumers.retain(|c| !subscriber::same(c, consumer));
        if st.consumers.len() != before && st.rr >= st.consumers.len() {
            st.rr = 0;
        }
        if st.consumers.is_empty() {
            self.clear_flow();
        }
        if let Some(r) = self.replica.get() {
            r.consumers_changed();
        }
        self.auto_delete && st.had_consumer && st.consumers.is_empty() && !st.deleted
    }

    pub fn has_exclusive_consumer(&self) -> bool {
        self.state.lock().consumers.iter().any(|c| c.exclusive())
    }

    /// Drop all ready messages; returns how many.
    pub fn purge(&self) -> u32 {
        if let Some(r) = self.replica.get() {
            if !self.is_leading() {
                // The leader purges its ready messages for every node.
                self.take_buffer();
                return r.purge();
            }
        }
        let mut st = self.state.lock();
        let n = st.ready.len() as u32;
        let key = &self.store_key;
        for e in st.ready.take() {
            if let Some(r) = self.replica.get() {
                r.settle(e.msg_id());
            } else if self.stores(&e) {
                self.store.remove(key, e.msg_id());
            }
            if let (Some(d), Some(k)) = (&self.dedup, &e.dedup_key) {
                d.keys.lock().remove(k);
            }
        }
        st.mem_bytes = 0;
        self.clear_flow();
        n
    }

    /// Mark deleted, drop messages, hand back the consumers to cancel.
    pub fn delete(&self) -> Deleted {
        let mut st = self.state.lock();
        st.deleted = true;
        self.gone.store(true, Ordering::Release);
        let messages = st.ready.len() as u32;
        st.ready.take();
        st.mem_bytes = 0;
        self.clear_flow();
        Deleted {
            messages,
            consumers: std::mem::take(&mut st.consumers),
        }
    }
}
