//! A quorum queue group's state machine: which messages the queue holds
//! (and how often each came back), applied in log order on every member.
//!
//! The state lives in RocksDB beside the classic store: applying an enqueue
//! writes the message and its index entry with `Store::persist` (through the
//! same committer, and so the same fsync, as everything else), applying a
//! settle removes them. So the Raft log can be purged behind every
//! snapshot however slow the consumers are: a snapshot is only a synced
//! barrier and the applied position; its data (the held messages) is read
//! from the store when a lagging follower needs it, at the position the
//! machine has then reached.
//!
//! On the leader the machine also feeds the queue's leading view (`Queue`
//! in `queue::replica`): applied enqueues go into it, settles leave it. It
//! owns the group's applied records in the `raft` column family; it never
//! proposes (the `group` does) and never touches the log's records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::sync::Arc;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::log::{decode, encode, key, write_and_wait};
use super::types::{
    Body, Command, GroupId, LogId, MetaResult, QueueCommand, Snapshot, SnapshotMeta,
    StoredMembership, TypeConfig,
};
use crate::message::Message;
use crate::queue::{now_ms, Enqueued, Queue};
use crate::store::{codec, IndexMeta, QueueKey, RaftWrite, Store};

const APPLIED: u8 = b's';
const SNAPSHOT: u8 = b'S';

/// What the group does when the machine settles remote deliveries.
pub trait Settled: Send + Sync + 'static {
    /// Deliveries sent to other nodes were settled: their credit is back.
    fn remote_settled(&self);
    /// The leading view refused enqueued ids: settle them on the followers.
    fn refused(&self, ids: &[u64]);
}

/// One held message: its index entry, how often it came back, and its
/// place in the queue's order on this node.
#[derive(Debug, Clone)]
struct Held {
    meta: IndexMeta,
    returned: u32,
    order: u64,
    /// The message itself until its store write is done: a view that
    /// starts leading, or a snapshot, reads it from here, not from a store
    /// that does not have it yet.
    pending: Option<Arc<Message>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// Per proposing node: its last enqueue batch applied, and the ids the
    /// queue refused from it (a retry of that batch gets the same answer).
    senders: BTreeMap<u64, (u64, Vec<u64>)>,
}

#[derive(Default)]
struct State {
    applied: Applied,
    held: HashMap<u64, Held>,
    next_order: u64,
    /// The last snapshot built (a barrier: everything applied before it is synced).
    built: Option<SnapshotMeta>,
}

/// A snapshot's data: every held message, in order, and each proposing
/// node's last batch.
#[derive(Serialize, Deserialize)]
struct Contents {
    messages: Vec<(u64, u32, Body)>,
    senders: BTreeMap<u64, (u64, Vec<u64>)>,
}

#[derive(Clone)]
pub struct QueueMachine {
    group: GroupId,
    store: Arc<dyn Store>,
    queue: Arc<Queue>,
    key: QueueKey,
    hooks: Arc<dyn Settled>,
    state: Arc<Mutex<State>>,
}

/// Decode a message as the store encodes it, with `id`.
pub fn decode_message(id: u64, bytes: &[u8]) -> Option<Arc<Message>> {
    let m = codec::decode_message(bytes)?;
    let (_, properties) = crate::protocol::table::parse_properties(m.raw_properties)?;
    let ttl = properties
        .expiration()
        .as_ref()
        .and_then(|e| e.as_str().parse::<u64>().ok());
    Some(Arc::new(
        Message::new(
            id,
            m.exchange,
            m.routing_key,
            properties,
            bytes::Bytes::copy_from_slice(m.raw_properties),
            bytes::Bytes::copy_from_slice(m.body),
        )
        .with_ttl(ttl),
    ))
}

/// A message as the store encodes it (the form it travels in).
pub fn encode_message(m: &Message) -> Body {
    Body::from(codec::encode_message(
        &m.exchange,
        &m.routing_key,
        &m.raw_properties,
        1,
        &m.body,
    ))
}

