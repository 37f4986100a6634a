//! A quorum queue in a cluster: this node's `Queue` is a view of the queue
//! a Raft group replicates (`cluster::quorum`). The group's state (which
//! messages are held, their delivery counts) is the authority; the view
//! only delivers.
//!
//! - On the group's leader the view *leads*: its ready list is every held
//!   message no consumer holds, and it delivers to local consumers and, by
//!   `Out::Remote` entries, to followers' nodes.
//! - On a follower it *follows*: its ready list is a small buffer of
//!   messages the leader sent for this node's consumers (`push_remote`).
//!
//! Either way, what leaves the queue for good is settled through the group
//! (`Replica::settle`, applied on every node by `settle_applied`), and what
//! comes back unacknowledged is counted there (`Replica::returned`). This
//! module owns the view's bookkeeping; it never proposes or sends anything
//! itself (the `Replica` does), and never reads the store under the lock.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Queue, QueueEntry, QueueState, Slot};
use crate::message::Message;
use crate::store::{blocking, Completion, IndexMeta};

/// How long basic.get waits, at most, for a replicated head's local write.
const HEAD_WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// What the cluster does for a replicated queue (implemented by its group).
pub trait Replica: Send + Sync + std::fmt::Debug {
    /// Replicate a publish; `done(true)` once a majority of the group has it
    /// on disk and the leader has applied it, `done(false)` when the queue
    /// refused it or it could not be replicated in time.
    fn enqueue(&self, msg: Arc<Message>, done: Completion);
    /// A message left the queue for good (acked, rejected, dropped).
    fn settle(&self, id: u64);
    /// Deliveries came back unacknowledged (their delivery count grows).
    fn returned(&self, ids: &[u64]);
    /// The queue's local consumers changed.
    fn consumers_changed(&self);
    /// Where the queue runs and what it holds, for the management API.
    fn info(&self) -> ReplicaInfo;
    /// The queue's counts on any node: (ready, held), where ready is what
    /// no consumer holds and held adds the unacknowledged deliveries of
    /// every node. May ask the leader (blocks, the worker handed off).
    fn counts(&self) -> (u64, u64);
    /// queue.purge on a following view: the leader purges; how many went.
    /// Blocks (the worker is handed off).
    fn purge(&self) -> u32;
    /// basic.get on a following view with nothing buffered: ask the leader
    /// for its head, into the buffer. Blocks (the worker is handed off).
    fn fetch(&self);
}

/// A replicated queue as the management API shows it.
#[derive(Debug, Clone, Default)]
pub struct ReplicaInfo {
    /// The group's leader's node name, when there is one.
    pub leader: Option<String>,
    pub members: Vec<String>,
    /// Members this node reaches (itself included).
    pub online: Vec<String>,
    /// Messages the group holds (ready and unacknowledged, all nodes).
    pub messages: u64,
    /// Of those, the ones no consumer holds.
    pub ready: u64,
    /// Confirmed publishes, sampled confirms (one per 1,000), and samples
    /// that showed a majority of members with the entry synced.
    pub confirmed: u64,
    pub sampled: u64,
    pub sampled_majority: u64,
    /// The last sample: its log index and the nodes that had synced it.
    pub last_sample: Option<(u64, Vec<String>)>,
}

/// Who holds a delivered message that is not settled yet.
#[derive(Debug)]
pub(super) enum Out {
    /// A consumer (or basic.get) on this node.
    Local,
    /// Sent to another node's consumers; the entry comes back here if that
    /// node returns it or goes down.
    Remote(u64, QueueEntry),
}

impl Queue {
    /// Make this queue the view of a replicated one; false if it already is.
    pub fn set_replica(&self, replica: Arc<dyn Replica>) -> bool {
        let set = self.replica.set(replica).is_ok();
        if set {
            // Until the group says it leads here, the view only follows; what
            // was restored at boot is the group machine's, not a buffer (a
            // following view drops its buffer when it has no consumers).
            let mut st = self.state.lock();
            st.leading = false;
            st.mem_bytes = 0;
            let restored = st.ready.take();
            st.restored = restored.iter().map(|e| (e.msg_id(), e.meta())).collect();
        }
        set
    }

    pub fn replica(&self) -> Option<&Arc<dyn Replica>> {
        self.replica.get()
    }

    /// Whether this view delivers the queue's messages (a queue that is not
    /// replicated always does).
    pub fn is_leading(&self) -> bool {
        self.state.lock().leading
    }

    /// A delivery taken from the ready list (consumer or basic.get).
    pub(super) fn taken(&self, id: u64) {
        if self.replica.get().is_some() {
            self.out.lock().insert(id, Out::Local);
        }
    }

