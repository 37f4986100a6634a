//! Byte layouts of the store's keys and values. Strings are length-prefixed so
//! keys sort by (vhost, name, ...) and no name can run into the next field;
//! message ids are big-endian so a queue's index iterates in publish order.

use amq_protocol::frame::WriteContext;
use amq_protocol::types::{generation::gen_field_table, FieldTable};

use super::{BindingDef, ExchangeDef, IndexMeta, QueueDef, QueueKey};

pub const EXCHANGE: u8 = b'x';
pub const QUEUE: u8 = b'q';
pub const BINDING: u8 = b'b';
/// Opaque definitions (users, vhosts, permissions) of the management API.
pub const OBJECT: u8 = b'o';

#[derive(Default)]
pub struct Writer(pub Vec<u8>);

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A short string (names are at most 255 bytes in AMQP).
    pub fn str8(&mut self, s: &str) -> &mut Self {
        let b = &s.as_bytes()[..s.len().min(255)];
        self.0.push(b.len() as u8);
        self.0.extend_from_slice(b);
        self
    }
    pub fn bytes32(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    pub fn table(&mut self, t: &FieldTable) -> &mut Self {
        let encoded = match gen_field_table(t)(WriteContext::from(Vec::new())) {
            Ok(ctx) => ctx.into_inner().0,
            // A Vec never runs out of room; an empty table keeps the layout valid.
            Err(_) => 0u32.to_be_bytes().to_vec(),
        };
        self.0.extend_from_slice(&encoded);
        self
    }
}

pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }
    pub fn str8(&mut self) -> Option<String> {
        let n = self.u8()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).ok()
    }
    pub fn bytes32(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    pub fn table(&mut self) -> Option<FieldTable> {
        // Nesting-bounded: a corrupt record must not overflow the stack.
        let (rest, t) = crate::protocol::table::parse_table(self.0)?;
        self.0 = rest;
        Some(t)
    }
    pub fn rest(&self) -> &'a [u8] {
        self.0
    }
}

pub fn exchange_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(EXCHANGE).str8(vhost).str8(name);
    w.0
}

pub fn queue_key(vhost: &str, name: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(QUEUE).str8(vhost).str8(name);
    w.0
}

/// An opaque definition's key: its kind, then its own key.
pub fn object_key(kind: &str, key: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(OBJECT).str8(kind);
    w.0.extend_from_slice(key.as_bytes());
    w.0
}

pub fn decode_object(k: &[u8], v: &[u8]) -> Option<super::StoredObject> {
    let mut r = Reader(k);
    if r.u8()? != OBJECT {
        return None;
    }
    let kind = r.str8()?;
    let key = String::from_utf8(r.rest().to_vec()).ok()?;
    Some(super::StoredObject {
        kind,
        key,
        value: v.to_vec(),
    })
}

pub fn binding_key(b: &BindingDef) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(BINDING)
        .str8(&b.vhost)
        .str8(&b.exchange)
        .u8(b.to_exchange as u8)
        .str8(&b.destination)
        .str8(&b.routing_key)
        .table(&b.arguments);
    w.0
}

pub fn encode_exchange(d: &ExchangeDef) -> Vec<u8> {
    let mut w = Writer::default();
    w.str8(&d.vhost)
        .str8(&d.name)
        .str8(&d.kind)
        .u8(d.auto_delete as u8 | (d.internal as u8) << 1)
        .table(&d.arguments);
    w.0
}

pub fn decode_exchange(v: &[u8]) -> Option<ExchangeDef> {
    let mut r = Reader(v);
    let vhost = r.str8()?;
    let name = r.str8()?;
    let kind = r.str8()?;
    let flags = r.u8()?;
    let arguments = r.table()?;
    Some(ExchangeDef {
        vhost,
        name,
        kind,
        durable: true,
        auto_delete: flags & 1 != 0,
        internal: flags & 2 != 0,
        arguments,
    })
}

