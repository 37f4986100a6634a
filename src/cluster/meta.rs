//! The meta group's state machine: the replicated definitions (exchanges,
//! bindings, quorum-queue declarations). Commands are applied in log order on
//! every node through an `Apply` (in the broker: the same `VHost` functions
//! the channel uses), and the result of each is handed to whoever proposed it,
//! so a conflicting declare fails with the same 406 wherever it came from.
//! Owns the group's applied state and snapshots (in the store's `raft`
//! column family); never touches the log records.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::log::{decode, encode, key, write_and_wait};
use super::types::{
    Command, GroupId, LogId, MetaCommand, MetaResult, Snapshot, SnapshotMeta, StoredMembership,
    TypeConfig,
};
use crate::store::{RaftWrite, Store};

const APPLIED: u8 = b's';
const SNAPSHOT: u8 = b'S';

/// Where applied commands take effect (the local broker).
pub trait Apply: Send + Sync + 'static {
    fn apply(&self, cmd: &MetaCommand) -> MetaResult;
}

/// Applies nothing (tests of the storage alone).
pub struct NoApply;
impl Apply for NoApply {
    fn apply(&self, _: &MetaCommand) -> MetaResult {
        MetaResult::default()
    }
}

/// The definitions as the log has built them, keyed so a delete finds its
/// declare: what a snapshot carries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Defs {
    pub items: BTreeMap<Vec<u8>, MetaCommand>,
}

fn def_key(parts: &[&str]) -> Vec<u8> {
    parts.join("\0").into_bytes()
}

fn bind_key(
    vhost: &str,
    source: &str,
    dest: &str,
    to_x: bool,
    rk: &str,
    args: &impl std::fmt::Debug,
) -> Vec<u8> {
    let to_x = if to_x { "e" } else { "q" };
    def_key(&["b", vhost, source, to_x, dest, rk, &format!("{args:?}")])
}

impl Defs {
    /// Record a command that applied successfully.
    fn record(&mut self, cmd: &MetaCommand) {
        match cmd {
            MetaCommand::DeclareExchange { vhost, name, .. } => {
                self.items.insert(def_key(&["x", vhost, name]), cmd.clone());
            }
            MetaCommand::DeclareQueue { vhost, name, .. } => {
                // A redeclare keeps the queue's group (`group_of` gave it).
                self.items.insert(def_key(&["q", vhost, name]), cmd.clone());
            }
            MetaCommand::Bind {
                vhost,
                source,
                destination,
                to_exchange,
                routing_key,
                arguments,
            } => {
                let k = bind_key(
                    vhost,
                    source,
                    destination,
                    *to_exchange,
                    routing_key,
                    arguments,
                );
                self.items.insert(k, cmd.clone());
            }
            MetaCommand::Unbind {
                vhost,
                source,
                destination,
                to_exchange,
                routing_key,
                arguments,
            } => {
                self.items.remove(&bind_key(
                    vhost,
                    source,
                    destination,
                    *to_exchange,
                    routing_key,
                    arguments,
                ));
            }
            MetaCommand::DeleteExchange { vhost, name, .. } => {
                self.items.remove(&def_key(&["x", vhost, name]));
                self.items.retain(|_, c| !matches!(c, MetaCommand::Bind { vhost: v, source, destination, to_exchange, .. }
                    if v == vhost && (source == name || (*to_exchange && destination == name))));
            }
            MetaCommand::DeleteQueue { vhost, name, .. } => {
                self.items.remove(&def_key(&["q", vhost, name]));
                self.items.retain(|_, c| {
                    !matches!(c, MetaCommand::Bind { vhost: v, destination, to_exchange: false, .. }
                    if v == vhost && destination == name)
                });
            }
        }
    }

    /// The Raft group of a quorum queue the definitions hold.
    pub fn group_of(&self, vhost: &str, name: &str) -> Option<GroupId> {
        match self.items.get(&def_key(&["q", vhost, name])) {
            Some(MetaCommand::DeclareQueue { group, .. }) => Some(*group),
            _ => None,
        }
    }

    /// The command that undoes a recorded declare (for installing a snapshot).
    fn undo(cmd: &MetaCommand) -> Option<MetaCommand> {
        Some(match cmd.clone() {
            MetaCommand::DeclareExchange { vhost, name, .. } => MetaCommand::DeleteExchange {
                vhost,
                name,
                if_unused: false,
            },
            MetaCommand::DeclareQueue { vhost, name, .. } => MetaCommand::DeleteQueue {
                vhost,
                name,
                if_unused: false,
                if_empty: false,
            },
            MetaCommand::Bind {
                vhost,
                source,
                destination,
                to_exchange,
                routing_key,
                arguments,
            } => MetaCommand::Unbind {
                vhost,
                source,
                destination,
                to_exchange,
                routing_key,
                arguments,
            },
            _ => return None,
        })
    }
}

/// What the state machine keeps durable besides the definitions themselves
/// (which the broker keeps in its own column family when it applies them).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    defs: Defs,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

