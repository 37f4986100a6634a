//! Queue and exchange arguments at declare: RabbitMQ's checks of the
//! arguments Hopper acts on, and the inequivalence of a redeclare, with
//! RabbitMQ's texts. Pure functions over field tables: nothing here touches
//! a vhost.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::error::{AmqpError, AmqpResult};
use crate::exchange::headers::value_eq;

fn bool_text(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

/// An argument as RabbitMQ's inequivalence text shows it: `none`, or
/// `the value 'V' of type 'T'`.
fn arg_value_text(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(v) => format!(
            "the value '{}' of type '{}'",
            arg_text(Some(v)),
            super::queue_type::type_name(v)
        ),
    }
}

fn arg_text(v: Option<&AMQPValue>) -> String {
    match v {
        None => "none".to_string(),
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::ShortString(s)) => s.as_str().to_string(),
        Some(AMQPValue::Boolean(b)) => bool_text(*b).to_string(),
        Some(other) => match crate::protocol::table::as_i128(other) {
            Some(n) => n.to_string(),
            None => format!("{other:?}"),
        },
    }
}

/// RabbitMQ's checks of the queue arguments Hopper acts on.
pub(super) fn validate_queue_arguments(
    queue: &str,
    vhost: &str,
    args: &FieldTable,
) -> AmqpResult<()> {
    let invalid = |k: &str, why: String| {
        AmqpError::precondition(format!(
            "invalid arg '{k}' for queue '{queue}' in vhost '{vhost}': {why}"
        ))
    };
    for k in ["x-max-length", "x-max-length-bytes"] {
        if let Some(v) = args.inner().get(k) {
            if crate::queue::as_u64(v).is_none() {
                return Err(invalid(
                    k,
                    format!("{{value_negative_or_not_integer,{}}}", arg_text(Some(v))),
                ));
            }
        }
    }
    if let Some(v) = args.inner().get("x-message-ttl") {
        if crate::queue::as_u64(v).is_none() {
            return Err(invalid(
                "x-message-ttl",
                format!("{{value_negative_or_not_integer,{}}}", arg_text(Some(v))),
            ));
        }
    }
    for k in ["x-dead-letter-exchange", "x-dead-letter-routing-key"] {
        if let Some(v) = args.inner().get(k) {
            if crate::queue::as_text(v).is_none() {
                return Err(invalid(
                    k,
                    format!("{{not_a_string,{}}}", arg_text(Some(v))),
                ));
            }
        }
    }
    if let Some(v) = args.inner().get("x-max-priority") {
        if crate::queue::as_u64(v).is_none_or(|p| p > 255) {
            return Err(invalid(
                "x-max-priority",
                format!("{{value_out_of_range,{}}}", arg_text(Some(v))),
            ));
        }
    }
    if let Some(v) = args.inner().get("x-expires") {
        if crate::queue::as_u64(v).is_none_or(|ms| ms == 0) {
            return Err(invalid(
                "x-expires",
                format!(
                    "{{value_zero_or_not_positive_integer,{}}}",
                    arg_text(Some(v))
                ),
            ));
        }
    }
    if let Some(v) = args.inner().get("x-overflow") {
        match crate::queue::as_text(v).as_deref() {
            Some("drop-head" | "reject-publish" | "reject-publish-dlx") => {}
            _ => {
                return Err(invalid(
                    "x-overflow",
                    format!("{{unknown_overflow_value,{}}}", arg_text(Some(v))),
                ))
            }
        }
    }
    Ok(())
}

/// The first inequivalent flag (name, received, current), else the first
/// inequivalent argument among `keys`.
pub(super) fn inequivalent(
    flags: &[(&str, bool, bool)],
    got: &FieldTable,
    have: &FieldTable,
    keys: &[&str],
) -> Option<(String, String, String)> {
    flags
        .iter()
        .find(|(_, g, h)| g != h)
        .map(|(n, g, h)| {
            (
                n.to_string(),
                format!("'{}'", bool_text(*g)),
                format!("'{}'", bool_text(*h)),
            )
        })
        .or_else(|| args_mismatch(got, have, keys))
}

/// First argument among `keys` whose value differs: (name, received, current).
fn args_mismatch(
    got: &FieldTable,
    have: &FieldTable,
    keys: &[&str],
) -> Option<(String, String, String)> {
    for k in keys {
        let a = got.inner().get(*k);
        let b = have.inner().get(*k);
        let same = match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => value_eq(a, b),
            _ => false,
        };
        if !same {
            return Some((k.to_string(), arg_value_text(a), arg_value_text(b)));
        }
    }
    None
}
