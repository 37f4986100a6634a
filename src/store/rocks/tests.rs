//! Unit tests of the RocksDB store: group commit, ordering, recovery.

use super::*;
use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;

fn msg(id: u64, body: &str) -> Arc<Message> {
    Arc::new(Message::new(
        id,
        "ex".into(),
        "rk".into(),
        AMQPProperties::default().with_delivery_mode(2),
        Bytes::from_static(&[0x10, 0x00, 2]),
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

fn q(name: &str) -> QueueKey {
    QueueKey {
        vhost: "/".into(),
        name: name.into(),
    }
}

fn persist(store: &RocksStore, m: Arc<Message>, queues: Vec<QueueKey>) -> bool {
    let queues = queues
        .into_iter()
        .map(|q| (q, IndexMeta::default()))
        .collect();
    let (tx, rx) = mpsc::channel();
    let s2 = store.db.clone();
    let id = m.id;
    store.persist(
        m,
        queues,
        None,
        Box::new(move |ok, _| {
            // The completion runs only after the write: the message is readable now.
            let cf = s2
                .cf_handle(CF_MESSAGES)
                .map(|c| s2.get_cf(c, id.to_be_bytes()));
            let visible = matches!(cf, Some(Ok(Some(_))));
            tx.send((ok, visible)).unwrap();
        }),
    );
    let (ok, visible) = rx.recv().unwrap();
    assert!(!ok || visible, "confirmed before the write was visible");
    ok
}

#[test]
fn confirms_after_write_and_recovers_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RocksStore::open(dir.path()).unwrap();
        store
            .put_queue(&QueueDef {
                vhost: "/".into(),
                name: "a".into(),
                auto_delete: false,
                arguments: Default::default(),
            })
            .unwrap();
        for id in [3u64, 1, 2] {
            assert!(persist(&store, msg(id, &format!("m{id}")), vec![q("a")]));
        }
        store.remove(&q("a"), 2);
        store.shutdown();
        assert_eq!(store.stats.synced_writes.load(Ordering::Relaxed), 3);
    }
    let store = RocksStore::open(dir.path()).unwrap();
    let rec = store.recover().unwrap();
    assert_eq!(rec.queues.len(), 1);
    assert_eq!(
        rec.queues[0].1,
        vec![(1, IndexMeta::default()), (3, IndexMeta::default())],
        "ordered by id, removed one gone"
    );
    let loaded = store.load(&[1, 2, 3]).unwrap();
    assert_eq!(&loaded[0].as_ref().unwrap().body[..], b"m1");
    assert!(loaded[1].is_none());
    assert_eq!(store.max_message_id(), 3);
}

#[test]
fn shared_message_lives_until_last_queue_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path()).unwrap();
    assert!(persist(&store, msg(7, "x"), vec![q("a"), q("b")]));
    store.remove(&q("a"), 7);
    // Removals are ordered behind a later synced write: use one as a barrier.
    assert!(persist(&store, msg(8, "y"), vec![q("c")]));
    assert!(store.load(&[7]).unwrap()[0].is_some());
    store.remove(&q("b"), 7);
    assert!(persist(&store, msg(9, "z"), vec![q("c")]));
    assert!(store.load(&[7]).unwrap()[0].is_none());
}

#[test]
fn concurrent_publishers_share_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let n = 8u64;
    let per = 200u64;
    let threads: Vec<_> = (0..n)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                let (tx, rx) = mpsc::channel();
                for i in 0..per {
                    let tx = tx.clone();
                    store.persist(
                        msg(t * per + i + 1, "b"),
                        vec![(q("a"), IndexMeta::default())],
                        None,
                        Box::new(move |ok, _| tx.send(ok).unwrap()),
                    );
                }
                (0..per).all(|_| rx.recv().unwrap())
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
    let syncs = store.stats.synced_writes.load(Ordering::Relaxed);
    let msgs = store.stats.persisted_messages.load(Ordering::Relaxed);
    assert_eq!(msgs, n * per);
    assert!(
        syncs < msgs,
        "{syncs} syncs for {msgs} messages: no batching"
    );
}

#[test]
fn second_open_of_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _a = RocksStore::open(dir.path()).unwrap();
    let err = RocksStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("in use"), "{err}");
}
