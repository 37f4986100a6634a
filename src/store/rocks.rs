//! The RocksDB store: the only module that touches RocksDB.
//!
//! Column families: `definitions` (exchanges, queues, bindings), `messages`
//! (message id → routing info, raw properties, body; written once however many
//! queues hold it), `index` (queue + message id → expiry, priority, size; a
//! queue's contents in order) and `dedup` (a durable exchange's deduplication
//! keys → expiry, written only in the same batch as the message that brought
//! them) and `raft` (the cluster's Raft logs, votes and state machine records,
//! opaque keys the cluster owns; written through `Store::raft_write`).
//!
//! One committer thread (`committer`) owns every write. It takes everything pending, writes it
//! as one `WriteBatch` (synced when it holds a persistent publish), then hands
//! the publishers' completions to the confirmer thread: concurrent publishers
//! share each fsync, and batching grows with load without any timer. Removals
//! (acks) ride along unsynced. A third thread, the reader (`reader`), serves
//! `Store::read` (queues' prefetch of paged-out bodies). No thread names the
//! broker: completions and read callbacks are closures its callers gave.

use parking_lot::Mutex;
use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, DB};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

mod check;
mod committer;
mod reader;
pub use check::{repair, Verified};

use super::codec;
use super::failpoint::FailPoints;
use super::health::{Health, Recovery};
use super::{
    BindingDef, Completion, DedupDef, ExchangeDef, IndexMeta, QueueDef, QueueKey, RaftWrite,
    ReadDone, Recovered, Store, StoreError, StoredObject,
};
use crate::message::Message;

const CF_DEFINITIONS: &str = "definitions";
const CF_MESSAGES: &str = "messages";
const CF_INDEX: &str = "index";
const CF_DEDUP: &str = "dedup";
const CF_RAFT: &str = "raft";
const ALL_CFS: [&str; 5] = [CF_DEFINITIONS, CF_MESSAGES, CF_INDEX, CF_DEDUP, CF_RAFT];
/// Most operations folded into one write.
const MAX_BATCH_OPS: usize = 8192;

/// Reference counts of messages held by more than one durable queue.
type Refs = HashMap<u64, u32>;

type DefinitionOp =
    Box<dyn FnOnce(&DB, &mut Refs, &mut WriteBatch) -> Result<(), StoreError> + Send>;

enum Op {
    /// Raft log appends, votes and state (`raft` column family), in the
    /// same batch (and fsync, when `sync`) as everything else pending.
    Raft {
        write: RaftWrite,
        done: Completion,
    },
    Persist {
        msg: Arc<Message>,
        queues: Vec<(QueueKey, IndexMeta)>,
        /// The key the message brought to a durable deduplicating exchange.
        dedup: Option<DedupDef>,
        done: Completion,
        /// When it was submitted (for the confirm latency figure).
        at: std::time::Instant,
    },
    /// Completes after everything submitted before it.
    Barrier(Completion),
    Remove {
        queue: QueueKey,
        msg_id: u64,
    },
    /// Forget a deduplication key (evicted or expired); unsynced.
    ForgetDedup {
        key: Vec<u8>,
    },
    /// A definition change, written and synced on its own; the caller waits.
    Definition {
        op: DefinitionOp,
        reply: mpsc::SyncSender<Result<(), StoreError>>,
    },
}

/// Write counters, for the figures in notes and logs.
#[derive(Debug, Default)]
pub struct Stats {
    pub synced_writes: AtomicU64,
    pub persisted_messages: AtomicU64,
    /// What the management API and Prometheus show (`store::stats`).
    pub figures: super::stats::StoreStats,
}

pub struct RocksStore {
    db: Arc<DB>,
    tx: Mutex<Option<mpsc::Sender<Op>>>,
    committer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Runs the completions of written batches (see `confirmer`).
    confirmer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Reads for `Store::read` (see `reader`).
    reader: Mutex<Option<mpsc::Sender<reader::Read>>>,
    reader_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    refs: Arc<Mutex<Refs>>,
    pub stats: Arc<Stats>,
    health: tokio::sync::watch::Receiver<Health>,
    /// Fault injection for tests (unarmed: one atomic load per batch).
    pub fail_points: Arc<FailPoints>,
}

impl std::fmt::Debug for RocksStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RocksStore")
            .field("path", &self.db.path())
            .finish()
    }
}

