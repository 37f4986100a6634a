//! Storage behind a trait: durable definitions and persistent messages.
//!
//! The broker talks to `dyn Store` only; `rocks` is the one module that touches
//! RocksDB (behind the default `rocks` feature), and `NullStore` keeps nothing
//! (used by unit tests and the fuzz targets). A replicated
//! store can later implement the same trait.

pub mod codec;
#[cfg(feature = "rocks")]
pub mod failpoint;
pub mod health;
#[cfg(feature = "rocks")]
pub mod rocks;
pub mod stats;

use amq_protocol::types::FieldTable;
use std::sync::Arc;

use crate::batch::Batch;
use crate::message::Message;

/// Identifies a queue in the store.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueueKey {
    pub vhost: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    pub vhost: String,
    pub name: String,
    pub kind: String,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    pub vhost: String,
    pub name: String,
    pub auto_delete: bool,
    pub arguments: FieldTable,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    pub vhost: String,
    /// The source exchange.
    pub exchange: String,
    /// The destination queue, or exchange when `to_exchange`.
    pub destination: String,
    pub to_exchange: bool,
    pub routing_key: String,
    pub arguments: FieldTable,
}

/// What an index entry records besides the message id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IndexMeta {
    /// Expiry in that queue, ms since the Unix epoch; 0 for never.
    pub expires_at: u64,
    /// Priority in that queue (0 unless it has `x-max-priority`).
    pub priority: u8,
    /// Body size, so length limits in bytes hold after a restart.
    pub size: u32,
}

/// A deduplication key remembered by a durable exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct DedupDef {
    pub vhost: String,
    pub exchange: String,
    pub key: String,
    /// ms since the Unix epoch, 0 for never.
    pub expires_at: u64,
}

/// Everything read back at boot.
#[derive(Debug, Default)]
pub struct Recovered {
    pub exchanges: Vec<ExchangeDef>,
    /// Each durable queue with its messages in order: (id, expires_at), where
    /// expires_at is milliseconds since the Unix epoch, 0 for never.
    pub queues: Vec<(QueueDef, Vec<(u64, IndexMeta)>)>,
    pub bindings: Vec<BindingDef>,
    pub dedup: Vec<DedupDef>,
    pub objects: Vec<StoredObject>,
}

/// A definition kept as opaque bytes: users, vhosts, permissions and the like,
/// which the management API creates (it owns their encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// What it is, e.g. "user".
    pub kind: String,
    /// Which one, unique within its kind.
    pub key: String,
    pub value: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O error: {0}")]
    Io(String),
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

/// Called once a persistent write is on disk (`true`) or failed (`false`),
/// with the batch of completions it runs in (see `batch`).
pub type Completion = Box<dyn FnOnce(bool, &mut Batch) + Send>;

/// Called with the messages `Store::read` read back, in the order asked.
pub type ReadDone = Box<dyn FnOnce(Result<Vec<Option<Arc<Message>>>, StoreError>) + Send>;

/// A write to the cluster's Raft records (its own column family; the keys
/// are the cluster's). Applied as: range deletes, deletes, then puts.
#[derive(Debug, Default, Clone)]
pub struct RaftWrite {
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<Vec<u8>>,
    /// `[from, to)` ranges.
    pub delete_ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// Whether `done(true)` must mean "synced" (log appends, votes).
    pub sync: bool,
}

/// Raft records read back: (key, value) in key order.
pub type RaftRecords = Vec<(Vec<u8>, Vec<u8>)>;

