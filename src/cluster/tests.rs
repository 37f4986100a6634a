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

/// Answers every request with its body reversed.
struct Echo;
impl super::link::Handler for Echo {
    fn handle(
        &self,
        _from: u64,
        _group: u64,
        mut body: Vec<u8>,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<u8>, String>> {
        body.reverse();
        Box::pin(async move { Ok(body) })
    }
}

/// Two links on loopback with the given secrets; returns node 1's link.
async fn pair(
    secret1: Option<&[u8]>,
    secret2: Option<&[u8]>,
) -> (
    Arc<super::link::Link>,
    Arc<super::link::Link>,
    tokio::sync::watch::Sender<bool>,
) {
    use super::link::Link;
    let l1 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peers = vec![
        (1, l1.local_addr().unwrap().to_string()),
        (2, l2.local_addr().unwrap().to_string()),
    ];
    let a = Link::new(1, secret1.map(<[u8]>::to_vec), &peers);
    let b = Link::new(2, secret2.map(<[u8]>::to_vec), &peers);
    a.set_handler(Arc::new(Echo));
    b.set_handler(Arc::new(Echo));
    let (stop, rx) = tokio::sync::watch::channel(false);
    a.start(l1, rx.clone());
    b.start(l2, rx);
    (a, b, stop)
}

/// With the same secret the link comes up and carries requests both ways
/// (one connection, dialed by the lower id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_with_the_shared_secret_carries_requests_both_ways() {
    let (a, b, _stop) = pair(Some(b"s3cret"), Some(b"s3cret")).await;
    let ttl = std::time::Duration::from_secs(5);
    tokio::time::timeout(ttl, async {
        while a.connected() != vec![2] || b.connected() != vec![1] {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("link up");
    assert_eq!(
        a.call(2, 7, vec![1, 2, 3], ttl).await.unwrap(),
        vec![3, 2, 1]
    );
    assert_eq!(b.call(1, 0, vec![4, 5], ttl).await.unwrap(), vec![5, 4]);
}

/// A peer with another secret never gets a link: requests fail as not
/// connected, while the dialer keeps retrying with backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_with_a_wrong_secret_is_refused() {
    let (a, b, _stop) = pair(Some(b"s3cret"), Some(b"other")).await;
    // Several dial attempts (backoff 0.1, 0.2, 0.4 s) all fail.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    assert!(a.connected().is_empty() && b.connected().is_empty());
    let r = a
        .call(2, 0, vec![1], std::time::Duration::from_secs(1))
        .await;
    assert!(
        matches!(r, Err(super::link::LinkError::NotConnected(2))),
        "{r:?}"
    );
    // No secret on one side is refused too.
    let (c, _d, _stop) = pair(Some(b"s3cret"), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(c.connected().is_empty());
}

/// The meta state machine's applied point, membership, definitions and
/// snapshot are read back when it is opened again (a restarted node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_state_survives_a_reopen() {
    use super::types::{Entry, MetaCommand};
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    let dir = tempfile::tempdir().unwrap();
    let cmd = MetaCommand::DeclareExchange {
        vhost: "/".into(),
        name: "x".into(),
        kind: "topic".into(),
        durable: false,
        auto_delete: false,
        internal: false,
        arguments: Default::default(),
    };
    {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
        let mut sm = MetaMachine::open(store.clone(), META_GROUP, Arc::new(NoApply)).unwrap();
        let entry = Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, 1),
            payload: openraft::EntryPayload::Normal(crate::cluster::types::Command::Meta(
                cmd.clone(),
            )),
        };
        sm.apply(futures_util::stream::iter(vec![Ok((entry, None))]))
            .await
            .unwrap();
        sm.build_snapshot().await.unwrap();
        store.shutdown();
    }
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).unwrap());
    let mut sm = MetaMachine::open(store, META_GROUP, Arc::new(NoApply)).unwrap();
    let (applied, _) = sm.applied_state().await.unwrap();
    assert_eq!(applied.map(|l| l.index), Some(1));
    assert_eq!(
        sm.defs().items.values().cloned().collect::<Vec<_>>(),
        vec![cmd]
    );
    let snap = sm
        .get_current_snapshot()
        .await
        .unwrap()
        .expect("snapshot kept");
    assert_eq!(snap.meta.last_log_id.map(|l| l.index), Some(1));
}
