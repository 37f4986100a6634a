//! Damage and faults in the RocksDB store: reading every record back to
//! check it (at boot and in `hopper check-store`), salvaging a damaged store,
//! the clear error for a store that cannot be opened, and the probe the
//! committer retries after a failed write (see `store::health`).
//!
//! Part of `rocks`, the only module that touches RocksDB. It must never
//! change a record, and never let a damaged store pass for an empty one.

use rocksdb::{ColumnFamilyDescriptor, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{cf, RocksStore, ALL_CFS};
use crate::store::StoreError;

/// Where the recovery steps are written down.
const STEPS: &str = "see \"Damaged store\" in docs/OPERATIONS.md";

/// What `verify` read back.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Verified {
    /// (column family, records, bytes of keys and values)
    pub column_families: Vec<(String, u64, u64)>,
    /// Table (.sst) files holding them.
    pub table_files: usize,
    pub millis: u64,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (name, records, bytes) in &self.column_families {
            writeln!(f, "  {name:<12} {records:>10} records {bytes:>14} bytes")?;
        }
        write!(
            f,
            "  {} table files, every block's checksum verified in {} ms",
            self.table_files, self.millis
        )
    }
}

/// The text for a store RocksDB refuses to open.
pub(super) fn open_error(dir: &Path, e: rocksdb::Error) -> StoreError {
    let text = e.to_string();
    if text.contains("lock") {
        StoreError::Io(format!(
            "data directory {} is in use by another broker ({text})",
            dir.display()
        ))
    } else if e.kind() == rocksdb::ErrorKind::Corruption || text.contains("orrupt") {
        damaged(dir, &text)
    } else {
        StoreError::Io(text)
    }
}

fn damaged(dir: &Path, text: &str) -> StoreError {
    StoreError::Corrupt(format!(
        "the store in {} is damaged: {text}. It may hold confirmed messages, so the broker \
         will not start without them: stop here, keep a copy of the directory, then restore \
         it from a backup or salvage what can be read with `hopper check-store --data-dir {} \
         --repair` ({STEPS})",
        dir.display(),
        dir.display()
    ))
}

impl RocksStore {
    /// Read every record of every column family back, verifying each block's
    /// checksum (RocksDB checks a table block only when it is read, so a
    /// damaged message body would otherwise surface only when a consumer
    /// reached it). Reads bypass the block cache.
    pub fn verify(&self) -> Result<Verified, StoreError> {
        let started = Instant::now();
        let db = &self.db;
        let mut out = Verified::default();
        for name in ALL_CFS {
            let mut ro = ReadOptions::default();
            ro.set_verify_checksums(true);
            ro.fill_cache(false);
            ro.set_readahead_size(2 * 1024 * 1024);
            let mut it = db.raw_iterator_cf_opt(cf(db, name)?, ro);
            it.seek_to_first();
            let (mut records, mut bytes) = (0u64, 0u64);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                records += 1;
                bytes += (k.len() + v.len()) as u64;
                it.next();
            }
            it.status().map_err(|e| damaged(db.path(), e.as_ref()))?;
            out.column_families.push((name.to_string(), records, bytes));
        }
        out.table_files = db
            .live_files()
            .map_err(|e| StoreError::Io(e.to_string()))?
            .len();
        out.millis = started.elapsed().as_millis() as u64;
        Ok(out)
    }
}

/// The sidecar file recording a write RocksDB had made durable: the store
/// must never come back older than that. RocksDB reads a damaged last
/// record of its MANIFEST as a torn one and drops it silently, forgetting
/// the table files it listed (and deleting them as obsolete on a writable
/// open); the sequence number then goes backwards, which this catches.
const MARK: &str = "HOPPER-SEQUENCE";
/// How often the mark follows the committer's synced writes.
const MARK_EVERY: Duration = Duration::from_secs(1);

