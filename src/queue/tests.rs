//! Unit tests of the queue with a fake subscriber (no channel needed).

use super::*;
use amq_protocol::protocol::BasicProperties;
use bytes::Bytes;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

pub(super) fn queue() -> Arc<Queue> {
    Arc::new(Queue::new(
        "q".into(),
        "/".into(),
        false,
        None,
        false,
        FieldTable::default(),
        Arc::new(crate::store::NullStore),
    ))
}

pub(super) fn message(id: u64) -> Arc<Message> {
    Arc::new(Message::new(
        id,
        String::new(),
        "q".into(),
        BasicProperties::default(),
        Bytes::new(),
        Bytes::from_static(b"x"),
    ))
}

/// A subscriber that takes one delivery per unit of credit (a consumer
/// with prefetch 1 that acks only when the test says so).
#[derive(Debug)]
pub(super) struct Fake {
    pub(super) credit: AtomicU32,
    pub(super) taken: Mutex<Vec<QueueEntry>>,
}

impl Subscriber for Fake {
    fn priority(&self) -> i64 {
        0
    }
    fn exclusive(&self) -> bool {
        false
    }
    fn offer(self: Arc<Self>, _: &Arc<Queue>, take: &mut subscriber::Take<'_>) -> bool {
        if self.credit.load(Ordering::Relaxed) == 0 {
            return false;
        }
        match take() {
            Some((e, _)) => {
                self.credit.fetch_sub(1, Ordering::Relaxed);
                self.taken.lock().push(e);
                true
            }
            None => false,
        }
    }
    fn cancelled(&self) {}
    fn info(&self) -> subscriber::SubscriberInfo {
        subscriber::SubscriberInfo {
            tag: "fake".into(),
            ack_required: true,
            prefetch: 1,
            exclusive: false,
            priority: 0,
            unacked: 0,
            connection: 0,
            channel: 1,
        }
    }
}

pub(super) fn consumer(q: &Arc<Queue>) -> (Arc<Fake>, ()) {
    let c = Arc::new(Fake {
        credit: AtomicU32::new(1),
        taken: Mutex::new(Vec::new()),
    });
    assert!(q.add_consumer(c.clone()));
    (c, ())
}

#[test]
fn delivers_by_value_in_order_within_credit() {
    let q = queue();
    let (c, ()) = consumer(&q);
    for id in 0..3 {
        q.enqueue(message(id));
    }
    q.kick();
    assert_eq!(c.taken.lock().len(), 1, "one unit of credit");
    c.credit.store(5, Ordering::Relaxed);
    q.kick();
    let ids: Vec<u64> = c.taken.lock().iter().map(|e| e.msg_id()).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    assert_eq!(q.message_count(), 0);
}

#[test]
fn no_flow_control_without_consumers() {
    let q = queue();
    for id in 0..(FLOW_HIGH as u64 + 10) {
        q.enqueue(message(id));
    }
    assert!(!q.in_flow(), "a queue nobody consumes from never throttles");
}

#[test]
fn flow_set_past_high_and_cleared_below_low() {
    let q = queue();
    let (c, _rx) = consumer(&q);
    // One message goes out (prefetch 1); the rest stay ready.
    for id in 0..=(FLOW_HIGH as u64) {
        q.enqueue(message(id));
        assert!(!q.in_flow(), "below the high mark at {id}");
    }
    q.enqueue(message(FLOW_HIGH as u64 + 1));
    assert!(q.in_flow());
    // The consumer acks one at a time: flow stays on down to the low mark.
    while q.message_count() as usize > FLOW_LOW + 1 {
        c.credit.store(1, Ordering::Relaxed);
        q.kick();
        assert!(q.in_flow(), "still {} ready", q.message_count());
    }
    c.credit.store(1, Ordering::Relaxed);
    q.kick();
    assert_eq!(q.message_count() as usize, FLOW_LOW);
    assert!(!q.in_flow());
}

#[tokio::test(start_paused = true)]
async fn flow_wait_is_bounded_and_ends_when_cleared() {
    let q = queue();
    let (_c, _rx) = consumer(&q);
    for id in 0..(FLOW_HIGH as u64 + 10) {
        q.enqueue(message(id));
    }
    assert!(q.in_flow());
    // Bounded: a stuck consumer slows its publishers, never stops them.
    let start = tokio::time::Instant::now();
    q.flow_wait(Duration::from_millis(10)).await;
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    // A purge clears flow control and wakes the waiting publisher.
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.flow_wait(Duration::from_secs(3600)).await }
    });
    tokio::task::yield_now().await;
    q.purge();
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("woken by the purge")
        .expect("join");
    assert!(!q.in_flow());
}

#[test]
fn peek_changes_nothing_and_stops_at_a_pending_store_write() {
    let q = queue();
    for id in 1..=3 {
        assert!(matches!(q.enqueue(message(id)), Enqueued::Accepted(_)));
    }
    let pending = message(4);
    pending.mark_pending();
    assert!(matches!(q.enqueue(pending), Enqueued::Accepted(_)));
    let ids = |p: &Peek| -> Vec<u64> {
        p.items
            .iter()
            .map(|i| match &i.slot {
                Slot::Mem(m) => m.id,
                Slot::Stored(id) => *id,
            })
            .collect()
    };

    let p = q.peek(1, 10);
    assert_eq!(p.ready, 4);
    assert_eq!(
        ids(&p),
        [2, 3],
        "ends before the message still being written"
    );
    assert_eq!(
        p.items.iter().map(|i| i.position).collect::<Vec<_>>(),
        [1, 2]
    );
    let p = q.peek(0, 2);
    assert_eq!(ids(&p), [1, 2]);
    assert!(p.items.iter().all(|i| !i.redelivered));

    // Peeking twice took nothing and marked nothing: basic.get sees the head as new.
    assert_eq!(q.message_count(), 4);
    let (entry, m, _) = q.get(false).expect("the head is deliverable");
    assert_eq!(m.id, 1);
    assert!(!entry.redelivered);
    // A real requeue does mark it, and peek shows that as it is.
    q.requeue([entry]);
    assert!(q.peek(0, 1).items[0].redelivered);
    assert!(q.peek(9, 5).items.is_empty());
}