    /// Become the leading view: `held` is what the group holds, in order
    /// (id, index meta, delivery count). Messages local consumers still
    /// hold stay theirs; everything else is ready again, flagged
    /// redelivered (the last leader may have delivered it).
    /// A message still on its way to this node's store comes in memory.
    pub fn lead(self: &Arc<Self>, held: Vec<(u64, IndexMeta, u32, Option<Arc<Message>>)>) {
        let mut st = self.state.lock();
        {
            let mut out = self.out.lock();
            out.retain(|_, o| matches!(o, Out::Local));
            st.ready.take();
            st.mem_bytes = 0;
            for (id, meta, delivery_count, pending) in held {
                if out.contains_key(&id) {
                    continue;
                }
                let seq = st.next_seq;
                st.next_seq += 1;
                let slot = match pending {
                    Some(m) => {
                        st.mem_bytes += m.body.len() + m.raw_properties.len();
                        Slot::Mem(m)
                    }
                    None => Slot::Stored(id),
                };
                st.ready.push_back(QueueEntry {
                    slot,
                    seq,
                    redelivered: true,
                    expires_at: meta.expires_at,
                    priority: meta.priority,
                    size: meta.size,
                    dedup_key: None,
                    delivery_count,
                    got: false,
                });
            }
        }
        if self.arg_limits.max_priority.is_some() {
            st.ready.sort_by_order();
        }
        st.leading = true;
        self.pump(&mut st);
    }

    /// Stop leading: the new leader has every message; this view keeps only
    /// what its own consumers hold. Returns the buffered ids it dropped.
    pub fn follow(&self) -> Vec<u64> {
        let mut st = self.state.lock();
        st.leading = false;
        st.mem_bytes = 0;
        self.out.lock().retain(|_, o| matches!(o, Out::Local));
        st.ready.take().iter().map(|e| e.msg_id()).collect()
    }

    /// Messages the leader sent for this node's consumers: (message,
    /// redelivered, delivery count). Ignored while this view leads.
    pub fn push_remote(self: &Arc<Self>, msgs: Vec<(Arc<Message>, bool, u32)>) {
        let mut st = self.state.lock();
        if st.leading || st.deleted {
            return;
        }
        for (msg, redelivered, delivery_count) in msgs {
            let seq = st.next_seq;
            st.next_seq += 1;
            let size = msg.body.len() as u32;
            let e = QueueEntry {
                slot: Slot::Mem(msg),
                seq,
                redelivered,
                expires_at: 0,
                priority: 0,
                size,
                dedup_key: None,
                delivery_count,
                got: false,
            };
            st.mem_bytes += e.mem_bytes();
            st.ready.push_back(e);
        }
        self.pump(&mut st);
    }

    /// A following view gives its undelivered buffer back (its consumers
    /// left), for the leader to make ready again: (id, redelivered,
    /// delivery count), as returns here may have changed them.
    pub fn take_buffer(&self) -> Vec<(u64, bool, u32)> {
        let mut st = self.state.lock();
        if st.leading {
            return Vec::new();
        }
        st.mem_bytes = 0;
        st.ready
            .take()
            .iter()
            .map(|e| (e.msg_id(), e.redelivered, e.delivery_count))
            .collect()
    }

    /// Deliveries this node's consumers hold unacknowledged.
    pub fn local_outstanding(&self) -> Vec<u64> {
        let out = self.out.lock();
        out.iter()
            .filter(|(_, o)| matches!(o, Out::Local))
            .map(|(id, _)| *id)
            .collect()
    }

    /// A follower (re)subscribed holding `ids` unacknowledged (delivered by
    /// an earlier leader): they leave the ready list as that node's.
    /// Returns how many this view now counts as sent to `node`.
    pub fn claim_remote(&self, node: u64, ids: &[u64]) -> usize {
        let mut st = self.state.lock();
        let mut out = self.out.lock();
        if !ids.is_empty() {
            let want: HashSet<u64> = ids.iter().copied().collect();
            let all = st.ready.take();
            for e in all {
                if want.contains(&e.msg_id()) {
                    st.mem_bytes = st.mem_bytes.saturating_sub(e.mem_bytes());
                    out.insert(e.msg_id(), Out::Remote(node, e));
                } else {
                    st.ready.push_back(e);
                }
            }
        }
        out.values()
            .filter(|o| matches!(o, Out::Remote(n, _) if *n == node))
            .count()
    }

    /// basic.get from another node: the head, as sent to `node` (read back
    /// from the store first when it is paged out; blocks for that).
    pub fn take_for(self: &Arc<Self>, node: u64) -> Option<(QueueEntry, Arc<Message>)> {
        let st = self.head_in_memory(self.state.lock());
        let mut st = self.head_written(st);
        if !st.leading {
            return None;
        }
        let msg = match st.ready.front() {
            Some(QueueEntry {
                slot: Slot::Mem(m), ..
            }) if m.is_deliverable() => m.clone(),
            _ => return None,
        };
        let entry = st.ready.pop_front()?;
        st.mem_bytes = st.mem_bytes.saturating_sub(entry.mem_bytes());
        st.counts.get += 1;
        self.out
            .lock()
            .insert(msg.id, Out::Remote(node, entry.clone()));
        Some((entry, msg))
    }