pub fn encode_queue(d: &QueueDef) -> Vec<u8> {
    let mut w = Writer::default();
    w.str8(&d.vhost)
        .str8(&d.name)
        .u8(d.auto_delete as u8)
        .table(&d.arguments);
    w.0
}

pub fn decode_queue(v: &[u8]) -> Option<QueueDef> {
    let mut r = Reader(v);
    Some(QueueDef {
        vhost: r.str8()?,
        name: r.str8()?,
        auto_delete: r.u8()? != 0,
        arguments: r.table()?,
    })
}

pub fn encode_binding(b: &BindingDef) -> Vec<u8> {
    // The key holds everything; the value repeats it for a simple decode.
    binding_key(b)
}

pub fn decode_binding(v: &[u8]) -> Option<BindingDef> {
    let mut r = Reader(v);
    if r.u8()? != BINDING {
        return None;
    }
    Some(BindingDef {
        vhost: r.str8()?,
        exchange: r.str8()?,
        to_exchange: r.u8()? != 0,
        destination: r.str8()?,
        routing_key: r.str8()?,
        arguments: r.table()?,
    })
}

/// Prefix of a queue's index entries.
pub fn index_prefix(q: &QueueKey) -> Vec<u8> {
    let mut w = Writer::default();
    w.str8(&q.vhost).str8(&q.name);
    w.0
}

pub fn index_key(q: &QueueKey, msg_id: u64) -> Vec<u8> {
    let mut k = index_prefix(q);
    k.extend_from_slice(&msg_id.to_be_bytes());
    k
}

/// The message id at the end of an index key.
pub fn index_msg_id(key: &[u8]) -> Option<u64> {
    if key.len() < 8 {
        return None;
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&key[key.len() - 8..]);
    Some(u64::from_be_bytes(a))
}

/// Key of a remembered deduplication key: vhost, exchange, key.
pub fn dedup_key(vhost: &str, exchange: &str, key: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.str8(vhost).str8(exchange).bytes32(key.as_bytes());
    w.0
}

/// Prefix of an exchange's remembered keys.
pub fn dedup_prefix(vhost: &str, exchange: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.str8(vhost).str8(exchange);
    w.0
}

pub fn decode_dedup(key: &[u8], value: &[u8]) -> Option<super::DedupDef> {
    let mut r = Reader(key);
    let vhost = r.str8()?;
    let exchange = r.str8()?;
    let k = String::from_utf8(r.bytes32()?.to_vec()).ok()?;
    Some(super::DedupDef {
        vhost,
        exchange,
        key: k,
        expires_at: Reader(value).u64().unwrap_or(0),
    })
}

/// An index entry's value: the message's expiry in that queue (ms since the
/// epoch) and its priority there; nothing when both are zero.
pub fn index_value(meta: IndexMeta) -> Vec<u8> {
    if meta == IndexMeta::default() {
        return Vec::new();
    }
    let mut v = meta.expires_at.to_be_bytes().to_vec();
    v.push(meta.priority);
    v.extend_from_slice(&meta.size.to_be_bytes());
    v
}

pub fn index_meta(value: &[u8]) -> IndexMeta {
    let mut r = Reader(value);
    IndexMeta {
        expires_at: r.u64().unwrap_or(0),
        priority: r.u8().unwrap_or(0),
        size: r.u32().unwrap_or(0),
    }
}

/// A stored message: exchange, routing key, raw properties, queue count, body.
pub fn encode_message(
    exchange: &str,
    routing_key: &str,
    raw_properties: &[u8],
    queues: u32,
    body: &[u8],
) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(
        body.len() + raw_properties.len() + exchange.len() + routing_key.len() + 16,
    ));
    w.str8(exchange)
        .str8(routing_key)
        .bytes32(raw_properties)
        .u32(queues);
    w.0.extend_from_slice(body);
    w.0
}

