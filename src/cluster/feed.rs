//! Consumers on a follower, served by the leader: the leader's view has one
//! `RemoteFeed` subscriber per subscribed node, which takes messages while
//! fewer than `WINDOW` are out at that node and sends them over the link in
//! order; the follower's view buffers them for its own consumers. Settles
//! come back through the group's log (`quorum` credits the feed); a node
//! that unsubscribes gives its buffer back, a node whose link drops has
//! everything it held made ready again, redelivered. On the follower's side
//! `subscription` keeps one subscription to whichever node leads while
//! there are consumers, and hands back what they requeued once they are
//! gone. Owns the feeds and the subscription; never proposes anything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::group::{Group, RPC_TTL};
use super::link::Link;
use super::network::{call, Reply, Rpc};
use super::quorum::{decode_message, encode_message};
use super::types::GroupId;
use crate::message::Message;
use crate::queue::subscriber::{Subscriber, SubscriberInfo, Take};
use crate::queue::Queue;

/// Messages out at one follower (sent, not settled) at most.
pub const WINDOW: usize = 512;
const SEND_TTL: Duration = Duration::from_secs(10);

/// A delivery on its way: (message, redelivered, delivery count).
type Sent = (Arc<Message>, bool, u32);

#[derive(Default)]
pub struct Feeds(Mutex<HashMap<u64, Arc<RemoteFeed>>>);

pub struct RemoteFeed {
    node: u64,
    window: usize,
    out: AtomicUsize,
    tx: mpsc::UnboundedSender<Sent>,
}

impl std::fmt::Debug for RemoteFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "feed to hopper@{}", self.node)
    }
}

impl Subscriber for RemoteFeed {
    fn priority(&self) -> i64 {
        0
    }

    fn exclusive(&self) -> bool {
        false
    }

    fn offer(self: Arc<Self>, queue: &Arc<Queue>, take: &mut Take<'_>) -> bool {
        if self.out.load(Ordering::Acquire) >= self.window {
            return false;
        }
        let Some((entry, msg)) = take() else {
            return false;
        };
        self.out.fetch_add(1, Ordering::AcqRel);
        let sent = (msg, entry.redelivered, entry.delivery_count);
        queue.mark_remote(self.node, entry);
        // A closed sender means the feed was dropped: its entry is in the
        // view's remote set and comes back with `node_down`/`drop_all`.
        let _ = self.tx.send(sent);
        true
    }

    fn cancelled(&self) {}

    fn info(&self) -> SubscriberInfo {
        SubscriberInfo {
            tag: format!("hopper@{}", self.node),
            ack_required: true,
            prefetch: self.window.min(u16::MAX as usize) as u16,
            exclusive: false,
            priority: 0,
            unacked: self.out.load(Ordering::Relaxed) as u32,
            connection: 0,
            channel: 0,
        }
    }
}

/// Send a feed's deliveries to its node in order, in batches.
async fn sender(
    link: Arc<Link>,
    to: u64,
    group: GroupId,
    queue: Weak<Queue>,
    mut rx: mpsc::UnboundedReceiver<Sent>,
) {
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        while items.len() < 256 {
            match rx.try_recv() {
                Ok(s) => items.push(s),
                Err(_) => break,
            }
        }
        if rx.is_closed() {
            // The feed ended (its node went down, unsubscribed or subscribed
            // anew) while these waited, perhaps behind a call to a dead
            // node: never send them late (a restarted node would deliver
            // them again, unflagged); what is still out at that node is
            // ready again.
            if let Some(q) = queue.upgrade() {
                let back: Vec<(u64, bool, u32)> =
                    items.iter().map(|(m, r, c)| (m.id, *r, *c)).collect();
                q.return_remote(to, &back);
            }
            continue;
        }
        let items = items
            .into_iter()
            .map(|(m, redelivered, count)| (m.id, encode_message(&m), redelivered, count))
            .collect();
        if let Err(e) = call(&link, to, group, &Rpc::Deliver(items), SEND_TTL).await {
            // The node is gone or slow: its link's end makes them ready again.
            tracing::debug!(to, group, error = %e, "deliveries to a follower failed");
        }
    }
}

/// `node` subscribes (again), holding `holding` unacknowledged.
pub fn subscribe(g: &Arc<Group>, q: &Arc<Queue>, node: u64, window: usize, holding: &[u64]) {
    let old = g.feeds.0.lock().remove(&node);
    if let Some(old) = old {
        let sub: Arc<dyn Subscriber> = old;
        q.remove_consumer(&sub);
    }
    let out = q.claim_remote(node, holding);
    let (tx, rx) = mpsc::unbounded_channel();
    let feed = Arc::new(RemoteFeed {
        node,
        window: window.clamp(1, WINDOW),
        out: AtomicUsize::new(out),
        tx,
    });
    tokio::spawn(sender(g.link_handle(), node, g.id, Arc::downgrade(q), rx));
    g.feeds.0.lock().insert(node, feed.clone());
    q.add_consumer(feed);
    q.kick();
}

