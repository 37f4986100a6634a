//! Message deduplication, the broker's answer to producer retries after a
//! lost confirm: `x-message-deduplication: true` on an exchange of any type
//! or on a queue, and the community plugin's exchange type
//! `x-message-deduplication` (routes like fanout; `x-cache-size` required).
//!
//! The key of a message is the value of the header named by the
//! `x-deduplication-header` argument, else of its own `x-deduplication-header`
//! header (as the plugin does), else (not on the plugin's exchange type) its
//! `message-id`. Messages without a key are never deduplicated.
//!
//! An exchange's cache holds each key in one of two states. *Pending*: the
//! message that brought it is being routed and written; a duplicate arriving
//! now waits (its confirm is not sent) until the original is settled, then is
//! confirmed (original stored) or published as the original (original failed
//! or nacked). *Committed*: the original is confirmed; a duplicate within
//! `x-cache-ttl` (ms; a message's own `x-cache-ttl` header overrides it) and
//! among the last `x-cache-size` keys is confirmed and dropped. A durable
//! exchange's key goes to the store in the same synced batch as its message,
//! never before (the publish path does that), so a crash can never leave a
//! key without its message. This module owns the cache; it never touches the
//! store or routes anything.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};

/// The community plugin's exchange type.
pub const EXCHANGE_TYPE: &str = "x-message-deduplication";

use crate::batch::Batch;
pub use crate::message::dedup::{enabled, key_header, message_key};
use crate::message::dedup::{header_value, KEY_HEADER};

/// The plugin's exchange arguments, checked as the plugin checks them (406).
pub fn validate_plugin_arguments(args: &FieldTable) -> Result<(), String> {
    let positive = |k: &str| match args.inner().get(k) {
        None => None,
        Some(AMQPValue::LongString(s)) => Some(
            String::from_utf8_lossy(s.as_bytes())
                .trim()
                .parse::<i64>()
                .is_ok_and(|n| n > 0),
        ),
        Some(v) => Some(crate::exchange::headers::as_i128(v).is_some_and(|n| n > 0)),
    };
    if positive("x-cache-size") != Some(true) {
        return Err(
            "Missing or invalid argument, 'x-cache-size' must be an integer greater than 0".into(),
        );
    }
    if positive("x-cache-ttl") == Some(false) {
        return Err("Invalid argument, 'x-cache-ttl' must be an integer greater than 0".into());
    }
    match args.inner().get("x-cache-persistence") {
        None => Ok(()),
        Some(AMQPValue::LongString(s)) if matches!(s.as_bytes(), b"disk" | b"memory") => Ok(()),
        Some(_) => {
            Err("Invalid argument, 'x-cache-persistence' must be either 'disk' or 'memory'".into())
        }
    }
}

/// Told once the original of a key is settled: `true` when it was stored
/// and confirmed, `false` when it was nacked or failed (the key is free again).
pub type Waiter = Box<dyn FnOnce(bool, &mut Batch) + Send>;

/// An exchange's cache of recent keys.
pub struct DedupCache {
    size: usize,
    ttl: Option<u64>,
    pub header: Option<String>,
    /// The plugin's exchange type: keys only from `x-deduplication-header`.
    plugin: bool,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for DedupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupCache")
            .field("size", &self.size)
            .field("ttl", &self.ttl)
            .field("plugin", &self.plugin)
            .finish()
    }
}

enum State {
    Committed,
    Pending(Vec<Waiter>),
}

struct Entry {
    /// ms since the epoch, 0: never.
    expires_at: u64,
    /// Which reservation made this entry (a key can leave and come back).
    token: u64,
    state: State,
}

#[derive(Default)]
struct Inner {
    keys: HashMap<String, Entry>,
    /// Insertion order (key, token), for evicting the oldest past `size`;
    /// items whose token no longer matches are stale and skipped.
    order: VecDeque<(String, u64)>,
    next_token: u64,
}

impl Inner {
    /// Insert (or replace) `key` at the young end of the eviction order;
    /// returns the entry's token.
    fn insert(&mut self, key: &str, expires_at: u64, state: State) -> u64 {
        self.next_token += 1;
        let token = self.next_token;
        self.keys.insert(
            key.to_string(),
            Entry {
                expires_at,
                token,
                state,
            },
        );
        self.order.push_back((key.to_string(), token));
        token
    }
}