fn read_mark(dir: &Path) -> Result<Option<u64>, StoreError> {
    match std::fs::read_to_string(dir.join(MARK)) {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| {
            StoreError::Corrupt(format!(
                "{} does not hold a number: {text:?}",
                dir.join(MARK).display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io(format!("{}: {e}", dir.join(MARK).display()))),
    }
}

/// Refuse a store that RocksDB would open older than it was. Opens it
/// read-only first, so the table files a damaged MANIFEST lost are not
/// deleted and `check-store --repair` can still find them.
pub(super) fn refuse_if_older(opts: &Options, dir: &Path, cfs: &[&str]) -> Result<(), StoreError> {
    let Some(recorded) = read_mark(dir)? else {
        return Ok(());
    };
    let db = DB::open_cf_for_read_only(opts, dir, cfs, false).map_err(|e| open_error(dir, e))?;
    let recovered = db.latest_sequence_number();
    drop(db);
    if recovered >= recorded {
        return Ok(());
    }
    let manifest = std::fs::read_to_string(dir.join("CURRENT"))
        .map(|name| dir.join(name.trim()).display().to_string())
        .unwrap_or_else(|_| "its MANIFEST".into());
    Err(damaged(
        dir,
        &format!(
            "{manifest} is damaged: RocksDB recovers the store only up to write {recovered}, \
             but write {recorded} was on disk before (recorded in {MARK})"
        ),
    ))
}

/// Keeps the mark up to date with the committer's synced writes.
pub(super) struct Mark {
    path: PathBuf,
    recorded: u64,
    at: Option<Instant>,
    warned: bool,
}

impl Mark {
    /// Record what the store holds now it is open.
    pub(super) fn new(dir: &Path, db: &DB) -> Mark {
        let mut mark = Mark {
            path: dir.join(MARK),
            recorded: 0,
            at: None,
            warned: false,
        };
        mark.record(db);
        mark
    }

    /// After a synced write: everything up to the latest sequence number is
    /// on disk. Recorded at most once per `MARK_EVERY` (one small synced
    /// file write).
    pub(super) fn after_synced_write(&mut self, db: &DB) {
        if self.at.is_none_or(|t| t.elapsed() >= MARK_EVERY) {
            self.record(db);
        }
    }

    /// The committer stops: sync the log, then record the last write.
    pub(super) fn at_close(&mut self, db: &DB) {
        if db.flush_wal(true).is_ok() {
            self.record(db);
        }
    }

    fn record(&mut self, db: &DB) {
        let seq = db.latest_sequence_number();
        self.at = Some(Instant::now());
        if seq == self.recorded {
            return;
        }
        let tmp = self.path.with_extension("tmp");
        let r = (|| -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{seq}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => self.recorded = seq,
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(file = %self.path.display(), error = %e, "cannot record the store's last durable write");
            }
            Err(_) => {}
        }
    }
}

/// Rebuild a damaged store from what can still be read (RocksDB's repairer:
/// table files it cannot read are moved to `lost/` in the directory, their
/// records dropped). Only for a broker that is not running.
pub fn repair(dir: &Path) -> Result<(), StoreError> {
    let mut opts = Options::default();
    opts.create_if_missing(false);
    DB::repair(&opts, dir).map_err(|e| StoreError::Io(format!("repair failed: {e}")))?;
    // What was salvaged is the store from now on, older or not.
    match std::fs::remove_file(dir.join(MARK)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StoreError::Io(format!("{}: {e}", dir.join(MARK).display())))
        }
        _ => {}
    }
    // Reopen with the broker's column families, so a repaired store that lost
    // one outright gets it back empty.
    let mut opts = Options::default();
    opts.create_missing_column_families(true);
    let cfs = ALL_CFS
        .iter()
        .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
    DB::open_cf_descriptors(&opts, dir, cfs)
        .map(drop)
        .map_err(|e| StoreError::Io(format!("reopening after repair failed: {e}")))
}

