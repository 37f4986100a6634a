//! Unit tests of a quorum queue's state machine over a real RocksDB store:
//! a retried enqueue batch is applied once, even after its messages were
//! consumed, and a snapshot carries each node's last batch and the queue's
//! order to the member that installs it.

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::log_id;

use super::*;
use crate::store::rocks::RocksStore;

struct NoHooks;

impl Settled for NoHooks {
    fn remote_settled(&self) {}
    fn refused(&self, _: &[u64]) {}
}

fn machine(store: &Arc<dyn Store>) -> QueueMachine {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let queue = Arc::new(Queue::new(
        "q".into(),
        "/".into(),
        true,
        None,
        false,
        args,
        store.clone(),
    ));
    QueueMachine::open(store.clone(), 9, queue, Arc::new(NoHooks)).expect("open")
}

fn body(id: u64) -> Body {
    let m = Message::new(
        id,
        String::new(),
        "q".into(),
        BasicProperties::default(),
        // No properties: the flags word only.
        Bytes::from_static(&[0, 0]),
        Bytes::from(format!("m{id}")),
    );
    encode_message(&m)
}

fn enqueue(index: u64, from: u64, seq: u64, ids: &[u64]) -> crate::cluster::types::Entry {
    crate::cluster::types::Entry {
        log_id: log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Queue(QueueCommand::Enqueue {
            from,
            seq,
            msgs: ids.iter().map(|id| (*id, body(*id))).collect(),
        })),
    }
}

fn settle(index: u64, acked: &[u64]) -> crate::cluster::types::Entry {
    crate::cluster::types::Entry {
        log_id: log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Command::Queue(QueueCommand::Settle {
            acked: acked.to_vec(),
            returned: Vec::new(),
        })),
    }
}

async fn apply(sm: &mut QueueMachine, entries: Vec<crate::cluster::types::Entry>) {
    let items: Vec<Result<EntryResponder<TypeConfig>, io::Error>> =
        entries.into_iter().map(|e| Ok((e, None))).collect();
    sm.apply(futures_util::stream::iter(items))
        .await
        .expect("apply");
}

fn held_ids(sm: &QueueMachine) -> Vec<u64> {
    let st = sm.state.lock();
    let mut held: Vec<(u64, u64)> = st.held.iter().map(|(id, h)| (h.order, *id)).collect();
    held.sort_unstable();
    held.into_iter().map(|(_, id)| id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_batch_is_applied_once_even_after_its_messages_were_consumed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).expect("store"));
    let mut sm = machine(&store);
    apply(&mut sm, vec![enqueue(1, 2, 10, &[1, 2])]).await;
    assert_eq!(held_ids(&sm), vec![1, 2]);
    apply(&mut sm, vec![settle(2, &[1, 2])]).await;
    assert!(held_ids(&sm).is_empty());
    // The same batch again (its first answer was lost): not applied.
    apply(&mut sm, vec![enqueue(3, 2, 10, &[1, 2])]).await;
    assert!(held_ids(&sm).is_empty(), "a retry is not a new message");
    // The node's next batch, and another node's batch with a lower number.
    apply(
        &mut sm,
        vec![enqueue(4, 2, 11, &[3]), enqueue(5, 3, 4, &[4])],
    )
    .await;
    assert_eq!(held_ids(&sm), vec![3, 4]);
    // An older batch of node 2 that a deposed leader committed late.
    apply(&mut sm, vec![enqueue(6, 2, 9, &[5])]).await;
    assert_eq!(held_ids(&sm), vec![3, 4]);

    // A member that installs a snapshot knows the batches too, and keeps
    // the queue's order.
    apply(&mut sm, vec![enqueue(7, 3, 5, &[6, 7])]).await;
    // Built as a barrier; sent as what the machine holds then.
    sm.build_snapshot().await.expect("snapshot");
    let snap = sm
        .get_current_snapshot()
        .await
        .expect("read the snapshot")
        .expect("a snapshot");
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2: Arc<dyn Store> = Arc::new(RocksStore::open(dir2.path()).expect("store"));
    let mut other = machine(&store2);
    other
        .install_snapshot(&snap.meta, snap.snapshot)
        .await
        .expect("install");
    assert_eq!(held_ids(&other), vec![3, 4, 6, 7]);
    apply(
        &mut other,
        vec![enqueue(8, 3, 5, &[6, 7]), enqueue(9, 2, 11, &[3])],
    )
    .await;
    assert_eq!(
        held_ids(&other),
        vec![3, 4, 6, 7],
        "retries after a snapshot"
    );
    store.shutdown();
    store2.shutdown();
}