/// What a check of the cache found.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// A committed key: confirm, do not route.
    Duplicate,
    /// The original is still on its way: wait for it (`wait`).
    InFlight,
    /// A new key, reserved: the publish must `settle` it.
    New(Reservation),
}

/// A key reserved by the publish that brought it.
#[derive(Debug, PartialEq, Eq)]
pub struct Reservation {
    pub key: String,
    pub expires_at: u64,
    token: u64,
    /// Committed keys that left the cache for this one (the store forgets them).
    pub evicted: Vec<String>,
}

impl DedupCache {
    /// The cache of an exchange of this type with these arguments, if any.
    pub fn for_exchange(kind: &str, args: &FieldTable) -> Option<DedupCache> {
        let plugin = kind == EXCHANGE_TYPE;
        if !plugin && !enabled(args) {
            return None;
        }
        let num = |k: &str| match args.inner().get(k) {
            Some(AMQPValue::LongString(s)) => {
                String::from_utf8_lossy(s.as_bytes()).trim().parse().ok()
            }
            Some(v) => crate::queue::as_u64(v),
            None => None,
        };
        Some(DedupCache {
            size: num("x-cache-size").map_or(usize::MAX, |n| n.max(1) as usize),
            ttl: num("x-cache-ttl"),
            header: if plugin { None } else { key_header(args) },
            plugin,
            inner: Mutex::new(Inner::default()),
        })
    }

    /// The key of a message for this cache.
    pub fn key_of(&self, props: &AMQPProperties) -> Option<String> {
        if self.plugin {
            header_value(props, KEY_HEADER)
        } else {
            message_key(self.header.as_deref(), props)
        }
    }

    /// Look `key` up; a new (or expired) key is reserved for the caller.
    /// `ttl` is the message's own `x-cache-ttl`, overriding the exchange's.
    pub fn check(&self, key: &str, ttl: Option<u64>, now: u64) -> Seen {
        let mut inner = self.inner.lock();
        if let Some(e) = inner.keys.get(key) {
            match e.state {
                State::Pending(_) => return Seen::InFlight,
                State::Committed if e.expires_at == 0 || e.expires_at > now => {
                    return Seen::Duplicate
                }
                State::Committed => {}
            }
        }
        let expires_at = ttl.or(self.ttl).map_or(0, |t| now.saturating_add(t).max(1));
        let token = inner.insert(key, expires_at, State::Pending(Vec::new()));
        let mut evicted = Vec::new();
        self.trim(&mut inner, now, &mut evicted);
        Seen::New(Reservation {
            key: key.to_string(),
            expires_at,
            token,
            evicted,
        })
    }

    /// Drop stale order items, expired committed keys at the front, and the
    /// oldest committed keys past `size`. Pending keys are never evicted:
    /// someone is waiting on them.
    fn trim(&self, inner: &mut Inner, now: u64, evicted: &mut Vec<String>) {
        let mut skipped = 0;
        while let Some((key, token)) = inner.order.front().cloned() {
            if skipped >= inner.order.len() {
                break;
            }
            let action = match inner.keys.get(&key) {
                Some(e) if e.token != token => 0, // stale
                None => 0,
                Some(Entry {
                    state: State::Pending(_),
                    ..
                }) => {
                    if inner.keys.len() > self.size {
                        2 // keep, look further
                    } else {
                        break;
                    }
                }
                Some(e) => {
                    let expired = e.expires_at != 0 && e.expires_at <= now;
                    if expired || inner.keys.len() > self.size {
                        1
                    } else {
                        break;
                    }
                }
            };
            inner.order.pop_front();
            match action {
                1 => {
                    inner.keys.remove(&key);
                    evicted.push(key);
                }
                2 => {
                    inner.order.push_back((key, token));
                    skipped += 1;
                }
                _ => {}
            }
        }
    }

