//! The Raft type configuration, the meta group's commands and a quorum
//! queue group's commands: the only place the cluster's openraft types are
//! declared. Owns no state and does no I/O.

use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

/// A change to the definitions every node holds (the meta group's log entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MetaCommand {
    DeclareExchange {
        vhost: String,
        name: String,
        kind: String,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    },
    DeleteExchange {
        vhost: String,
        name: String,
        if_unused: bool,
    },
    /// A quorum queue (`x-queue-type: quorum`); classic queues stay local.
    DeclareQueue {
        vhost: String,
        name: String,
        /// The node the client declared it on (its group's first member).
        #[serde(default)]
        origin: u64,
        /// The queue's Raft group: 0 when proposed, the declare's own meta
        /// log index once applied (the same on every node).
        #[serde(default)]
        group: GroupId,
        /// As the client sent them: the quorum rules refuse some at apply.
        durable: bool,
        exclusive: bool,
        auto_delete: bool,
        arguments: FieldTable,
    },
    DeleteQueue {
        vhost: String,
        name: String,
        if_unused: bool,
        if_empty: bool,
    },
    Bind {
        vhost: String,
        source: String,
        destination: String,
        to_exchange: bool,
        routing_key: String,
        arguments: FieldTable,
    },
    Unbind {
        vhost: String,
        source: String,
        destination: String,
        to_exchange: bool,
        routing_key: String,
        arguments: FieldTable,
    },
}

impl std::fmt::Display for MetaCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetaCommand::DeclareExchange { vhost, name, .. } => {
                write!(f, "declare exchange '{name}' in '{vhost}'")
            }
            MetaCommand::DeleteExchange { vhost, name, .. } => {
                write!(f, "delete exchange '{name}' in '{vhost}'")
            }
            MetaCommand::DeclareQueue { vhost, name, .. } => {
                write!(f, "declare queue '{name}' in '{vhost}'")
            }
            MetaCommand::DeleteQueue { vhost, name, .. } => {
                write!(f, "delete queue '{name}' in '{vhost}'")
            }
            MetaCommand::Bind {
                vhost,
                source,
                destination,
                ..
            } => write!(f, "bind '{source}' -> '{destination}' in '{vhost}'"),
            MetaCommand::Unbind {
                vhost,
                source,
                destination,
                ..
            } => write!(f, "unbind '{source}' -> '{destination}' in '{vhost}'"),
        }
    }
}

/// Bytes written as one byte string (serde's default for `Vec<u8>` writes
/// them one by one).
pub type Body = serde_bytes::ByteBuf;

/// A change to one quorum queue (a queue group's log entries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueueCommand {
    /// Messages published to the queue, in order: (cluster-unique id, the
    /// message as the store encodes it), batch `seq` of node `from`. Each
    /// node's batches have rising numbers, one in flight at a time: a batch
    /// numbered at or below the last one applied from that node is a retry
    /// (its first proposal committed but the answer was lost) and is not
    /// applied again, even after its messages were consumed (as RabbitMQ's
    /// quorum queues track each publisher's sequence numbers).
    Enqueue {
        from: u64,
        seq: u64,
        msgs: Vec<(u64, Body)>,
    },
    /// Messages that left the queue for good (acked, rejected, dropped) and
    /// messages that came back unacknowledged (their delivery count grows).
    Settle { acked: Vec<u64>, returned: Vec<u64> },
}

impl QueueCommand {
    /// The message bytes an enqueue carries (0 for a settle).
    pub fn body_bytes(&self) -> usize {
        match self {
            QueueCommand::Enqueue { msgs, .. } => msgs.iter().map(|(_, b)| b.len()).sum(),
            QueueCommand::Settle { .. } => 0,
        }
    }
}

/// Every Raft group's entry: the meta group carries `Meta`, a queue group `Queue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Meta(MetaCommand),
    Queue(QueueCommand),
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Meta(c) => c.fmt(f),
            Command::Queue(QueueCommand::Enqueue { msgs, .. }) => {
                write!(f, "enqueue {} messages", msgs.len())
            }
            Command::Queue(QueueCommand::Settle { acked, returned }) => {
                write!(
                    f,
                    "settle {} acked, {} returned",
                    acked.len(),
                    returned.len()
                )
            }
        }
    }
}

/// The result of applying a command, in log order: `None` for ok, or the
/// AMQP error the declaring channel answers with (the same on every node);
/// for an enqueue, the ids the queue refused (full, reject-publish): nacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetaResult {
    pub error: Option<MetaError>,
    #[serde(default)]
    pub refused: Vec<u64>,
}

/// An `AmqpError` as it travels: whether it closes the connection, its code
/// and its full text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaError {
    pub connection: bool,
    pub code: u16,
    pub text: String,
}

openraft::declare_raft_types!(
    /// Every Raft group of the cluster: the meta group and one per quorum queue.
    pub TypeConfig:
        D = Command,
        R = MetaResult,
        NodeId = u64,
        Node = openraft::BasicNode,
);

pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
pub type Raft = openraft::Raft<TypeConfig, super::meta::MetaMachine>;
pub type QueueRaft = openraft::Raft<TypeConfig, super::quorum::QueueMachine>;

/// A group's id in every Raft record and link message: 0 is the meta group.
pub type GroupId = u64;
pub const META_GROUP: GroupId = 0;

/// A meta group snapshot: the encoded `meta::Defs`.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;
