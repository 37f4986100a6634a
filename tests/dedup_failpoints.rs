//! Deduplication and the store, in-process and deterministic: the broker's
//! one publish path (`broker::publish`) on a real RocksDB store whose
//! committer the test holds before a write or makes fail (`FailPoints`), so
//! "between two synced batches" is a place the test stops at, not a race.
//!
//! What must hold (issue 10): a duplicate is never confirmed before its
//! original's write is synced; when the original fails, the duplicate is
//! stored in its place; a nacked or failed publish leaves no key; a key is
//! on disk only with its message.

#![cfg(feature = "rocks")]

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use bytes::Bytes;
use hopper::broker::publish::{publish, Publication, PublishSink, Publisher};
use hopper::broker::vhost::{ExchangeSpec, QueueSpec};
use hopper::broker::{Broker, VHost};
use hopper::config::Config;
use hopper::store::rocks::RocksStore;
use hopper::store::Store;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Records confirms as the channel would send them.
#[derive(Default)]
struct Sink {
    confirms: Mutex<Vec<(u64, bool)>>,
}

impl PublishSink for Sink {
    fn confirm(self: Arc<Self>, seq: u64, ack: bool, _: &mut hopper::batch::Batch) {
        self.confirms.lock().push((seq, ack));
    }
    fn returned(&self, _: &str, _: &str, _: &Bytes, _: &Bytes) {}
}

impl Sink {
    fn get(&self, seq: u64) -> Option<bool> {
        self.confirms
            .lock()
            .iter()
            .find(|(s, _)| *s == seq)
            .map(|(_, a)| *a)
    }

