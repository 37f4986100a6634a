//! Hopper-only message endpoints the web UI uses (RabbitMQ has neither):
//!
//! - `GET /api/queues/{vhost}/{queue}/browse?offset=&count=&encoding=&truncate=&search=`
//!   shows ready messages without taking, requeueing or marking them
//!   `redelivered` (RabbitMQ's "get messages" is destructive or requeues);
//!   with `search`, only those whose body, routing key, message id or
//!   correlation id contains it. Paged-out bodies are read from the store,
//!   and bodies searched, on a blocking thread.
//! - `POST /api/queues/{vhost}/{queue}/move` `{"count", "exchange"?,
//!   "routing_key"?}` takes messages from the head with basic.get's path and
//!   re-publishes each through `broker::publish`; without `exchange`, a
//!   dead-lettered message goes back to where its first `x-death` says it
//!   was published, any other to its own exchange and routing key.
//!
//! A move never loses a message: each one is published and confirmed (same
//! rule as any publish) before it is settled in the source queue; when the
//! publish is refused, unroutable or not confirmed, the message goes back to
//! its place and the move stops there. The move runs in its own task, so a
//! client hanging up halfway cannot drop a message that has been taken.

use amq_protocol::protocol::basic::AMQPProperties;
use amq_protocol::types::AMQPValue;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};
use std::sync::Arc;

use super::objects::{check, visible_vhost};
use super::publish::publish_confirmed;
use super::reply::{body_object, get_str, get_u64, ApiError, ApiResult, Reply};
use super::Req;
use crate::auth::{Permission, Resource};
use crate::broker::publish::Publication;
use crate::message::Message;
use crate::queue::{Peeked, Queue, Slot};

/// Most messages one browse request shows.
const BROWSE_MAX: usize = 500;
/// Most messages one search request looks at (the caller continues from
/// `next_offset`).
const SEARCH_SCAN: usize = 10_000;
/// Messages read back from the store (and searched) per blocking task.
const LOAD_CHUNK: usize = 256;
/// Most messages one move request takes.
const MOVE_MAX: u64 = 10_000;

fn queue_of(r: &Req<'_>, vhost: &str, name: &str) -> Result<Arc<Queue>, ApiError> {
    let v = visible_vhost(r, vhost)?;
    let q = v
        .queues
        .get(name)
        .map(|q| q.clone())
        .ok_or_else(ApiError::not_found)?;
    Ok(q)
}

fn query_usize(r: &Req<'_>, key: &str, default: usize) -> Result<usize, ApiError> {
    match r.query.get(key) {
        None => Ok(default),
        Some(s) if s.is_empty() => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| ApiError::bad_request(format!("{key} must be a non-negative integer"))),
    }
}

pub async fn browse(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let q = queue_of(r, vhost, name)?;
    check(r, vhost, Permission::Read, Resource::Queue, name)?;
    let offset = query_usize(r, "offset", 0)?;
    let count = query_usize(r, "count", 50)?.min(BROWSE_MAX);
    let base64 = match r.query.get("encoding").map(String::as_str) {
        None | Some("auto") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!("Unknown encoding: {other}")));
        }
    };
    let truncate = match r.query.get("truncate") {
        None => None,
        Some(_) => Some(query_usize(r, "truncate", 0)?),
    };
    let search = r
        .query
        .get("search")
        .filter(|s| !s.is_empty())
        .map(|s| Bytes::from(s.clone().into_bytes()));
    // A search scans up to SEARCH_SCAN messages from `offset` for `count`
    // matches; a plain browse shows the `count` from `offset`.
    let window = if search.is_some() { SEARCH_SCAN } else { count };
    let peek = q.peek(offset, window);
    let mut messages = Vec::new();
    let mut next_offset = offset;
    let mut scanned = 0usize;
    'scan: for chunk in peek.items.chunks(LOAD_CHUNK) {
        let found = {
            let (q, chunk, search) = (q.clone(), chunk.to_vec(), search.clone());
            // Store reads and body scans stay off the async workers.
            tokio::task::spawn_blocking(move || materialize(&q, chunk, search.as_deref()))
                .await
                .map_err(|e| ApiError::internal(format!("store read failed: {e}")))?
                .map_err(|e| ApiError::internal(format!("store read failed: {e}")))?
        };
        for (position, hit) in found {
            next_offset = position + 1;
            scanned += 1;
            let Some((m, redelivered)) = hit else {
                continue;
            };
            messages.push(message_json(&m, position, redelivered, base64, truncate));
            if messages.len() >= count {
                break 'scan;
            }
        }
    }
    Ok(Reply::Json(json!({
        "ready": peek.ready,
        "offset": offset,
        "count": messages.len(),
        "scanned": scanned,
        "next_offset": next_offset,
        "messages": messages,
    })))
}

/// A peeked message's position, and the message with its `redelivered` flag
/// when it is still there and matches the search.
type Found = (usize, Option<(Arc<Message>, bool)>);

/// The messages of a peeked chunk, read back from the store where paged out
/// (a blocking read), each with its position; `None` for one that does not
/// match `search`, or that was settled since the peek.
fn materialize(
    q: &Queue,
    chunk: Vec<Peeked>,
    search: Option<&[u8]>,
) -> Result<Vec<Found>, crate::store::StoreError> {
    let ids: Vec<u64> = chunk
        .iter()
        .filter_map(|p| match p.slot {
            Slot::Stored(id) => Some(id),
            Slot::Mem(_) => None,
        })
        .collect();
    let mut loaded = if ids.is_empty() {
        Vec::new()
    } else {
        q.load_peeked(&ids)?
    }
    .into_iter();
    Ok(chunk
        .into_iter()
        .map(|p| {
            let m = match p.slot {
                Slot::Mem(m) => Some(m),
                Slot::Stored(_) => loaded.next().flatten(),
            };
            let hit = m
                .filter(|m| search.is_none_or(|s| matches(m, s)))
                .map(|m| (m, p.redelivered));
            (p.position, hit)
        })
        .collect())
}

