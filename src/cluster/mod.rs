//! The cluster (`[cluster]` in the config): openraft behind one module. Every
//! openraft type stays in here. Owns the Raft groups (the meta group for the
//! replicated definitions), their log storage on the store's committer
//! (`log`), the meta state machine (`meta`, applied through `apply`), the
//! inter-node link (`link`, `network`) and this node's part (`node`).
//! Without `[cluster]` nothing here runs and no Raft is in any path.
//!
//! Layer: above `broker` (it applies replicated definitions through the
//! broker's `VHost` functions and writes through `store`), below `channel`
//! (which asks it to replicate a declare). It must never name `channel` or
//! anything above.

pub mod apply;
pub mod definitions;
pub mod feed;
pub mod group;
pub mod link;
pub mod log;
pub mod meta;
pub mod network;
pub mod node;
pub mod quorum;
pub mod types;

#[cfg(all(test, feature = "rocks"))]
mod tests;

use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::broker::Broker;
use crate::error::{AmqpError, AmqpResult};
pub use node::{Node, StartError};
pub use types::MetaCommand;

/// Start the cluster for `broker` when its config has `[cluster]`; `None`
/// (and nothing started) when it has not.
pub async fn start(
    broker: &Arc<Broker>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Arc<Node>>, StartError> {
    let Some(cfg) = broker.config.cluster.clone() else {
        return Ok(None);
    };
    // Message ids are unique in the cluster: this node's id in the top byte
    // (replicated messages from every node share each node's store).
    broker.reseed_message_ids(u64::from(cfg.node_id) << 56 | unique_counter_start());
    let apply = Arc::new(apply::BrokerApply::new(broker));
    let node = Node::start(&cfg, broker.store.clone(), apply.clone(), shutdown).await?;
    let _ = apply.node.set(Arc::downgrade(&node));
    for cmd in node.defs().items.values() {
        apply::ensure_group(broker, &node, cmd);
    }
    tracing::info!(node = %node.name, cluster = %node.cluster_name, "cluster node started");
    let _ = broker.cluster.set(node.clone());
    Ok(Some(node))
}

/// Where this run's message ids start below the node's byte: microseconds
/// since the epoch, so a restarted node continues above every id it gave
/// before (unless it gave more than a million a second on average).
fn unique_counter_start() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    micros & ((1 << 56) - 1)
}

/// This broker's cluster node, if it is in a cluster.
pub fn of(broker: &Broker) -> Option<Arc<Node>> {
    let any = broker.cluster.get()?.clone();
    any.downcast::<Node>().ok()
}

/// Whether a queue declare's arguments make it a quorum queue (replicated).
pub fn is_quorum(arguments: &FieldTable) -> bool {
    matches!(arguments.inner().get("x-queue-type"), Some(AMQPValue::LongString(s)) if s.as_bytes() == b"quorum")
        || matches!(arguments.inner().get("x-queue-type"), Some(AMQPValue::ShortString(s)) if s.as_str() == "quorum")
}

/// Run a definition change through the meta group and return its result as
/// applied (in log order, so concurrent conflicting declares get one ok and
/// one error everywhere). Blocks the calling worker (handed off to tokio, as
/// the store's synced definition writes are) until this node has applied it.
pub fn replicate(node: &Node, cmd: MetaCommand) -> AmqpResult<()> {
    let run = || tokio::runtime::Handle::current().block_on(node.propose(cmd));
    let result = match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(run)
        }
        _ => {
            return Err(AmqpError::connection(
                541,
                "cluster needs the multi-threaded runtime",
            ))
        }
    };
    match result {
        Ok(r) => apply::to_amqp(r),
        Err(e) => Err(AmqpError::connection(541, format!("cluster: {e}"))),
    }
}
