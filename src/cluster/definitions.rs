//! What the channel calls for definition changes: in a cluster, exchanges,
//! bindings between replicated ends and quorum queues go through the meta
//! group (`replicate`); everything else, and everything on a single node,
//! goes straight to the local `VHost` as before. Never names `channel`.

use amq_protocol::types::FieldTable;

use super::{is_quorum, of, replicate, MetaCommand};
use crate::broker::vhost::{ExchangeSpec, QueueSpec};
use crate::broker::{Broker, VHost};
use crate::error::AmqpResult;

pub fn declare_exchange(broker: &Broker, vhost: &VHost, spec: ExchangeSpec) -> AmqpResult<()> {
    match of(broker) {
        Some(node) if !spec.passive => replicate(
            &node,
            MetaCommand::DeclareExchange {
                vhost: vhost.name.clone(),
                name: spec.name,
                kind: spec.kind,
                durable: spec.durable,
                auto_delete: spec.auto_delete,
                internal: spec.internal,
                arguments: spec.arguments,
            },
        ),
        _ => vhost.declare_exchange(spec),
    }
}

pub fn delete_exchange(
    broker: &Broker,
    vhost: &VHost,
    name: &str,
    if_unused: bool,
) -> AmqpResult<()> {
    match of(broker) {
        Some(node) => replicate(
            &node,
            MetaCommand::DeleteExchange {
                vhost: vhost.name.clone(),
                name: name.to_string(),
                if_unused,
            },
        ),
        None => vhost.delete_exchange(name, if_unused),
    }
}

/// A quorum queue's declare in a cluster: replicated, then looked up here
/// (this node has applied it when `replicate` returns). `None`: not a
/// replicated declare, the caller declares locally.
pub fn declare_queue(broker: &Broker, vhost: &VHost, spec: &QueueSpec) -> Option<AmqpResult<()>> {
    let node = of(broker)?;
    if spec.passive || spec.server_named || !is_quorum(&spec.arguments) {
        return None;
    }
    Some(replicate(
        &node,
        MetaCommand::DeclareQueue {
            vhost: vhost.name.clone(),
            name: spec.name.clone(),
            origin: node.id,
            group: 0,
            durable: spec.durable,
            exclusive: spec.exclusive,
            auto_delete: spec.auto_delete,
            arguments: spec.arguments.clone(),
        },
    ))
}

/// A quorum queue's delete in a cluster; `None`: delete locally.
pub fn delete_queue(
    broker: &Broker,
    vhost: &VHost,
    name: &str,
    if_unused: bool,
    if_empty: bool,
) -> Option<AmqpResult<()>> {
    let node = of(broker)?;
    let q = vhost.queues.get(name).map(|q| q.clone())?;
    if !is_quorum(&q.arguments) {
        return None;
    }
    Some(replicate(
        &node,
        MetaCommand::DeleteQueue {
            vhost: vhost.name.clone(),
            name: name.to_string(),
            if_unused,
            if_empty,
        },
    ))
}

/// Whether a binding's destination lives on every node (an exchange or a
/// quorum queue), so the binding is replicated too.
fn replicated_destination(vhost: &VHost, dest: &str, to_exchange: bool) -> bool {
    to_exchange
        || vhost
            .queues
            .get(dest)
            .is_some_and(|q| is_quorum(&q.arguments))
}

#[allow(clippy::too_many_arguments)]
pub fn bind(
    broker: &Broker,
    vhost: &VHost,
    unbind: bool,
    dest: &str,
    to_exchange: bool,
    source: &str,
    routing_key: &str,
    arguments: FieldTable,
    conn_id: u64,
) -> AmqpResult<()> {
    match of(broker) {
        Some(node) if replicated_destination(vhost, dest, to_exchange) => {
            let (vhost, source, destination, routing_key) = (
                vhost.name.clone(),
                source.to_string(),
                dest.to_string(),
                routing_key.to_string(),
            );
            let cmd = if unbind {
                MetaCommand::Unbind {
                    vhost,
                    source,
                    destination,
                    to_exchange,
                    routing_key,
                    arguments,
                }
            } else {
                MetaCommand::Bind {
                    vhost,
                    source,
                    destination,
                    to_exchange,
                    routing_key,
                    arguments,
                }
            };
            replicate(&node, cmd)
        }
        _ if unbind => vhost.unbind(dest, to_exchange, source, routing_key, arguments, conn_id),
        _ => vhost.bind(dest, to_exchange, source, routing_key, arguments, conn_id),
    }
}