    /// A delivery the leading view sent to `node` (see `cluster::quorum`).
    pub fn mark_remote(&self, node: u64, entry: QueueEntry) {
        self.out
            .lock()
            .insert(entry.msg_id(), Out::Remote(node, entry));
    }

    /// The group settled `ids` (applied on this node): whoever holds them
    /// here lets go. Returns, per settled remote delivery, the node it was
    /// sent to (its credit comes back).
    pub fn settle_applied(self: &Arc<Self>, ids: &[u64]) -> Vec<u64> {
        let mut st = self.state.lock();
        let mut nodes = Vec::new();
        let mut missing = HashSet::new();
        {
            let mut out = self.out.lock();
            for id in ids {
                match out.remove(id) {
                    Some(Out::Remote(n, _)) => nodes.push(n),
                    // A local consumer's copy (delivered twice across a
                    // failover): its ack will find nothing left to settle.
                    Some(Out::Local) => {}
                    None => {
                        missing.insert(*id);
                    }
                }
            }
        }
        if !missing.is_empty() && st.ready.iter().any(|e| missing.contains(&e.msg_id())) {
            let mut freed = 0;
            st.ready.retain(|e| {
                let gone = missing.contains(&e.msg_id());
                if gone {
                    freed += e.mem_bytes();
                }
                !gone
            });
            st.mem_bytes = st.mem_bytes.saturating_sub(freed);
        }
        if !nodes.is_empty() {
            self.pump(&mut st);
        }
        nodes
    }

    /// `node` gave back deliveries it had not handed to a consumer (with
    /// their redelivered flag and delivery count there): ready again at
    /// their places. Returns how many came back.
    pub fn return_remote(self: &Arc<Self>, node: u64, returned: &[(u64, bool, u32)]) -> usize {
        let mut st = self.state.lock();
        let mut back = Vec::new();
        {
            let mut out = self.out.lock();
            for (id, redelivered, count) in returned {
                if matches!(out.get(id), Some(Out::Remote(n, _)) if *n == node) {
                    if let Some(Out::Remote(_, mut e)) = out.remove(id) {
                        e.redelivered |= *redelivered;
                        e.delivery_count = e.delivery_count.max(*count);
                        back.push(e);
                    }
                }
            }
        }
        let n = back.len();
        self.ready_again(&mut st, back, false);
        n
    }

    /// `node` is gone: everything sent to it is ready again, redelivered.
    pub fn node_down(self: &Arc<Self>, node: u64) -> usize {
        let mut st = self.state.lock();
        let mut back = Vec::new();
        {
            let mut out = self.out.lock();
            let ids: Vec<u64> = out
                .iter()
                .filter(|(_, o)| matches!(o, Out::Remote(n, _) if *n == node))
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some(Out::Remote(_, e)) = out.remove(&id) {
                    back.push(e);
                }
            }
        }
        let n = back.len();
        self.ready_again(&mut st, back, true);
        n
    }

    fn ready_again(
        self: &Arc<Self>,
        st: &mut super::QueueState,
        entries: Vec<QueueEntry>,
        redelivered: bool,
    ) {
        if !st.leading || entries.is_empty() {
            return;
        }
        for mut e in entries {
            e.redelivered |= redelivered;
            st.mem_bytes += e.mem_bytes();
            let at = st.ready.partition_point(|x| x.order() < e.order());
            st.ready.insert(at, e);
        }
        self.pump(st);
    }

    /// A replicated queue's head is applied but its write to this node's
    /// store (which follows the commit) is not done: basic.get waits for it
    /// a little, so a get right after a confirm finds the message.
    pub(super) fn head_written<'a>(
        &'a self,
        mut st: parking_lot::MutexGuard<'a, QueueState>,
    ) -> parking_lot::MutexGuard<'a, QueueState> {
        if self.replica.get().is_none() {
            return st;
        }
        let until = std::time::Instant::now() + HEAD_WRITE_WAIT;
        while std::time::Instant::now() < until {
            let pending = matches!(
                st.ready.front().map(|e| &e.slot),
                Some(Slot::Mem(m)) if !m.is_deliverable() && !m.is_failed()
            );
            if !pending {
                break;
            }
            drop(st);
            blocking(|| std::thread::sleep(std::time::Duration::from_millis(1)));
            st = self.state.lock();
        }
        st
    }

    /// The ids and index entries this queue held when it became a view, in
    /// order (what was restored at boot), for its group's machine; once.
    pub fn take_restored(&self) -> Vec<(u64, IndexMeta)> {
        std::mem::take(&mut self.state.lock().restored)
    }

    /// Messages in this view's ready list (on the leader: what no consumer
    /// of any node holds).
    pub fn ready_len(&self) -> u64 {
        self.state.lock().ready.len() as u64
    }

    /// Remote deliveries per node (for the subscriptions' credit).
    pub fn remote_counts(&self) -> HashMap<u64, usize> {
        let mut counts = HashMap::new();
        for o in self.out.lock().values() {
            if let Out::Remote(n, _) = o {
                *counts.entry(*n).or_insert(0) += 1;
            }
        }
        counts
    }
}