pub struct StoredMessage<'a> {
    pub exchange: String,
    pub routing_key: String,
    pub raw_properties: &'a [u8],
    pub queues: u32,
    pub body: &'a [u8],
}

pub fn decode_message(v: &[u8]) -> Option<StoredMessage<'_>> {
    let mut r = Reader(v);
    let exchange = r.str8()?;
    let routing_key = r.str8()?;
    let raw_properties = r.bytes32()?;
    let queues = r.u32()?;
    Some(StoredMessage {
        exchange,
        routing_key,
        raw_properties,
        queues,
        body: r.rest(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::AMQPValue;

    fn args() -> FieldTable {
        let mut t = FieldTable::default();
        t.insert("x-message-ttl".into(), AMQPValue::LongInt(1000));
        t.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("dlx".into()),
        );
        t
    }

    #[test]
    fn definitions_roundtrip() {
        let x = ExchangeDef {
            vhost: "/".into(),
            name: "ex".into(),
            kind: "topic".into(),
            durable: true,
            auto_delete: true,
            internal: false,
            arguments: args(),
        };
        assert_eq!(decode_exchange(&encode_exchange(&x)), Some(x));
        let q = QueueDef {
            vhost: "v".into(),
            name: "q".into(),
            auto_delete: false,
            arguments: args(),
        };
        assert_eq!(decode_queue(&encode_queue(&q)), Some(q));
        let b = BindingDef {
            vhost: "/".into(),
            exchange: "ex".into(),
            destination: "q".into(),
            to_exchange: false,
            routing_key: "a.#".into(),
            arguments: args(),
        };
        assert_eq!(decode_binding(&encode_binding(&b)), Some(b));
    }

    #[test]
    fn objects_roundtrip_and_stay_apart_from_other_records() {
        let k = object_key("user", "a\u{0}b/é");
        let o = decode_object(&k, b"{}").unwrap();
        assert_eq!(
            (o.kind.as_str(), o.key.as_str(), &o.value[..]),
            ("user", "a\u{0}b/é", &b"{}"[..])
        );
        assert_eq!(k[0], OBJECT);
        assert!(decode_object(&exchange_key("/", "x"), b"").is_none());
        // The kind is length-prefixed: "user" + "s" is not "users" + "".
        assert_ne!(object_key("user", "s"), object_key("users", ""));
    }

    #[test]
    fn index_keys_sort_by_queue_then_id() {
        let a = QueueKey {
            vhost: "/".into(),
            name: "a".into(),
        };
        let ab = QueueKey {
            vhost: "/".into(),
            name: "ab".into(),
        };
        let k1 = index_key(&a, 2);
        let k2 = index_key(&a, 256);
        let k3 = index_key(&ab, 1);
        assert!(k1 < k2, "ids sort numerically");
        assert!(k2 < k3, "a queue's entries stay together");
        assert!(k2.starts_with(&index_prefix(&a)));
        assert!(
            !k3.starts_with(&index_prefix(&a)),
            "length prefix keeps 'ab' apart from 'a'"
        );
        assert_eq!(index_msg_id(&k2), Some(256));
    }

    #[test]
    fn deeply_nested_arguments_do_not_decode() {
        // A corrupt record must be refused, not overflow the stack (fuzzing).
        let mut v = Writer::default();
        v.str8("/").str8("q").u8(0);
        v.0.extend_from_slice(&crate::protocol::table::nested_for_tests(21_000));
        assert_eq!(decode_queue(&v.0), None);
    }

    #[test]
    fn message_roundtrip_and_truncation() {
        let v = encode_message("ex", "rk", b"\x80\x00", 2, b"body");
        let m = decode_message(&v).unwrap();
        assert_eq!((m.exchange.as_str(), m.routing_key.as_str()), ("ex", "rk"));
        assert_eq!(
            (m.raw_properties, m.queues, m.body),
            (&b"\x80\x00"[..], 2, &b"body"[..])
        );
        assert!(decode_message(&v[..5]).is_none());
    }
}