    /// Wait (bounded) for the confirm of `seq`.
    fn wait(&self, seq: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(ack) = self.get(seq) {
                return ack;
            }
            assert!(Instant::now() < deadline, "no confirm for {seq}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<RocksStore>,
    broker: Arc<Broker>,
    vhost: Arc<VHost>,
}

fn table(items: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in items {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A durable deduplicating exchange `x` bound to durable queue `q`, with
/// `queue_args` on the queue.
fn setup(queue_args: FieldTable) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(RocksStore::open(dir.path()).unwrap());
    let broker = Broker::new(
        Config::default_config().unwrap(),
        store.clone() as Arc<dyn Store>,
    )
    .unwrap();
    let vhost = broker.vhosts.get("/").unwrap().clone();
    vhost
        .declare_exchange(ExchangeSpec {
            name: "x".into(),
            kind: "direct".into(),
            passive: false,
            durable: true,
            auto_delete: false,
            internal: false,
            arguments: table(&[
                ("x-message-deduplication", AMQPValue::Boolean(true)),
                ("x-cache-size", AMQPValue::LongInt(1000)),
            ]),
        })
        .unwrap();
    vhost
        .declare_queue(
            QueueSpec {
                name: "q".into(),
                server_named: false,
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: false,
                arguments: queue_args,
            },
            1,
        )
        .unwrap();
    vhost
        .bind("q", false, "x", "k", FieldTable::default(), 1)
        .unwrap();
    Setup {
        _dir: dir,
        store,
        broker,
        vhost,
    }
}

fn message(id: &str, body: &str) -> Publication {
    Publication {
        exchange: "x".into(),
        routing_key: "k".into(),
        mandatory: false,
        properties: AMQPProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into()),
        // delivery-mode 2 and a message-id, as a client would have sent them
        raw_properties: Bytes::new(),
        body: Bytes::copy_from_slice(body.as_bytes()),
    }
}

fn send(s: &Setup, sink: &Arc<Sink>, seq: u64, p: Publication) {
    let from = Publisher {
        sink: sink.clone(),
        seq: Some(seq),
        tx: None,
    };
    publish(
        &s.broker,
        &s.vhost,
        p,
        from,
        &mut Vec::new(),
        &mut hopper::batch::Batch::new(),
    )
    .unwrap();
}

fn queue_len(s: &Setup) -> u32 {
    s.vhost.queue("q", 1).unwrap().message_count()
}

/// Wait until the committer sits at the fail point with a batch.
fn until_held(s: &Setup) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !s.store.fail_points.is_waiting() {
        assert!(
            Instant::now() < deadline,
            "committer never reached the fail point"
        );
        std::thread::yield_now();
    }
}

#[test]
fn a_duplicate_is_not_confirmed_before_its_original_is_synced() {
    let s = setup(FieldTable::default());
    let (a, b) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    s.store.fail_points.hold();
    send(&s, &a, 1, message("m1", "original"));
    until_held(&s);
    send(&s, &b, 1, message("m1", "retry"));
    assert_eq!(
        a.get(1),
        None,
        "original not confirmed while its write is held"
    );
    assert_eq!(
        b.get(1),
        None,
        "duplicate not confirmed before its original"
    );
    s.store.fail_points.release();
    assert!(a.wait(1), "original acked once synced");
    assert!(b.wait(1), "duplicate acked once the original is synced");
    assert_eq!(queue_len(&s), 1, "stored once");
}

#[test]
fn when_the_original_fails_the_duplicate_is_stored_in_its_place() {
    let s = setup(FieldTable::default());
    let (a, b) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    s.store.fail_points.hold();
    send(&s, &a, 1, message("m1", "original"));
    until_held(&s);
    send(&s, &b, 1, message("m1", "retry"));
    s.store.fail_points.fail_next_writes(1);
    s.store.fail_points.release();
    assert!(!a.wait(1), "the failed original is nacked");
    assert!(b.wait(1), "the duplicate is stored and acked");
    assert_eq!(queue_len(&s), 1);
    // And its key is committed now: a third copy is a duplicate.
    let c = Arc::new(Sink::default());
    send(&s, &c, 1, message("m1", "third"));
    assert!(c.wait(1));
    assert_eq!(queue_len(&s), 1);
}

#[test]
fn a_failed_write_leaves_no_key() {
    let s = setup(FieldTable::default());
    let a = Arc::new(Sink::default());
    s.store.fail_points.fail_next_writes(1);
    send(&s, &a, 1, message("m1", "first try"));
    assert!(!a.wait(1), "nacked");
    assert_eq!(queue_len(&s), 0);
    send(&s, &a, 2, message("m1", "retry"));
    assert!(a.wait(2), "the retry is stored, not taken for a duplicate");
    assert_eq!(queue_len(&s), 1);
}

#[test]
fn a_publish_nacked_by_a_full_queue_leaves_no_key() {
    let s = setup(table(&[
        ("x-max-length", AMQPValue::LongInt(1)),
        ("x-overflow", AMQPValue::LongString("reject-publish".into())),
    ]));
    let a = Arc::new(Sink::default());
    send(&s, &a, 1, message("m1", "fits"));
    assert!(a.wait(1));
    send(&s, &a, 2, message("m2", "refused"));
    assert!(!a.wait(2), "queue full: nacked");
    s.vhost.queue("q", 1).unwrap().purge();
    send(&s, &a, 3, message("m2", "retry"));
    assert!(a.wait(3), "the retry goes in");
    assert_eq!(queue_len(&s), 1);
}

#[test]
fn the_key_is_on_disk_only_with_its_message() {
    let dir;
    {
        let s = setup(FieldTable::default());
        let a = Arc::new(Sink::default());
        s.store.fail_points.fail_next_writes(1);
        send(&s, &a, 1, message("lost", "never written"));
        assert!(!a.wait(1));
        send(&s, &a, 2, message("kept", "written"));
        assert!(a.wait(2));
        s.store.shutdown();
        dir = s._dir;
    }
    let store = RocksStore::open(dir.path()).unwrap();
    let rec = store.recover().unwrap();
    let keys: Vec<&str> = rec.dedup.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, vec!["kept"], "no key without its message");
    let (_, msgs) = rec.queues.iter().find(|(q, _)| q.name == "q").unwrap();
    assert_eq!(msgs.len(), 1);
}

#[test]
fn queue_level_duplicate_waits_for_a_pending_original() {
    let s = setup(table(&[(
        "x-message-deduplication",
        AMQPValue::Boolean(true),
    )]));
    // Publish straight to the queue through the default exchange, so only the
    // queue deduplicates.
    let to_queue = |id: &str| Publication {
        exchange: String::new(),
        routing_key: "q".into(),
        ..message(id, "body")
    };
    let (a, b) = (Arc::new(Sink::default()), Arc::new(Sink::default()));
    s.store.fail_points.hold();
    send(&s, &a, 1, to_queue("m1"));
    until_held(&s);
    send(&s, &b, 1, to_queue("m1"));
    assert_eq!(b.get(1), None, "not confirmed before the original");
    s.store.fail_points.fail_next_writes(1);
    s.store.fail_points.release();
    assert!(!a.wait(1));
    assert!(b.wait(1), "stored in place of the failed original");
    assert_eq!(queue_len(&s), 1);
}
