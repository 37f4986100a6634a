//! Field tables and the store codec.
//!
//! The first byte picks a decoder: amq-protocol's field-table parser as the
//! broker uses it (behind hopper's nesting bound, `protocol::table`) (queue/exchange/consumer arguments, message headers) followed
//! by everything hopper reads out of a table, the content-header property
//! parser, or one of hopper's store decoders (`store::codec`). Arbitrary bytes
//! must decode or be refused, never panic (stack overflow included), and what
//! decodes must re-encode to something that decodes the same.
#![no_main]

use amq_protocol::frame::WriteContext;
use amq_protocol::protocol::basic::gen_properties;
use amq_protocol::types::{generation::gen_field_table, FieldTable};
use hopper::exchange::{dedup, headers};
use hopper::protocol::table::{parse_properties, parse_table};
use hopper::store::codec;
use libfuzzer_sys::fuzz_target;

fn gen_table(t: &FieldTable) -> Vec<u8> {
    gen_field_table(t)(WriteContext::from(Vec::new()))
        .map(|c| c.into_inner().0)
        .expect("a Vec never runs out of room")
}

/// Everything the broker derives from a client-supplied table.
fn interpret(t: &FieldTable, other: &FieldTable) {
    let _ = hopper::queue::Limits::from_arguments(t);
    let _ = dedup::enabled(t);
    let _ = dedup::key_header(t);
    if let Some(cache) = dedup::DedupCache::from_arguments(t) {
        let _ = cache.check("k", 1);
        let _ = cache.check("k", u64::MAX);
    }
    let _ = headers::matches(t, Some(other));
    let _ = headers::matches(t, None);
    for v in t.inner().values() {
        let _ = headers::as_i128(v);
        let _ = hopper::queue::as_u64(v);
        let _ = hopper::queue::as_text(v);
        for w in other.inner().values() {
            let _ = headers::value_eq(v, w);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 8 {
        0 => {
            // A table, then (if one decodes from the rest) a second one to match against.
            let Some((tail, t)) = parse_table(rest) else {
                return;
            };
            let other = parse_table(tail).map(|(_, o)| o).unwrap_or_default();
            interpret(&t, &other);
            interpret(&other, &t);
            // Round trip: what we would write back (e.g. to the store) decodes the same.
            let bytes = gen_table(&t);
            let (left, again) = parse_table(&bytes[..]).expect("re-encoded table decodes");
            assert!(left.is_empty());
            assert_eq!(format!("{again:?}"), format!("{t:?}"));
        }
        1 => {
            if let Some((_, p)) = parse_properties(rest) {
                let _ = dedup::message_key(Some("x"), &p);
                let _ = dedup::message_key(None, &p);
                if let Some(h) = p.headers() {
                    interpret(h, h);
                }
                let out = gen_properties(&p)(WriteContext::from(Vec::new()))
                    .map(|c| c.into_inner().0)
                    .expect("a Vec never runs out of room");
                let (_, again) = parse_properties(&out[..]).expect("re-encoded properties decode");
                assert_eq!(format!("{again:?}"), format!("{p:?}"));
            }
        }
        2 => {
            if let Some(d) = codec::decode_exchange(rest) {
                let again = codec::decode_exchange(&codec::encode_exchange(&d));
                assert_eq!(format!("{again:?}"), format!("{:?}", Some(d)));
            }
        }
        3 => {
            if let Some(d) = codec::decode_queue(rest) {
                let again = codec::decode_queue(&codec::encode_queue(&d));
                assert_eq!(format!("{again:?}"), format!("{:?}", Some(d)));
            }
        }
        4 => {
            if let Some(d) = codec::decode_binding(rest) {
                let again = codec::decode_binding(&codec::encode_binding(&d));
                assert_eq!(format!("{again:?}"), format!("{:?}", Some(d)));
            }
        }
        5 => {
            let cut = rest.first().map_or(0, |&c| c as usize).min(rest.len());
            let (k, v) = rest.split_at(cut);
            if let Some(d) = codec::decode_dedup(k, v) {
                let key = codec::dedup_key(&d.vhost, &d.exchange, &d.key);
                let again = codec::decode_dedup(&key, &d.expires_at.to_be_bytes());
                assert_eq!(again.as_ref(), Some(&d));
            }
        }
        6 => {
            let _ = codec::index_meta(rest);
            let _ = codec::index_msg_id(rest);
        }
        _ => {
            // A stored message as `RocksStore::load` reads it.
            if let Some(m) = codec::decode_message(rest) {
                let _ = parse_properties(m.raw_properties);
                let again = codec::encode_message(
                    &m.exchange,
                    &m.routing_key,
                    m.raw_properties,
                    m.queues,
                    m.body,
                );
                let d = codec::decode_message(&again).expect("re-encoded message decodes");
                assert_eq!(
                    (
                        d.exchange,
                        d.routing_key,
                        d.raw_properties,
                        d.queues,
                        d.body
                    ),
                    (
                        m.exchange,
                        m.routing_key,
                        m.raw_properties,
                        m.queues,
                        m.body
                    )
                );
            }
        }
    }
});