/// `node` has no consumers left: what it had not delivered is ready again.
pub fn unsubscribe(g: &Arc<Group>, q: &Arc<Queue>, node: u64, returned: &[(u64, bool, u32)]) {
    let feed = g.feeds.0.lock().remove(&node);
    if let Some(feed) = feed {
        let sub: Arc<dyn Subscriber> = feed;
        q.remove_consumer(&sub);
    }
    q.return_remote(node, returned);
}

/// Deliveries from the leader for this node's consumers.
pub fn delivered(q: &Arc<Queue>, items: Vec<(u64, super::types::Body, bool, u32)>) {
    let msgs = items
        .into_iter()
        .filter_map(|(id, bytes, redelivered, count)| {
            Some((decode_message(id, &bytes)?, redelivered, count))
        })
        .collect();
    q.push_remote(msgs);
}

/// `node`'s link went down: its feed ends and its deliveries are ready again.
pub fn node_down(g: &Arc<Group>, q: &Arc<Queue>, node: u64) {
    let feed = g.feeds.0.lock().remove(&node);
    if let Some(feed) = feed {
        let sub: Arc<dyn Subscriber> = feed;
        q.remove_consumer(&sub);
    }
    q.node_down(node);
}

/// Settles came through the log: each feed's count of messages out is
/// what the view still has out at its node.
pub fn refresh(g: &Arc<Group>, q: &Arc<Queue>) {
    let counts = q.remote_counts();
    for (node, feed) in g.feeds.0.lock().iter() {
        feed.out
            .store(counts.get(node).copied().unwrap_or(0), Ordering::Release);
    }
    q.kick();
}

/// This node stopped leading: every feed ends (followers subscribe to the
/// new leader).
pub fn drop_all(g: &Arc<Group>) {
    let feeds: Vec<Arc<RemoteFeed>> = g.feeds.0.lock().drain().map(|(_, f)| f).collect();
    if let Some(q) = g.queue() {
        for f in feeds {
            let sub: Arc<dyn Subscriber> = f;
            q.remove_consumer(&sub);
        }
    }
}

/// A follower with consumers subscribes to the leader; without, it gives
/// its buffer back. A new leader means a new subscription (the old buffer
/// is dropped: the new leader holds those messages and sends them again).
pub async fn subscription(group: Weak<Group>) {
    let mut subscribed: Option<u64> = None;
    loop {
        let Some(g) = group.upgrade() else { return };
        let waker = g.sub_wake.clone();
        let wake = waker.notified();
        let Some(q) = g.queue() else { return };
        let leader = g.leader();
        let want = leader.filter(|l| *l != g.me && q.consumer_count() > 0);
        let mut retry = false;
        if g.feed_lost.swap(false, Ordering::AcqRel) {
            // The leader already took back what it had sent here.
            q.take_buffer();
            subscribed = None;
            g.fed_by.store(0, Ordering::Release);
        }
        if subscribed.is_some() && subscribed != want {
            if subscribed == leader {
                let returned = q.take_buffer();
                let rpc = Rpc::Unsubscribe { returned };
                if let Some(to) = subscribed {
                    let _ = call(&g.link, to, g.id, &rpc, RPC_TTL).await;
                }
            } else {
                // The buffer came from a leader that no longer leads: the
                // new one holds those messages (a leading view keeps its own).
                q.take_buffer();
                g.fed_by.store(0, Ordering::Release);
            }
            subscribed = None;
        }
        if subscribed.is_none() && want.is_none() {
            // Deliveries requeued here after the consumers left (their
            // channels closing) go back to the leader that sent them.
            match g.fed_by.load(Ordering::Acquire) {
                l if l != 0 && Some(l) == leader => {
                    let returned = q.take_buffer();
                    if !returned.is_empty() {
                        let rpc = Rpc::Unsubscribe { returned };
                        let _ = call(&g.link, l, g.id, &rpc, RPC_TTL).await;
                    }
                }
                _ => {
                    q.take_buffer();
                    g.fed_by.store(0, Ordering::Release);
                }
            }
        }
        if let (Some(l), None) = (want, subscribed) {
            let rpc = Rpc::Subscribe {
                window: WINDOW as u32,
                holding: q.local_outstanding(),
            };
            match call(&g.link, l, g.id, &rpc, RPC_TTL).await {
                Ok(Reply::Done) => {
                    subscribed = Some(l);
                    g.fed_by.store(l, Ordering::Release);
                }
                Ok(Reply::NotLeader(hint)) => {
                    g.heard(l, hint);
                    retry = true;
                }
                _ => {
                    g.heard(l, None);
                    retry = true;
                }
            }
        }
        drop((g, q));
        if retry {
            tokio::time::sleep(Duration::from_millis(200)).await;
        } else {
            wake.await;
        }
    }
}