pub trait Store: Send + Sync + std::fmt::Debug {
    fn put_exchange(&self, def: &ExchangeDef) -> Result<(), StoreError>;
    fn delete_exchange(&self, vhost: &str, name: &str) -> Result<(), StoreError>;
    fn put_queue(&self, def: &QueueDef) -> Result<(), StoreError>;
    /// Remove a queue's definition, its bindings and its messages.
    fn delete_queue(&self, key: &QueueKey) -> Result<(), StoreError>;
    fn put_binding(&self, def: &BindingDef) -> Result<(), StoreError>;
    fn delete_binding(&self, def: &BindingDef) -> Result<(), StoreError>;
    /// Write a persistent message for these durable queues with a synced write,
    /// then call `done`. Writes from many publishers share one sync.
    /// Each queue comes with the message's expiry there (ms since the epoch, 0: never).
    /// `dedup` is the deduplication key the message brought to a durable
    /// exchange: it is written in the same batch as the message, so the store
    /// never holds a key without its message.
    fn persist(
        &self,
        msg: Arc<Message>,
        queues: Vec<(QueueKey, IndexMeta)>,
        dedup: Option<DedupDef>,
        done: Completion,
    );
    /// Call `done` once everything submitted before this call has been
    /// written (or has failed): a barrier behind earlier persists.
    fn after(&self, done: Completion) {
        crate::batch::run(|b| done(true, b))
    }
    /// A message left a queue for good; needs no sync (a lost removal is a
    /// redelivery after a crash, never a loss).
    fn remove(&self, queue: &QueueKey, msg_id: u64);
    /// Read messages back by id (`None` for ids the store does not have).
    /// It blocks: never call it under a lock or on an async worker.
    fn load(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Message>>>, StoreError>;
    /// Read messages back off the caller's thread: `done` runs later, on
    /// another thread (never inside this call, so a caller may hold its own
    /// lock here), one read after the other in submission order.
    fn read(&self, ids: Vec<u64>, done: ReadDone) {
        let loaded = self.load(&ids);
        let spawned = std::thread::Builder::new()
            .name("store-read".into())
            .spawn(move || done(loaded));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a thread to read messages back");
        }
    }
    /// Read back definitions and queue contents at boot.
    fn recover(&self) -> Result<Recovered, StoreError>;
    /// The highest message id in the store, so new ids continue above it.
    fn max_message_id(&self) -> u64;
    /// Write Raft records through the same committer (and fsync) as the
    /// persists, then call `done`. A store that keeps nothing keeps no Raft
    /// records either: it answers `false`.
    fn raft_write(&self, _write: RaftWrite, done: Completion) {
        crate::batch::run(|b| done(false, b))
    }
    /// Raft records with keys in `[from, to)`, in key order.
    fn raft_scan(&self, _from: &[u8], _to: &[u8]) -> Result<RaftRecords, StoreError> {
        Ok(Vec::new())
    }
    /// Forget a key evicted from an exchange's cache.
    fn forget_dedup(&self, _vhost: &str, _exchange: &str, _key: &str) {}
    /// Keep an opaque definition (a synced write, like the other definitions).
    fn put_object(&self, _obj: &StoredObject) -> Result<(), StoreError> {
        Ok(())
    }
    /// Forget an opaque definition.
    fn delete_object(&self, _kind: &str, _key: &str) -> Result<(), StoreError> {
        Ok(())
    }
    /// Finish pending writes and stop; later writes fail.
    fn shutdown(&self) {}
    /// Whether writes work: `Failing` from the first failed write until the
    /// store has resumed by itself (the broker raises the disk alarm).
    /// A store that cannot fail says `Ok` for ever.
    fn health(&self) -> tokio::sync::watch::Receiver<health::Health> {
        tokio::sync::watch::channel(health::Health::Ok).1
    }
    /// Durability figures (fsyncs, batch sizes, latency), when it syncs.
    fn stats(&self) -> Option<stats::StoreCounts> {
        None
    }
}

/// Run a blocking store call (a synced write, a read): on a multi-threaded
/// runtime, tokio first moves this worker's other tasks elsewhere, so they
/// do not wait for the disk.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// A store that keeps nothing: every write succeeds at once.
#[derive(Debug, Default)]
pub struct NullStore;

impl Store for NullStore {
    fn put_exchange(&self, _: &ExchangeDef) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_exchange(&self, _: &str, _: &str) -> Result<(), StoreError> {
        Ok(())
    }
    fn put_queue(&self, _: &QueueDef) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_queue(&self, _: &QueueKey) -> Result<(), StoreError> {
        Ok(())
    }
    fn put_binding(&self, _: &BindingDef) -> Result<(), StoreError> {
        Ok(())
    }
    fn delete_binding(&self, _: &BindingDef) -> Result<(), StoreError> {
        Ok(())
    }
    fn persist(
        &self,
        _: Arc<Message>,
        _: Vec<(QueueKey, IndexMeta)>,
        _: Option<DedupDef>,
        done: Completion,
    ) {
        crate::batch::run(|b| done(true, b))
    }
    fn remove(&self, _: &QueueKey, _: u64) {}
    fn load(&self, ids: &[u64]) -> Result<Vec<Option<Arc<Message>>>, StoreError> {
        Ok(ids.iter().map(|_| None).collect())
    }
    fn recover(&self) -> Result<Recovered, StoreError> {
        Ok(Recovered::default())
    }
    fn max_message_id(&self) -> u64 {
        0
    }
}