/// Whether `needle` occurs in the body, routing key, message id or
/// correlation id (bytes, case-sensitive).
fn matches(m: &Message, needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    let has = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    has(&m.body)
        || has(m.routing_key.as_bytes())
        || m.properties
            .message_id()
            .as_ref()
            .is_some_and(|v| has(v.as_str().as_bytes()))
        || m.properties
            .correlation_id()
            .as_ref()
            .is_some_and(|v| has(v.as_str().as_bytes()))
}

fn message_json(
    m: &Message,
    position: usize,
    redelivered: bool,
    base64: bool,
    truncate: Option<usize>,
) -> Value {
    let body = match truncate {
        Some(t) if t < m.body.len() => &m.body[..t],
        _ => &m.body[..],
    };
    let (payload, encoding) = match (base64, std::str::from_utf8(body)) {
        (false, Ok(s)) => (s.to_string(), "string"),
        _ => (BASE64.encode(body), "base64"),
    };
    json!({
        "position": position,
        "payload_bytes": m.body.len(),
        "redelivered": redelivered,
        "exchange": m.exchange,
        "routing_key": m.routing_key,
        "properties": super::message::properties_to_json(&m.properties),
        "payload": payload,
        "payload_encoding": encoding,
    })
}

/// Where a dead-lettered message came from: the exchange and first routing
/// key of its most recent death (`x-death` lists the most recent first), so
/// re-publishing there routes it back to the queue it died in.
fn origin(p: &AMQPProperties) -> Option<(String, String)> {
    let h = p.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = h.inner().get("x-death")? else {
        return None;
    };
    let AMQPValue::FieldTable(t) = deaths.as_slice().first()? else {
        return None;
    };
    let exchange = t
        .inner()
        .get("exchange")
        .and_then(crate::protocol::table::as_text)?;
    let key = match t.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys
            .as_slice()
            .first()
            .and_then(crate::protocol::table::as_text)
            .unwrap_or_default(),
        _ => String::new(),
    };
    Some((exchange, key))
}

pub async fn move_messages(r: &Req<'_>, vhost: &str, name: &str) -> ApiResult {
    let body = body_object(&r.body)?;
    let q = queue_of(r, vhost, name)?;
    check(r, vhost, Permission::Read, Resource::Queue, name)?;
    let count = get_u64(&body, "count")?.unwrap_or(1).min(MOVE_MAX);
    let exchange = get_str(&body, "exchange")?.map(super::exchange_name);
    let routing_key = get_str(&body, "routing_key")?.map(str::to_string);
    let v = visible_vhost(r, vhost)?;
    if let Some(x) = exchange {
        if !v.exchanges.contains_key(x) {
            return Err(ApiError::bad_request(format!(
                "404 NOT_FOUND - no exchange '{x}' in vhost '{vhost}'"
            )));
        }
        check(r, vhost, Permission::Write, Resource::Exchange, x)?;
    }
    // Each message's target exchange is checked for write permission
    // before its publish (it may differ per message when going to origin).
    let allowed = {
        let user = r.caller.name.clone();
        let broker = r.broker.clone();
        let vh = vhost.to_string();
        move |x: &str| {
            broker
                .access
                .check(&user, &vh, Permission::Write, Resource::Exchange, x)
                .map_err(|_| ApiError::not_authorised("Access refused."))
        }
    };
    let broker = r.broker.clone();
    let exchange = exchange.map(str::to_string);
    let task = tokio::spawn(async move {
        let mut moved = 0u64;
        while moved < count {
            let Some((entry, msg, _)) = q.get(false) else {
                break;
            };
            let (x, key) = match (&exchange, origin(&msg.properties)) {
                (Some(x), _) => (x.clone(), msg.routing_key.clone()),
                (None, Some(o)) => o,
                (None, None) => (msg.exchange.clone(), msg.routing_key.clone()),
            };
            let key = routing_key.clone().unwrap_or(key);
            let result = match allowed(&x) {
                Err(e) => Err(e),
                Ok(()) => publish_confirmed(
                    &broker,
                    &v,
                    Publication {
                        exchange: x.clone(),
                        routing_key: key.clone(),
                        mandatory: false,
                        properties: msg.properties.clone(),
                        raw_properties: msg.raw_properties.clone(),
                        body: msg.body.clone(),
                    },
                )
                .await
                .and_then(|p| {
                    if p.routed {
                        Ok(())
                    } else {
                        Err(ApiError::bad_request(format!(
                            "no queue is bound to exchange '{x}' with routing key '{key}'"
                        )))
                    }
                }),
            };
            match result {
                Ok(()) => {
                    q.settled(&entry);
                    moved += 1;
                }
                Err(e) => {
                    q.requeue([entry]);
                    return (moved, Some(e));
                }
            }
        }
        (moved, None)
    });
    let (moved, error) = task
        .await
        .map_err(|e| ApiError::internal(format!("move failed: {e}")))?;
    Ok(Reply::Json(match error {
        None => json!({"moved": moved}),
        Some(e) => json!({"moved": moved, "error": e.error, "reason": e.reason}),
    }))
}