    /// Wait for the original of `key`: `waiter` runs when it settles, or at
    /// once when it already has (`true` if the key is now committed).
    pub fn wait(&self, key: &str, waiter: Waiter, now: u64, batch: &mut Batch) {
        let mut inner = self.inner.lock();
        let committed = match inner.keys.get_mut(key) {
            Some(Entry {
                state: State::Pending(waiters),
                ..
            }) => {
                waiters.push(waiter);
                return;
            }
            Some(e) => e.expires_at == 0 || e.expires_at > now,
            None => false,
        };
        drop(inner);
        waiter(committed, batch);
    }

    /// The publish that reserved a key is settled: `stored` (confirmed) makes
    /// the key committed, otherwise it is forgotten. Runs the waiters.
    pub fn settle(&self, r: &Reservation, stored: bool, batch: &mut Batch) {
        let waiters = {
            let mut inner = self.inner.lock();
            let Some(e) = inner.keys.get_mut(&r.key) else {
                return;
            };
            if e.token != r.token {
                return;
            }
            let waiters = match std::mem::replace(&mut e.state, State::Committed) {
                State::Pending(w) => w,
                State::Committed => Vec::new(),
            };
            if !stored {
                inner.keys.remove(&r.key);
            }
            waiters
        };
        for w in waiters {
            w(stored, batch);
        }
    }

    /// Put back a committed entry read from the store at boot.
    pub fn restore(&self, key: String, expires_at: u64, now: u64) {
        if expires_at != 0 && expires_at <= now {
            return;
        }
        self.inner.lock().insert(&key, expires_at, State::Committed);
    }
}