fn io(e: rocksdb::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, StoreError> {
    db.cf_handle(name)
        .ok_or_else(|| StoreError::Corrupt(format!("missing column family {name}")))
}

impl RocksStore {
    /// Open (creating if needed) the store in `dir`. A directory held by another
    /// running broker is refused with a clear error.
    pub fn open(dir: &Path) -> Result<RocksStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        // A crash damages only what was never synced, so never confirmed: the
        // end of the newest log, torn or followed by garbage. Replay stops
        // there (point-in-time recovery). RocksDB still refuses a store whose
        // later logs or tables hold data past that point, and checks closed
        // logs against the sizes the MANIFEST recorded for them.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::PointInTime);
        opts.set_track_and_verify_wals_in_manifest(true);
        // Bounded memory and a short WAL to replay at boot: memtables are
        // flushed well before RocksDB's 64 MiB-per-table defaults would.
        opts.set_max_total_wal_size(64 * 1024 * 1024);
        opts.set_db_write_buffer_size(64 * 1024 * 1024);
        let small = |size: usize| {
            let mut o = Options::default();
            o.set_write_buffer_size(size);
            o.set_max_write_buffer_number(2);
            o
        };
        // After a failed write (a full disk) RocksDB resumes by itself once
        // the free space exceeds its largest memtable (its file manager's
        // reserve), so memtables stay small enough to resume on a small disk
        // (16 MiB free), and the unused default family's too (64 MiB if left
        // at RocksDB's default).
        let mut msg_opts = small(16 * 1024 * 1024);
        msg_opts.set_compression_type(rocksdb::DBCompressionType::None);
        // Raft logs carry quorum queues' message bodies until the next
        // snapshot purges them: mostly deleted before they are compacted,
        // so never worth compressing.
        let mut raft_opts = small(16 * 1024 * 1024);
        raft_opts.set_compression_type(rocksdb::DBCompressionType::None);
        let cfs = vec![
            ColumnFamilyDescriptor::new(rocksdb::DEFAULT_COLUMN_FAMILY_NAME, small(1024 * 1024)),
            ColumnFamilyDescriptor::new(CF_DEFINITIONS, small(4 * 1024 * 1024)),
            ColumnFamilyDescriptor::new(CF_MESSAGES, msg_opts),
            ColumnFamilyDescriptor::new(CF_INDEX, small(8 * 1024 * 1024)),
            ColumnFamilyDescriptor::new(CF_DEDUP, small(4 * 1024 * 1024)),
            ColumnFamilyDescriptor::new(CF_RAFT, raft_opts),
        ];
        let mut names = ALL_CFS.to_vec();
        names.push(rocksdb::DEFAULT_COLUMN_FAMILY_NAME);
        // A store from before a column family existed (`raft`) gets it at
        // open; the read-only check before that opens only the ones it has.
        if let Ok(existing) = DB::list_cf(&opts, dir) {
            names.retain(|n| existing.iter().any(|e| e == n));
        }
        check::refuse_if_older(&opts, dir, &names)?;
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| check::open_error(dir, e))?;
        let mark = check::Mark::new(dir, &db);
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let refs = Arc::new(Mutex::new(Refs::new()));
        let stats = Arc::new(Stats::default());
        let recovery = Recovery::default();
        let health = recovery.subscribe();
        let fail_points = Arc::new(FailPoints::default());
        let (done_tx, done_rx) = mpsc::channel();
        let confirmer = std::thread::Builder::new()
            .name("store-confirmer".into())
            .spawn(move || committer::confirmer(done_rx))
            .map_err(|e| StoreError::Io(format!("cannot start the confirmer thread: {e}")))?;
        let committer = {
            let (db, refs, stats, fp) =
                (db.clone(), refs.clone(), stats.clone(), fail_points.clone());
            std::thread::Builder::new()
                .name("store-committer".into())
                .spawn(move || {
                    committer::committer(db, rx, done_tx, refs, stats, fp, recovery, mark)
                })
                .map_err(|e| StoreError::Io(format!("cannot start the committer thread: {e}")))?
        };
        let (read_tx, read_rx) = mpsc::channel();
        let reader_thread = {
            let db = db.clone();
            std::thread::Builder::new()
                .name("store-reader".into())
                .spawn(move || reader::run(db, read_rx))
                .map_err(|e| StoreError::Io(format!("cannot start the reader thread: {e}")))?
        };
        Ok(RocksStore {
            db,
            tx: Mutex::new(Some(tx)),
            committer: Mutex::new(Some(committer)),
            confirmer: Mutex::new(Some(confirmer)),
            reader: Mutex::new(Some(read_tx)),
            reader_thread: Mutex::new(Some(reader_thread)),
            refs,
            stats,
            health,
            fail_points,
        })
    }

    /// Dropping the sender ends the committer after it drained everything;
    /// its end ends the confirmer after the last completions ran.
    fn stop_threads(&self) {
        self.reader.lock().take();
        if let Some(h) = self.reader_thread.lock().take() {
            // A read's callback may drop the last handle on the store: the
            // reader thread cannot wait for itself (it ends on its own).
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        self.tx.lock().take();
        if let Some(h) = self.committer.lock().take() {
            let _ = h.join();
        }
        if let Some(h) = self.confirmer.lock().take() {
            let _ = h.join();
        }
    }

    fn submit(&self, op: Op) -> bool {
        match self.tx.lock().as_ref() {
            Some(tx) => tx.send(op).is_ok(),
            None => false,
        }
    }

    /// Run a definition change on the committer and wait until it is synced.
    fn definition(
        &self,
        op: impl FnOnce(&DB, &mut Refs, &mut WriteBatch) -> Result<(), StoreError> + Send + 'static,
    ) -> Result<(), StoreError> {
        let (reply, wait) = mpsc::sync_channel(1);
        if !self.submit(Op::Definition {
            op: Box::new(op),
            reply,
        }) {
            return Err(StoreError::Io("store is shut down".into()));
        }
        wait.recv()
            .map_err(|_| StoreError::Io("store committer stopped".into()))?
    }
}

