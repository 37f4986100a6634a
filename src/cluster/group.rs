//! One quorum queue's Raft group on this node, and the queue's `Replica`:
//! how a publish, an ack or a consumer on this node reaches the group.
//!
//! - Publishes are batched per group (whatever arrived while the previous
//!   batch was in flight) into one `Enqueue` entry, proposed on the leader
//!   (here, or forwarded over the link) and retried on the next leader
//!   until `confirm_timeout`; the publisher's confirm waits for the result
//!   (committed by a majority, each acknowledging after its synced write,
//!   and applied on the leader).
//! - Acks, rejects and returns are batched into `Settle` entries by message
//!   id, so an ack sent just after a failover settles the right message.
//! - Consumers: the leader's view delivers; a follower with consumers
//!   subscribes to the leader, which sends it messages (`feed`) within a
//!   window; the follower's view buffers and delivers them.
//! - Leadership: the view leads once this node leads and has applied every
//!   earlier entry; it follows again when another node leads.
//!
//! Owns the group's tasks; the state machine is `quorum`, the log `log`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use openraft::rt::WatchReceiver;
use openraft::{BasicNode, ServerState};
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

mod ask;
mod batch;

use super::feed::{self, Feeds};
use super::link::Link;
use super::log::LogStore;
use super::network::{call, Factory, Reply, Rpc};
use super::quorum::{encode_message, QueueMachine, Settled};
use super::types::{Command, GroupId, MetaResult, QueueCommand, QueueRaft};
use crate::message::Message;
use crate::queue::{Queue, Replica};
use crate::store::{Completion, Store};

pub(super) const RPC_TTL: Duration = Duration::from_secs(5);
/// How long a forwarded publish waits for the leader's answer before it is
/// sent again (to the leader known then).
const FORWARD_TTL: Duration = Duration::from_secs(2);
pub(super) type Pending = (Arc<Message>, Completion);

pub struct Group {
    pub id: GroupId,
    pub vhost: String,
    pub name: String,
    pub members: Vec<u64>,
    pub(super) me: u64,
    pub(super) link: Arc<Link>,
    raft: OnceLock<QueueRaft>,
    machine: OnceLock<QueueMachine>,
    queue: Weak<Queue>,
    confirm_timeout: Duration,
    proposals: mpsc::UnboundedSender<Pending>,
    settles: Mutex<(Vec<u64>, Vec<u64>)>,
    settle_wake: Arc<Notify>,
    /// Consumers here changed or the leader moved: the subscription task looks.
    pub(super) sub_wake: Arc<Notify>,
    pub feeds: Feeds,
    /// Confirms given, and samples of which nodes had synced the entry.
    pub proof: Proof,
    /// Where a node outside the group last heard the leader is (0: unknown).
    hint: AtomicU64,
    /// The link to the leader dropped: the leader ended this node's feed
    /// (and made what it had sent ready again), so subscribe anew.
    pub(super) feed_lost: std::sync::atomic::AtomicBool,
    /// The leader this node's buffer came from (0: none): a subscription's,
    /// or a follower's basic.get. Requeued deliveries go back to it.
    pub(super) fed_by: AtomicU64,
    /// A node that does not lead: the queue's (ready, held) counts as the
    /// leader last told them, and when (`ask`).
    pub(super) counted: Mutex<Option<(std::time::Instant, u64, u64)>>,
}

/// For a sample of confirmed enqueues: which nodes had the entry on disk
/// (the leader's log flushed, followers' acknowledged appends) when the
/// confirm left. `majority` counts samples where more than half had.
#[derive(Default)]
pub struct Proof {
    pub confirmed: AtomicU64,
    pub sampled: AtomicU64,
    pub majority: AtomicU64,
    pub last: Mutex<Option<(u64, Vec<u64>)>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "group {} ({}/{})", self.id, self.vhost, self.name)
    }
}