/// A message's own `x-cache-ttl` header (ms), as the plugin reads it.
pub fn message_ttl(props: &AMQPProperties) -> Option<u64> {
    props
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-cache-ttl"))
        .and_then(|v| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).trim().parse().ok(),
            other => crate::queue::as_u64(other),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::sync::Arc;

    fn args(items: &[(&str, AMQPValue)]) -> FieldTable {
        let mut t = FieldTable::default();
        for (k, v) in items {
            t.insert((*k).into(), v.clone());
        }
        t
    }

    fn cache(size: i32, ttl: Option<i32>) -> DedupCache {
        let mut a = vec![
            ("x-message-deduplication", AMQPValue::Boolean(true)),
            ("x-cache-size", AMQPValue::LongInt(size)),
        ];
        if let Some(t) = ttl {
            a.push(("x-cache-ttl", AMQPValue::LongInt(t)));
        }
        DedupCache::for_exchange("direct", &args(&a)).unwrap()
    }

    fn new(c: &DedupCache, key: &str, now: u64) -> Reservation {
        match c.check(key, None, now) {
            Seen::New(r) => r,
            other => panic!("{key}: {other:?}"),
        }
    }

    #[test]
    fn duplicates_ttl_and_size() {
        let c = cache(2, Some(100));
        let a = new(&c, "a", 1000);
        c.settle(&a, true, &mut Batch::new());
        assert_eq!(c.check("a", None, 1050), Seen::Duplicate);
        let a2 = new(&c, "a", 1101); // expired
        c.settle(&a2, true, &mut Batch::new());
        let b = new(&c, "b", 1102);
        c.settle(&b, true, &mut Batch::new());
        let r = new(&c, "c", 1103);
        assert_eq!(r.evicted, vec!["a".to_string()]);
        c.settle(&r, true, &mut Batch::new());
        assert!(matches!(c.check("a", None, 1104), Seen::New(_)), "evicted");
    }

    #[test]
    fn a_pending_key_makes_duplicates_wait_until_it_settles() {
        let c = cache(10, None);
        let r = new(&c, "k", 1);
        assert_eq!(c.check("k", None, 2), Seen::InFlight);
        let told = Arc::new(AtomicU8::new(0));
        let t = told.clone();
        c.wait(
            "k",
            Box::new(move |ok, _| t.store(1 + ok as u8, Ordering::SeqCst)),
            2,
            &mut Batch::new(),
        );
        assert_eq!(
            told.load(Ordering::SeqCst),
            0,
            "not before the original settles"
        );
        c.settle(&r, true, &mut Batch::new());
        assert_eq!(told.load(Ordering::SeqCst), 2, "told: stored");
        assert_eq!(c.check("k", None, 3), Seen::Duplicate);
    }

    #[test]
    fn a_failed_original_leaves_no_key_and_tells_its_waiters() {
        let c = cache(10, None);
        let r = new(&c, "k", 1);
        let told = Arc::new(AtomicU8::new(0));
        let t = told.clone();
        c.wait(
            "k",
            Box::new(move |ok, _| t.store(1 + ok as u8, Ordering::SeqCst)),
            2,
            &mut Batch::new(),
        );
        c.settle(&r, false, &mut Batch::new());
        assert_eq!(told.load(Ordering::SeqCst), 1, "told: not stored");
        assert!(matches!(c.check("k", None, 3), Seen::New(_)), "key is free");
    }

    #[test]
    fn waiting_on_a_settled_key_answers_at_once() {
        let c = cache(10, None);
        let r = new(&c, "k", 1);
        c.settle(&r, true, &mut Batch::new());
        let told = Arc::new(AtomicU8::new(0));
        let t = told.clone();
        c.wait(
            "k",
            Box::new(move |ok, _| t.store(1 + ok as u8, Ordering::SeqCst)),
            2,
            &mut Batch::new(),
        );
        assert_eq!(told.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn pending_keys_are_not_evicted_and_stale_settles_are_ignored() {
        let c = cache(1, None);
        let a = new(&c, "a", 1);
        let b = new(&c, "b", 2); // over size, but "a" is pending
        assert!(b.evicted.is_empty());
        assert_eq!(c.check("a", None, 3), Seen::InFlight);
        c.settle(&a, true, &mut Batch::new());
        c.settle(&b, true, &mut Batch::new());
        let r = new(&c, "c", 4);
        assert!(!r.evicted.is_empty());
        // A reservation for a key that left and came back does not settle the new one.
        c.settle(&a, false, &mut Batch::new());
        let stale = c.check("c", None, 5);
        assert_eq!(stale, Seen::InFlight);
    }

    #[test]
    fn key_sources() {
        let props = AMQPProperties::default()
            .with_message_id("m1".into())
            .with_headers(args(&[("order", AMQPValue::LongInt(7))]));
        assert_eq!(message_key(None, &props).as_deref(), Some("m1"));
        assert_eq!(message_key(Some("order"), &props).as_deref(), Some("7"));
        assert_eq!(message_key(None, &AMQPProperties::default()), None);
        assert!(DedupCache::for_exchange("direct", &FieldTable::default()).is_none());
        // The plugin's type keys on x-deduplication-header only.
        let plugin = DedupCache::for_exchange(
            EXCHANGE_TYPE,
            &args(&[("x-cache-size", AMQPValue::LongInt(5))]),
        )
        .unwrap();
        assert_eq!(plugin.key_of(&props), None);
        let props = props.with_headers(args(&[(
            "x-deduplication-header",
            AMQPValue::LongString("h".into()),
        )]));
        assert_eq!(plugin.key_of(&props).as_deref(), Some("h"));
    }

    #[test]
    fn plugin_arguments_are_checked_as_the_plugin_does() {
        let ok = args(&[("x-cache-size", AMQPValue::LongInt(5))]);
        assert!(validate_plugin_arguments(&ok).is_ok());
        assert!(validate_plugin_arguments(&FieldTable::default()).is_err());
        let zero = args(&[("x-cache-size", AMQPValue::LongInt(0))]);
        assert!(validate_plugin_arguments(&zero).is_err());
        let text = args(&[("x-cache-size", AMQPValue::LongString("10".into()))]);
        assert!(validate_plugin_arguments(&text).is_ok());
        let bad_ttl = args(&[
            ("x-cache-size", AMQPValue::LongInt(5)),
            ("x-cache-ttl", AMQPValue::LongInt(-1)),
        ]);
        assert!(validate_plugin_arguments(&bad_ttl).is_err());
        let bad_persist = args(&[
            ("x-cache-size", AMQPValue::LongInt(5)),
            ("x-cache-persistence", AMQPValue::LongString("tape".into())),
        ]);
        assert!(validate_plugin_arguments(&bad_persist).is_err());
    }
}
