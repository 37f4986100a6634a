//! openraft's network over the link: each Raft RPC of a group becomes one
//! link request (`Rpc`) and its reply (`Reply`); a follower's proposal is
//! forwarded to the leader the same way. Owns the RPC encoding; never
//! touches sockets (the link does) or storage.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkV2};
use serde::{Deserialize, Serialize};

use super::link::Link;
use super::log::{decode, encode};
use super::types::{
    Body, GroupId, MetaCommand, MetaResult, QueueCommand, Snapshot, SnapshotMeta, TypeConfig, Vote,
};

#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    TransferLeader(TransferLeaderRequest<TypeConfig>),
    /// A proposal from a follower: the leader writes and applies it.
    Propose(MetaCommand),
    /// A queue command from a node that does not lead the queue's group.
    QPropose(QueueCommand),
    /// A follower with consumers asks the leader for messages, holding
    /// these deliveries (from an earlier leader) unacknowledged.
    Subscribe {
        window: u32,
        holding: Vec<u64>,
    },
    /// A follower's consumers are gone: these undelivered ones come back.
    /// (id, redelivered, delivery count) as the follower had them.
    Unsubscribe {
        returned: Vec<(u64, bool, u32)>,
    },
    /// The leader's deliveries for a follower's consumers: (id, message as
    /// the store encodes it, redelivered, delivery count).
    Deliver(Vec<(u64, Body, bool, u32)>),
    /// basic.get on a follower: the leader's head, sent to that node.
    Get,
    /// queue.purge on a follower: the leader purges.
    Purge,
    /// A node that does not lead asks for the queue's counts.
    Count,
    /// Wait until this node has applied the meta log up to this index.
    Applied(u64),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Append(AppendEntriesResponse<TypeConfig>),
    Vote(VoteResponse<TypeConfig>),
    Snapshot(SnapshotResponse<TypeConfig>),
    TransferLeader(TransferLeaderResponse<TypeConfig>),
    /// Applied on the leader at this log index.
    Proposed(MetaResult, u64),
    /// Not the leader (any more): try the one named, if any.
    NotLeader(Option<u64>),
    /// Done (a subscription, a delivery).
    Done,
    /// The leader purged this many.
    Purged(u32),
    /// The leader's counts: ready (no consumer holds them) and held (ready
    /// and unacknowledged, on every node).
    Counted {
        ready: u64,
        held: u64,
    },
    /// Messages for a follower's basic.get (none: the queue is empty).
    Messages(Vec<(u64, Body, bool, u32)>),
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::new(&io::Error::other(e.to_string()))
}

/// One request to a peer, for any caller (Raft or a forwarded proposal).
pub async fn call(
    link: &Link,
    to: u64,
    group: GroupId,
    rpc: &Rpc,
    ttl: Duration,
) -> Result<Reply, String> {
    let body = encode(rpc).map_err(|e| e.to_string())?;
    let reply = link
        .call(to, group, body, ttl)
        .await
        .map_err(|e| e.to_string())?;
    decode(&reply).map_err(|e| e.to_string())
}

pub struct Factory {
    pub link: Arc<Link>,
    pub group: GroupId,
}

impl RaftNetworkFactory<TypeConfig> for Factory {
    type Network = Client;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Client {
        Client {
            link: self.link.clone(),
            group: self.group,
            target,
        }
    }
}

pub struct Client {
    link: Arc<Link>,
    group: GroupId,
    target: u64,
}

impl Client {
    async fn rpc(&self, rpc: Rpc, ttl: Duration) -> Result<Reply, Unreachable<TypeConfig>> {
        call(&self.link, self.target, self.group, &rpc, ttl)
            .await
            .map_err(unreachable)
    }
}

impl RaftNetworkV2<TypeConfig> for Client {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(Rpc::Append(rpc), option.hard_ttl()).await? {
            Reply::Append(r) => Ok(r),
            other => Err(unreachable(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(Rpc::Vote(rpc), option.hard_ttl()).await? {
            Reply::Vote(r) => Ok(r),
            other => Err(unreachable(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.rpc(Rpc::PreVote(rpc), option.hard_ttl()).await? {
            Reply::Vote(r) => Ok(r),
            other => Err(unreachable(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let rpc = Rpc::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let sent = self.rpc(rpc, option.hard_ttl().max(Duration::from_secs(30)));
        tokio::select! {
            r = sent => match r? {
                Reply::Snapshot(r) => Ok(r),
                other => Err(unreachable(format!("unexpected reply {other:?}")).into()),
            },
            closed = cancel => Err(closed.into()),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self
            .rpc(Rpc::TransferLeader(req), option.hard_ttl())
            .await?
        {
            Reply::TransferLeader(r) => Ok(r),
            other => Err(unreachable(format!("unexpected reply {other:?}")).into()),
        }
    }
}