impl Group {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: GroupId,
        vhost: String,
        name: String,
        members: Vec<u64>,
        me: u64,
        link: Arc<Link>,
        queue: &Arc<Queue>,
        confirm_timeout: Duration,
    ) -> Arc<Group> {
        let (tx, rx) = mpsc::unbounded_channel();
        let g = Arc::new(Group {
            id,
            vhost,
            name,
            members,
            me,
            link,
            raft: OnceLock::new(),
            machine: OnceLock::new(),
            queue: Arc::downgrade(queue),
            confirm_timeout,
            proposals: tx,
            settles: Mutex::new((Vec::new(), Vec::new())),
            settle_wake: Arc::new(Notify::new()),
            sub_wake: Arc::new(Notify::new()),
            feeds: Feeds::default(),
            proof: Proof::default(),
            hint: AtomicU64::new(0),
            feed_lost: std::sync::atomic::AtomicBool::new(false),
            fed_by: AtomicU64::new(0),
            counted: Mutex::new(None),
        });
        tokio::spawn(batch::proposer(Arc::downgrade(&g), rx));
        tokio::spawn(batch::settler(Arc::downgrade(&g)));
        tokio::spawn(feed::subscription(Arc::downgrade(&g)));
        g
    }

    pub fn link_handle(&self) -> Arc<Link> {
        self.link.clone()
    }

    pub fn raft(&self) -> Option<&QueueRaft> {
        self.raft.get()
    }

    pub fn queue(&self) -> Option<Arc<Queue>> {
        self.queue.upgrade()
    }

    /// Start the group's Raft on this node (a member): its log, its machine
    /// over the queue, and the first election from `origin`.
    pub async fn start(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        origin: u64,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), String> {
        let queue = self.queue().ok_or("queue gone")?;
        let log = LogStore::open(store.clone(), self.id).map_err(|e| e.to_string())?;
        let hooks: Arc<dyn Settled> = Arc::new(Hooks(Arc::downgrade(self)));
        let machine =
            QueueMachine::open(store, self.id, queue, hooks).map_err(|e| e.to_string())?;
        let _ = self.machine.set(machine.clone());
        let config = openraft::Config {
            cluster_name: format!("queue-{}", self.id),
            heartbeat_interval: 500,
            election_timeout_min: 2000,
            election_timeout_max: super::node::ELECTION_TIMEOUT_MAX,
            // Snapshots are barriers (the state is in the store): the log
            // behind them is purged, so it never grows with the backlog.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1024),
            max_in_snapshot_log_to_keep: 256,
            ..Default::default()
        };
        let config = Arc::new(config.validate().map_err(|e| e.to_string())?);
        let factory = Factory {
            link: self.link.clone(),
            group: self.id,
        };
        let raft = QueueRaft::new(self.me, config, factory, log, machine)
            .await
            .map_err(|e| e.to_string())?;
        let _ = self.raft.set(raft.clone());
        let members: BTreeMap<u64, BasicNode> = self
            .members
            .iter()
            .map(|id| (*id, BasicNode::new(id.to_string())))
            .collect();
        if !raft.is_initialized().await.map_err(|e| e.to_string())? {
            if origin != self.me {
                // The declaring node starts the first election; the others
                // only step in if it does not (it died just after the declare).
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            if !raft.is_initialized().await.map_err(|e| e.to_string())? {
                if let Err(e) = raft.initialize(members).await {
                    tracing::debug!(group = self.id, error = %e, "queue group already initialized");
                }
            }
        }
        tokio::spawn(leadership(Arc::downgrade(self), raft.clone(), shutdown));
        Ok(())
    }

    /// The leader as this node knows it: a member from its Raft, a node
    /// outside the group from the last answer it had (or a first guess).
    pub fn leader(&self) -> Option<u64> {
        if let Some(raft) = self.raft.get() {
            return raft.metrics().borrow_watched().current_leader;
        }
        if self.members.contains(&self.me) {
            return None;
        }
        match self.hint.load(Ordering::Relaxed) {
            0 => self.members.first().copied(),
            l => Some(l),
        }
    }

    /// A node outside the group learned where the leader is, or that `from`
    /// is not it (then it tries the next member).
    pub(super) fn heard(&self, from: u64, leader: Option<u64>) {
        if self.members.contains(&self.me) {
            return;
        }
        let next = leader.unwrap_or_else(|| {
            let at = self.members.iter().position(|m| *m == from).unwrap_or(0);
            self.members[(at + 1) % self.members.len()]
        });
        if self.hint.swap(next, Ordering::Relaxed) != next {
            self.sub_wake.notify_one();
        }
    }

    /// Propose a queue command on the leader (here or forwarded), retrying
    /// on whichever node leads next until `confirm_timeout`.
    pub async fn propose(&self, cmd: QueueCommand) -> Result<MetaResult, String> {
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        loop {
            let attempt = match (self.raft.get(), self.leader()) {
                (Some(raft), Some(l)) if l == self.me => {
                    // A leader cut off from its followers waits for a
                    // commit that cannot come: bounded by the deadline.
                    let write = raft.client_write(Command::Queue(cmd.clone()));
                    match tokio::time::timeout_at(deadline, write).await {
                        Ok(Ok(r)) => {
                            self.sample(raft, r.log_id.index, &cmd);
                            Some(r.data)
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(group = self.id, error = %e, "proposal failed; retrying");
                            None
                        }
                        Err(_) => None,
                    }
                }
                (_, Some(l)) => {
                    let rpc = Rpc::QPropose(cmd.clone());
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    // Short: a leader cut off silently answers nothing, and
                    // the retry goes to whoever leads by then.
                    let ttl = super::network::ttl_for(FORWARD_TTL, cmd.body_bytes())
                        .min(left.max(Duration::from_millis(1)));
                    match call(&self.link, l, self.id, &rpc, ttl).await {
                        Ok(Reply::Proposed(r, _)) => Some(r),
                        Ok(Reply::NotLeader(hint)) => {
                            self.heard(l, hint);
                            None
                        }
                        _ => {
                            self.heard(l, None);
                            None
                        }
                    }
                }
                _ => None,
            };
            if let Some(r) = attempt {
                return Ok(r);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "queue '{}' could not reach a majority in time",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every 1,000th confirmed enqueue: which nodes had its entry synced.
    fn sample(&self, raft: &QueueRaft, index: u64, cmd: &QueueCommand) {
        let QueueCommand::Enqueue { msgs, .. } = cmd else {
            return;
        };
        let before = self
            .proof
            .confirmed
            .fetch_add(msgs.len() as u64, Ordering::Relaxed);
        if before / 1000 == (before + msgs.len() as u64) / 1000 && before != 0 {
            return;
        }
        let m = raft.metrics().borrow_watched().clone();
        let mut synced: Vec<u64> = vec![self.me];
        if let Some(repl) = &m.replication {
            for (node, matched) in repl.iter() {
                if *node != self.me && matched.as_ref().is_some_and(|l| l.index >= index) {
                    synced.push(*node);
                }
            }
        }
        synced.sort_unstable();
        self.proof.sampled.fetch_add(1, Ordering::Relaxed);
        if synced.len() * 2 > self.members.len() {
            self.proof.majority.fetch_add(1, Ordering::Relaxed);
        }
        tracing::debug!(queue = %self.name, index, synced_on = ?synced, "quorum confirm sample");
        *self.proof.last.lock() = Some((index, synced));
    }

    /// Answer a peer's request for this group (Raft RPCs go to `node`).
    pub async fn handle(self: &Arc<Self>, from: u64, rpc: Rpc) -> Result<Reply, String> {
        match rpc {
            Rpc::QPropose(cmd) => {
                let raft = self.raft.get().ok_or("group starting")?;
                if self.leader() != Some(self.me) {
                    return Ok(Reply::NotLeader(self.leader()));
                }
                match raft.client_write(Command::Queue(cmd.clone())).await {
                    Ok(r) => {
                        self.sample(raft, r.log_id.index, &cmd);
                        Ok(Reply::Proposed(r.data, r.log_id.index))
                    }
                    Err(_) => Ok(Reply::NotLeader(self.leader())),
                }
            }
            Rpc::Subscribe { window, holding } => {
                let q = self.queue().ok_or("queue gone")?;
                if self.leader() != Some(self.me) || !q.is_leading() {
                    return Ok(Reply::NotLeader(self.leader()));
                }
                feed::subscribe(self, &q, from, window as usize, &holding);
                Ok(Reply::Done)
            }
            Rpc::Unsubscribe { returned } => {
                if let Some(q) = self.queue() {
                    feed::unsubscribe(self, &q, from, &returned);
                }
                Ok(Reply::Done)
            }
            Rpc::Get => {
                let q = self.queue().ok_or("queue gone")?;
                if !q.is_leading() {
                    return Ok(Reply::NotLeader(self.leader()));
                }
                let got = q
                    .take_for(from)
                    .map(|(e, m)| (m.id, encode_message(&m), e.redelivered, e.delivery_count));
                Ok(Reply::Messages(got.into_iter().collect()))
            }
            Rpc::Purge => {
                let q = self.queue().ok_or("queue gone")?;
                if !q.is_leading() {
                    return Ok(Reply::NotLeader(self.leader()));
                }
                Ok(Reply::Purged(q.purge()))
            }
            Rpc::Count => {
                let q = self.queue().ok_or("queue gone")?;
                if !q.is_leading() {
                    return Ok(Reply::NotLeader(self.leader()));
                }
                let held = self.machine.get().map_or(0, |m| m.held());
                Ok(Reply::Counted {
                    ready: q.ready_len(),
                    held,
                })
            }
            Rpc::Deliver(items) => {
                if let Some(q) = self.queue() {
                    feed::delivered(&q, items);
                }
                Ok(Reply::Done)
            }
            _ => Err("not a queue request".into()),
        }
    }

    /// A peer's link went down: what was sent to its consumers is ready again.
    pub fn node_down(self: &Arc<Self>, node: u64) {
        if self.leader() == Some(node) {
            self.heard(node, None);
            self.feed_lost.store(true, Ordering::Release);
            self.sub_wake.notify_one();
        }
        if let Some(q) = self.queue() {
            feed::node_down(self, &q, node);
        }
    }

    /// Stop the group's Raft (the queue was deleted, or the node stops).
    pub async fn stop(&self) {
        if let Some(raft) = self.raft.get() {
            let _ = raft.shutdown().await;
        }
    }
}

struct Hooks(Weak<Group>);

impl Settled for Hooks {
    fn remote_settled(&self) {
        if let Some(g) = self.0.upgrade() {
            if let Some(q) = g.queue() {
                feed::refresh(&g, &q);
            }
        }
    }

    fn refused(&self, ids: &[u64]) {
        if let Some(g) = self.0.upgrade() {
            g.settles.lock().0.extend_from_slice(ids);
            g.settle_wake.notify_one();
        }
    }
}

impl Replica for Group {
    fn enqueue(&self, msg: Arc<Message>, done: Completion) {
        if let Err(mpsc::error::SendError((_, done))) = self.proposals.send((msg, done)) {
            crate::batch::run(|b| done(false, b));
        }
    }

    fn settle(&self, id: u64) {
        self.settles.lock().0.push(id);
        self.settle_wake.notify_one();
    }

    fn returned(&self, ids: &[u64]) {
        self.settles.lock().1.extend_from_slice(ids);
        self.settle_wake.notify_one();
        // A follower whose consumers are gone hands requeued ones back.
        self.sub_wake.notify_one();
    }

    fn consumers_changed(&self) {
        self.sub_wake.notify_one();
    }

    fn info(&self) -> crate::queue::ReplicaInfo {
        let name = |id: &u64| format!("hopper@{id}");
        let connected = self.link.connected();
        let last = self.proof.last.lock().clone();
        let (ready, held) = self.counts_now(true);
        crate::queue::ReplicaInfo {
            leader: self.leader().map(|l| name(&l)),
            members: self.members.iter().map(name).collect(),
            online: self
                .members
                .iter()
                .filter(|m| **m == self.me || connected.contains(m))
                .map(name)
                .collect(),
            messages: held,
            ready,
            confirmed: self.proof.confirmed.load(Ordering::Relaxed),
            sampled: self.proof.sampled.load(Ordering::Relaxed),
            sampled_majority: self.proof.majority.load(Ordering::Relaxed),
            last_sample: last.map(|(i, nodes)| (i, nodes.iter().map(name).collect())),
        }
    }

    fn counts(&self) -> (u64, u64) {
        self.counts_now(false)
    }

    fn purge(&self) -> u32 {
        self.purge_on_leader()
    }

    fn fetch(&self) {
        self.fetch_from_leader()
    }
}

/// Lead when this node leads (once every earlier entry is applied here),
/// follow when another does.
async fn leadership(
    group: Weak<Group>,
    raft: QueueRaft,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut rx = raft.metrics();
    let mut leading = false;
    let mut last_leader = None;
    loop {
        let m = rx.borrow_watched().clone();
        let Some(g) = group.upgrade() else { return };
        let Some(machine) = g.machine.get() else {
            return;
        };
        let now_leads = m.state == ServerState::Leader && m.current_leader == Some(g.me);
        if now_leads && !leading {
            let target = m.last_log_index;
            let applied = raft
                .wait(Some(Duration::from_secs(30)))
                .applied_index_at_least(target, "queue leader caught up")
                .await;
            if applied.is_ok() && raft.metrics().borrow_watched().current_leader == Some(g.me) {
                machine.lead();
                leading = true;
                tracing::info!(queue = %g.name, vhost = %g.vhost, leader = %format!("hopper@{}", g.me), "quorum queue leader");
            }
        } else if !now_leads && leading {
            feed::drop_all(&g);
            machine.follow();
            leading = false;
        }
        if m.current_leader != last_leader {
            if !leading {
                if let Some(l) = m.current_leader {
                    tracing::info!(queue = %g.name, vhost = %g.vhost, leader = %format!("hopper@{l}"), "quorum queue leader");
                }
            }
            last_leader = m.current_leader;
            g.sub_wake.notify_one();
        }
        drop(g);
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}
