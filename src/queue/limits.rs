//! A queue's limits read from its arguments (`x-max-length`,
//! `x-message-ttl`, `x-overflow`, dead-lettering, priorities...). Parsing
//! only: the queue enforces them.

use amq_protocol::types::FieldTable;

use crate::protocol::table::as_text;

/// What a full queue (`x-max-length`) does with one more message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or later dead-letter) the oldest ready message.
    DropHead,
    /// Refuse the new message; its publisher gets basic.nack.
    RejectPublish,
    /// Refuse it (nack) and dead-letter it.
    RejectPublishDlx,
}

/// Limits read from the queue's arguments.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_length: Option<u64>,
    pub overflow: Overflow,
    /// `x-message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `x-dead-letter-exchange` and `x-dead-letter-routing-key`.
    pub dlx: Option<String>,
    pub dlrk: Option<String>,
    /// `x-expires`: delete the queue after this many ms unused.
    pub expires: Option<u64>,
    /// `x-max-priority`: deliver higher `priority` messages first.
    pub max_priority: Option<u8>,
    /// `x-max-length-bytes`: total body bytes of ready messages.
    pub max_length_bytes: Option<u64>,
    /// `x-single-active-consumer`.
    pub single_active: bool,
}

impl Limits {
    pub fn from_arguments(args: &FieldTable) -> Limits {
        let max_length = args.inner().get("x-max-length").and_then(as_u64);
        let overflow = match args.inner().get("x-overflow").and_then(as_text).as_deref() {
            Some("reject-publish") => Overflow::RejectPublish,
            Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
            _ => Overflow::DropHead,
        };
        let text = |k: &str| args.inner().get(k).and_then(as_text);
        Limits {
            max_length,
            overflow,
            message_ttl: args.inner().get("x-message-ttl").and_then(as_u64),
            dlx: text("x-dead-letter-exchange"),
            dlrk: text("x-dead-letter-routing-key"),
            expires: args.inner().get("x-expires").and_then(as_u64),
            max_length_bytes: args.inner().get("x-max-length-bytes").and_then(as_u64),
            max_priority: args
                .inner()
                .get("x-max-priority")
                .and_then(as_u64)
                .map(|p| p.min(255) as u8),
            single_active: matches!(
                args.inner().get("x-single-active-consumer"),
                Some(amq_protocol::types::AMQPValue::Boolean(true))
            ),
        }
    }
}

/// A non-negative integer argument of any AMQP integer type.
pub fn as_u64(v: &amq_protocol::types::AMQPValue) -> Option<u64> {
    crate::protocol::table::as_i128(v).and_then(|x| u64::try_from(x).ok())
}