fn remove_in_batch(
    db: &DB,
    refs: &mut Refs,
    batch: &mut WriteBatch,
    queue: &QueueKey,
    msg_id: u64,
) -> Result<(), StoreError> {
    batch.delete_cf(cf(db, CF_INDEX)?, codec::index_key(queue, msg_id));
    let last = match refs.get_mut(&msg_id) {
        Some(n) => {
            *n = n.saturating_sub(1);
            *n == 0
        }
        None => true,
    };
    if last {
        refs.remove(&msg_id);
        batch.delete_cf(cf(db, CF_MESSAGES)?, msg_id.to_be_bytes());
    }
    Ok(())
}

impl Store for RocksStore {
    fn put_object(&self, obj: &StoredObject) -> Result<(), StoreError> {
        let (k, v) = (codec::object_key(&obj.kind, &obj.key), obj.value.clone());
        self.definition(move |db, _, b| {
            b.put_cf(cf(db, CF_DEFINITIONS)?, k, v);
            Ok(())
        })
    }

    fn delete_object(&self, kind: &str, key: &str) -> Result<(), StoreError> {
        let k = codec::object_key(kind, key);
        self.definition(move |db, _, b| {
            b.delete_cf(cf(db, CF_DEFINITIONS)?, k);
            Ok(())
        })
    }

    fn put_exchange(&self, def: &ExchangeDef) -> Result<(), StoreError> {
        let (k, v) = (
            codec::exchange_key(&def.vhost, &def.name),
            codec::encode_exchange(def),
        );
        self.definition(move |db, _, b| {
            b.put_cf(cf(db, CF_DEFINITIONS)?, k, v);
            Ok(())
        })
    }

    fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), StoreError> {
        let k = codec::exchange_key(vhost, name);
        let (vhost, name) = (vhost.to_string(), name.to_string());
        self.definition(move |db, _, b| {
            let defs = cf(db, CF_DEFINITIONS)?;
            b.delete_cf(defs, k);
            // Its remembered deduplication keys go with it.
            let dedup = cf(db, CF_DEDUP)?;
            let prefix = codec::dedup_prefix(&vhost, &name);
            for item in db.iterator_cf(
                dedup,
                IteratorMode::From(&prefix, rocksdb::Direction::Forward),
            ) {
                let (key, _) = item.map_err(io)?;
                if !key.starts_with(&prefix) {
                    break;
                }
                b.delete_cf(dedup, key);
            }
            // Its bindings go with it.
            for item in db.iterator_cf(
                defs,
                IteratorMode::From(&[codec::BINDING], rocksdb::Direction::Forward),
            ) {
                let (key, value) = item.map_err(io)?;
                if key.first() != Some(&codec::BINDING) {
                    break;
                }
                if let Some(bd) = codec::decode_binding(&value) {
                    if bd.vhost == vhost
                        && (bd.exchange == name || (bd.to_exchange && bd.destination == name))
                    {
                        b.delete_cf(defs, key);
                    }
                }
            }
            Ok(())
        })
    }

    fn put_queue(&self, def: &QueueDef) -> Result<(), StoreError> {
        let (k, v) = (
            codec::queue_key(&def.vhost, &def.name),
            codec::encode_queue(def),
        );
        self.definition(move |db, _, b| {
            b.put_cf(cf(db, CF_DEFINITIONS)?, k, v);
            Ok(())
        })
    }

    fn delete_queue(&self, key: &QueueKey) -> Result<(), StoreError> {
        let key = key.clone();
        self.definition(move |db, refs, b| {
            let defs = cf(db, CF_DEFINITIONS)?;
            b.delete_cf(defs, codec::queue_key(&key.vhost, &key.name));
            for item in db.iterator_cf(
                defs,
                IteratorMode::From(&[codec::BINDING], rocksdb::Direction::Forward),
            ) {
                let (k, value) = item.map_err(io)?;
                if k.first() != Some(&codec::BINDING) {
                    break;
                }
                if let Some(bd) = codec::decode_binding(&value) {
                    if bd.vhost == key.vhost && !bd.to_exchange && bd.destination == key.name {
                        b.delete_cf(defs, k);
                    }
                }
            }
            let prefix = codec::index_prefix(&key);
            let index = cf(db, CF_INDEX)?;
            let ids: Vec<u64> = db
                .iterator_cf(
                    index,
                    IteratorMode::From(&prefix, rocksdb::Direction::Forward),
                )
                .map_while(|item| item.ok())
                .take_while(|(k, _)| k.starts_with(&prefix) && k.len() == prefix.len() + 8)
                .filter_map(|(k, _)| codec::index_msg_id(&k))
                .collect();
            for id in ids {
                remove_in_batch(db, refs, b, &key, id)?;
            }
            Ok(())
        })
    }

    fn put_binding(&self, def: &BindingDef) -> Result<(), StoreError> {
        let (k, v) = (codec::binding_key(def), codec::encode_binding(def));
        self.definition(move |db, _, b| {
            b.put_cf(cf(db, CF_DEFINITIONS)?, k, v);
            Ok(())
        })
    }

    fn delete_binding(&self, def: &BindingDef) -> Result<(), StoreError> {
        let k = codec::binding_key(def);
        self.definition(move |db, _, b| {
            b.delete_cf(cf(db, CF_DEFINITIONS)?, k);
            Ok(())
        })
    }

    fn persist(
        &self,
        msg: Arc<Message>,
        queues: Vec<(QueueKey, IndexMeta)>,
        dedup: Option<DedupDef>,
        done: Completion,
    ) {
        let tx = self.tx.lock().clone();
        let Some(tx) = tx else {
            return crate::batch::run(|b| done(false, b));
        };
        // If the committer is gone, the completion still runs, as a failure.
        if let Err(mpsc::SendError(Op::Persist { done, .. })) = tx.send(Op::Persist {
            msg,
            queues,
            dedup,
            done,
            at: std::time::Instant::now(),
        }) {
            crate::batch::run(|b| done(false, b));
        }
    }

    fn after(&self, done: Completion) {
        let tx = self.tx.lock().clone();
        let Some(tx) = tx else {
            return crate::batch::run(|b| done(false, b));
        };
        if let Err(mpsc::SendError(Op::Barrier(done))) = tx.send(Op::Barrier(done)) {
            crate::batch::run(|b| done(false, b));
        }
    }

    fn raft_write(&self, write: RaftWrite, done: Completion) {
        let tx = self.tx.lock().clone();
        let Some(tx) = tx else {
            return crate::batch::run(|b| done(false, b));
        };
        if let Err(mpsc::SendError(Op::Raft { done, .. })) = tx.send(Op::Raft { write, done }) {
            crate::batch::run(|b| done(false, b));
        }
    }

    fn raft_scan(&self, from: &[u8], to: &[u8]) -> Result<super::RaftRecords, StoreError> {
        let c = cf(&self.db, CF_RAFT)?;
        let mut out = Vec::new();
        let mode = IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(c, mode) {
            let (k, v) = item.map_err(io)?;
            if &*k >= to {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn forget_dedup(&self, vhost: &str, exchange: &str, key: &str) {
        self.submit(Op::ForgetDedup {
            key: codec::dedup_key(vhost, exchange, key),
        });
    }

    fn remove(&self, queue: &QueueKey, msg_id: u64) {
        self.submit(Op::Remove {
            queue: queue.clone(),
            msg_id,
        });
    }

    fn load(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Message>>>, StoreError> {
        reader::load(&self.db, ids)
    }

    fn read(&self, ids: Vec<u64>, done: ReadDone) {
        let reader = self.reader.lock().clone();
        let Some(reader) = reader else {
            return done(Err(StoreError::Io("the store is closed".into())));
        };
        if let Err(mpsc::SendError((_, done))) = reader.send((ids, done)) {
            done(Err(StoreError::Io("the store is closed".into())));
        }
    }

    fn recover(&self) -> Result<Recovered, StoreError> {
        let db = &self.db;
        let defs = cf(db, CF_DEFINITIONS)?;
        let mut rec = Recovered::default();
        let mut queue_defs = Vec::new();
        for item in db.iterator_cf(defs, IteratorMode::Start) {
            let (k, v) = item.map_err(io)?;
            let bad = || {
                StoreError::Corrupt(format!(
                    "undecodable definition record {:?}",
                    String::from_utf8_lossy(&k)
                ))
            };
            match k.first() {
                Some(&codec::EXCHANGE) => rec
                    .exchanges
                    .push(codec::decode_exchange(&v).ok_or_else(bad)?),
                Some(&codec::QUEUE) => queue_defs.push(codec::decode_queue(&v).ok_or_else(bad)?),
                Some(&codec::BINDING) => rec
                    .bindings
                    .push(codec::decode_binding(&v).ok_or_else(bad)?),
                Some(&codec::OBJECT) => rec
                    .objects
                    .push(codec::decode_object(&k, &v).ok_or_else(bad)?),
                _ => return Err(bad()),
            }
        }
        let index = cf(db, CF_INDEX)?;
        let mut counts: HashMap<u64, u32> = HashMap::new();
        for qd in queue_defs {
            let key = QueueKey {
                vhost: qd.vhost.clone(),
                name: qd.name.clone(),
            };
            let prefix = codec::index_prefix(&key);
            let mut msgs = Vec::new();
            for item in db.iterator_cf(
                index,
                IteratorMode::From(&prefix, rocksdb::Direction::Forward),
            ) {
                let (k, v) = item.map_err(io)?;
                if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 {
                    break;
                }
                let Some(id) = codec::index_msg_id(&k) else {
                    continue;
                };
                *counts.entry(id).or_default() += 1;
                msgs.push((id, codec::index_meta(&v)));
            }
            rec.queues.push((qd, msgs));
        }
        let dedup = cf(db, CF_DEDUP)?;
        for item in db.iterator_cf(dedup, IteratorMode::Start) {
            let (k, v) = item.map_err(io)?;
            match codec::decode_dedup(&k, &v) {
                Some(d) => rec.dedup.push(d),
                None => {
                    return Err(StoreError::Corrupt(
                        "undecodable deduplication record".into(),
                    ))
                }
            }
        }
        let mut refs = self.refs.lock();
        for (id, n) in counts {
            if n > 1 {
                refs.insert(id, n);
            }
        }
        Ok(rec)
    }

    fn max_message_id(&self) -> u64 {
        let Ok(messages) = cf(&self.db, CF_MESSAGES) else {
            return 0;
        };
        self.db
            .iterator_cf(messages, IteratorMode::End)
            .next()
            .and_then(|r| r.ok())
            .and_then(|(k, _)| codec::index_msg_id(&k))
            .unwrap_or(0)
    }

    fn health(&self) -> tokio::sync::watch::Receiver<Health> {
        self.health.clone()
    }

    fn stats(&self) -> Option<super::stats::StoreCounts> {
        Some(self.stats.figures.snapshot())
    }

    fn shutdown(&self) {
        self.stop_threads();
        let s = &self.stats;
        tracing::info!(
            synced_writes = s.synced_writes.load(Ordering::Relaxed),
            persisted_messages = s.persisted_messages.load(Ordering::Relaxed),
            "store closed"
        );
    }
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

#[cfg(test)]
mod tests;
