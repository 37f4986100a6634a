//! Paging: the bodies of stored messages leave memory when a queue holds
//! too much, and come back before a consumer reaches them.
//!
//! Reads never happen under the queue lock or on an async worker. For
//! consumers, the queue asks the store's reader (`Store::read`) for the next
//! batch while the in-memory run at its head is still long (`PREFETCH_AT`),
//! and `loaded` puts the bodies in place and delivers. basic.get and the
//! management API's get, which must answer now, read with the lock released
//! and the worker handed off (`head_in_memory`).

use parking_lot::MutexGuard;
use std::sync::Arc;

use super::{now_ms, Queue, QueueState, Slot};
use crate::message::Message;
use crate::store::{blocking, StoreError};

/// How many stored messages to read back at once.
pub(super) const LOAD_BATCH: usize = 256;
/// The next batch is read once fewer in-memory entries than this are left
/// ahead of it, so consumers rarely wait for the disk.
const PREFETCH_AT: usize = LOAD_BATCH / 2;

/// The entries a read is for: their position key in the queue and message id.
type Wanted = Vec<(Order, u64)>;
type Order = (std::cmp::Reverse<u8>, u64);
type Loaded = Result<Vec<Option<Arc<Message>>>, StoreError>;

impl Queue {
    /// Drop the in-memory copy of stored messages from the tail end until the
    /// queue is back under its memory limit. Walks back from the tail and stops
    /// at the first entry already paged out, so each entry is visited about once.
    pub(super) fn page_out(&self, st: &mut QueueState) {
        if !st.leading {
            // A follower's buffer came from the leader: its own store may
            // not have those bodies yet.
            return;
        }
        let keep_at_head = LOAD_BATCH.min(st.ready.len());
        let mut i = st.ready.len();
        while i > keep_at_head && st.mem_bytes > self.memory_limit / 2 {
            i -= 1;
            let Some(e) = st.ready.get_mut(i) else { break };
            let Slot::Mem(m) = &e.slot else { break };
            if !(self.stores_message(m) && m.is_deliverable()) {
                continue;
            }
            let freed = m.body.len() + m.raw_properties.len();
            e.slot = Slot::Stored(m.id);
            let size = e.size as u64;
            st.mem_bytes = st.mem_bytes.saturating_sub(freed);
            st.ready.paged(size, 0);
        }
    }

    /// Up to `LOAD_BATCH` consecutive stored entries from position `from`.
    fn wanted_from(st: &QueueState, from: usize) -> Wanted {
        st.ready
            .iter()
            .skip(from)
            .take(LOAD_BATCH)
            .map_while(|e| match e.slot {
                Slot::Stored(id) => Some((e.order(), id)),
                Slot::Mem(_) => None,
            })
            .collect()
    }

    /// Start reading back the stored entries nearest the head when the head
    /// is stored or the in-memory run before them is getting short, unless
    /// a read is already on its way. O(1) when there is nothing to do.
    pub(super) fn prefetch(self: &Arc<Self>, st: &mut QueueState) {
        if st.loading || st.ready.is_empty() {
            return;
        }
        let stored = |i: usize| matches!(st.ready.get(i).map(|e| &e.slot), Some(Slot::Stored(_)));
        let probe = (st.ready.len() - 1).min(PREFETCH_AT);
        if !stored(0) && !stored(probe) {
            return;
        }
        let Some(first) = (0..=probe).find(|&i| stored(i)) else {
            return;
        };
        let wanted = Self::wanted_from(st, first);
        if wanted.is_empty() {
            return;
        }
        st.loading = true;
        let ids = wanted.iter().map(|(_, id)| *id).collect();
        let q = self.clone();
        self.store
            .read(ids, Box::new(move |loaded| q.loaded(wanted, loaded)));
    }

    /// A prefetch came back: put the bodies in place and deliver.
    fn loaded(self: &Arc<Self>, wanted: Wanted, loaded: Loaded) {
        let mut st = self.state.lock();
        st.loading = false;
        if st.deleted {
            return;
        }
        match loaded {
            Ok(msgs) => self.fill(&mut st, &wanted, msgs),
            Err(e) => {
                // The next kick (a publish, an ack, new credit) tries again.
                tracing::error!(queue = %self.name, error = %e, "cannot read messages back from the store");
                return;
            }
        }
        self.pump(&mut st);
    }

    /// Put read-back messages into the entries still waiting for them (the
    /// queue may have changed meanwhile: entries expired, purged, delivered
    /// after a synchronous read, or requeued in between). Entries whose
    /// message the store does not have are dropped.
    fn fill(&self, st: &mut QueueState, wanted: &Wanted, msgs: Vec<Option<Arc<Message>>>) {
        let mut missing = Vec::new();
        let mut i = 0;
        for ((order, id), msg) in wanted.iter().zip(msgs) {
            // Both are in queue order: move to the entry's place.
            while i < st.ready.len() && st.ready[i].order() < *order {
                i += 1;
            }
            let Some(e) = st.ready.get_mut(i) else { break };
            if e.order() != *order || !matches!(e.slot, Slot::Stored(s) if s == *id) {
                continue; // gone, or read back already
            }
            match msg {
                Some(m) => {
                    let bytes = m.body.len() + m.raw_properties.len();
                    let size = e.size as u64;
                    e.slot = Slot::Mem(m);
                    st.mem_bytes += bytes;
                    st.ready.paged(0, size);
                }
                None => missing.push(e.seq),
            }
        }
        if !missing.is_empty() {
            tracing::warn!(queue = %self.name, count = missing.len(), "index entries without a stored message; dropping them");
            st.ready.retain(|e| !missing.contains(&e.seq));
        }
    }

    /// Make sure the head entry is in memory for a caller that answers now
    /// (basic.get, the management API): reads the stored batch at the head
    /// with the queue lock released and the async worker handed off, and
    /// gives the lock back. Expired heads are dropped first.
    pub(super) fn head_in_memory<'a>(
        &'a self,
        mut st: MutexGuard<'a, QueueState>,
    ) -> MutexGuard<'a, QueueState> {
        // Each round either reads the head in or finds it gone; a bound
        // keeps a store that keeps failing to match from spinning.
        for _ in 0..8 {
            self.expire_head(&mut st, now_ms());
            let head_stored = matches!(st.ready.front().map(|e| &e.slot), Some(Slot::Stored(_)));
            if !head_stored {
                return st;
            }
            let wanted = Self::wanted_from(&st, 0);
            let ids: Vec<u64> = wanted.iter().map(|(_, id)| *id).collect();
            drop(st);
            let loaded = blocking(|| self.store.load(&ids));
            st = self.state.lock();
            match loaded {
                Ok(msgs) => self.fill(&mut st, &wanted, msgs),
                Err(e) => {
                    tracing::error!(queue = %self.name, error = %e, "cannot read messages back from the store");
                    return st;
                }
            }
        }
        st
    }
}
