//! Applies the meta group's commands to this node's broker through the same
//! `VHost` functions the AMQP channel uses, so a replicated declare makes the
//! same object, with the same checks and error texts, as a local one. Runs on
//! the state machine's task, in log order; never proposes anything.

use std::sync::{Arc, OnceLock, Weak};

use super::meta::Apply;
use super::types::{MetaCommand, MetaError, MetaResult};
use crate::broker::vhost::{ExchangeSpec, QueueSpec};
use crate::broker::Broker;
use crate::error::{AmqpError, AmqpResult};

/// Commands act as the management API does: connection id 0, which no AMQP
/// connection has.
const NO_CONNECTION: u64 = 0;

pub struct BrokerApply {
    pub broker: Weak<Broker>,
    /// This node, once started: a quorum queue's declare starts its group.
    pub node: OnceLock<Weak<super::Node>>,
}

impl BrokerApply {
    pub fn new(broker: &Arc<Broker>) -> BrokerApply {
        BrokerApply {
            broker: Arc::downgrade(broker),
            node: OnceLock::new(),
        }
    }

    fn node(&self) -> Option<Arc<super::Node>> {
        self.node.get()?.upgrade()
    }
}

/// Start (or find) the group of a quorum queue the meta group declared.
pub fn ensure_group(broker: &Broker, node: &super::Node, cmd: &MetaCommand) {
    let MetaCommand::DeclareQueue {
        vhost,
        name,
        origin,
        group,
        arguments,
        ..
    } = cmd
    else {
        return;
    };
    let Some(q) = broker
        .vhost(vhost)
        .and_then(|v| v.queues.get(name).map(|q| q.clone()))
    else {
        return;
    };
    let size = arguments
        .inner()
        .get("x-quorum-initial-group-size")
        .and_then(crate::queue::as_u64)
        .map(|n| n as usize);
    node.ensure_group(&q, *group, *origin, size);
}

pub fn to_result(r: AmqpResult<()>) -> MetaResult {
    MetaResult {
        refused: Vec::new(),
        error: r.err().map(|e| match e {
            AmqpError::Channel { code, text, .. } => MetaError {
                connection: false,
                code,
                text,
            },
            AmqpError::Connection { code, text, .. } => MetaError {
                connection: true,
                code,
                text,
            },
        }),
    }
}

pub fn to_amqp(r: MetaResult) -> AmqpResult<()> {
    match r.error {
        None => Ok(()),
        Some(MetaError {
            connection: false,
            code,
            text,
        }) => Err(AmqpError::Channel {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }),
        Some(MetaError {
            connection: true,
            code,
            text,
        }) => Err(AmqpError::Connection {
            code,
            text,
            class_id: 0,
            method_id: 0,
        }),
    }
}

fn run(broker: &Broker, cmd: &MetaCommand) -> AmqpResult<()> {
    let vhost_name = match cmd {
        MetaCommand::DeclareExchange { vhost, .. }
        | MetaCommand::DeleteExchange { vhost, .. }
        | MetaCommand::DeclareQueue { vhost, .. }
        | MetaCommand::DeleteQueue { vhost, .. }
        | MetaCommand::Bind { vhost, .. }
        | MetaCommand::Unbind { vhost, .. } => vhost,
    };
    let vhost = broker
        .vhost(vhost_name)
        .ok_or_else(|| AmqpError::not_found("vhost", vhost_name, vhost_name))?;
    match cmd.clone() {
        MetaCommand::DeclareExchange {
            name,
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            ..
        } => vhost.declare_exchange(ExchangeSpec {
            name,
            kind,
            passive: false,
            durable,
            auto_delete,
            internal,
            arguments,
        }),
        MetaCommand::DeleteExchange {
            name, if_unused, ..
        } => vhost.delete_exchange(&name, if_unused),
        MetaCommand::DeclareQueue {
            name,
            durable,
            exclusive,
            auto_delete,
            arguments,
            ..
        } => vhost
            .declare_queue(
                QueueSpec {
                    name,
                    server_named: false,
                    passive: false,
                    durable,
                    exclusive,
                    auto_delete,
                    arguments,
                },
                NO_CONNECTION,
            )
            .map(drop),
        MetaCommand::DeleteQueue {
            name,
            if_unused,
            if_empty,
            ..
        } => {
            let q = match vhost.queue(&name, NO_CONNECTION) {
                Ok(q) => q,
                // Deleting a queue that does not exist succeeds, as in RabbitMQ.
                Err(AmqpError::Channel { code: 404, .. }) => return Ok(()),
                Err(e) => return Err(e),
            };
            if if_unused && q.consumer_count() > 0 {
                return Err(AmqpError::precondition(format!(
                    "queue '{name}' in vhost '{}' in use",
                    vhost.name
                )));
            }
            if if_empty && q.message_count() > 0 {
                return Err(AmqpError::precondition(format!(
                    "queue '{name}' in vhost '{}' is not empty",
                    vhost.name
                )));
            }
            let deleted = vhost.remove_queue(&q)?;
            for c in &deleted.consumers {
                c.cancelled();
            }
            Ok(())
        }
        MetaCommand::Bind {
            source,
            destination,
            to_exchange,
            routing_key,
            arguments,
            ..
        } => vhost.bind(
            &destination,
            to_exchange,
            &source,
            &routing_key,
            arguments,
            NO_CONNECTION,
        ),
        MetaCommand::Unbind {
            source,
            destination,
            to_exchange,
            routing_key,
            arguments,
            ..
        } => vhost.unbind(
            &destination,
            to_exchange,
            &source,
            &routing_key,
            arguments,
            NO_CONNECTION,
        ),
    }
}

impl Apply for BrokerApply {
    fn apply(&self, cmd: &MetaCommand) -> MetaResult {
        let Some(broker) = self.broker.upgrade() else {
            return to_result(Err(AmqpError::connection(320, "broker is stopping")));
        };
        let r = run(&broker, cmd);
        if let Err(e) = &r {
            tracing::debug!(command = %cmd, error = %e, "replicated command refused");
        } else if let Some(node) = self.node() {
            match cmd {
                MetaCommand::DeclareQueue { .. } => ensure_group(&broker, &node, cmd),
                MetaCommand::DeleteQueue { vhost, name, .. } => node.drop_group(vhost, name),
                _ => {}
            }
        }
        to_result(r)
    }
}
