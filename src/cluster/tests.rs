//! openraft's storage conformance suite on our log store and meta state
//! machine, over a real RocksDB store (its committer, its fsyncs).

use std::sync::Arc;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;

use super::log::LogStore;
use super::meta::{MetaMachine, NoApply};
use super::types::{TypeConfig, META_GROUP};
use crate::store::rocks::RocksStore;
use crate::store::Store;

struct Rocks;

impl StoreBuilder<TypeConfig, LogStore, MetaMachine, tempfile::TempDir> for Rocks {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, MetaMachine), StorageError<TypeConfig>> {
        // Setup failures are the test machine's, not the suite's: panic.
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
        let log = LogStore::open(store.clone(), META_GROUP).unwrap();
        let sm = MetaMachine::open(store, META_GROUP, Arc::new(NoApply)).unwrap();
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_conformance_suite() {
    Suite::test_all(Rocks).await.unwrap();
}

/// What was appended (and synced) is there after the store is reopened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_and_vote_survive_a_reopen() {
    use openraft::entry::RaftEntry;
    use openraft::storage::{RaftLogReader, RaftLogStorage};
    use openraft::type_config::TypeConfigExt;
    let dir = tempfile::tempdir().unwrap();
    {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
        let mut log = LogStore::open(store.clone(), META_GROUP).unwrap();
        let vote = openraft::impls::Vote::new(3, 2);
        log.save_vote(&vote).await.unwrap();
        let (tx, rx) = TypeConfig::oneshot();
        let entries: Vec<_> = (1..=3)
            .map(|i| openraft::Entry::new_blank(openraft::testing::log_id::<TypeConfig>(3, 2, i)))
            .collect();
        let cb = openraft::storage::IOFlushed::<TypeConfig>::signal(tx);
        log.append(entries, cb).await.unwrap();
        rx.await.unwrap().unwrap();
        store.shutdown();
    }
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let mut log = LogStore::open(store, META_GROUP).unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(openraft::impls::Vote::new(3, 2))
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id.map(|l| l.index), Some(3));
    assert_eq!(log.try_get_log_entries(1..4).await.unwrap().len(), 3);
}
