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
use openraft::{BasicNode, EntryPayload, RaftNetworkV2};
use serde::{Deserialize, Serialize};

use super::link::Link;
use super::log::{decode, encode};
use super::types::{
    Body, Command, Entry, GroupId, MetaCommand, MetaResult, QueueCommand, Snapshot, SnapshotMeta,
    TypeConfig, Vote,
};

/// An append is cut once its entries pass this many bytes (one entry always
/// goes): openraft counts a batch in entries (up to 300 for a follower far
/// behind), and each of ours may carry megabytes of messages.
pub const APPEND_BUDGET: usize = 8 * 1024 * 1024;
/// A snapshot goes in chunks of this size; the receiver installs the whole.
const SNAPSHOT_CHUNK: usize = 16 * 1024 * 1024;

/// Roughly what an entry weighs on the wire.
fn entry_bytes(e: &Entry) -> usize {
    match &e.payload {
        EntryPayload::Normal(Command::Queue(cmd @ QueueCommand::Enqueue { msgs, .. })) => {
            cmd.body_bytes() + 16 * msgs.len() + 64
        }
        _ => 256,
    }
}

/// Cut an append to `APPEND_BUDGET` (at least one entry stays): whether it
/// was cut, and the bytes that go. A cut append commits no further than
/// its last entry (Raft's rule for a follower: what it was sent).
pub fn fit(rpc: &mut AppendEntriesRequest<TypeConfig>) -> (bool, usize) {
    let mut bytes = 0;
    let mut keep = rpc.entries.len();
    for (i, e) in rpc.entries.iter().enumerate() {
        let more = entry_bytes(e);
        if i > 0 && bytes + more > APPEND_BUDGET {
            keep = i;
            break;
        }
        bytes += more;
    }
    if keep == rpc.entries.len() {
        return (false, bytes);
    }
    rpc.entries.truncate(keep);
    let last = rpc.entries.last().map(|e| e.log_id);
    rpc.leader_commit = rpc.leader_commit.min(last);
    (true, bytes)
}

