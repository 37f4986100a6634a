//! The Raft type configuration and the meta group's commands: the only place
//! the cluster's openraft types are declared. Owns no state and does no I/O.

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

/// The result of applying a command, in log order: `None` for ok, or the
/// AMQP error the declaring channel answers with (the same on every node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MetaResult {
    pub error: Option<MetaError>,
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
    /// Every Raft group of the cluster (the meta group now, quorum queues later).
    pub TypeConfig:
        D = MetaCommand,
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

/// A group's id in every Raft record and link message: 0 is the meta group.
pub type GroupId = u64;
pub const META_GROUP: GroupId = 0;

/// A meta group snapshot: the encoded `meta::Defs`.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;