impl QueueMachine {
    /// Open a group's machine. What the queue holds comes from the queue as
    /// the broker restored it from the store at boot; the view then follows
    /// until the group says it leads here.
    pub fn open(
        store: Arc<dyn Store>,
        group: GroupId,
        queue: Arc<Queue>,
        hooks: Arc<dyn Settled>,
    ) -> io::Result<QueueMachine> {
        let from = key(group, SNAPSHOT.min(APPLIED), &[]);
        let to = key(group, SNAPSHOT.max(APPLIED) + 1, &[]);
        let records = store
            .raft_scan(&from, &to)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut state = State::default();
        for (k, v) in records {
            if k == key(group, APPLIED, &[]) {
                state.applied = decode(&v)?;
            } else if k == key(group, SNAPSHOT, &[]) {
                state.built = Some(decode(&v)?);
            }
        }
        for (id, meta) in queue.take_restored() {
            let order = state.next_order;
            state.next_order += 1;
            state.held.insert(
                id,
                Held {
                    meta,
                    returned: 0,
                    order,
                    pending: None,
                },
            );
        }
        tracing::debug!(group, held = state.held.len(), applied = ?state.applied.last_applied, "quorum queue machine opened");
        queue.follow();
        Ok(QueueMachine {
            group,
            store,
            key: queue.key(),
            queue,
            hooks,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Messages held (ready and unacknowledged).
    pub fn held(&self) -> u64 {
        self.state.lock().held.len() as u64
    }

    /// Make the queue's view lead with everything held, in order; under the
    /// machine's lock, so no enqueue applied meanwhile is missed.
    pub fn lead(&self) {
        let st = self.state.lock();
        let mut held: Vec<(u64, &Held)> = st.held.iter().map(|(id, h)| (*id, h)).collect();
        held.sort_by_key(|(_, h)| h.order);
        self.queue.lead(
            held.into_iter()
                .map(|(id, h)| (id, h.meta, h.returned, h.pending.clone()))
                .collect(),
        );
    }

    /// Stop leading (under the machine's lock, like `lead`).
    pub fn follow(&self) {
        let _st = self.state.lock();
        self.queue.follow();
    }

    fn enqueue(&self, st: &mut State, id: u64, bytes: &[u8], refused: &mut Vec<u64>) {
        if st.held.contains_key(&id) {
            return;
        }
        let Some(msg) = decode_message(id, bytes) else {
            tracing::error!(queue = %self.queue.name, id, "cannot decode a replicated message");
            return;
        };
        let meta = if self.queue.is_leading() {
            msg.mark_pending();
            match self.queue.enqueue(msg.clone()) {
                Enqueued::Accepted(meta) => meta,
                Enqueued::Refused | Enqueued::Duplicate(_) => {
                    refused.push(id);
                    return;
                }
            }
        } else {
            let ttl = match (self.queue.limits().message_ttl, msg.ttl) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            IndexMeta {
                expires_at: ttl.map_or(0, |t| now_ms().saturating_add(t).max(1)),
                priority: 0,
                size: msg.body.len() as u32,
            }
        };
        let order = st.next_order;
        st.next_order += 1;
        // Held back (on a follower too) until written: a view that leads
        // meanwhile delivers it only once the store has it.
        msg.mark_pending();
        st.held.insert(
            id,
            Held {
                meta,
                returned: 0,
                order,
                pending: Some(msg.clone()),
            },
        );
        let (m, q) = (msg.clone(), self.queue.clone());
        let state = Arc::downgrade(&self.state);
        let name = self.queue.name.clone();
        self.store.persist(
            msg,
            vec![(self.key.clone(), meta)],
            None,
            Box::new(move |ok, _| {
                if ok {
                    // Readable from the store from now on.
                    if let Some(state) = state.upgrade() {
                        if let Some(h) = state.lock().held.get_mut(&id) {
                            h.pending = None;
                        }
                    }
                } else {
                    // Kept in memory: the group has it on a majority.
                    tracing::error!(queue = %name, id, "cannot store a replicated message");
                }
                m.mark_stored();
                q.kick();
            }),
        );
    }

    fn settle(&self, st: &mut State, acked: &[u64], returned: &[u64]) {
        for id in acked {
            if st.held.remove(id).is_some() {
                self.store.remove(&self.key, *id);
            }
        }
        for id in returned {
            if let Some(h) = st.held.get_mut(id) {
                h.returned = h.returned.saturating_add(1);
            }
        }
        if !acked.is_empty() && !self.queue.settle_applied(acked).is_empty() {
            self.hooks.remote_settled();
        }
    }

    fn save(&self, st: &State, sync: bool) -> io::Result<RaftWrite> {
        let mut puts = vec![(key(self.group, APPLIED, &[]), encode(&st.applied)?)];
        if let Some(b) = &st.built {
            puts.push((key(self.group, SNAPSHOT, &[]), encode(b)?));
        }
        Ok(RaftWrite {
            puts,
            sync,
            ..RaftWrite::default()
        })
    }

    /// Every held message with its body, in order (blocking store reads).
    fn contents(&self) -> io::Result<(Applied, Contents)> {
        let (applied, mut held) = {
            let st = self.state.lock();
            let held: Vec<(u64, Held)> = st.held.iter().map(|(id, h)| (*id, h.clone())).collect();
            (st.applied.clone(), held)
        };
        held.sort_by_key(|(_, h)| h.order);
        let mut messages = Vec::with_capacity(held.len());
        for chunk in held.chunks(256) {
            let ids: Vec<u64> = chunk.iter().map(|(id, _)| *id).collect();
            let loaded = self
                .store
                .load(&ids)
                .map_err(|e| io::Error::other(e.to_string()))?;
            for ((id, h), m) in chunk.iter().zip(loaded) {
                // A message whose write is still on its way is in memory.
                if let Some(m) = h.pending.clone().or(m) {
                    messages.push((*id, h.returned, encode_message(&m)));
                }
            }
        }
        let senders = applied.senders.clone();
        Ok((applied, Contents { messages, senders }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for QueueMachine {
    type SnapshotData = Vec<u8>;

    /// A barrier, not a copy: once this synced write is done, everything
    /// applied before it is on disk, and the log before it can go.
    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, write) = {
            let mut st = self.state.lock();
            let last = st.applied.last_applied;
            let meta = SnapshotMeta {
                last_log_id: last,
                last_membership: st.applied.membership.clone(),
            };
            st.built = Some(meta.clone());
            (meta, self.save(&st, true)?)
        };
        write_and_wait(&self.store, write).await?;
        Ok(Snapshot {
            meta,
            snapshot: Vec::new(),
        })
    }
}

impl RaftStateMachine<TypeConfig> for QueueMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = QueueMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.state.lock();
        Ok((st.applied.last_applied, st.applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut refused_all = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let mut result = MetaResult::default();
            {
                let mut st = self.state.lock();
                match &entry.payload {
                    EntryPayload::Normal(Command::Queue(QueueCommand::Enqueue {
                        from,
                        seq,
                        msgs,
                    })) => match st.applied.senders.get(from) {
                        // A retry of a batch already applied: the same answer.
                        Some((last, refused)) if *seq <= *last => {
                            if *seq == *last {
                                result.refused = refused.clone();
                            }
                        }
                        _ => {
                            for (id, bytes) in msgs {
                                self.enqueue(&mut st, *id, bytes, &mut result.refused);
                            }
                            st.applied
                                .senders
                                .insert(*from, (*seq, result.refused.clone()));
                        }
                    },
                    EntryPayload::Normal(Command::Queue(QueueCommand::Settle {
                        acked,
                        returned,
                    })) => self.settle(&mut st, acked, returned),
                    EntryPayload::Membership(m) => {
                        st.applied.membership =
                            StoredMembership::new(Some(entry.log_id), m.clone());
                    }
                    EntryPayload::Blank | EntryPayload::Normal(Command::Meta(_)) => {}
                }
                st.applied.last_applied = Some(entry.log_id);
            }
            refused_all.extend_from_slice(&result.refused);
            if let Some(r) = responder {
                r.send(result);
            }
        }
        if !refused_all.is_empty() {
            self.hooks.refused(&refused_all);
        }
        // Unsynced: ordered after this batch's persists by the committer; a
        // crash re-applies from the last synced position (enqueues of held
        // ids are ignored, settles of absent ones do nothing).
        let write = self.save(&self.state.lock(), false)?;
        self.store.raft_write(write, Box::new(|_, _| {}));
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let contents: Contents = decode(&snapshot)?;
        let wanted: HashSet<u64> = contents.messages.iter().map(|(id, _, _)| *id).collect();
        let write = {
            let mut st = self.state.lock();
            let gone: Vec<u64> = st
                .held
                .keys()
                .filter(|id| !wanted.contains(id))
                .copied()
                .collect();
            for id in gone {
                st.held.remove(&id);
                self.store.remove(&self.key, id);
            }
            // In the snapshot's order: the queue's order on this node.
            let mut none = Vec::new();
            for (id, returned, bytes) in &contents.messages {
                self.enqueue(&mut st, *id, bytes, &mut none);
                let order = st.next_order;
                st.next_order += 1;
                if let Some(h) = st.held.get_mut(id) {
                    h.returned = *returned;
                    h.order = order;
                }
            }
            st.applied.last_applied = meta.last_log_id;
            st.applied.membership = meta.last_membership.clone();
            st.applied.senders = contents.senders.clone();
            st.built = Some(meta.clone());
            self.save(&st, true)?
        };
        write_and_wait(&self.store, write).await?;
        tracing::info!(
            group = self.group,
            messages = wanted.len(),
            bytes = snapshot.len(),
            at = ?meta.last_log_id.map(|l| l.index),
            "quorum queue caught up from a snapshot"
        );
        Ok(())
    }

    /// The held messages as they are now, under the last snapshot's
    /// position or a later one: the machine's own (applies and this read
    /// run one after the other on openraft's state-machine task).
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        if self.state.lock().built.is_none() {
            return Ok(None);
        }
        let this = self.clone();
        let (applied, contents) = tokio::task::spawn_blocking(move || this.contents())
            .await
            .map_err(io::Error::other)??;
        let meta = SnapshotMeta {
            last_log_id: applied.last_applied,
            last_membership: applied.membership,
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: encode(&contents)?,
        }))
    }
}

#[cfg(test)]
#[path = "quorum_tests.rs"]
mod tests;