#[derive(Clone)]
pub struct MetaMachine {
    group: GroupId,
    store: Arc<dyn Store>,
    apply: Arc<dyn Apply>,
    state: Arc<Mutex<Applied>>,
    snapshot: Arc<Mutex<Option<StoredSnapshot>>>,
}

impl MetaMachine {
    pub fn open(
        store: Arc<dyn Store>,
        group: GroupId,
        apply: Arc<dyn Apply>,
    ) -> io::Result<MetaMachine> {
        // SNAPSHOT ('S') sorts before APPLIED ('s').
        let from = key(group, SNAPSHOT.min(APPLIED), &[]);
        let to = key(group, SNAPSHOT.max(APPLIED) + 1, &[]);
        let records = store
            .raft_scan(&from, &to)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let (mut state, mut snapshot) = (Applied::default(), None);
        for (k, v) in records {
            if k == key(group, APPLIED, &[]) {
                state = decode(&v)?;
            } else if k == key(group, SNAPSHOT, &[]) {
                snapshot = Some(decode(&v)?);
            }
        }
        Ok(MetaMachine {
            group,
            store,
            apply,
            state: Arc::new(Mutex::new(state)),
            snapshot: Arc::new(Mutex::new(snapshot)),
        })
    }

    /// Apply every recorded definition again, at start: the broker restores
    /// only durable objects, so a transient exchange the cluster still has
    /// (as RabbitMQ keeps transient definitions while the cluster lives)
    /// would otherwise be missing on a restarted node until the next
    /// snapshot. Exchanges first, then queues, then bindings (keys sort
    /// "b" < "q" < "x"); objects already there are left as they are.
    pub fn reapply(&self) {
        let defs = self.defs();
        for cmd in defs.items.values().rev() {
            let _ = self.apply.apply(cmd);
        }
    }

    /// The definitions applied so far (for tests and the API).
    pub fn defs(&self) -> Defs {
        self.state.lock().defs.clone()
    }

    fn save_write(&self) -> io::Result<RaftWrite> {
        let bytes = encode(&*self.state.lock())?;
        Ok(RaftWrite {
            puts: vec![(key(self.group, APPLIED, &[]), bytes)],
            ..RaftWrite::default()
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, data) = {
            let s = self.state.lock();
            let meta = SnapshotMeta {
                last_log_id: s.last_applied,
                last_membership: s.membership.clone(),
            };
            (meta, encode(&s.defs)?)
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let write = RaftWrite {
            puts: vec![(key(self.group, SNAPSHOT, &[]), encode(&stored)?)],
            sync: true,
            ..RaftWrite::default()
        };
        write_and_wait(&self.store, write).await?;
        *self.snapshot.lock() = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetaMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = MetaMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let s = self.state.lock();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let result = match &entry.payload {
                EntryPayload::Blank => MetaResult::default(),
                EntryPayload::Normal(Command::Meta(cmd)) => {
                    let mut cmd = cmd.clone();
                    if let MetaCommand::DeclareQueue {
                        vhost, name, group, ..
                    } = &mut cmd
                    {
                        // A new quorum queue's group is named by its
                        // declare's log index; a redeclare keeps the group.
                        let known = self.state.lock().defs.group_of(vhost, name);
                        *group = known.unwrap_or(entry.log_id.index);
                    }
                    // The broker's declare functions block on their synced
                    // write; keep that off the state lock.
                    let result = self.apply.apply(&cmd);
                    if result.error.is_none() {
                        self.state.lock().defs.record(&cmd);
                    }
                    result
                }
                // Queue commands go to their queue's group, never here.
                EntryPayload::Normal(Command::Queue(_)) => MetaResult::default(),
                EntryPayload::Membership(m) => {
                    self.state.lock().membership =
                        StoredMembership::new(Some(entry.log_id), m.clone());
                    MetaResult::default()
                }
            };
            self.state.lock().last_applied = Some(entry.log_id);
            if let Some(r) = responder {
                r.send(result);
            }
        }
        // Unsynced: after a crash the entries since the last synced write are
        // applied again, and every command is idempotent for the broker.
        let write = self.save_write()?;
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
        let new: Defs = decode(&snapshot)?;
        let old = self.state.lock().defs.clone();
        // Undo what the snapshot no longer has (bindings first), then declare
        // everything it has (exchanges, queues, then bindings, by key order
        // "b" < "q" < "x": so declare in reverse).
        for (k, cmd) in &old.items {
            if !new.items.contains_key(k) {
                if let Some(undo) = Defs::undo(cmd) {
                    let _ = self.apply.apply(&undo);
                }
            }
        }
        for cmd in new.items.values().rev() {
            let _ = self.apply.apply(cmd);
        }
        {
            let mut s = self.state.lock();
            s.defs = new;
            s.last_applied = meta.last_log_id;
            s.membership = meta.last_membership.clone();
        }
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        let mut write = self.save_write()?;
        write
            .puts
            .push((key(self.group, SNAPSHOT, &[]), encode(&stored)?));
        write.sync = true;
        write_and_wait(&self.store, write).await?;
        *self.snapshot.lock() = Some(stored);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.snapshot.lock().clone().map(|s| Snapshot {
            meta: s.meta,
            snapshot: s.data,
        }))
    }
}