/// openraft's deadline for an RPC, stretched for a large one (a copy at
/// 32 MB/s, for a slow disk or a debug build on the far end).
pub fn ttl_for(base: Duration, bytes: usize) -> Duration {
    base + Duration::from_millis(bytes as u64 / 32_768)
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    /// One chunk of a snapshot, `offset` bytes into its `total`; the last
    /// one installs it.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        offset: u64,
        total: u64,
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

/// Snapshots being received, by (group, sender): the bytes so far.
#[derive(Default)]
pub struct SnapshotChunks(parking_lot::Mutex<std::collections::HashMap<(GroupId, u64), Vec<u8>>>);

impl SnapshotChunks {
    /// Add a chunk; the whole snapshot once its last chunk is in. A chunk
    /// at offset 0 starts over (the sender retries a failed transfer from
    /// the start); one out of place is refused, and the sender starts over.
    pub fn add(
        &self,
        group: GroupId,
        from: u64,
        offset: u64,
        total: u64,
        data: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, String> {
        if offset == 0 && data.len() as u64 == total {
            self.0.lock().remove(&(group, from));
            return Ok(Some(data));
        }
        let mut all = self.0.lock();
        let buf = all.entry((group, from)).or_default();
        if offset == 0 {
            buf.clear();
        }
        if buf.len() as u64 != offset || offset + data.len() as u64 > total {
            all.remove(&(group, from));
            return Err(format!("snapshot chunk at {offset} out of place"));
        }
        buf.extend_from_slice(&data);
        if (buf.len() as u64) < total {
            return Ok(None);
        }
        Ok(all.remove(&(group, from)))
    }
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
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Send the entries that fit the budget; the rest on the next call
        // (a partial success tells openraft where this one ended).
        let (cut, bytes) = fit(&mut rpc);
        let last = rpc.entries.last().map(|e| e.log_id);
        let ttl = ttl_for(option.hard_ttl(), bytes);
        match self.rpc(Rpc::Append(rpc), ttl).await? {
            Reply::Append(AppendEntriesResponse::Success) if cut => {
                Ok(AppendEntriesResponse::PartialSuccess(last))
            }
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
        let data = snapshot.snapshot;
        let total = data.len();
        let sent = async {
            let mut offset = 0;
            loop {
                let end = (offset + SNAPSHOT_CHUNK).min(total);
                let rpc = Rpc::Snapshot {
                    vote,
                    meta: snapshot.meta.clone(),
                    offset: offset as u64,
                    total: total as u64,
                    data: data[offset..end].to_vec(),
                };
                let ttl = ttl_for(option.hard_ttl().max(Duration::from_secs(30)), end - offset);
                match self.rpc(rpc, ttl).await? {
                    Reply::Snapshot(r) if end == total => return Ok(r),
                    Reply::Done if end < total => offset = end,
                    other => return Err(unreachable(format!("unexpected reply {other:?}")).into()),
                }
            }
        };
        tokio::select! {
            r = sent => r,
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

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::log_id;

    fn enqueue(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::Queue(QueueCommand::Enqueue {
                from: 1,
                seq: index,
                msgs: vec![(index, Body::from(vec![0u8; bytes]))],
            })),
        }
    }

    fn append(sizes: &[usize], commit: u64) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: None,
            entries: (1..).zip(sizes).map(|(i, s)| enqueue(i, *s)).collect(),
            leader_commit: Some(log_id::<TypeConfig>(1, 1, commit)),
        }
    }

    #[test]
    fn appends_are_cut_at_the_budget_and_commit_no_further() {
        const MIB: usize = 1024 * 1024;
        let mut small = append(&[MIB, MIB, MIB], 3);
        assert!(!fit(&mut small).0);
        assert_eq!(small.entries.len(), 3);

        let mut big = append(&[3 * MIB, 3 * MIB, 3 * MIB, 3 * MIB], 4);
        let (cut, bytes) = fit(&mut big);
        assert!(cut);
        assert_eq!(big.entries.len(), 2, "6 MiB fit, 9 do not");
        assert!(bytes <= APPEND_BUDGET);
        assert_eq!(big.leader_commit.map(|l| l.index), Some(2));

        // One entry always goes, however large; a commit behind stays.
        let mut huge = append(&[100 * MIB, MIB], 1);
        assert!(fit(&mut huge).0);
        assert_eq!(huge.entries.len(), 1);
        assert_eq!(huge.leader_commit.map(|l| l.index), Some(1));
    }

    #[test]
    fn snapshot_chunks_assemble_in_order_and_start_over() {
        let chunks = SnapshotChunks::default();
        assert_eq!(
            chunks.add(7, 2, 0, 3, vec![1, 2, 3]),
            Ok(Some(vec![1, 2, 3]))
        );
        assert_eq!(chunks.add(7, 2, 0, 5, vec![1, 2]), Ok(None));
        assert_eq!(chunks.add(7, 2, 2, 5, vec![3, 4]), Ok(None));
        // Another sender's snapshot of the same group is its own.
        assert_eq!(chunks.add(7, 3, 0, 2, vec![9]), Ok(None));
        assert_eq!(
            chunks.add(7, 2, 4, 5, vec![5]),
            Ok(Some(vec![1, 2, 3, 4, 5]))
        );
        // A chunk out of place is refused; the sender starts over at 0.
        assert!(chunks.add(7, 3, 5, 2, vec![9]).is_err());
        assert_eq!(chunks.add(7, 3, 0, 2, vec![8]), Ok(None));
        assert_eq!(chunks.add(7, 3, 0, 2, vec![6]), Ok(None), "a restart");
        assert_eq!(chunks.add(7, 3, 1, 2, vec![7]), Ok(Some(vec![6, 7])));
        assert!(
            chunks.add(7, 3, 1, 1, vec![1, 2]).is_err(),
            "past its total"
        );
    }
}
