//! Unit tests of a replicated queue's view (`replica`): what a following
//! view delivers, what leading rebuilds, and what the group's settles,
//! returns and lost nodes do to it. The group is a fake that records.

use super::tests::{consumer, message, queue};
use super::*;
use crate::store::{Completion, IndexMeta};

#[derive(Debug, Default)]
struct Recorder {
    settled: Mutex<Vec<u64>>,
    returned: Mutex<Vec<u64>>,
}

impl Replica for Recorder {
    fn enqueue(&self, _: Arc<Message>, done: Completion) {
        crate::batch::run(|b| done(true, b));
    }
    fn settle(&self, id: u64) {
        self.settled.lock().push(id);
    }
    fn returned(&self, ids: &[u64]) {
        self.returned.lock().extend_from_slice(ids);
    }
    fn consumers_changed(&self) {}
    fn info(&self) -> ReplicaInfo {
        ReplicaInfo::default()
    }
    fn fetch(&self) {}
    fn counts(&self) -> (u64, u64) {
        (0, 0)
    }
    fn purge(&self) -> u32 {
        0
    }
}

fn replicated() -> (Arc<Queue>, Arc<Recorder>) {
    let q = queue();
    let r = Arc::new(Recorder::default());
    assert!(q.set_replica(r.clone()));
    assert!(!q.set_replica(r.clone()), "set once");
    (q, r)
}

fn held(ids: &[u64]) -> Vec<(u64, IndexMeta, u32, Option<Arc<Message>>)> {
    ids.iter()
        .map(|id| {
            let meta = IndexMeta {
                expires_at: 0,
                priority: 0,
                size: 1,
            };
            (*id, meta, 0, None)
        })
        .collect()
}

fn ready_ids(q: &Queue) -> Vec<u64> {
    q.state.lock().ready.iter().map(|e| e.msg_id()).collect()
}

#[test]
fn a_following_view_delivers_what_the_leader_sent_and_settles_through_the_group() {
    let (q, r) = replicated();
    assert!(
        !q.is_leading(),
        "a replicated view follows until told to lead"
    );
    let (c, ()) = consumer(&q);
    q.push_remote(vec![(message(1), false, 0), (message(2), true, 3)]);
    assert_eq!(c.taken.lock().len(), 1);
    let first = c.taken.lock().remove(0);
    q.settled(&first);
    assert_eq!(
        *r.settled.lock(),
        vec![1],
        "an ack settles by id in the group"
    );
    c.credit.store(1, Ordering::Relaxed);
    q.kick();
    let second = c.taken.lock().remove(0);
    assert!(second.redelivered);
    assert_eq!(second.delivery_count, 3);
    q.requeue([second]);
    assert_eq!(
        *r.returned.lock(),
        vec![2],
        "a requeue is counted in the group"
    );
    assert_eq!(ready_ids(&q), vec![2], "and stays in this node's buffer");
}

#[test]
fn leading_rebuilds_from_what_the_group_holds_except_local_deliveries() {
    let (q, _) = replicated();
    let (c, ()) = consumer(&q);
    q.push_remote(vec![(message(1), false, 0), (message(9), false, 0)]);
    assert_eq!(c.taken.lock()[0].msg_id(), 1);
    q.lead(held(&[1, 2, 3]));
    assert!(q.is_leading());
    assert_eq!(
        ready_ids(&q),
        vec![2, 3],
        "1 is held by the local consumer; 9 (buffered, settled elsewhere) is gone"
    );
    assert!(q.state.lock().ready.iter().all(|e| e.redelivered));
    assert_eq!(q.local_outstanding(), vec![1]);
}

#[test]
fn settles_applied_remove_ready_copies_and_credit_the_node_they_were_sent_to() {
    let (q, _) = replicated();
    q.lead(held(&[1, 2, 3, 4]));
    assert_eq!(q.claim_remote(7, &[2, 4]), 2);
    assert_eq!(ready_ids(&q), vec![1, 3]);
    let mut credited = q.settle_applied(&[2, 3]);
    credited.sort_unstable();
    assert_eq!(credited, vec![7], "2 was out at node 7; 3 was ready here");
    assert_eq!(ready_ids(&q), vec![1]);
    assert_eq!(q.remote_counts().get(&7), Some(&1));
}

#[test]
fn a_lost_node_and_a_returned_buffer_make_messages_ready_again() {
    let (q, _) = replicated();
    q.lead(held(&[1, 2, 3]));
    q.claim_remote(5, &[1, 2]);
    q.claim_remote(6, &[3]);
    let returned = [(3, true, 2), (1, false, 0)];
    assert_eq!(q.return_remote(6, &returned), 1, "only what was sent to 6");
    assert_eq!(ready_ids(&q), vec![3]);
    let three = q.state.lock().ready[0].clone();
    assert!(
        three.redelivered && three.delivery_count == 2,
        "returns counted on the follower come back with it"
    );
    assert_eq!(q.node_down(5), 2);
    assert_eq!(ready_ids(&q), vec![1, 2, 3], "back at their places");
    assert!(q.remote_counts().is_empty());
}

#[test]
fn following_again_drops_the_ready_list_and_keeps_local_deliveries() {
    let (q, r) = replicated();
    q.lead(held(&[1, 2]));
    let (c, ()) = consumer(&q);
    q.kick();
    assert!(
        c.taken.lock().is_empty(),
        "stored heads wait for the store read"
    );
    let dropped = q.follow();
    assert_eq!(dropped, vec![1, 2]);
    assert!(!q.is_leading());
    q.purge();
    assert!(r.settled.lock().is_empty(), "nothing left to purge here");
}

#[test]
fn a_message_not_yet_in_this_nodes_store_leads_from_memory_and_waits_for_its_write() {
    let (q, _) = replicated();
    let (c, ()) = consumer(&q);
    let pending = message(5);
    pending.mark_pending();
    let mut held = held(&[5]);
    held[0].3 = Some(pending.clone());
    q.lead(held);
    assert_eq!(
        ready_ids(&q),
        vec![5],
        "not dropped as missing from the store"
    );
    assert!(c.taken.lock().is_empty(), "held back until written here");
    pending.mark_stored();
    q.kick();
    assert_eq!(c.taken.lock()[0].msg_id(), 5);
}

#[test]
fn what_was_restored_at_boot_is_set_aside_for_the_group_not_dropped_as_a_buffer() {
    let q = queue();
    let meta = IndexMeta {
        expires_at: 0,
        priority: 0,
        size: 1,
    };
    q.recover(vec![(5, meta), (6, meta), (7, meta)]);
    let r = Arc::new(Recorder::default());
    assert!(q.set_replica(r));
    // The follower's subscription task gives its buffer back when it has
    // no consumers: it may run before the group's machine opens.
    assert!(
        q.take_buffer().is_empty(),
        "the restored messages are no buffer"
    );
    let restored: Vec<u64> = q.take_restored().into_iter().map(|(id, _)| id).collect();
    assert_eq!(restored, vec![5, 6, 7]);
    assert!(q.take_restored().is_empty(), "handed over once");
}
