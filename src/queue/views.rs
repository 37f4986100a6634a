//! What the management API reads of a queue: its consumers, its counts,
//! and "get messages" (which may requeue). Read-mostly views over the
//! queue's state; delivery and ordering stay in `queue`.

use std::sync::Arc;

use super::{now_ms, subscriber, Queue, QueueEntry, QueueStats, Slot, FLOW_LOW};
use crate::message::Message;

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
                .sum(),
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
        let mut st = self.state.lock();
        self.expire_head(&mut st, now_ms());
        self.load_head(&mut st);
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
}
