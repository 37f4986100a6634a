//! Message deduplication (`x-message-deduplication`), the broker's answer to
//! producer retries after a lost confirm.
//!
//! The key of a message is the value of the header named by the
//! `x-deduplication-header` argument, else of its own `x-deduplication-header`
//! header (as RabbitMQ's deduplication plugin does), else its `message-id`.
//! Messages without a key are never deduplicated.
//!
//! On an exchange, a key seen within `x-cache-ttl` (among the last
//! `x-cache-size` keys) is a duplicate: confirmed, not routed. The cache of a
//! durable exchange is written to the store with the message, so a producer
//! retrying after a broker crash does not create a duplicate. On a queue, a
//! message whose key is already in the queue is not enqueued again.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

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
        .get("x-deduplication-header")
        .and_then(crate::queue::as_text)
}

fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        other => crate::exchange::headers::as_i128(other).map(|n| n.to_string()),
    }
}

/// A message's deduplication key.
pub fn message_key(header: Option<&str>, props: &AMQPProperties) -> Option<String> {
    let headers = props.headers().as_ref();
    let from = |name: &str| {
        headers
            .and_then(|h| h.inner().get(name))
            .and_then(value_text)
    };
    if let Some(h) = header {
        if let Some(k) = from(h) {
            return Some(k);
        }
    }
    from("x-deduplication-header").or_else(|| props.message_id().as_ref().map(|m| m.to_string()))
}

/// An exchange's cache of recent keys.
#[derive(Debug)]
pub struct DedupCache {
    size: usize,
    ttl: Option<u64>,
    pub header: Option<String>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// key → expiry (ms since the epoch, 0: never)
    keys: HashMap<String, u64>,
    /// Insertion order, for evicting the oldest past `size`.
    order: VecDeque<String>,
}

/// What a check of the cache found.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    Duplicate,
    /// New key, recorded with this expiry; `evicted` left the cache for it.
    New {
        expires_at: u64,
        evicted: Vec<String>,
    },
}

impl DedupCache {
    pub fn from_arguments(args: &FieldTable) -> Option<DedupCache> {
        if !enabled(args) {
            return None;
        }
        let num = |k: &str| args.inner().get(k).and_then(crate::queue::as_u64);
        Some(DedupCache {
            size: num("x-cache-size").map_or(usize::MAX, |n| n.max(1) as usize),
            ttl: num("x-cache-ttl"),
            header: key_header(args),
            inner: Mutex::new(Inner::default()),
        })
    }

    /// Record `key` unless it is a live duplicate.
    pub fn check(&self, key: &str, now: u64) -> Seen {
        let mut inner = self.inner.lock();
        if let Some(&exp) = inner.keys.get(key) {
            if exp == 0 || exp > now {
                return Seen::Duplicate;
            }
        }
        let expires_at = self.ttl.map_or(0, |t| now.saturating_add(t).max(1));
        if inner.keys.insert(key.to_string(), expires_at).is_none() {
            inner.order.push_back(key.to_string());
        }
        let mut evicted = Vec::new();
        while inner.keys.len() > self.size {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            inner.keys.remove(&old);
            evicted.push(old);
        }
        Seen::New {
            expires_at,
            evicted,
        }
    }

    /// Put back an entry read from the store at boot.
    pub fn restore(&self, key: String, expires_at: u64, now: u64) {
        if expires_at != 0 && expires_at <= now {
            return;
        }
        let mut inner = self.inner.lock();
        if inner.keys.insert(key.clone(), expires_at).is_none() {
            inner.order.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(items: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in items {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    #[test]
    fn duplicates_ttl_and_size() {
        let c = DedupCache::from_arguments(&args(&[
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-cache-size", AMQPValue::LongInt(2)),
            ("x-cache-ttl", AMQPValue::LongInt(100)),
        ]))
        .unwrap();
        assert!(matches!(c.check("a", 1000), Seen::New { .. }));
        assert_eq!(c.check("a", 1050), Seen::Duplicate);
        assert!(matches!(c.check("a", 1101), Seen::New { .. }), "expired");
        c.check("b", 1102);
        match c.check("c", 1103) {
            Seen::New { evicted, .. } => assert_eq!(evicted, vec!["a".to_string()]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(c.check("a", 1104), Seen::New { .. }), "evicted");
    }

    #[test]
    fn key_sources() {
        let props = AMQPProperties::default()
            .with_message_id("m1".into())
            .with_headers(args(&[("order", AMQPValue::LongInt(7))]));
        assert_eq!(message_key(None, &props).as_deref(), Some("m1"));
        assert_eq!(message_key(Some("order"), &props).as_deref(), Some("7"));
        assert_eq!(message_key(None, &AMQPProperties::default()), None);
        assert!(DedupCache::from_arguments(&FieldTable::default()).is_none());
    }
}
