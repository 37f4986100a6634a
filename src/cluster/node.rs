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

use super::link::{Handler, Link, Payload};
use super::log::{decode, encode, LogStore};
use super::meta::{Apply, MetaMachine};
use super::network::{call, Factory, Reply, Rpc};
use super::types::{GroupId, MetaCommand, MetaResult, Raft, Snapshot, META_GROUP};
use crate::config;
use crate::store::Store;

/// How long a definition change waits for the meta group (a leader to be
/// elected and the entry applied) before the channel gets an error.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
const RPC_TTL: Duration = Duration::from_secs(5);
/// Raft timings for hundreds of groups on 2 cores (CLUSTER.md): 500 ms
/// heartbeats, elections after 2-4 s without one.
const ELECTION_TIMEOUT_MAX: u64 = 4000;

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
}

struct Rpcs {
    meta: Raft,
    me: u64,
}

impl Handler for Rpcs {
    fn handle(
        &self,
        _from: u64,
        group: GroupId,
        body: Payload,
    ) -> futures_util::future::BoxFuture<'static, Result<Payload, String>> {
        let raft = self.meta.clone();
        let me = self.me;
        Box::pin(async move {
            if group != META_GROUP {
                return Err(format!("no group {group} on this node"));
            }
            let rpc: Rpc = decode(&body).map_err(|e| e.to_string())?;
            let reply = match rpc {
                Rpc::Append(r) => {
                    Reply::Append(raft.append_entries(r).await.map_err(|e| e.to_string())?)
                }
                Rpc::Vote(r) => Reply::Vote(raft.vote(r).await.map_err(|e| e.to_string())?),
                Rpc::PreVote(r) => Reply::Vote(raft.pre_vote(r).await.map_err(|e| e.to_string())?),
                Rpc::Snapshot { vote, meta, data } => {
                    let snap = Snapshot {
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
                Rpc::Propose(cmd) => {
                    let leader = raft.current_leader().await;
                    if leader != Some(me) {
                        Reply::NotLeader(leader)
                    } else {
                        match raft.client_write(cmd).await {
                            Ok(r) => Reply::Proposed(r.data, r.log_id.index),
                            Err(e) => {
                                tracing::debug!(error = %e, "forwarded proposal failed");
                                Reply::NotLeader(raft.current_leader().await)
                            }
                        }
                    }
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
        let sm = MetaMachine::open(store, META_GROUP, apply).map_err(StartError::Storage)?;
        sm.reapply();
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
        link.set_handler(Arc::new(Rpcs {
            meta: meta.clone(),
            me,
        }));
        link.on_down(Arc::new({
            let meta = meta.clone();
            move |peer| leader_lost(meta.clone(), peer)
        }));
        link.start(listener, shutdown);
        let node = Arc::new(Node {
            id: me,
            name: cfg.node_name(),
            cluster_name: cfg.cluster_name(),
            link,
            meta,
            members,
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
                Some(l) if l == self.id => match self.meta.client_write(cmd.clone()).await {
                    Ok(r) => Some((r.data, r.log_id.index)),
                    Err(e) => {
                        tracing::debug!(error = %e, "proposal failed; retrying");
                        None
                    }
                },
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
                return Ok(result);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err("the meta group has no leader".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
fn leader_lost(meta: Raft, peer: u64) {
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
