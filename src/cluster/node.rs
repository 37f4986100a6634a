//! This node in the cluster: starts the link and the meta group's Raft,
//! initializes the group from the lowest id when its log is empty, answers
//! peers' RPCs, turns a channel's definition change into a proposal (here or
//! forwarded to the leader) and waits until this node has applied it, logs
//! who leads, and hands leadership over at shutdown. Never names `channel`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::rt::WatchReceiver;
use openraft::{BasicNode, ServerState};

use dashmap::DashMap;
use openraft::storage::RaftStateMachine;

use super::group::Group;
use super::link::{Handler, Link, Payload};
use super::log::{decode, encode, LogStore};
use super::meta::{Apply, MetaMachine};
use super::network::{call, Factory, Reply, Rpc, SnapshotChunks};
use super::types::{Command, GroupId, MetaCommand, MetaResult, Raft, TypeConfig, META_GROUP};
use crate::config;
use crate::store::Store;

/// How long a definition change waits for the meta group (a leader to be
/// elected and the entry applied) before the channel gets an error.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
const RPC_TTL: Duration = Duration::from_secs(5);
/// How long a definition change waits for the other live nodes to apply it
/// too (so a publish through any node right after declare-ok is routed).
const APPLIED_WAIT: Duration = Duration::from_secs(2);
/// Members of a quorum queue declared without `x-quorum-initial-group-size`,
/// as in RabbitMQ (fewer on a smaller cluster).
const DEFAULT_GROUP_SIZE: usize = 3;
/// Raft timings for hundreds of groups on 2 cores (CLUSTER.md): 500 ms
/// heartbeats, elections after 2-4 s without one.
pub(super) const ELECTION_TIMEOUT_MAX: u64 = 4000;

/// The quorum queues' groups this node knows, by group id.
pub type Groups = DashMap<GroupId, Arc<Group>>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot listen on cluster.listen {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cluster storage: {0}")]
    Storage(std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
}

pub struct Node {
    pub id: u64,
    pub name: String,
    pub cluster_name: String,
    pub link: Arc<Link>,
    pub meta: Raft,
    members: BTreeMap<u64, BasicNode>,
    pub groups: Arc<Groups>,
    machine: MetaMachine,
    store: Arc<dyn Store>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    confirm_timeout: Duration,
}

struct Rpcs {
    meta: Raft,
    me: u64,
    groups: Arc<Groups>,
    chunks: Arc<SnapshotChunks>,
}

/// Answer one of openraft's own RPCs for a group's Raft.
async fn raft_rpc<SM: RaftStateMachine<TypeConfig, SnapshotData = Vec<u8>>>(
    raft: &openraft::Raft<TypeConfig, SM>,
    rpc: Rpc,
    (chunks, group, from): (&SnapshotChunks, GroupId, u64),
) -> Result<Reply, String> {
    Ok(match rpc {
        Rpc::Append(r) => Reply::Append(raft.append_entries(r).await.map_err(|e| e.to_string())?),
        Rpc::Vote(r) => Reply::Vote(raft.vote(r).await.map_err(|e| e.to_string())?),
        Rpc::PreVote(r) => Reply::Vote(raft.pre_vote(r).await.map_err(|e| e.to_string())?),
        Rpc::Snapshot {
            vote,
            meta,
            offset,
            total,
            data,
        } => {
            let Some(data) = chunks.add(group, from, offset, total, data)? else {
                return Ok(Reply::Done);
            };
            let snap = openraft::type_config::alias::SnapshotOf::<TypeConfig, SM::SnapshotData> {
                meta,
                snapshot: data,
            };
            Reply::Snapshot(
                raft.install_full_snapshot(vote, snap)
                    .await
                    .map_err(|e| e.to_string())?,
            )
        }
        Rpc::TransferLeader(r) => Reply::TransferLeader(
            raft.handle_transfer_leader(r)
                .await
                .map_err(|e| e.to_string())?,
        ),
        _ => return Err("not a Raft RPC".into()),
    })
}

impl Handler for Rpcs {
    fn handle(
        &self,
        from: u64,
        group: GroupId,
        body: Payload,
    ) -> futures_util::future::BoxFuture<'static, Result<Payload, String>> {
        let raft = self.meta.clone();
        let me = self.me;
        let groups = self.groups.clone();
        let chunks = self.chunks.clone();
        Box::pin(async move {
            let rpc: Rpc = decode(&body).map_err(|e| e.to_string())?;
            let reply = if group != META_GROUP {
                let g = groups
                    .get(&group)
                    .map(|g| g.clone())
                    .ok_or_else(|| format!("no group {group} on this node"))?;
                match rpc {
                    Rpc::QPropose(_)
                    | Rpc::Subscribe { .. }
                    | Rpc::Unsubscribe { .. }
                    | Rpc::Deliver(_)
                    | Rpc::Get
                    | Rpc::Purge
                    | Rpc::Count => g.handle(from, rpc).await?,
                    rpc => {
                        let raft = g.raft().ok_or("group starting")?.clone();
                        raft_rpc(&raft, rpc, (&chunks, group, from)).await?
                    }
                }
            } else {
                match rpc {
                    Rpc::Propose(cmd) => {
                        let leader = raft.current_leader().await;
                        if leader != Some(me) {
                            Reply::NotLeader(leader)
                        } else {
                            match raft.client_write(Command::Meta(cmd)).await {
                                Ok(r) => Reply::Proposed(r.data, r.log_id.index),
                                Err(e) => {
                                    tracing::debug!(error = %e, "forwarded proposal failed");
                                    Reply::NotLeader(raft.current_leader().await)
                                }
                            }
                        }
                    }
                    Rpc::Applied(index) => {
                        raft.wait(Some(APPLIED_WAIT))
                            .applied_index_at_least(Some(index), "definition change")
                            .await
                            .map_err(|e| e.to_string())?;
                        Reply::Done
                    }
                    rpc => raft_rpc(&raft, rpc, (&chunks, group, from)).await?,
                }
            };
            encode(&reply).map_err(|e| e.to_string())
        })
    }
}

