//! Changes to a queue from outside its delivery path: a policy replacing
//! its limits (`broker::policy` calls `set_policy`), and basic.get
//! deliveries held unacknowledged, counted for the management API; and the
//! length-limit check both enqueue and a new policy use. Like the
//! rest of `queue`, under the queue's one lock; never names a channel.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::entry::Ready;
use super::{Limits, Overflow, PolicyLimits, Queue, QueueEntry, QueueState};

impl Queue {
    /// Drop (or dead-letter) head messages while the queue is over its
    /// length limits (after an enqueue, or a policy that lowered them).
    pub(super) fn drop_over_limit(&self, st: &mut QueueState) {
        while over_limit(&st.limits, &st.ready, 0, 0) {
            let Some(old) = st.ready.pop_front() else {
                break;
            };
            st.mem_bytes = st.mem_bytes.saturating_sub(old.mem_bytes());
            self.discard(st, old, "maxlen");
        }
    }

    /// The limits in force now (arguments with the policy over them).
    pub fn limits(&self) -> Arc<Limits> {
        self.state.lock().limits.clone()
    }

    /// Apply a policy's queue keys (None: no policy matches any more): the
    /// new limits hold from now on. A lower length limit drops (or
    /// dead-letters) head messages at once, as RabbitMQ does; a message TTL
    /// applies to messages enqueued from now on (RabbitMQ fixes a message's
    /// expiry when it is enqueued). Returns whether dead letters wait.
    pub fn set_policy(&self, policy: Option<&PolicyLimits>) -> bool {
        let limits = match policy {
            Some(p) => self.arg_limits.with_policy(p, self.quorum),
            None => self.arg_limits.clone(),
        };
        let mut st = self.state.lock();
        st.limits = Arc::new(limits);
        if st.limits.overflow == Overflow::DropHead {
            self.drop_over_limit(&mut st);
        }
        !st.dead.is_empty()
    }

    /// basic.get handed this entry out to be acknowledged later: count it
    /// as unacknowledged until it comes back or is settled.
    pub fn hold_got(&self, mut entry: QueueEntry) -> QueueEntry {
        entry.got = true;
        self.got_unacked.fetch_add(1, Ordering::Relaxed);
        entry
    }

    /// A held basic.get delivery is no longer unacknowledged.
    pub(super) fn release_got(&self, entry: &mut QueueEntry) {
        if std::mem::take(&mut entry.got) {
            self.got_unacked.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// basic.get deliveries held unacknowledged now.
    pub fn got_unacked(&self) -> u64 {
        self.got_unacked.load(Ordering::Relaxed)
    }
}

/// Whether `ready` plus `more` messages of `more_bytes` would exceed
/// the max-length or max-length-bytes limit.
pub(super) fn over_limit(limits: &Limits, ready: &Ready, more: u64, more_bytes: u64) -> bool {
    limits
        .max_length
        .is_some_and(|max| ready.len() as u64 + more > max)
        || limits
            .max_length_bytes
            .is_some_and(|max| ready.bytes() + more_bytes > max)
}
