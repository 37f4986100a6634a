//! What a node that does not lead a quorum queue asks of the leader, from a
//! channel's or the API's thread: basic.get's head, a purge, the queue's
//! counts. Each request blocks with the worker handed off (as the store's
//! synced definition writes do); none is ever sent to this node itself.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Group, RPC_TTL};
use crate::cluster::feed;
use crate::cluster::network::{call, Reply, Rpc};

/// How long a node that does not lead trusts the counts the leader gave it
/// (a listing of many queues asks once per queue per second at most).
const COUNTS_FRESH: Duration = Duration::from_secs(1);

impl Group {
    /// The queue's (ready, held) counts, as RabbitMQ reports a quorum queue
    /// on any node: ready is what no consumer holds (queue.declare-ok's
    /// message count), held adds every node's unacknowledged deliveries.
    /// The leader counts its own view; another node asks it (unless `cached`
    /// and it asked less than a second ago, for the API), and falls back to
    /// its own replica's count when no leader answers.
    pub(super) fn counts_now(&self, cached: bool) -> (u64, u64) {
        let held_here = self.machine.get().map_or(0, |m| m.held());
        if let Some(q) = self.queue() {
            if q.is_leading() {
                return (q.ready_len(), held_here);
            }
        }
        if let Some((at, ready, held)) = *self.counted.lock() {
            if cached && at.elapsed() < COUNTS_FRESH {
                return (ready, held);
            }
        }
        match self.ask_leader(Rpc::Count) {
            Some((_, Reply::Counted { ready, held })) => {
                *self.counted.lock() = Some((Instant::now(), ready, held));
                (ready, held)
            }
            other => {
                if let Some((leader, Reply::NotLeader(hint))) = other {
                    self.heard(leader, hint);
                }
                match *self.counted.lock() {
                    // A node outside the group holds no replica: what it
                    // last heard beats nothing.
                    Some((_, ready, held)) if self.machine.get().is_none() => (ready, held),
                    _ => (held_here, held_here),
                }
            }
        }
    }

    /// queue.purge on a view that does not lead: the leader purges.
    pub(super) fn purge_on_leader(&self) -> u32 {
        match self.ask_leader(Rpc::Purge) {
            Some((_, Reply::Purged(n))) => n,
            _ => 0,
        }
    }

    /// basic.get on a view that does not lead, with nothing buffered: the
    /// leader's head comes into the buffer.
    pub(super) fn fetch_from_leader(&self) {
        let Some(q) = self.queue() else { return };
        match self.ask_leader(Rpc::Get) {
            Some((leader, Reply::Messages(items))) => {
                self.fed_by.store(leader, Ordering::Release);
                feed::delivered(&q, items)
            }
            Some((leader, Reply::NotLeader(hint))) => self.heard(leader, hint),
            Some((leader, _)) => self.heard(leader, None),
            None => {}
        }
    }

    /// One request to the leader; `None` when no other node leads (or no
    /// multi-threaded runtime can lend the worker); an error reply counts
    /// as `Done`.
    fn ask_leader(&self, rpc: Rpc) -> Option<(u64, Reply)> {
        let leader = self.leader().filter(|l| *l != self.me)?;
        let run = || {
            tokio::runtime::Handle::current()
                .block_on(call(&self.link, leader, self.id, &rpc, RPC_TTL))
        };
        let reply = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => return None,
        };
        Some((leader, reply.unwrap_or(Reply::Done)))
    }
}
