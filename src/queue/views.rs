//! What the management API reads of a queue: its consumers, its counts,
//! "get messages" (which may requeue) and `peek` (Hopper's browse, which
//! changes nothing). Read-mostly views over the queue's state; delivery and
//! ordering stay in `queue`. `peek` must never mark, move, expire or load
//! entries: it only copies what it sees.

use std::sync::Arc;

use super::{now_ms, subscriber, Queue, QueueEntry, QueueStats, Slot, FLOW_LOW};
use crate::message::Message;
use crate::store::StoreError;

/// One ready message as `peek` saw it.
#[derive(Debug, Clone)]
pub struct Peeked {
    /// Its place among the ready messages (0 is the head).
    pub position: usize,
    /// In memory, or only the id of a paged-out message (`load_peeked`
    /// reads it back, off the async workers).
    pub slot: Slot,
    pub redelivered: bool,
}

/// What `peek` returns: the window, and how many messages are ready.
#[derive(Debug, Clone, Default)]
pub struct Peek {
    pub ready: usize,
    pub items: Vec<Peeked>,
}

impl Queue {
    /// The consumers, for the management API.
    pub fn consumers(&self) -> Vec<subscriber::SubscriberInfo> {
        self.state
            .lock()
            .consumers
            .iter()
            .map(|c| c.info())
            .collect()
    }

    /// Counts for the management API, read under one lock.
    pub fn stats(&self) -> QueueStats {
        let st = self.state.lock();
        QueueStats {
            ready: st.ready.len() as u64,
            ready_bytes: st.ready.bytes(),
            unacked: st
                .consumers
                .iter()
                .map(|c| u64::from(c.info().unacked))
                .sum::<u64>()
                + self.got_unacked(),
            consumers: st.consumers.len() as u64,
            memory: st.mem_bytes as u64,
            paged_out_bytes: st.ready.stored_bytes(),
            counts: st.counts,
        }
    }

    /// The management API's "get messages": up to `count` messages from the
    /// head, each with whether it was redelivered before, and how many
    /// remained after it. With `requeue` they stay where they are, marked
    /// redelivered (what RabbitMQ's get-and-requeue amounts to); without, they
    /// leave the queue as if acknowledged. Messages still waiting for their
    /// store write are not shown, as basic.get would not.
    pub fn api_get(&self, count: usize, requeue: bool) -> Vec<(Arc<Message>, bool, u32)> {
        self.touch();
        let mut st = self.head_in_memory(self.state.lock());
        let mut out = Vec::new();
        if requeue {
            let total = st.ready.len();
            for i in 0..total.min(count) {
                let Some(e) = st.ready.get_mut(i) else { break };
                let Slot::Mem(m) = &e.slot else { break };
                if !m.is_deliverable() {
                    break;
                }
                out.push((m.clone(), e.redelivered, (total - i - 1) as u32));
                e.redelivered = true;
            }
            return out;
        }
        while out.len() < count {
            match st.ready.front() {
                Some(QueueEntry {
                    slot: Slot::Mem(m), ..
                }) if m.is_deliverable() => {}
                _ => break,
            }
            let Some(e) = st.ready.pop_front() else { break };
            st.mem_bytes = st.mem_bytes.saturating_sub(e.mem_bytes());
            let Slot::Mem(m) = &e.slot else { break };
            out.push((m.clone(), e.redelivered, st.ready.len() as u32));
            self.settled(&e);
        }
        if st.ready.len() <= FLOW_LOW {
            self.clear_flow();
        }
        out
    }

    /// Browse: up to `count` ready messages from position `offset`, as a
    /// consumer would get them, without taking, requeueing or marking any
    /// (`redelivered` stays as it is; no `x-expires` lease renewal). Expired
    /// messages the sweeper has not reached yet are skipped, and the window
    /// ends at the first message still waiting for its store write (as a
    /// consumer would not see it either). Paged-out messages come back as
    /// `Slot::Stored`: the queue lock is never held across a store read.
    pub fn peek(&self, offset: usize, count: usize) -> Peek {
        let st = self.state.lock();
        let now = now_ms();
        let mut items = Vec::new();
        for (position, e) in st.ready.iter().enumerate().skip(offset) {
            if items.len() >= count {
                break;
            }
            if e.expires_at != 0 && e.expires_at < now {
                continue;
            }
            if let Slot::Mem(m) = &e.slot {
                if !m.is_deliverable() {
                    break;
                }
            }
            items.push(Peeked {
                position,
                slot: e.slot.clone(),
                redelivered: e.redelivered,
            });
        }
        Peek {
            ready: st.ready.len(),
            items,
        }
    }

    /// Read paged-out messages of a `peek` back from the store (a blocking
    /// store read: call it off the async workers). Leaves the queue as it
    /// is: what is read is not kept in memory. A message the store no
    /// longer has (settled since the peek) comes back as `None`.
    pub fn load_peeked(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Message>>>, StoreError> {
        self.store.load(ids)
    }
}