/// One attempt to see whether RocksDB is out of its background-error state
/// after a failed write. The crate offers no `DB::Resume`: RocksDB resumes
/// by itself (its file manager polls free space every 5 s and, once more is
/// free than the largest memtable, flushes and resumes; see the memtable
/// sizes in `open`); an empty synced write proves that writes work again.
pub(super) fn resume(db: &DB) -> Result<(), String> {
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    db.write_opt(WriteBatch::default(), &synced)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::store::health::Health;
    use crate::store::{IndexMeta, QueueKey, Store};
    use amq_protocol::protocol::basic::AMQPProperties;
    use bytes::Bytes;
    use std::sync::{mpsc, Arc};

    fn persist(store: &RocksStore, id: u64) -> bool {
        let msg = Arc::new(Message::new(
            id,
            "ex".into(),
            "rk".into(),
            AMQPProperties::default().with_delivery_mode(2),
            Bytes::from_static(&[0x10, 0x00, 2]),
            Bytes::from_static(b"body"),
        ));
        let queue = QueueKey {
            vhost: "/".into(),
            name: "q".into(),
        };
        let (tx, rx) = mpsc::channel();
        store.persist(
            msg,
            vec![(queue, IndexMeta::default())],
            None,
            Box::new(move |ok, _| {
                let _ = tx.send(ok);
            }),
        );
        rx.recv().expect("completion")
    }

    /// A failed write (injected: no real disk needed) reports the store
    /// down at once; the committer's next attempt finds writes working and
    /// reports it back, with nothing to do but wait for it.
    #[test]
    fn failed_write_reports_down_then_resumes_by_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RocksStore::open(dir.path()).expect("open");
        let mut health = store.health();
        assert_eq!(*health.borrow_and_update(), Health::Ok);
        store.fail_points.fail_next_writes(1);
        assert!(!persist(&store, 1), "the failed write is nacked");
        assert!(health.has_changed().expect("store open"));
        assert!(health.borrow_and_update().is_failing());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), health.changed())
                .await
                .expect("resumed within the backoff")
                .expect("store open");
        });
        assert_eq!(*health.borrow(), Health::Ok);
        assert!(persist(&store, 2), "writes work again");
        store.shutdown();
        drop(store);
        let store = RocksStore::open(dir.path()).expect("reopen");
        let loaded = store.load(&[1, 2]).expect("load");
        assert!(loaded[0].is_none(), "the nacked message was never written");
        assert!(loaded[1].is_some());
    }

    #[test]
    fn store_older_than_its_mark_is_refused_naming_the_manifest() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksStore::open(dir.path()).expect("open");
            assert!(persist(&store, 1));
            store.shutdown();
        }
        let recorded: u64 = std::fs::read_to_string(dir.path().join(MARK))
            .expect("mark written")
            .trim()
            .parse()
            .expect("a number");
        assert!(recorded > 0);
        // As if RocksDB had dropped the MANIFEST's last records.
        std::fs::write(dir.path().join(MARK), format!("{}\n", recorded + 1000)).expect("write");
        let err = RocksStore::open(dir.path())
            .expect_err("refused")
            .to_string();
        assert!(err.contains("MANIFEST-"), "{err}");
        assert!(err.contains("docs/OPERATIONS.md"), "{err}");
        // A sound store with an up-to-date mark opens.
        std::fs::write(dir.path().join(MARK), format!("{recorded}\n")).expect("write");
        let store = RocksStore::open(dir.path()).expect("open");
        assert_eq!(
            store.verify().expect("verify").column_families.len(),
            ALL_CFS.len()
        );
    }

    /// A data dir from before the `raft` column family (with its mark)
    /// opens: the read-only check opens only the families it has, and the
    /// open creates the new one.
    #[test]
    fn store_from_before_the_raft_family_opens() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = RocksStore::open(dir.path()).expect("open");
            assert!(persist(&store, 1));
            store.shutdown();
        }
        {
            let mut db = DB::open_cf(&Options::default(), dir.path(), ALL_CFS).expect("raw open");
            db.drop_cf("raft").expect("drop raft");
        }
        let store = RocksStore::open(dir.path()).expect("an older store opens");
        assert_eq!(store.load(&[1]).expect("load").iter().flatten().count(), 1);
        assert_eq!(
            store.verify().expect("verify").column_families.len(),
            ALL_CFS.len()
        );
    }
}
