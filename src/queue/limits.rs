//! A queue's limits read from its arguments (`x-max-length`,
//! `x-message-ttl`, `x-overflow`, dead-lettering, priorities...), and the
//! effective limits once a policy is laid over them. Parsing and merging
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

impl Overflow {
    pub fn parse(s: &str) -> Option<Overflow> {
        match s {
            "drop-head" => Some(Overflow::DropHead),
            "reject-publish" => Some(Overflow::RejectPublish),
            "reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        }
    }
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
    /// `x-delivery-limit` (quorum queues): returns of a message past which it
    /// is dead-lettered or dropped.
    pub delivery_limit: Option<u64>,
    /// Whether `overflow` came from an `x-overflow` argument (else the
    /// default, which a policy's `overflow` replaces).
    pub overflow_set: bool,
}

/// The queue keys of a policy (RabbitMQ's policy definition keys without
/// the `x-` of the matching arguments), already validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyLimits {
    pub max_length: Option<u64>,
    pub max_length_bytes: Option<u64>,
    pub message_ttl: Option<u64>,
    pub expires: Option<u64>,
    pub delivery_limit: Option<u64>,
    pub overflow: Option<Overflow>,
    pub dlx: Option<String>,
    pub dlrk: Option<String>,
}

fn min_of(arg: Option<u64>, policy: Option<u64>) -> Option<u64> {
    match (arg, policy) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    }
}

impl Limits {
    pub fn from_arguments(args: &FieldTable) -> Limits {
        let max_length = args.inner().get("x-max-length").and_then(as_u64);
        let overflow_arg = args
            .inner()
            .get("x-overflow")
            .and_then(as_text)
            .and_then(|s| Overflow::parse(&s));
        let overflow = overflow_arg.unwrap_or(Overflow::DropHead);
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
            delivery_limit: args.inner().get("x-delivery-limit").and_then(as_u64),
            overflow_set: overflow_arg.is_some(),
        }
    }

    /// These limits (from the arguments) with a policy laid over them, as
    /// RabbitMQ resolves the two: numeric limits take the lower of argument
    /// and policy; for the others the argument wins, except that a quorum
    /// queue takes `overflow` and `expires` from the policy when it has them
    /// (`rabbit_quorum_queue`'s `policy_has_precedence`).
    pub fn with_policy(&self, p: &PolicyLimits, quorum: bool) -> Limits {
        let mut l = self.clone();
        l.max_length = min_of(self.max_length, p.max_length);
        l.max_length_bytes = min_of(self.max_length_bytes, p.max_length_bytes);
        l.message_ttl = min_of(self.message_ttl, p.message_ttl);
        l.delivery_limit = min_of(self.delivery_limit, p.delivery_limit);
        l.dlx = self.dlx.clone().or_else(|| p.dlx.clone());
        l.dlrk = self.dlrk.clone().or_else(|| p.dlrk.clone());
        if let Some(o) = p.overflow {
            if quorum || !self.overflow_set {
                l.overflow = o;
            }
        }
        l.expires = match (self.expires, p.expires) {
            (Some(_), Some(pe)) if quorum => Some(pe),
            (Some(a), Some(pe)) => Some(a.min(pe)),
            (a, pe) => a.or(pe),
        };
        if quorum {
            l.quorum_overflow();
        }
        l
    }
}

impl Limits {
    /// RabbitMQ 3.10's quorum queues accept `reject-publish-dlx` but act as
    /// `drop-head` (it logs "Invalid overflow strategy").
    pub fn quorum_overflow(&mut self) {
        if self.overflow == Overflow::RejectPublishDlx {
            self.overflow = Overflow::DropHead;
        }
    }
}

/// A non-negative integer argument of any AMQP integer type.
pub fn as_u64(v: &amq_protocol::types::AMQPValue) -> Option<u64> {
    crate::protocol::table::as_i128(v).and_then(|x| u64::try_from(x).ok())
}