impl Node {
    /// Start this node: bind the link (a bad address is a start-up error),
    /// open the meta group's storage, start Raft.
    pub async fn start(
        cfg: &config::Cluster,
        store: Arc<dyn Store>,
        apply: Arc<dyn Apply>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Arc<Node>, StartError> {
        cfg.validate()?;
        let secret = cfg.secret()?;
        let listener = tokio::net::TcpListener::bind(&cfg.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: cfg.listen.clone(),
                source,
            })?;
        let me = u64::from(cfg.node_id);
        let peers: Vec<(u64, String)> = cfg
            .peers
            .iter()
            .map(|p| (u64::from(p.id), p.addr.clone()))
            .collect();
        let members: BTreeMap<u64, BasicNode> = peers
            .iter()
            .map(|(id, a)| (*id, BasicNode::new(a)))
            .collect();
        let link = Link::new(me, secret, &peers);
        let log = LogStore::open(store.clone(), META_GROUP).map_err(StartError::Storage)?;
        let sm =
            MetaMachine::open(store.clone(), META_GROUP, apply).map_err(StartError::Storage)?;
        sm.reapply();
        let machine = sm.clone();
        let raft_config = openraft::Config {
            cluster_name: cfg.cluster_name(),
            heartbeat_interval: 500,
            election_timeout_min: 2000,
            election_timeout_max: ELECTION_TIMEOUT_MAX,
            // The meta log stays short: a snapshot (the definitions) every
            // 1,000 entries, and the log before it purged.
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(1000),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        };
        let raft_config = Arc::new(
            raft_config
                .validate()
                .map_err(|e| StartError::Raft(e.to_string()))?,
        );
        let factory = Factory {
            link: link.clone(),
            group: META_GROUP,
        };
        let meta = Raft::new(me, raft_config, factory, log, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        let groups: Arc<Groups> = Arc::new(DashMap::new());
        link.set_handler(Arc::new(Rpcs {
            meta: meta.clone(),
            me,
            groups: groups.clone(),
            chunks: Arc::default(),
        }));
        link.on_down(Arc::new({
            let meta = meta.clone();
            let groups = groups.clone();
            move |peer| {
                leader_lost(meta.clone(), peer);
                for g in groups.iter() {
                    if let Some(raft) = g.raft() {
                        leader_lost(raft.clone(), peer);
                    }
                    g.node_down(peer);
                }
            }
        }));
        link.start(listener, shutdown.clone());
        let node = Arc::new(Node {
            id: me,
            name: cfg.node_name(),
            cluster_name: cfg.cluster_name(),
            link,
            meta,
            members,
            groups,
            machine,
            store,
            shutdown,
            confirm_timeout: Duration::from_millis(cfg.confirm_timeout_ms),
        });
        let lowest = node.members.keys().next().copied() == Some(me);
        let initialized = node
            .meta
            .is_initialized()
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if lowest && !initialized {
            tracing::info!(node = %node.name, "initializing the meta group");
            if let Err(e) = node.meta.initialize(node.members.clone()).await {
                tracing::info!(error = %e, "meta group already initialized");
            }
        }
        tokio::spawn(log_leader(node.meta.clone(), node.id));
        Ok(node)
    }

    /// Propose a definition change and wait until this node has applied it;
    /// returns the result of applying it (the same on every node).
    pub async fn propose(&self, cmd: MetaCommand) -> Result<MetaResult, String> {
        let deadline = tokio::time::Instant::now() + PROPOSE_TIMEOUT;
        loop {
            let leader = self.meta.current_leader().await;
            let applied = match leader {
                Some(l) if l == self.id => {
                    match self.meta.client_write(Command::Meta(cmd.clone())).await {
                        Ok(r) => Some((r.data, r.log_id.index)),
                        Err(e) => {
                            tracing::debug!(error = %e, "proposal failed; retrying");
                            None
                        }
                    }
                }
                Some(l) => match call(
                    &self.link,
                    l,
                    META_GROUP,
                    &Rpc::Propose(cmd.clone()),
                    RPC_TTL,
                )
                .await
                {
                    Ok(Reply::Proposed(r, index)) => Some((r, index)),
                    Ok(_) | Err(_) => None,
                },
                None => None,
            };
            if let Some((result, index)) = applied {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                self.meta
                    .wait(Some(left.max(Duration::from_secs(1))))
                    .applied_index_at_least(Some(index), "definition change")
                    .await
                    .map_err(|e| format!("not applied on this node: {e}"))?;
                // As in RabbitMQ, a declare-ok means the object exists on
                // every node: wait (briefly) for the live ones to apply it.
                let peers = self.link.connected();
                let waits = peers.into_iter().map(|p| {
                    let link = self.link.clone();
                    async move {
                        let rpc = Rpc::Applied(index);
                        call(&link, p, META_GROUP, &rpc, APPLIED_WAIT).await
                    }
                });
                futures_util::future::join_all(waits).await;
                return Ok(result);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("the meta group has no leader".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The replicated definitions as this node has applied them.
    pub fn defs(&self) -> super::meta::Defs {
        self.machine.defs()
    }

    /// Make sure this node runs the group of quorum queue `name` (from its
    /// replicated declare): the queue becomes the group's view, and the
    /// group's Raft starts when this node is a member. Idempotent.
    pub fn ensure_group(
        &self,
        queue: &Arc<crate::queue::Queue>,
        group: GroupId,
        origin: u64,
        size: Option<usize>,
    ) {
        if group == META_GROUP || self.groups.contains_key(&group) {
            return;
        }
        let all: Vec<u64> = self.members.keys().copied().collect();
        let size = size
            .unwrap_or(DEFAULT_GROUP_SIZE)
            .clamp(1, all.len().max(1));
        // The declaring node first, then the next ids round the ring.
        let start = all.iter().position(|id| *id == origin).unwrap_or(0);
        let members: Vec<u64> = (0..size).map(|i| all[(start + i) % all.len()]).collect();
        let g = Group::new(
            group,
            queue.vhost.clone(),
            queue.name.clone(),
            members.clone(),
            self.id,
            self.link.clone(),
            queue,
            self.confirm_timeout,
        );
        if !queue.set_replica(g.clone()) {
            return;
        }
        self.groups.insert(group, g.clone());
        if !members.contains(&self.id) {
            return;
        }
        let (store, shutdown) = (self.store.clone(), self.shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = g.start(store, origin, shutdown).await {
                tracing::error!(queue = %g.name, group = g.id, error = %e, "cannot start the queue's group");
            }
        });
    }

    /// The queue of a group was deleted: stop its Raft and forget its records.
    pub fn drop_group(&self, vhost: &str, name: &str) {
        let id = self
            .groups
            .iter()
            .find(|g| g.vhost == vhost && g.name == name)
            .map(|g| g.id);
        let Some((_, g)) = id.and_then(|id| self.groups.remove(&id)) else {
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            g.stop().await;
            let write = crate::store::RaftWrite {
                delete_ranges: vec![(
                    g.id.to_be_bytes().to_vec(),
                    (g.id + 1).to_be_bytes().to_vec(),
                )],
                ..Default::default()
            };
            store.raft_write(write, Box::new(|_, _| {}));
        });
    }

    /// The group of a queue, if it is a replicated quorum queue.
    pub fn group_of(&self, vhost: &str, name: &str) -> Option<Arc<Group>> {
        self.groups
            .iter()
            .find(|g| g.vhost == vhost && g.name == name)
            .map(|g| g.clone())
    }

    /// Hand leadership of the meta group to another node (if this one leads
    /// and a voter is reachable), then stop Raft.
    pub async fn stop(&self) {
        let metrics = self.meta.metrics().borrow_watched().clone();
        if metrics.state == ServerState::Leader {
            let target = self.link.connected().into_iter().next();
            if let Some(to) = target {
                tracing::info!(to = %format!("hopper@{to}"), "handing over meta group leadership");
                if self.meta.trigger().transfer_leader(to).await.is_ok() {
                    let _ = self
                        .meta
                        .wait(Some(Duration::from_secs(3)))
                        .metrics(|m| m.current_leader != Some(self.id), "leader moved")
                        .await;
                }
            }
        }
        for g in self.groups.iter().map(|g| g.clone()).collect::<Vec<_>>() {
            let Some(raft) = g.raft() else { continue };
            if g.leader() == Some(self.id) {
                if let Some(to) = self
                    .link
                    .connected()
                    .into_iter()
                    .find(|n| g.members.contains(n))
                {
                    if raft.trigger().transfer_leader(to).await.is_ok() {
                        let _ = raft
                            .wait(Some(Duration::from_secs(2)))
                            .metrics(|m| m.current_leader != Some(self.id), "leader moved")
                            .await;
                    }
                }
            }
            g.stop().await;
        }
        let _ = self.meta.shutdown().await;
    }
}

/// The link to the meta leader broke (its process died, most often). The
/// other followers will not grant a vote while their leader lease (the
/// election timeout's maximum since the last heartbeat) holds, so an election
/// before that is wasted and the next timeout can be up to 4 s later: start a
/// pre-vote election just after the lease ends instead, with jitter so the
/// followers do not split the vote. A leader that is still alive keeps its
/// followers' leases fresh and the pre-vote fails without disturbing it.
fn leader_lost<SM: RaftStateMachine<TypeConfig>>(meta: openraft::Raft<TypeConfig, SM>, peer: u64) {
    if meta.metrics().borrow_watched().current_leader != Some(peer) {
        return;
    }
    let jitter = Duration::from_millis(rand::random_range(20..400));
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(ELECTION_TIMEOUT_MAX) + jitter).await;
        let m = meta.metrics().borrow_watched().clone();
        if m.current_leader == Some(peer) && m.state != ServerState::Leader {
            tracing::info!(peer = %format!("hopper@{peer}"), "meta leader unreachable: starting an election");
            let _ = meta.trigger().elect(true).await;
        }
    });
}

/// Log every change of the meta group's leader.
async fn log_leader(raft: Raft, me: u64) {
    let mut rx = raft.metrics();
    let mut last = None;
    loop {
        let leader = rx.borrow_watched().current_leader;
        if leader != last {
            match leader {
                Some(l) => {
                    tracing::info!(leader = %format!("hopper@{l}"), here = l == me, "meta group leader")
                }
                None => tracing::info!("meta group has no leader"),
            }
            last = leader;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
