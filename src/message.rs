//! A published message as the broker holds it: routing info, the client's
//! properties (parsed for what the broker reads, raw for forwarding unchanged)
//! and the body. One `Arc<Message>` is shared by every queue it is routed to;
//! the body is never copied per queue.

use amq_protocol::protocol::basic::AMQPProperties;
use bytes::Bytes;
use std::sync::atomic::{AtomicU8, Ordering};

/// Where a message stands with the store.
const READY: u8 = 0;
const PENDING: u8 = 1;
const FAILED: u8 = 2;

#[derive(Debug)]
pub struct Message {
    /// Broker-wide unique, increasing id; the store's key for the body.
    pub id: u64,
    pub exchange: String,
    pub routing_key: String,
    pub properties: AMQPProperties,
    pub raw_properties: Bytes,
    pub body: Bytes,
    /// Per-message TTL from the `expiration` property, in milliseconds.
    pub ttl: Option<u64>,
    store_state: AtomicU8,
}

impl Message {
    pub fn new(
        id: u64,
        exchange: String,
        routing_key: String,
        properties: AMQPProperties,
        raw_properties: Bytes,
        body: Bytes,
    ) -> Self {
        Message {
            id,
            exchange,
            routing_key,
            properties,
            raw_properties,
            body,
            ttl: None,
            store_state: AtomicU8::new(READY),
        }
    }

    pub fn with_ttl(mut self, ttl: Option<u64>) -> Self {
        self.ttl = ttl;
        self
    }

    /// delivery-mode 2.
    pub fn is_persistent(&self) -> bool {
        self.properties.delivery_mode() == &Some(2)
    }

    /// Mark the message as waiting for its store write: queues hold it back
    /// from consumers until `mark_stored`, so a failed write can still be
    /// taken back before anyone has seen it.
    pub fn mark_pending(&self) {
        self.store_state.store(PENDING, Ordering::Release);
    }

    pub fn mark_stored(&self) {
        self.store_state.store(READY, Ordering::Release);
    }

    pub fn mark_failed(&self) {
        self.store_state.store(FAILED, Ordering::Release);
    }

    /// Whether consumers may see the message now.
    pub fn is_deliverable(&self) -> bool {
        self.store_state.load(Ordering::Acquire) == READY
    }

    pub fn is_failed(&self) -> bool {
        self.store_state.load(Ordering::Acquire) == FAILED
    }
}

/// Deduplication keys of messages (`x-message-deduplication`), shared by
/// exchange caches and queues.
pub mod dedup {
    use amq_protocol::protocol::basic::AMQPProperties;
    use amq_protocol::types::{AMQPValue, FieldTable};

    /// The header a message carries its key in (the plugin's convention).
    pub const KEY_HEADER: &str = "x-deduplication-header";

    /// Whether `x-message-deduplication` is set.
    pub fn enabled(args: &FieldTable) -> bool {
        matches!(
            args.inner().get("x-message-deduplication"),
            Some(AMQPValue::Boolean(true))
        )
    }

    /// The header naming the key, from `x-deduplication-header`.
    pub fn key_header(args: &FieldTable) -> Option<String> {
        args.inner()
            .get(KEY_HEADER)
            .and_then(crate::protocol::table::as_text)
    }

    fn value_text(v: &AMQPValue) -> Option<String> {
        match v {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
            other => crate::protocol::table::as_i128(other).map(|n| n.to_string()),
        }
    }

    pub fn header_value(props: &AMQPProperties, name: &str) -> Option<String> {
        props
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(name))
            .and_then(value_text)
    }

    /// A message's deduplication key.
    pub fn message_key(header: Option<&str>, props: &AMQPProperties) -> Option<String> {
        if let Some(h) = header {
            if let Some(k) = header_value(props, h) {
                return Some(k);
            }
        }
        header_value(props, KEY_HEADER)
            .or_else(|| props.message_id().as_ref().map(|m| m.to_string()))
    }
}
