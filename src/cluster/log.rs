//! A Raft group's log, vote and purge point, kept in the store's `raft`
//! column family and written through the store's one committer
//! (`Store::raft_write`), so the appends of every group share each fsync with
//! the classic persists. Owns the key layout of a group's log records; never
//! reads or writes another group's keys, and never blocks the async workers
//! (writes go to the committer thread; `append` returns at once and openraft
//! learns of durability through `IOFlushed` from the committer's completion).
//!
//! The log is mirrored in memory, so an entry is readable as soon as `append`
//! returns (before its fsync, as openraft expects) and reads never touch
//! RocksDB; the meta group's log stays short (snapshots purge it).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use parking_lot::Mutex;

use super::types::{Entry, GroupId, LogId, TypeConfig, Vote};
use crate::store::{RaftWrite, Store};

const LOG: u8 = b'l';
const VOTE: u8 = b'v';
const PURGED: u8 = b'p';
const COMMITTED: u8 = b'c';

/// `group (8 bytes BE) | tag | suffix`: a group's records are contiguous.
pub(super) fn key(group: GroupId, tag: u8, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + suffix.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.push(tag);
    k.extend_from_slice(suffix);
    k
}

fn log_key(group: GroupId, index: u64) -> Vec<u8> {
    key(group, LOG, &index.to_be_bytes())
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(io::Error::other)
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Wait for a store write's completion (votes must be durable on return).
pub(super) async fn write_and_wait(store: &Arc<dyn Store>, write: RaftWrite) -> io::Result<()> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    store.raft_write(
        write,
        Box::new(move |ok, _| {
            let _ = tx.send(ok);
        }),
    );
    match rx.await {
        Ok(true) => Ok(()),
        _ => Err(io::Error::other("raft write failed in the store")),
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Entry>,
    vote: Option<Vote>,
    purged: Option<LogId>,
    committed: Option<LogId>,
}

/// One group's log storage; clones share it.
#[derive(Clone)]
pub struct LogStore {
    group: GroupId,
    store: Arc<dyn Store>,
    state: Arc<Mutex<State>>,
}

impl LogStore {
    /// Load a group's records from the store.
    pub fn open(store: Arc<dyn Store>, group: GroupId) -> io::Result<LogStore> {
        let from = key(group, 0, &[]);
        let to = (group + 1).to_be_bytes().to_vec();
        let records = store
            .raft_scan(&from, &to)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut state = State::default();
        for (k, v) in records {
            match k.get(8) {
                Some(&LOG) => {
                    let e: Entry = decode(&v)?;
                    state.entries.insert(e.log_id.index, e);
                }
                Some(&VOTE) => state.vote = Some(decode(&v)?),
                Some(&PURGED) => state.purged = Some(decode(&v)?),
                Some(&COMMITTED) => state.committed = decode(&v)?,
                _ => {}
            }
        }
        Ok(LogStore {
            group,
            store,
            state: Arc::new(Mutex::new(state)),
        })
    }

    /// Entries from `from` on, for reads that leave the lock at once.
    fn range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry> {
        self.state
            .lock()
            .entries
            .range(range)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(self.range(range))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.state.lock().vote)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let s = self.state.lock();
        let last = s
            .entries
            .values()
            .next_back()
            .map(|e| e.log_id)
            .or(s.purged);
        Ok(LogState {
            last_purged_log_id: s.purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let write = RaftWrite {
            puts: vec![(key(self.group, VOTE, &[]), encode(vote)?)],
            sync: true,
            ..RaftWrite::default()
        };
        write_and_wait(&self.store, write).await?;
        self.state.lock().vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Unsynced: losing it only means re-applying from the last applied.
        let write = RaftWrite {
            puts: vec![(key(self.group, COMMITTED, &[]), encode(&committed)?)],
            ..RaftWrite::default()
        };
        self.state.lock().committed = committed;
        self.store.raft_write(write, Box::new(|_, _| {}));
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.state.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut write = RaftWrite {
            sync: true,
            ..RaftWrite::default()
        };
        {
            let mut s = self.state.lock();
            for e in entries {
                write
                    .puts
                    .push((log_key(self.group, e.log_id.index), encode(&e)?));
                s.entries.insert(e.log_id.index, e);
            }
        }
        // Submitted under no lock; the committer orders it after every write
        // submitted before (truncations, purges) and syncs it with the batch.
        self.store.raft_write(
            write,
            Box::new(move |ok, _| {
                callback.io_completed(if ok {
                    Ok(())
                } else {
                    Err(io::Error::other("raft log append failed in the store"))
                })
            }),
        );
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> Result<(), io::Error> {
        let from = last.map_or(0, |l| l.index + 1);
        self.state.lock().entries.split_off(&from);
        // Ordered before any later append by the committer; a later synced
        // append syncs it too (RocksDB's log is written in order).
        let write = RaftWrite {
            delete_ranges: vec![(log_key(self.group, from), key(self.group, LOG + 1, &[]))],
            ..RaftWrite::default()
        };
        self.store.raft_write(write, Box::new(|_, _| {}));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        {
            let mut s = self.state.lock();
            let keep = s.entries.split_off(&(log_id.index + 1));
            s.entries = keep;
            s.purged = Some(log_id);
        }
        let write = RaftWrite {
            puts: vec![(key(self.group, PURGED, &[]), encode(&log_id)?)],
            delete_ranges: vec![(
                log_key(self.group, 0),
                log_key(self.group, log_id.index + 1),
            )],
            ..RaftWrite::default()
        };
        self.store.raft_write(write, Box::new(|_, _| {}));
        Ok(())
    }
}
