//! `x-queue-type` at queue.declare: which types exist (classic, quorum; no
//! streams), and RabbitMQ 3.10's rules and 406 texts for quorum queues
//! (durable, not exclusive, not auto-delete, not server-named, the
//! arguments they refuse or check). On a single node a quorum queue is a
//! queue with quorum semantics (`Queue::quorum`: delivery counts and the
//! delivery limit); replication belongs to `cluster`. Checks only: this
//! module creates nothing.

use amq_protocol::types::AMQPValue;

use super::vhost::QueueSpec;
use crate::error::{AmqpError, AmqpResult};

/// The AMQP field type of a value as RabbitMQ names it in its texts.
pub fn type_name(v: &AMQPValue) -> &'static str {
    match v {
        AMQPValue::Boolean(_) => "bool",
        AMQPValue::ShortShortInt(_) => "byte",
        AMQPValue::ShortShortUInt(_) => "unsignedbyte",
        AMQPValue::ShortInt(_) => "short",
        AMQPValue::ShortUInt(_) => "unsignedshort",
        AMQPValue::LongInt(_) => "signedint",
        AMQPValue::LongUInt(_) => "unsignedint",
        AMQPValue::LongLongInt(_) => "long",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => "longstr",
        AMQPValue::FieldArray(_) => "array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "table",
        AMQPValue::ByteArray(_) => "binary",
        AMQPValue::Void => "void",
    }
}

/// Arguments a quorum queue refuses (RabbitMQ 3.10's `check_invalid_arguments`).
const QUORUM_INVALID: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
];

/// Whether the declare asks for a quorum queue. Errors for an
/// `x-queue-type` that is not a string or names no type Hopper has.
pub fn is_quorum(spec: &QueueSpec, vhost: &str) -> AmqpResult<bool> {
    let Some(v) = spec.arguments.inner().get("x-queue-type") else {
        return Ok(false);
    };
    let invalid = |why: String| {
        AmqpError::precondition(format!(
            "invalid arg 'x-queue-type' for queue '{}' in vhost '{vhost}': {why}",
            spec.name
        ))
    };
    let Some(t) = crate::queue::as_text(v) else {
        return Err(invalid(format!("{{unacceptable_type,{}}}", type_name(v))));
    };
    match t.as_str() {
        "classic" => Ok(false),
        "quorum" => Ok(true),
        // RabbitMQ without the stream queue type answers as for any unknown type.
        other => Err(invalid(format!("\"unsupported queue type '{other}'\""))),
    }
}

/// RabbitMQ's checks of a new quorum queue, in its order.
pub fn check_quorum(spec: &QueueSpec, name: &str, vhost: &str) -> AmqpResult<()> {
    if spec.server_named || spec.name.is_empty() {
        return Err(AmqpError::precondition(
            "Cannot declare a server-named queue for type rabbit_quorum_queue",
        ));
    }
    let args = spec.arguments.inner();
    let invalid_arg = |k: &str, why: &str| {
        AmqpError::precondition(format!(
            "invalid arg '{k}' for queue '{name}' in vhost '{vhost}': {why}"
        ))
    };
    if let Some(v) = args.get("x-queue-leader-locator") {
        let ok = crate::queue::as_text(v).is_some_and(|t| {
            matches!(
                t.as_str(),
                "client-local" | "balanced" | "random" | "least-leaders"
            )
        });
        if !ok {
            return Err(invalid_arg(
                "x-queue-leader-locator",
                "invalid_queue_locator_arg",
            ));
        }
    }
    if let Some(v) = args.get("x-quorum-initial-group-size") {
        match crate::protocol::table::as_i128(v) {
            Some(n) if n > 0 => {}
            Some(0) => return Err(invalid_arg("x-quorum-initial-group-size", "{value_zero,0}")),
            Some(n) => {
                return Err(invalid_arg(
                    "x-quorum-initial-group-size",
                    &format!("{{value_negative,{n}}}"),
                ))
            }
            None => {
                return Err(invalid_arg(
                    "x-quorum-initial-group-size",
                    &format!("{{unacceptable_type,{}}}", type_name(v)),
                ))
            }
        }
    }
    for k in QUORUM_INVALID {
        if args.contains_key(*k) {
            return Err(AmqpError::precondition(format!(
                "invalid arg '{k}' for queue '{name}' in vhost '{vhost}' of queue type rabbit_quorum_queue"
            )));
        }
    }
    let property = |p: &str| {
        AmqpError::precondition(format!(
            "invalid property '{p}' for queue '{name}' in vhost '{vhost}'"
        ))
    };
    if spec.auto_delete {
        return Err(property("auto-delete"));
    }
    if spec.exclusive {
        return Err(property("exclusive-owner"));
    }
    if !spec.durable {
        return Err(property("non-durable"));
    }
    Ok(())
}
