//! Reading messages back: `load` for callers that wait (with their lock
//! released and off the async workers), and the store-reader thread behind
//! `Store::read`, which queues use to prefetch paged-out bodies before a
//! consumer reaches them.
//!
//! Part of `rocks`, the only module that touches RocksDB. It only reads: it
//! never writes, and runs no broker code but the `done` callbacks handed to
//! it, one read at a time in submission order.

use bytes::Bytes;
use rocksdb::DB;
use std::sync::mpsc;
use std::sync::Arc;

use super::{cf, io, CF_MESSAGES};
use crate::message::Message;
use crate::protocol::table::parse_properties;
use crate::store::{codec, ReadDone, StoreError};

/// Read messages by id (`None` for ids the store does not have).
pub(super) fn load(db: &DB, ids: &[u64]) -> Result<Vec<Option<Arc<Message>>>, StoreError> {
    let messages = cf(db, CF_MESSAGES)?;
    let keys: Vec<[u8; 8]> = ids.iter().map(|id| id.to_be_bytes()).collect();
    let got = db.batched_multi_get_cf(messages, &keys, false);
    let mut out = Vec::with_capacity(ids.len());
    for (id, r) in ids.iter().zip(got) {
        let Some(raw) = r.map_err(io)? else {
            out.push(None);
            continue;
        };
        let m = codec::decode_message(&raw)
            .ok_or_else(|| StoreError::Corrupt(format!("undecodable message {id}")))?;
        // Nesting-bounded, like everything read from outside.
        let props = parse_properties(m.raw_properties)
            .map(|(_, p)| p)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("undecodable properties of message {id}"))
            })?;
        out.push(Some(Arc::new(Message::new(
            *id,
            m.exchange,
            m.routing_key,
            props,
            Bytes::copy_from_slice(m.raw_properties),
            Bytes::copy_from_slice(m.body),
        ))));
    }
    Ok(out)
}

/// A read for the reader thread.
pub(super) type Read = (Vec<u64>, ReadDone);

/// The store-reader thread: reads each request and hands the result to its
/// callback, until every sender is gone.
pub(super) fn run(db: Arc<DB>, rx: mpsc::Receiver<Read>) {
    while let Ok((ids, done)) = rx.recv() {
        done(load(&db, &ids));
    }
}
